//! Ctrl-C for long jobs: the first SIGINT (or SIGTERM) raises a flag that
//! the training loop checks between steps, so it can write a checkpoint and
//! stop cleanly; a second Ctrl-C kills the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Install the handlers (once per process) and return the flag they raise.
pub fn install() -> &'static AtomicBool {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: the handler only stores to an atomic and resets the
            // disposition, both async-signal-safe.
            unsafe {
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            }
        });
    }
    &REQUESTED
}

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
    // SAFETY: signal() is async-signal-safe; the next signal terminates.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}
