//! What a running job tells the person watching (one updating line on
//! stderr: count, rate, ETA) and what it leaves for later (metrics as JSON
//! lines, one per step, appended and flushed as they come).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};

/// A progress bar for `total` units of work, `start` of them already done:
/// indicatif's bar (count, rate, ETA) on a terminal; off a terminal, where
/// a bar would only fill logs with control codes, a plain line every 10 s.
pub struct Progress {
    unit: &'static str,
    start: u64,
    total: u64,
    began: Instant,
    last_print: Option<Instant>,
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Progress {
    pub fn new(unit: &'static str, start: u64, total: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total).with_position(start);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} | {per_sec} | ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(unit);
            bar.reset_eta();
            bar
        });
        Self {
            unit,
            start,
            total,
            began: Instant::now(),
            last_print: None,
            bar,
            quiet,
        }
    }

    /// Units per second since this progress began.
    pub fn rate(&self, done: u64) -> f64 {
        let secs = self.began.elapsed().as_secs_f64();
        if secs > 0.0 {
            done.saturating_sub(self.start) as f64 / secs
        } else {
            0.0
        }
    }

    /// Seconds left at the rate so far (`None` before any unit is done).
    pub fn eta_s(&self, done: u64) -> Option<f64> {
        let rate = self.rate(done);
        (rate > 0.0).then(|| self.total.saturating_sub(done) as f64 / rate)
    }

    pub fn elapsed_s(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }

    /// Show `done` units with `detail` (on a log: every 10 s, and always for
    /// the last unit).
    pub fn update(&mut self, done: u64, detail: &str) {
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(detail.to_string());
            return;
        }
        let due = self
            .last_print
            .is_none_or(|t| t.elapsed().as_secs_f64() >= 10.0);
        if !due && done < self.total {
            return;
        }
        self.last_print = Some(Instant::now());
        let eta = self.eta_s(done).map_or_else(|| "?".into(), format_secs);
        tracing::info!(
            "{} {done}/{} {detail} | {:.2} {}/s | ETA {eta}",
            self.unit,
            self.total,
            self.rate(done),
            self.unit
        );
    }

    /// End the bar (it stays on screen).
    pub fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// `h:mm:ss`.
pub fn format_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The metrics file of a run: JSON lines, each with an `event` field
/// (`"step"` lines also carry `step` and the losses).
pub struct Metrics {
    path: PathBuf,
    file: std::fs::File,
}

impl Metrics {
    /// Open for appending. `keep_until`: the step a resumed run restarts
    /// from; step lines after it (written after the checkpoint by the run
    /// that was interrupted) are dropped so no step appears twice. `None`
    /// starts a new file.
    pub fn open(path: &Path, keep_until: Option<u64>) -> Result<Self> {
        let werr = |err| Error::Write {
            path: path.to_path_buf(),
            err,
        };
        match keep_until {
            None => {
                crate::fsutil::write_atomic(path, b"")?;
            }
            Some(step) if path.exists() => {
                let text = std::fs::read_to_string(path).map_err(|err| Error::Read {
                    path: path.to_path_buf(),
                    err,
                })?;
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                        v["event"] != "step" || v["step"].as_u64().is_some_and(|s| s <= step)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                crate::fsutil::write_atomic(path, kept.as_bytes())?;
            }
            Some(_) => {}
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(werr)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{record}")
            .and_then(|_| self.file.flush())
            .map_err(|err| Error::Write {
                path: self.path.clone(),
                err,
            })
    }
}

/// Read back the `"step"` records of a metrics file: `(step, loss)`.
pub fn read_step_losses(path: &Path) -> Result<Vec<(u64, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumed_metrics_drop_steps_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut m = Metrics::open(&p, None).unwrap();
        for s in 1..=5u64 {
            m.write(&serde_json::json!({"event": "step", "step": s, "loss": s as f64}))
                .unwrap();
        }
        m.write(&serde_json::json!({"event": "note"})).unwrap();
        drop(m);
        let mut m = Metrics::open(&p, Some(3)).unwrap();
        m.write(&serde_json::json!({"event": "step", "step": 4, "loss": 40.0}))
            .unwrap();
        let l = read_step_losses(&p).unwrap();
        assert_eq!(l, [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]);
        assert_eq!(format_secs(3725.0), "1:02:05");
    }
}
