//! Shutdown in bounded time. After SIGINT/SIGTERM each long-running
//! command (`clip2gan bot`, `clip2gan worker`) bounds every step of its
//! shutdown by the grace period and says what it cut short. Should a step
//! still not return (a library that does not listen: serenity trying to
//! reach a gateway that does not resolve, a blocking DNS lookup, a disk that
//! hangs), the [`watchdog`] ends the process shortly after the grace period
//! anyway, naming the step it was in ([`stage`]), so a supervisor (systemd,
//! Docker) never has to SIGKILL it.
//!
//! Ending the process there is safe: every change to the results store is
//! a committed transaction, and jobs of a worker that are not published stay
//! pending for another worker.

use std::sync::Mutex;
use std::time::Duration;

/// What the shutdown is doing now, for the watchdog's message.
static STAGE: Mutex<&'static str> = Mutex::new("starting to shut down");

/// How much later than the grace period the watchdog ends the process: the
/// bounded steps end within the grace period plus about a second (the
/// gateway's close, the runtime's stop), so this catches only a step that
/// did not honour its bound.
pub const WATCHDOG_MARGIN: Duration = Duration::from_millis(1500);

/// Record the shutdown step now under way (`"closing the gateway"`).
pub fn stage(now: &'static str) {
    *STAGE.lock().unwrap_or_else(|e| e.into_inner()) = now;
}

/// The step recorded last.
pub fn current() -> &'static str {
    *STAGE.lock().unwrap_or_else(|e| e.into_inner())
}

/// From now on, end the process with exit status 0 after `limit`, whatever
/// it is doing, with an error line naming the step cut short. Call it when
/// the shutdown begins (the signal), with the grace period plus
/// [`WATCHDOG_MARGIN`]. A thread of its own: it must fire even when every
/// async worker thread is blocked.
pub fn watchdog(limit: Duration) {
    let started = std::thread::Builder::new()
        .name("clip2gan-shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(
                cut_short = current(),
                "shutdown did not finish within {:.1} s; exiting now",
                limit.as_secs_f64()
            );
            std::process::exit(0);
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the shutdown watchdog; shutdown is bounded step by step only");
    }
}
