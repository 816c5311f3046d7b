//! An interrupted bank or mapper write never leaves a file that loads
//! wrong: first use (`clip2gan imagine` with no mapper yet: it renders a
//! pair bank in chunks, fits a mapper, writes it, then the image) killed
//! with SIGKILL at seeded moments, 20 rounds, on the tiny random models.
//!
//! The moments are file-system events: the test watches (inotify) the
//! directories the run writes in (the bank's `pairs/`, the models
//! directory the mapper goes to) and kills the process at the k-th event
//! (a file created, written to, closed, renamed, removed), k drawn from a
//! seeded stream over the events of a whole run (every other round over
//! its last 7, the mapper's write), so kills land inside chunk, manifest
//! and mapper writes alike. No sleep decides anything.
//!
//! After each kill: a mapper file, if there is one, loads and is the very
//! mapper an uninterrupted run writes (every tensor equal); the bank's
//! manifest, if there is one, parses and lists only chunks whose checksum
//! holds. Then the same command runs to the end: it succeeds, writes the
//! uninterrupted run's mapper and image (bit for bit), and leaves no
//! `.partial` file in the bank or beside the mapper.
//!
//! Runtime: 10 s on the shared 2-core machine (a first use takes under a
//! second on these models). `C2G_KILL_ROUNDS` and `C2G_KILL_SEED` change
//! rounds and seed.

mod common;

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::Device;
use clip2gan::mapper::{self, Mapper};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The tiny models, made once and shared by every round's directory.
struct Models {
    _dir: tempfile::TempDir,
    g: PathBuf,
    clip: PathBuf,
}

fn models() -> Models {
    let dir = tempfile::tempdir().unwrap();
    let (g, clip) = common::tiny_models(dir.path());
    Models { _dir: dir, g, clip }
}

/// One round's models directory: the generator linked in, no mapper, an
/// empty bank directory (made here so that it can be watched from the
/// start; the bank makes it if missing).
fn round_dir(m: &Models) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&m.g, dir.path().join("tiny-g")).unwrap();
    std::fs::create_dir_all(bank(dir.path())).unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    dir
}

fn bank(dir: &Path) -> PathBuf {
    dir.join("train/pairs")
}

/// `clip2gan imagine` on first use: 64 pairs in chunks of 16, then the fit.
fn first_use(m: &Models, dir: &Path) -> Command {
    let mut c = common::bin();
    c.args(["imagine", "a face", "--seed", "3", "--size", "64", "-o"])
        .arg(dir.join("out/face.png"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("CLIP2GAN_MODELS_DIR", dir)
        .env("CLIP2GAN_GENERATOR__WEIGHTS", "tiny-g")
        .env("CLIP2GAN_CLIP__MODEL", &m.clip)
        .env("CLIP2GAN_DEVICE", "cpu")
        .env("CLIP2GAN_MAPPER__BUILD", "true")
        .env("CLIP2GAN_MAPPER__FIRST_PAIRS", "64")
        .env("CLIP2GAN_MAPPER__PAIRS", "64")
        .env("CLIP2GAN_TRAIN__CHUNK_PAIRS", "16")
        .env("CLIP2GAN_TRAIN__GEN_BATCH", "16")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// File-system events in some directories, counted (inotify).
struct Watch {
    fd: libc::c_int,
}

impl Watch {
    fn new(dirs: &[&Path]) -> Watch {
        // SAFETY: plain syscalls; the descriptor is owned by the Watch.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let mask = libc::IN_CREATE
            | libc::IN_MODIFY
            | libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE;
        for d in dirs {
            let p = CString::new(d.as_os_str().as_bytes()).unwrap();
            // SAFETY: `p` is a valid C string for the call's duration.
            let wd = unsafe { libc::inotify_add_watch(fd, p.as_ptr(), mask) };
            assert!(wd >= 0, "inotify_add_watch {}", d.display());
        }
        Watch { fd }
    }

    /// Block until at least one more event; how many came in this read.
    fn next(&self) -> usize {
        let mut buf = [0u8; 16384];
        // SAFETY: reading into a buffer we own, of the length given.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0, "inotify read: {}", std::io::Error::last_os_error());
        let (mut at, mut count) = (0usize, 0usize);
        while at + 16 <= n as usize {
            // struct inotify_event: wd, mask, cookie (u32 each), len, name.
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            at += 16 + len;
            count += 1;
        }
        count
    }

    /// Block until `k` events have come in all (counting from creation).
    fn wait_events(&self, k: usize, seen: &mut usize) {
        while *seen < k {
            *seen += self.next();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: our descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// Every tensor of a mapper file, for comparing two writes of it.
fn tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    let meta = mapper::read_meta(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (m, _) = Mapper::load(path, &common::compat(&meta), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    drop(m);
    let f = clip2gan::tensorfile::read(path, &Device::Cpu).unwrap();
    f.tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.flatten_all()
                    .unwrap()
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            )
        })
        .collect()
}

/// The bank as a killed run left it: a manifest that parses and lists
/// only chunks that are there, whole (their sha256 as listed).
fn check_bank(dir: &Path, round: usize) -> usize {
    let manifest = dir.join("manifest.json");
    let Ok(text) = std::fs::read_to_string(&manifest) else {
        return 0;
    };
    let m: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("round {round}: the manifest is torn ({e}): {text}"));
    let chunks = m["chunks"].as_array().cloned().unwrap_or_default();
    for c in &chunks {
        let file = dir.join(c["file"].as_str().unwrap());
        let bytes = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("round {round}: listed chunk {}: {e}", file.display()));
        assert_eq!(
            clip2gan::fsutil::sha256_hex(&bytes),
            c["sha256"].as_str().unwrap(),
            "round {round}: listed chunk {} is not what was listed",
            file.display()
        );
    }
    chunks.len()
}

fn run_to_end(m: &Models, dir: &Path) -> String {
    let out = first_use(m, dir).output().expect("run clip2gan");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "first use failed:\n{err}");
    err
}

#[test]
fn first_use_killed_at_seeded_moments_never_leaves_a_file_that_loads_wrong() {
    let started = std::time::Instant::now();
    let rounds = env_or("C2G_KILL_ROUNDS", 20) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(env_or("C2G_KILL_SEED", 26));
    let m = models();

    // The uninterrupted run: its mapper, its image, and how many events
    // it makes (the range the kill moments are drawn from).
    let reference = round_dir(&m);
    let watch = Watch::new(&[reference.path(), &bank(reference.path())]);
    run_to_end(&m, reference.path());
    let mut events = 0usize;
    // Every event of the finished run is queued already: read until a
    // read would block.
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(watch.fd, libc::F_SETFL, libc::O_NONBLOCK) };
    loop {
        let mut buf = [0u8; 16384];
        // SAFETY: as in `Watch::next`.
        let n = unsafe { libc::read(watch.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at + 16 <= n as usize {
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            at += 16 + len;
            events += 1;
        }
    }
    drop(watch);
    assert!(events > 20, "only {events} file events in a first use");
    let mapper_path = reference.path().join("mapper.safetensors");
    let want = tensors(&mapper_path);
    let want_png = std::fs::read(reference.path().join("out/face.png")).unwrap();

    let (mut with_mapper, mut with_chunks) = (0, 0);
    for round in 1..=rounds {
        let dir = round_dir(&m);
        // Every other round in the last events, where the mapper is
        // written (the bank's are the many before).
        let k = if round % 2 == 0 {
            rng.random_range(events.saturating_sub(6).max(1)..=events)
        } else {
            rng.random_range(1..=events)
        };
        let watch = Watch::new(&[dir.path(), &bank(dir.path())]);
        let mut child = first_use(&m, dir.path()).spawn().unwrap();
        let mut seen = 0;
        watch.wait_events(k, &mut seen);
        let pid = child.id() as libc::pid_t;
        common::child::kill_now(pid);
        let st = child.wait().unwrap();
        drop(watch);
        // It may have finished just before the kill (k near the end).
        assert!(
            st.signal() == Some(libc::SIGKILL) || st.success(),
            "round {round}: {st}"
        );
        let at = dir.path().join("mapper.safetensors");
        let had_mapper = at.exists();
        if had_mapper {
            with_mapper += 1;
            assert!(
                tensors(&at) == want,
                "round {round}: the mapper left by a kill at event {k} is not the uninterrupted one"
            );
        }
        let chunks = check_bank(&bank(dir.path()), round);
        with_chunks += (chunks > 0) as usize;

        let said = run_to_end(&m, dir.path());
        assert!(
            tensors(&at) == want,
            "round {round}: after a kill at event {k}, the finished mapper differs:\n{said}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("out/face.png")).unwrap(),
            want_png,
            "round {round}: the image differs"
        );
        let partial: Vec<String> = std::fs::read_dir(bank(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert!(partial.is_empty(), "round {round}: {partial:?}");
        // The temporary file of a mapper write the kill cut short is
        // cleared by the next write of it.
        let left_over = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".partial")
            })
            .count();
        assert_eq!(
            left_over, 0,
            "round {round}: .partial files beside the mapper"
        );
        eprintln!(
            "round {round}: killed at file event {k} of {events}: {chunks} whole chunks listed, \
             mapper {}; the next run finished with the uninterrupted mapper and image",
            if had_mapper {
                "in place"
            } else {
                "not yet written"
            }
        );
    }
    eprintln!(
        "{rounds} kills during first use ({with_chunks} with chunks kept, {with_mapper} after the \
         mapper was in place): every file left loaded right or was rebuilt, and no .partial file \
         stayed ({:.1?} in all)",
        started.elapsed()
    );
}
