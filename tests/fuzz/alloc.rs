//! The test binary's allocator: the system's, counting the bytes each
//! thread has live and the most it had since [`reset_peak`], so a fuzz case
//! can be held to a heap bound. Per thread, because the test harness runs
//! targets side by side; a parser that hands work to other threads would
//! escape the count, and none of the targets does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static BASE: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    // try_with: allocations while a thread's locals are torn down are not
    // counted (and must not panic).
    let _ = LIVE.try_with(|l| {
        let v = l.get() + n;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counting touches only const-initialised thread locals, which allocate
// nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

/// Start a new peak at the bytes live now.
pub fn reset_peak() {
    let live = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(live));
    BASE.with(|b| b.set(live));
}

/// The most bytes live at once since [`reset_peak`], above what was live
/// then.
pub fn peak() -> usize {
    (PEAK.with(|p| p.get()) - BASE.with(|b| b.get())).max(0) as usize
}
