//! Process-level tuning done once at start-up.

/// Keep large freed buffers in the heap instead of returning them to the OS.
///
/// Every layer of the generator allocates activations of tens of MB. glibc
/// serves such sizes with fresh `mmap`s and unmaps them on free, so each
/// forward pass page-faults all its memory in again and pays TLB shootdowns
/// across threads: measured here, that doubled the time of a 1024 px image.
/// Serving them from the heap (no mmap) and trimming only above 1 GiB of
/// free memory lets later passes reuse the same pages. The cost: the process
/// keeps its peak heap, which an inference server reuses anyway.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
