//! A `clip2gan` process started by a test, with its stderr read line by
//! line as it comes (to wait for what it says, and to keep its log for the
//! failure message), and signals sent to it by pid.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long [`Proc::wait_line`] waits before the test fails.
pub const LINE_WAIT: Duration = Duration::from_secs(120);

pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
    /// The stderr reader; it ends when the pipe closes with the process.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start clip2gan");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let keep = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Proc {
            child,
            lines,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Wait for a line of stderr containing `needle` (the process is not
    /// waited for past [`LINE_WAIT`]).
    pub fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} in:\n{}", self.log()),
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet waited for.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({sig}) failed");
    }

    /// SIGTERM, then the exit status and how long after the signal it came
    /// (`None`: still running after `give_up`; it is then killed).
    pub fn terminate(&mut self, give_up: Duration) -> (Option<ExitStatus>, Duration) {
        let sent = Instant::now();
        self.signal(libc::SIGTERM);
        let give_up = sent + give_up;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (Some(st), sent.elapsed());
            }
            if Instant::now() > give_up {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return (None, sent.elapsed());
            }
            // Polling the exit (std has no wait with a timeout): the
            // figure it gives is at most 5 ms late.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait for the exit, then for the end of its stderr (the reader ends
    /// when the pipe closes), so that [`Proc::log`] holds all it said.
    pub fn wait(&mut self) -> ExitStatus {
        let st = self.child.wait().unwrap();
        self.join_reader();
        st
    }

    pub fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILL `pid` and wait until the kernel has made it a zombie (or it is
/// gone), so that nothing it would do after this moment happens: a kill
/// "at" an event is then exactly there. Waiting is on `/proc`, not on the
/// child (its `Child` belongs to the caller, which reaps it).
pub fn kill_now(pid: libc::pid_t) {
    // SAFETY: kill(2) on a pid the test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let stat = format!("/proc/{pid}/stat");
    loop {
        match std::fs::read_to_string(&stat) {
            // The state is the field after the parenthesised name.
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|t| t.trim_start().starts_with('Z')) =>
            {
                return
            }
            Err(_) => return,
            Ok(_) => std::thread::yield_now(),
        }
    }
}
