//! Process-level tuning done once at start-up.

/// Keep large freed buffers in the heap instead of returning them to the OS.
///
/// Every layer of the generator allocates activations of tens of MB. glibc
/// serves such sizes with fresh `mmap`s and unmaps them on free, so each
/// forward pass page-faults all its memory in again and pays TLB shootdowns
/// across threads: measured here, that doubled the time of a 1024 px image.
/// Serving them from the heap (no mmap) and trimming only above 2 GiB of
/// free memory (a batch of 8 at 1024 px peaks at about 1.4 GB; a lower
/// threshold gave the pages back after every batch and faulted them in again,
/// 240k faults a pass) lets later passes reuse the same pages.
///
/// One arena for all threads: a thread other than the main one allocates
/// from an arena of its own, whose heaps are at most 64 MB, and glibc
/// serves anything larger there with `mmap` whatever `M_MMAP_MAX` says. The
/// engine's inference thread is such a thread: measured on the 2-core
/// machine, a batch of 4 took 1.8x the CPU time of the same batch on the
/// main thread (280k page faults a pass), and none more with one arena.
/// Small allocations mostly come from glibc's per-thread caches, so the
/// shared arena's lock is rarely taken.
///
/// The cost: the process keeps its peak heap, which an inference server
/// reuses anyway.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Run candle's element-wise kernels on the calling thread, unless
/// `CANDLE_NUM_THREADS` (or `RAYON_NUM_THREADS`) says otherwise; matrix
/// products keep their own threads.
///
/// candle splits every element-wise op of 64k elements or more over a
/// pool whose main thread spin-waits for the others. For the toy CLIP's
/// small layers that split costs more than it saves: measured on the
/// 2-core machine, `toy_clip --small` took 57 s to render and 156 s to
/// train with the pool at 2 threads, 34 s and 95 s with it at 1, and under
/// any other load the spinning thread starves the one it waits for.
///
/// Call it first thing in `main`, before other threads exist: the pool
/// reads the variable once, when first used.
pub fn serial_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none()
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
    {
        // SAFETY (edition 2021: safe to call): no other thread reads the
        // environment yet, per this function's contract.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
