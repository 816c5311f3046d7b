//! Ctrl-C for long jobs: the first SIGINT (or SIGTERM) raises a flag that
//! the training loop checks between steps, so it can write a checkpoint and
//! stop cleanly; a second one ends the process at once (exit status 130).
//!
//! Training has no async runtime, so tokio's signal handling runs on a small
//! thread of its own with a current-thread runtime.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Install the handlers (once per process) and return the flag they raise.
/// Returns once they are in place, so a signal sent right after is caught.
pub fn install() -> &'static AtomicBool {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let (ready, listening) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("interrupt".into())
                .spawn(move || listen(ready));
            match spawned {
                // Err: the thread gave up (logged there).
                Ok(_) => {
                    let _ = listening.recv();
                }
                Err(e) => tracing::warn!("Ctrl-C will not stop training cleanly: {e}"),
            }
        });
    }
    &REQUESTED
}

/// Wait for SIGINT or SIGTERM twice: raise the flag, then exit.
#[cfg(unix)]
fn listen(ready: std::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return tracing::warn!("Ctrl-C will not stop training cleanly: {e}"),
    };
    rt.block_on(async move {
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                return tracing::warn!("Ctrl-C will not stop training cleanly: {e}")
            }
        };
        let _ = ready.send(());
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        REQUESTED.store(true, Ordering::SeqCst);
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
}
