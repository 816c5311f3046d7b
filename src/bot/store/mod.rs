//! Results and undo history per user, each server's `/settings` and each
//! member's daily quota: in memory (dashmap) for the handlers, and in an
//! embedded database on disk so that a restart keeps `/edit`, `/undo`, the
//! buttons of earlier messages, the settings and the quotas (a restart must
//! not hand out a fresh quota).
//!
//! Why redb: every write is one ACID transaction, fsynced on commit, and a
//! crash at any point leaves either the old or the new state (copy-on-write
//! pages with checksums), with no background threads and pure Rust. An
//! append-only log of our own would need the same care (torn tails,
//! checksums, atomic compaction) for no gain.
//!
//! The memory copy is loaded once at start; afterwards every change is
//! written to disk first and then applied in memory, so memory never holds
//! anything a restart would lose. The store is bounded by the number of
//! latents it holds; the oldest results go first.
//!
//! `record`: what is stored and its bytes; `db`: the file (tables, redb's
//! errors, creating, clearing and setting aside files); `open`: opening
//! (an unreadable file set aside and started over) and reading it into
//! memory; `save`: one transaction per change, and a disk that refuses
//! writes (the handle dropped, "could not be saved", saving resumed once
//! there is space); this file: the [`Store`] itself, its memory copy and
//! each change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use redb::{Database, TableDefinition};
use serde::Serialize;

use crate::engine::Latent;

use super::guild::{GuildSettings, QUOTA_WINDOW_S};
use super::BotError;

mod db;
mod open;
mod record;
mod save;

use db::{put_history, GUILDS, HISTORY, META, QUOTA, RESULTS};
pub use db::{PAUSE_MARKER, TEST_PAUSE_ENV};
pub(crate) use record::{decode_record, encode_record};
pub use record::{Charged, Origin, Record, Ref, ResultId, Usage};

pub struct Store {
    /// `None` after a write failed on I/O (a full disk): redb refuses every
    /// later transaction of a handle that saw an I/O error, so the handle
    /// is dropped and the next write opens the file again. Writes fail
    /// while the disk does ("could not be saved"), memory keeps serving what
    /// was saved, and once there is space again every write persists.
    db: Mutex<Option<Database>>,
    path: PathBuf,
    history_depth: usize,
    max_latents: usize,
    results: DashMap<ResultId, Arc<Record>>,
    history: DashMap<u64, Vec<Ref>>,
    guilds: DashMap<u64, GuildSettings>,
    quota: DashMap<(u64, u64), (u64, u32)>,
    /// Eviction order (ids grow with time) and the latent count; also the
    /// lock that serialises writers, so disk and memory change in one order.
    order: Mutex<Order>,
}

#[derive(Default)]
struct Order {
    by_id: BTreeMap<ResultId, usize>,
    latents: usize,
    next_id: ResultId,
}

/// What opening found, for the log: warnings (a corrupt file set aside,
/// unreadable records skipped) and notes (an interrupted creation cleared
/// away, which loses nothing).
pub struct Opened {
    pub store: Store,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Order> {
        // Poisoning means a panic between a disk write and the memory update
        // of the same change; the disk is the truth and memory at worst
        // misses that change, so keep going.
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: ResultId) -> Option<Arc<Record>> {
        self.results.get(&id).map(|r| r.clone())
    }

    /// The latent of one image, if its result is still stored.
    pub fn latent(&self, r: Ref) -> Option<(Arc<Record>, Latent)> {
        let rec = self.get(r.id)?;
        let l = rec.latents.get(r.index)?.clone();
        Some((rec, l))
    }

    /// The user's current image: the newest history entry still stored.
    pub fn current(&self, user: u64) -> Option<Ref> {
        let h = self.history.get(&user)?;
        h.iter().rev().find(|r| self.latent(**r).is_some()).copied()
    }

    /// The user's most recent images still stored, newest first, each once.
    pub fn recent(&self, user: u64, n: usize) -> Vec<Ref> {
        let Some(h) = self.history.get(&user) else {
            return Vec::new();
        };
        let mut out: Vec<Ref> = Vec::new();
        for r in h.iter().rev() {
            if out.len() == n {
                break;
            }
            if !out.contains(r) && self.latent(*r).is_some() {
                out.push(*r);
            }
        }
        out
    }

    pub fn history_len(&self, user: u64) -> usize {
        self.history.get(&user).map_or(0, |h| h.len())
    }

    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Store a new result (its id is assigned here) and make `current` (one
    /// of its images) the user's current image. Evicts the oldest results
    /// beyond `max_latents`.
    pub fn insert(
        &self,
        mut rec: Record,
        user: u64,
        current: usize,
    ) -> Result<Arc<Record>, BotError> {
        let mut order = self.lock();
        rec.id = order.next_id;
        let mut evict = Vec::new();
        let mut total = order.latents + rec.latents.len();
        for (&id, &n) in order.by_id.iter() {
            if total <= self.max_latents {
                break;
            }
            evict.push(id);
            total -= n;
        }
        let mut hist = self.history_of(user);
        hist.push(Ref {
            id: rec.id,
            index: current,
        });
        self.trim(&mut hist, &evict, Some(rec.id));
        let bytes = encode_record(&rec);
        self.write(|t| {
            let mut results = t.open_table(RESULTS)?;
            results.insert(rec.id, bytes.as_slice())?;
            for id in &evict {
                results.remove(*id)?;
            }
            drop(results);
            put_history(t, user, &hist)?;
            t.open_table(META)?.insert("next_id", rec.id + 1)?;
            Ok(())
        })?;
        order.next_id = rec.id + 1;
        for id in &evict {
            if let Some(n) = order.by_id.remove(id) {
                order.latents -= n;
            }
            self.results.remove(id);
        }
        order.by_id.insert(rec.id, rec.latents.len());
        order.latents += rec.latents.len();
        let rec = Arc::new(rec);
        self.results.insert(rec.id, rec.clone());
        self.history.insert(user, hist);
        Ok(rec)
    }

    /// A copy of the user's history to change and save back (empty for a
    /// new user); every writer starts from this.
    fn history_of(&self, user: u64) -> Vec<Ref> {
        self.history
            .get(&user)
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Make an existing image the user's current one (picking an image of a
    /// grid, or going back to a parent).
    pub fn push(&self, user: u64, r: Ref) -> Result<(), BotError> {
        let _order = self.lock();
        let mut hist = self.history_of(user);
        if hist.last() == Some(&r) {
            return Ok(());
        }
        hist.push(r);
        self.trim(&mut hist, &[], None);
        self.save_history(user, hist)
    }

    /// Undo: drop the user's current image; returns the one before it, now
    /// current, or `None` (nothing changed) when there is none.
    pub fn undo(&self, user: u64) -> Result<Option<Ref>, BotError> {
        let _order = self.lock();
        let mut hist = self.history_of(user);
        hist.retain(|r| self.results.contains_key(&r.id));
        if hist.len() < 2 {
            return Ok(None);
        }
        hist.pop();
        let now = *hist.last().expect("at least one left");
        self.save_history(user, hist)?;
        Ok(Some(now))
    }

    /// Forget a result (the Delete button): its latents and every history
    /// entry of its owner that points at it.
    pub fn delete(&self, id: ResultId) -> Result<(), BotError> {
        let mut order = self.lock();
        let Some(rec) = self.get(id) else {
            return Ok(());
        };
        let mut hist = self.history_of(rec.owner);
        hist.retain(|r| r.id != id);
        let owner = rec.owner;
        self.write(|t| {
            t.open_table(RESULTS)?.remove(id)?;
            put_history(t, owner, &hist)?;
            Ok(())
        })?;
        if let Some(n) = order.by_id.remove(&id) {
            order.latents -= n;
        }
        self.results.remove(&id);
        self.history.insert(owner, hist);
        Ok(())
    }

    /// Keep the newest `history_depth` entries that still point at stored
    /// results.
    fn trim(&self, hist: &mut Vec<Ref>, evicted: &[ResultId], new: Option<ResultId>) {
        hist.retain(|r| {
            Some(r.id) == new || (!evicted.contains(&r.id) && self.results.contains_key(&r.id))
        });
        if hist.len() > self.history_depth {
            let cut = hist.len() - self.history_depth;
            hist.drain(..cut);
        }
    }

    /// One row of a JSON table, on disk (memory is the caller's to update
    /// once this succeeded).
    fn put_json(
        &self,
        table: TableDefinition<u64, &[u8]>,
        key: u64,
        value: &impl Serialize,
    ) -> Result<(), BotError> {
        let bytes = serde_json::to_vec(value).expect("plain data serialises");
        self.write(|t| {
            t.open_table(table)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    fn save_history(&self, user: u64, hist: Vec<Ref>) -> Result<(), BotError> {
        self.put_json(HISTORY, user, &hist)?;
        self.history.insert(user, hist);
        Ok(())
    }

    /// A server's own settings (`None`: it follows the config).
    pub fn guild(&self, guild: u64) -> Option<GuildSettings> {
        self.guilds.get(&guild).map(|g| g.clone())
    }

    pub fn set_guild(&self, guild: u64, settings: GuildSettings) -> Result<(), BotError> {
        let _order = self.lock();
        self.put_json(GUILDS, guild, &settings)?;
        self.guilds.insert(guild, settings);
        Ok(())
    }

    /// Take one job from a member's (`(guild, user)`) daily quota at `now`
    /// (unix seconds). A
    /// window starts with the first job after the last one ended and lasts
    /// [`QUOTA_WINDOW_S`]. `Ok(Err(usage))`: nothing left (nothing changed).
    pub fn charge(&self, member: (u64, u64), now: u64, quota: u32) -> Result<Charged, BotError> {
        let _order = self.lock();
        let (start, used) = match self.quota.get(&member).map(|v| *v) {
            Some((start, used)) if now < start + QUOTA_WINDOW_S => (start, used),
            _ => (now, 0),
        };
        if used >= quota {
            return Ok(Err(Usage {
                used,
                window_start: start,
            }));
        }
        self.save_quota(member, (start, used + 1))?;
        Ok(Ok(Usage {
            used: used + 1,
            window_start: start,
        }))
    }

    /// Give back a charge whose job produced nothing (a failed download, an
    /// engine error), if its window is still the current one.
    pub fn refund(&self, guild: u64, user: u64, window_start: u64) -> Result<(), BotError> {
        let _order = self.lock();
        let key = (guild, user);
        match self.quota.get(&key).map(|v| *v) {
            Some((start, used)) if start == window_start && used > 0 => {
                self.save_quota(key, (start, used - 1))
            }
            _ => Ok(()),
        }
    }

    fn save_quota(&self, key: (u64, u64), value: (u64, u32)) -> Result<(), BotError> {
        self.write(|t| {
            t.open_table(QUOTA)?.insert(key, value)?;
            Ok(())
        })?;
        self.quota.insert(key, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::db::creating_path;
    use super::*;

    fn rec(owner: u64, n: usize, v: f32) -> Record {
        Record::example(owner, n, v)
    }

    #[test]
    fn history_undo_eviction_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Store::open(&path, 3, 5).unwrap().store;
        let a = s.insert(rec(1, 2, 0.0), 1, 0).unwrap();
        let b = s.insert(rec(1, 1, 10.0), 1, 0).unwrap();
        assert_eq!(s.current(1), Some(Ref { id: b.id, index: 0 }));
        assert_eq!(s.undo(1).unwrap(), Some(Ref { id: a.id, index: 0 }));
        assert_eq!(s.undo(1).unwrap(), None, "nothing before the first");
        s.push(1, Ref { id: a.id, index: 1 }).unwrap();
        assert_eq!(s.latent(s.current(1).unwrap()).unwrap().1.data[0], 1.0);
        // 2 + 1 + 3 latents > 5: the oldest result goes.
        let c = s.insert(rec(2, 3, 20.0), 2, 0).unwrap();
        assert!(s.get(a.id).is_none() && s.get(b.id).is_some());
        // User 1's history held only images of `a` (b was undone).
        assert_eq!(s.current(1), None);
        drop(s);

        let s = Store::open(&path, 3, 5).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let s = s.store;
        assert_eq!(s.len(), 2);
        assert_eq!(*s.get(c.id).unwrap(), *c);
        assert_eq!(s.current(2), Some(Ref { id: c.id, index: 0 }));
        let d = s.insert(rec(2, 1, 0.0), 2, 0).unwrap();
        assert!(d.id > c.id, "ids are never reused");
        s.delete(d.id).unwrap();
        assert_eq!(s.current(2), Some(Ref { id: c.id, index: 0 }));
        // History depth 3.
        for _ in 0..5 {
            s.push(2, Ref { id: c.id, index: 1 }).unwrap();
            s.push(2, Ref { id: c.id, index: 2 }).unwrap();
        }
        assert_eq!(s.history_len(2), 3);
    }

    #[test]
    fn settings_and_quota_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Store::open(&path, 3, 5).unwrap().store;
        let g = GuildSettings {
            daily_quota: Some(2),
            words: vec!["x".into()],
            ..Default::default()
        };
        s.set_guild(9, g.clone()).unwrap();
        let t0 = 1_000_000;
        assert_eq!(s.charge((9, 1), t0, 2).unwrap().unwrap().used, 1);
        let second = s.charge((9, 1), t0 + 10, 2).unwrap().unwrap();
        assert_eq!((second.used, second.window_start), (2, t0));
        let refused = s.charge((9, 1), t0 + 20, 2).unwrap().unwrap_err();
        assert_eq!(refused.resets_at(), t0 + QUOTA_WINDOW_S);
        assert!(s.charge((10, 1), t0, 2).unwrap().is_ok(), "per guild");
        drop(s);
        let s = Store::open(&path, 3, 5).unwrap().store;
        assert_eq!(s.guild(9), Some(g));
        assert!(s.charge((9, 1), t0 + 30, 2).unwrap().is_err(), "kept");
        s.refund(9, 1, t0).unwrap();
        assert!(s.charge((9, 1), t0 + 40, 2).unwrap().is_ok(), "refunded");
        let next = s.charge((9, 1), t0 + QUOTA_WINDOW_S, 2).unwrap().unwrap();
        assert_eq!((next.used, next.window_start), (1, t0 + QUOTA_WINDOW_S));
    }

    /// Names in `dir` containing `part`.
    fn files_with(dir: &Path, part: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(part))
            .collect()
    }

    /// What a kill during redb's first write left before stores were made
    /// under a temporary name (the 1.5 MB of zeros where the magic
    /// goes), now under that name: cleared with a note, no warning.
    #[test]
    fn an_interrupted_creation_is_cleared_without_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(creating_path(&path), vec![0u8; 1_572_864]).unwrap();
        let o = Store::open(&path, 3, 5).unwrap();
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert_eq!(o.notes.len(), 1, "{:?}", o.notes);
        assert!(o.notes[0].contains("unfinished creation"), "{:?}", o.notes);
        let a = o.store.insert(rec(1, 1, 0.0), 1, 0).unwrap();
        drop(o);
        assert!(files_with(dir.path(), "corrupt").is_empty());
        assert!(files_with(dir.path(), "creating").is_empty());
        let o = Store::open(&path, 3, 5).unwrap();
        assert!(o.warnings.is_empty() && o.notes.is_empty());
        assert_eq!(o.store.get(a.id).unwrap().latents, a.latents);
    }

    /// A stop between the hard link and the removal of the temporary name
    /// leaves the store under both: the second name goes quietly.
    #[test]
    fn a_second_name_of_a_store_in_place_is_removed_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let a = Store::open(&path, 3, 5)
            .unwrap()
            .store
            .insert(rec(1, 1, 0.0), 1, 0)
            .unwrap();
        std::fs::hard_link(&path, creating_path(&path)).unwrap();
        let o = Store::open(&path, 3, 5).unwrap();
        assert!(o.warnings.is_empty() && o.notes.is_empty());
        assert!(o.store.get(a.id).is_some());
        assert!(files_with(dir.path(), "creating").is_empty());
    }

    /// A store another process is creating (it holds redb's lock on the
    /// temporary file) is in use, not an interrupted creation to remove.
    #[test]
    fn a_store_being_created_elsewhere_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let held = Database::create(creating_path(&path)).unwrap();
        let e = Store::open(&path, 3, 5).err().expect("in use");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        assert!(creating_path(&path).exists() && !path.exists());
        drop(held);
    }

    #[test]
    fn an_empty_file_is_created_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(&path, b"").unwrap();
        let o = Store::open(&path, 3, 5).unwrap();
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert_eq!(o.notes.len(), 1, "{:?}", o.notes);
        drop(o);
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
        assert!(files_with(dir.path(), "corrupt").is_empty());
    }

    #[test]
    fn a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(&path, vec![0xAB; 10_000]).unwrap();
        let o = Store::open(&path, 3, 5).unwrap();
        assert_eq!(o.warnings.len(), 1, "{:?}", o.warnings);
        assert!(o.warnings[0].contains(".corrupt-"));
        assert!(o.store.is_empty());
        assert_eq!(files_with(dir.path(), ".corrupt-").len(), 1);
        assert!(files_with(dir.path(), "creating").is_empty());
    }
}
