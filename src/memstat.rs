//! What the process holds in memory: its resident set from `/proc`, its
//! peak (resettable), the allocator's own count of bytes in use, and giving
//! freed heap back to the system. `bench memory`, the soak and the memory
//! session read these; the engine trims with [`trim`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use serde::Serialize;

/// The resident set of this process, from `/proc/self/status`, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Rss {
    /// All resident pages (`VmRSS`): what the kernel's OOM killer and a
    /// container's limit count.
    pub total: u64,
    /// The peak of `total` since start or the last [`reset_peak`] (`VmHWM`).
    pub peak: u64,
    /// Anonymous pages (`RssAnon`): heap, stacks.
    pub anon: u64,
    /// Mapped file pages (`RssFile`): the binary, memory-mapped weights.
    pub file: u64,
}

/// This process's [`Rss`]; zeros where `/proc` cannot be read (not Linux).
pub fn rss() -> Rss {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| parse_status(&s))
        .unwrap_or_default()
}

/// The [`Rss`] of process `pid` (`None` once it has exited).
pub fn rss_of(pid: u32) -> Option<Rss> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .map(|s| parse_status(&s))
}

/// The fields of a `/proc/PID/status` text.
pub fn parse_status(s: &str) -> Rss {
    let kb = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    Rss {
        total: kb("VmRSS:"),
        peak: kb("VmHWM:"),
        anon: kb("RssAnon:"),
        file: kb("RssFile:"),
    }
}

/// Start [`Rss::peak`] again from the current resident set (Linux: `5` to
/// `/proc/self/clear_refs`). False where the kernel does not allow it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The allocator's view of the heap, in bytes (glibc: `mallinfo2`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Heap {
    /// Bytes handed out and not yet freed: what the program holds.
    pub in_use: u64,
    /// Bytes freed but kept by the allocator: slack it may reuse or trim.
    pub free: u64,
}

/// The allocator's [`Heap`]: [`Counting`]'s exact count where a program
/// installed it, else glibc's `mallinfo2`; zeros with other allocators.
pub fn heap() -> Heap {
    if COUNTING.load(Ordering::Relaxed) {
        return Heap {
            in_use: IN_USE.load(Ordering::Relaxed).max(0) as u64,
            free: 0,
        };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        Heap {
            in_use: (m.uordblks + m.hblkhd) as u64,
            free: m.fordblks as u64,
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    Heap::default()
}

static COUNTING: AtomicBool = AtomicBool::new(false);
static IN_USE: AtomicI64 = AtomicI64::new(0);

/// The system allocator with an exact count of the bytes in use, for tests
/// that must see a leak of a few hundred KB whatever the allocator's
/// caches and arenas do (`mallinfo2` misses blocks that a thread's arena
/// serves from its own heaps). Install it with `#[global_allocator]`;
/// [`heap`] then reports its count.
pub struct Counting;

// SAFETY: every call is passed to `System` unchanged; the count is a side
// effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNTING.store(true, Ordering::Relaxed);
        let p = System.alloc(layout);
        if !p.is_null() {
            IN_USE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        COUNTING.store(true, Ordering::Relaxed);
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            IN_USE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        IN_USE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            IN_USE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

/// Give the free heap pages back to the system (glibc's `malloc_trim`,
/// which also releases whole free pages inside the heap, not only its top).
/// The allocator keeps freed memory for reuse (`runtime::tune_allocator`);
/// after dropping something large that will not be needed again soon (a
/// model, a batch of a size the memory limit no longer allows) this makes
/// the resident set fall back.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes as MiB, for tables.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_status_fields() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssAnon:\t 512 kB\nRssFile:\t 256 kB\n";
        assert_eq!(
            parse_status(s),
            Rss {
                total: 1 << 20,
                peak: 2 << 20,
                anon: 512 << 10,
                file: 256 << 10,
            }
        );
    }

    #[test]
    fn this_process_has_a_resident_set() {
        // The heap's figures move with every test thread's allocations, so
        // only the resident set is checked here; tests/soak.rs checks the
        // exact count of `Counting`.
        let r = rss();
        assert!(r.total > 0 && r.peak >= r.total && r.anon > 0, "{r:?}");
    }
}
