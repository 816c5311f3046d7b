//! Damaged checkpoints: truncated and mutated copies of the legacy `.pt`,
//! the zip `.pt` and the NVIDIA `.pkl` fixtures must fail with an error that
//! names the file and says it cannot be read (or load, when a mutation hit
//! only weights), never panic, and never allocate more than the file
//! warrants: every length a header claims (a string, a storage's element
//! count, a tensor's size) is checked against the bytes that are there
//! before anything is allocated.
//!
//! The allocator of this test binary records the largest single request
//! made by the thread that loads, while it loads, and holds it to the
//! file's size. The pickle reader pays for what it allocates from a budget
//! of the file's size, at least 1 MiB (`pickle::MIN_BUDGET`: the NVIDIA
//! fixture, 94 KB of nearly all structure, grows its nodes to 262 KB); a pickle
//! of structure alone, far larger than the floor, is refused once it has
//! spent its file's size. Before the budget, the node arena reached 7x the
//! NVIDIA pickle and 25x a truncated legacy file.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use clip2gan::generator::stylegan2::Checkpoint;
use common::fixture;

struct Tracking;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the thread's locals may be gone while it exits.
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// The least budget the pickle reader has, however small the file.
const MIN_BUDGET: usize = 1 << 20;

/// Largest single allocation allowed for a file of `len` bytes.
fn bound(len: usize) -> usize {
    len.max(MIN_BUDGET)
}

/// Open `path`; the result and the largest single allocation made.
fn open_tracked(path: &Path) -> (Result<usize, String>, usize) {
    LARGEST.with(|m| m.set(0));
    ON.with(|on| on.set(true));
    let r = Checkpoint::open(path)
        .map(|c| c.tensors().len())
        .map_err(|e| e.to_string());
    ON.with(|on| on.set(false));
    (r, LARGEST.with(Cell::get))
}

/// A deterministic stream of numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Default, Debug)]
struct Tally {
    failed: usize,
    loaded: usize,
}

/// Every variant of `name` fails clearly or loads, within the file's size.
fn fuzz(name: &str, seed: u64) -> Tally {
    let orig = std::fs::read(fixture(&format!("stylegan2/{name}"))).unwrap();
    let ext = Path::new(name).extension().unwrap().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(format!("damaged.{ext}"));
    let mut tally = Tally::default();
    let mut run = |bytes: &[u8], what: &str, must_fail: bool| {
        std::fs::write(&path, bytes).unwrap();
        let (r, largest) = open_tracked(&path);
        assert!(
            largest <= bound(bytes.len()),
            "{name} {what}: an allocation of {largest} bytes for a file of {}",
            bytes.len()
        );
        match r {
            Err(e) => {
                // The file named, then what is wrong with it.
                let file = path.display().to_string();
                assert!(e.starts_with(&format!("{file}: ")), "{name} {what}: {e}");
                assert!(
                    e.len() > file.len() + 20,
                    "{name} {what}: unclear error: {e}"
                );
                // A truncated file is always an unreadable one, as with zip.
                assert!(
                    !must_fail || e.contains("cannot read the PyTorch checkpoint"),
                    "{name} {what}: {e}"
                );
                tally.failed += 1;
            }
            Ok(n) => {
                assert!(!must_fail, "{name} {what}: loaded {n} tensors");
                tally.loaded += 1;
            }
        }
    };

    let (r, largest) = {
        std::fs::write(&path, &orig).unwrap();
        open_tracked(&path)
    };
    assert!(r.is_ok(), "{name}: {r:?}");
    eprintln!(
        "{name}: {} bytes, largest allocation {largest} ({:.1}x)",
        orig.len(),
        largest as f64 / orig.len() as f64
    );
    assert!(
        largest <= bound(orig.len()),
        "{name}: {largest} > {}",
        bound(orig.len())
    );

    // Truncations: densely through the headers, then spread over the rest.
    let mut cuts: Vec<usize> = (0..orig.len().min(600)).collect();
    cuts.extend((600..orig.len()).step_by(997));
    for &cut in &cuts {
        run(&orig[..cut], &format!("cut at {cut}"), true);
    }
    // Mutations in the first 4 KB (pickles, headers, zip entries): one
    // random byte, a run of 0xff (huge lengths and counts), or zeros.
    let mut rng = Rng(seed);
    let head = orig.len().min(4096);
    for i in 0..1500 {
        let mut b = orig.clone();
        let at = rng.below(head);
        let len = b.len();
        match i % 3 {
            0 => b[at] = rng.next() as u8,
            1 => b[at..(at + 8).min(len)].fill(0xff),
            _ => b[at..(at + 4).min(len)].fill(0),
        }
        run(&b, &format!("mutation {i} at {at}"), false);
    }
    tally
}

#[test]
fn damaged_legacy_pt_fails_clearly_within_its_size() {
    let t = fuzz("net16_legacy.pt", 1);
    eprintln!("legacy .pt: {t:?}");
    assert!(t.failed > 1000, "{t:?}");
}

#[test]
fn damaged_nvidia_pkl_fails_clearly_within_its_size() {
    let t = fuzz("net16_ada.pkl", 2);
    eprintln!("NVIDIA .pkl: {t:?}");
    assert!(t.failed > 1000, "{t:?}");
}

#[test]
fn damaged_zip_pt_fails_clearly_within_its_size() {
    let t = fuzz("net16_alias.pt", 3);
    eprintln!("zip .pt: {t:?}");
    assert!(t.failed > 300, "{t:?}");
}

/// Pickles of structure alone, 4 MiB of one opcode each (lists, stack
/// duplicates, marks, memo entries, tuples), as a plain `.pkl`: each is
/// refused with the file named once the reader has spent the file's size,
/// and no allocation goes beyond it (unbounded, the `]`s alone would ask for
/// 128 MiB of nodes).
#[test]
fn a_pickle_of_structure_alone_is_refused_within_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("structure.pkl");
    let n = 4 * MIN_BUDGET;
    for unit in [&b"]"[..], b"2", b"(", b"\x94", b"\x85"] {
        let mut data = b"\x80\x04N".to_vec();
        data.resize(n, unit[0]);
        data.push(b'.');
        std::fs::write(&path, &data).unwrap();
        let (r, largest) = open_tracked(&path);
        let e = r.expect_err("a pickle of structure alone is not a checkpoint");
        assert!(
            e.starts_with(&format!("{}: ", path.display())) && e.contains("budget"),
            "{unit:?}: {e}"
        );
        assert!(
            largest <= data.len(),
            "{unit:?}: an allocation of {largest} bytes for a file of {}",
            data.len()
        );
    }
}
