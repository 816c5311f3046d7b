//! The results store on a disk that fills up: writes fail with a message
//! that says so, what was saved keeps being served from memory, and once
//! there is space again writes persist, without a restart, and the file is
//! never set aside as corrupt.
//!
//! The disk is a 16 MiB tmpfs mounted for the test ([`common::SmallDisk`]).

mod common;

use clip2gan::bot::store::{Record, Store};
use clip2gan::engine::Latent;

/// A result of `n` latents of 18 x 512 floats (36 KiB each, a real W+).
fn result(owner: u64, n: usize, v: f32) -> Record {
    let mut r = Record::example(owner, 1, v);
    r.latents = (0..n)
        .map(|k| Latent {
            styles: 18,
            dim: 512,
            data: vec![v + k as f32; 18 * 512],
        })
        .collect();
    r
}

#[test]
fn a_full_disk_refuses_saves_serves_from_memory_and_saves_again_once_freed() {
    let disk = common::SmallDisk::mount(16);
    let path = disk.path().join("results.redb");
    let store = Store::open(&path, 10, 1000).unwrap().store;
    let saved = store.insert(result(1, 2, 1.0), 1, 0).unwrap();

    assert!(disk.fill() > 0);
    // Eight real images' latents: more than any page redb freed before.
    let err = match store.insert(result(1, 8, 2.0), 1, 0) {
        Ok(_) => panic!("a full disk refuses the save"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("disk refused the write"), "{err}");
    // What was saved is still served, from memory.
    let (rec, latent) = store
        .latent(clip2gan::bot::store::Ref {
            id: saved.id,
            index: 1,
        })
        .unwrap();
    assert_eq!(rec.id, saved.id);
    assert_eq!(latent.data[0], 2.0);
    // Still full: still refused, and said the same way (not "corrupt").
    let again = store
        .insert(result(2, 8, 3.0), 2, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(again.contains("disk refused the write"), "{again}");

    disk.free();
    let later = store
        .insert(result(2, 2, 4.0), 2, 0)
        .expect("saving resumes once there is space");
    drop(store);

    let opened = Store::open(&path, 10, 1000).unwrap();
    assert!(opened.warnings.is_empty(), "{:?}", opened.warnings);
    let store = opened.store;
    assert!(
        store.get(saved.id).is_some(),
        "saved before the disk filled"
    );
    assert!(store.get(later.id).is_some(), "saved after it was freed");
    assert_eq!(store.len(), 2, "the refused results were not half-saved");
}

#[test]
fn a_store_that_cannot_be_repaired_on_a_full_disk_is_not_set_aside() {
    let disk = common::SmallDisk::mount(16);
    let path = disk.path().join("results.redb");
    {
        let store = Store::open(&path, 10, 1000).unwrap().store;
        store.insert(result(1, 2, 1.0), 1, 0).unwrap();
    }
    disk.fill();
    // Opening writes (tables of newer versions); refused, it must leave
    // the file be, not move it away as unreadable.
    match Store::open(&path, 10, 1000) {
        Ok(o) => assert!(o.warnings.is_empty(), "{:?}", o.warnings),
        Err(e) => assert!(!e.to_string().contains("corrupt"), "{e}"),
    }
    let aside: Vec<_> = std::fs::read_dir(disk.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert!(aside.is_empty(), "the store was set aside on a full disk");
    disk.free();
    let store = Store::open(&path, 10, 1000).unwrap().store;
    assert_eq!(store.len(), 1);
}
