//! The fuzzing loop: seeded mutations of real files fed to one parser, each
//! case checked for a panic, a hang and the heap it needed.
//!
//! Every run is the same: the mutations come from a ChaCha stream seeded
//! with the target's name, so case `k` of a target is the same input on
//! every machine, and a failure is reproduced by running the target again
//! (`C2G_FUZZ_TRACE=1` prints each case's number before it runs, for the
//! rare failure that takes the process down: an abort or an allocation the
//! system refuses).
//!
//! Bounds, per case: the parser's peak heap (bytes live at once on the
//! fuzzing thread, counted by [`crate::alloc`]) at most the target's
//! `max_heap`; its CPU time at most [`HANG_CPU`] (thread CPU time, so a
//! machine that is busy, or a process paused with SIGSTOP, does not count
//! as a hang). A panic, a heap beyond the bound or an error without a
//! message fails the target; its input is written to
//! `target/fuzz-failures/<target>-<case>.bin`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub type Rng = ChaCha8Rng;

/// A mutation: a seed (and all seeds, for splices) to a new input.
pub type Mutation = dyn Fn(&mut Rng, &[u8], &[Vec<u8>]) -> Vec<u8>;

/// CPU time one case may take before it counts as a hang.
pub const HANG_CPU: Duration = Duration::from_secs(20);

/// One parser under test.
pub struct Target<'a> {
    pub name: &'static str,
    /// Real inputs the mutations start from (valid files made by the test).
    pub seeds: Vec<Vec<u8>>,
    /// Cases of a plain `cargo test`; `C2G_FUZZ_CASES` overrides every
    /// target's count (`tools/fuzz.sh N`).
    pub cases: u64,
    /// The peak heap one case may use, in bytes.
    pub max_heap: usize,
    /// A structure-aware mutation of a seed (the loop also applies plain
    /// byte mutations to a share of the cases).
    pub mutate: &'a Mutation,
    /// Whether a quarter of the cases are plain byte edits of a seed (true
    /// for files; false where the input is the test's own framing of
    /// structured data, which byte edits would only break).
    pub raw: bool,
}

/// What one case did, as the target's check reports it.
pub enum Outcome {
    /// The input was accepted.
    Accepted,
    /// The input was refused with this message.
    Refused(String),
}

/// Figures of one run, printed and checked by the caller.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: u64,
    pub accepted: u64,
    pub refused: u64,
    pub peak_heap: usize,
    pub failures: Vec<String>,
}

/// Call first in every target: errors stop capturing backtraces
/// (`RUST_LIB_BACKTRACE=0`; panics still print theirs with
/// `RUST_BACKTRACE`), so a case's heap is the parser's and not that of
/// symbolising a backtrace, whatever the environment. Set once, before any
/// target reads the environment, as every target calls this first.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY (set_var): every test of this binary calls init first and
    // waits on ONCE, so no other thread of ours reads the environment now.
    ONCE.call_once(|| {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
        // Panics are findings the loop reports with their input; the hook
        // keeps where each happened for that report instead of printing a
        // backtrace (whose symbolising would count as the case's heap).
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CASE.with(|c| c.get()) {
                return default(info);
            }
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let _ = PANIC_AT.try_with(|p| *p.borrow_mut() = at);
        }));
    });
}

thread_local! {
    /// Whether this thread is running a case (its panics are findings).
    static IN_CASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

pub fn cases(default: u64) -> u64 {
    std::env::var("C2G_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn failures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures")
}

/// The name's bytes as a seed, so each target has its own stream.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Run `t` through `check`, which parses one input and says what came of
/// it. Panics (fails the test) with every failure found.
pub fn run(t: Target, mut check: impl FnMut(&[u8]) -> Outcome) -> Report {
    assert!(!t.seeds.is_empty(), "{}: no seeds", t.name);
    let n = cases(t.cases);
    let trace = std::env::var_os("C2G_FUZZ_TRACE").is_some();
    let mut rng = Rng::seed_from_u64(seed_of(t.name));
    let mut report = Report::default();
    // The seeds themselves first: a parser that refuses a valid file is a
    // broken test, not a finding.
    for (i, s) in t.seeds.iter().enumerate() {
        if let Outcome::Refused(why) = check(s) {
            panic!("{}: seed {i} is refused: {why}", t.name);
        }
    }
    let watch = Watchdog::start(t.name);
    for case in 0..n {
        let input = if t.raw && case % 4 == 3 {
            let seed = &t.seeds[rand::Rng::random_range(&mut rng, 0..t.seeds.len())];
            crate::mutate::bytes(&mut rng, seed, &t.seeds)
        } else {
            let seed = &t.seeds[rand::Rng::random_range(&mut rng, 0..t.seeds.len())];
            (t.mutate)(&mut rng, seed, &t.seeds)
        };
        if trace {
            eprintln!("fuzz {} case {case} ({} bytes)", t.name, input.len());
        }
        watch.case(case);
        crate::alloc::reset_peak();
        IN_CASE.with(|c| c.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        IN_CASE.with(|c| c.set(false));
        let peak = crate::alloc::peak();
        report.peak_heap = report.peak_heap.max(peak);
        report.cases += 1;
        let failure = match outcome {
            Err(p) => Some(format!(
                "panic at {}: {}",
                PANIC_AT.with(|a| a.borrow().clone()),
                panic_text(&*p).replace('\n', " ")
            )),
            Ok(_) if peak > t.max_heap => Some(format!(
                "peak heap {peak} bytes, above the bound of {} bytes",
                t.max_heap
            )),
            Ok(Outcome::Refused(why)) if why.trim().is_empty() => {
                Some("refused with an empty message".into())
            }
            Ok(Outcome::Refused(_)) => {
                report.refused += 1;
                None
            }
            Ok(Outcome::Accepted) => {
                report.accepted += 1;
                None
            }
        };
        if let Some(f) = failure {
            let dir = failures_dir();
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{}-{case}.bin", t.name));
            let _ = std::fs::write(&file, &input);
            report
                .failures
                .push(format!("case {case}: {f} (input in {})", file.display()));
        }
    }
    watch.stop();
    eprintln!(
        "fuzz {}: {} cases, {} accepted, {} refused, peak heap {:.1} MiB (bound {:.1}), {} failures",
        t.name,
        report.cases,
        report.accepted,
        report.refused,
        report.peak_heap as f64 / (1 << 20) as f64,
        t.max_heap as f64 / (1 << 20) as f64,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "{}: {} failures:\n{}",
        t.name,
        report.failures.len(),
        report.failures.join("\n")
    );
    report
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Watches the fuzzing thread's CPU time per case; a case over
/// [`HANG_CPU`] is a hang, which no catch can stop, so it is reported and
/// the process aborted.
struct Watchdog {
    case: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(name: &'static str) -> Watchdog {
        let clock = thread_cpu_clock();
        let case = Arc::new(AtomicU64::new(u64::MAX));
        let done = Arc::new(AtomicBool::new(false));
        let (c, d) = (case.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = (u64::MAX, Duration::ZERO);
            while !d.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = cpu_time(clock);
                let k = c.load(Ordering::Relaxed);
                if k != seen.0 {
                    seen = (k, now);
                } else if k != u64::MAX && now.saturating_sub(seen.1) > HANG_CPU {
                    eprintln!(
                        "fuzz {name}: case {k} has run for more than {HANG_CPU:?} of CPU time: \
                         a hang. Rerun with C2G_FUZZ_TRACE=1 to see its input size."
                    );
                    std::process::abort();
                }
            }
        });
        Watchdog {
            case,
            done,
            thread: Some(thread),
        }
    }

    fn case(&self, k: u64) {
        self.case.store(k, Ordering::Relaxed);
    }

    fn stop(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The CPU clock of the calling thread, readable from another thread.
fn thread_cpu_clock() -> libc::clockid_t {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self is the calling thread; id is a valid out pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    assert_eq!(rc, 0, "pthread_getcpuclockid");
    id
}

fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id of a live thread and an out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
