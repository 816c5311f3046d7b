//! `clip2gan bench soak`: many mixed jobs (imagine, edit, morph, photo)
//! through one engine from concurrent clients, with the resident set and
//! the allocator's bytes in use taken at marks where no job is in flight
//! (every client has finished its share), so that growth over time shows
//! as a difference between marks and not as the noise of a batch caught
//! mid-pass. `tests/soak.rs` runs the same on small models.

use std::sync::Arc;

use serde::Serialize;

use crate::engine::{Engine, Latent, Layers, Request};
use crate::error::{Error, Result};
use crate::memstat::{self, Heap, Rss};

/// The process at a mark.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SoakPoint {
    /// Jobs finished so far.
    pub jobs: usize,
    pub rss: Rss,
    pub heap: Heap,
}

#[derive(Debug, Serialize)]
pub struct SoakBench {
    pub bench: &'static str,
    pub concurrency: usize,
    pub points: Vec<SoakPoint>,
    /// The resident set at the last mark over that at the first, minus 1.
    pub rss_drift: f64,
    /// Bytes in use at the last mark minus at the first.
    pub heap_growth_bytes: i64,
}

/// A small photo, PNG-encoded, for the photo (invert) jobs.
fn photo(seed: u64) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(96, 96, |x, y| {
        let v = (x as u64 * 7 + y as u64 * 13 + seed) % 251;
        image::Rgb([v as u8, (v * 3 % 256) as u8, 255 - v as u8])
    });
    crate::image_io::encode_png(&img).map_err(|e| Error::invalid(e.to_string()))
}

/// Job `k` of a client, given the latent of its last result: imagine,
/// edit, morph (a 4-frame interpolation), photo, in turn.
fn job(client: usize, k: usize, last: Option<&Latent>) -> Result<Request> {
    let seed = (client * 100_000 + k) as u64;
    let Some(l) = last else {
        return Ok(imagine(seed));
    };
    Ok(match k % 4 {
        0 => imagine(seed),
        1 => Request::Edit {
            latent: l.clone(),
            instruction: "make them smile".into(),
            strength: 1.0,
            layers: Layers::All,
        },
        2 => Request::Interpolate {
            a: l.clone(),
            b: l.clone(),
            frames: 4,
        },
        _ => Request::Invert {
            image: photo(seed)?,
        },
    })
}

fn imagine(seed: u64) -> Request {
    Request::Imagine {
        prompt: format!("a portrait of person {}", seed % 97),
        count: 1,
        seed,
        truncation: None,
        candidates: 1,
    }
}

/// Run `marks` (ascending job counts) of mixed jobs through `engine` from
/// `concurrency` clients, each one job at a time; the process is measured
/// at each mark. Clients keep the latent of their last result for the
/// next edit or morph (as a user does), so no latent outlives two jobs.
pub fn soak(engine: &Arc<Engine>, concurrency: usize, marks: &[usize]) -> Result<SoakBench> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Config(e.to_string()))?;
    let concurrency = concurrency.max(1);
    let mut lasts: Vec<Option<Latent>> = vec![None; concurrency];
    let mut done = 0usize;
    let mut points = Vec::new();
    for &mark in marks {
        let todo = mark.saturating_sub(done);
        let tasks: Vec<_> = (0..concurrency)
            .map(|c| {
                // Client c's share of this segment.
                let n = todo / concurrency + usize::from(c < todo % concurrency);
                let engine = engine.clone();
                let mut last = lasts[c].take();
                let first = done / concurrency + c;
                rt.spawn(async move {
                    for k in first..first + n {
                        let req = job(c, k, last.as_ref()).map_err(|e| e.to_string())?;
                        let out = engine
                            .submit(c as u64, req)
                            .map_err(|e| e.to_string())?
                            .wait()
                            .await
                            .map_err(|e| e.to_string())?;
                        last = out.latents.into_iter().next().or(last);
                    }
                    Ok::<_, String>(last)
                })
            })
            .collect();
        for (c, t) in tasks.into_iter().enumerate() {
            lasts[c] = rt
                .block_on(t)
                .map_err(|e| Error::Config(e.to_string()))?
                .map_err(Error::Config)?;
        }
        done = done.max(mark);
        points.push(SoakPoint {
            jobs: done,
            rss: memstat::rss(),
            heap: memstat::heap(),
        });
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    Ok(SoakBench {
        bench: "soak",
        concurrency,
        rss_drift: last.rss.total as f64 / first.rss.total.max(1) as f64 - 1.0,
        heap_growth_bytes: last.heap.in_use as i64 - first.heap.in_use as i64,
        points,
    })
}

impl SoakBench {
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = format!("soak, {} clients:\n", self.concurrency);
        for p in &self.points {
            let _ = writeln!(
                s,
                "  after {:>5} jobs: rss {:7.1} MiB (peak {:7.1}), heap in use {:7.1} MiB, free {:7.1}",
                p.jobs,
                memstat::mib(p.rss.total),
                memstat::mib(p.rss.peak),
                memstat::mib(p.heap.in_use),
                memstat::mib(p.heap.free)
            );
        }
        let _ = writeln!(
            s,
            "  drift of the resident set from the first mark to the last: {:+.2}%; heap in use {:+.1} KiB",
            100.0 * self.rss_drift,
            self.heap_growth_bytes as f64 / 1024.0
        );
        s
    }
}
