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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::engine::Latent;

use super::guild::{GuildSettings, QUOTA_WINDOW_S};
use super::BotError;

/// A result: the images one job produced (their latents), numbered.
pub type ResultId = u64;

/// One image of a result: what buttons, `/edit` and `/undo` act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub id: ResultId,
    pub index: usize,
}

/// How a result was made; enough to show it and to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Origin {
    Imagine {
        seed: u64,
        count: usize,
    },
    Edit {
        instruction: String,
        strength: f64,
    },
    Variations {
        seed: u64,
    },
    /// A photo the user sent, turned into a latent (CLIP image feature ->
    /// mapper).
    Photo {
        filename: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: ResultId,
    /// The user who made it (and who alone may delete it).
    pub owner: u64,
    pub created_unix: u64,
    /// The `/imagine` prompt this line of images started from.
    pub prompt: String,
    pub origin: Origin,
    /// The image this one was made from (edits, variations).
    pub parent: Option<Ref>,
    #[serde(skip)]
    pub latents: Vec<Latent>,
}

impl Record {
    /// An `/imagine` of "a face" by `owner` with `n` latents filled with
    /// `v`, `v + 1`, ...: what the stores' tests insert.
    #[doc(hidden)]
    pub fn example(owner: u64, n: usize, v: f32) -> Record {
        Record {
            id: 0,
            owner,
            created_unix: 1,
            prompt: "a face".into(),
            origin: Origin::Imagine { seed: 3, count: n },
            parent: None,
            latents: (0..n)
                .map(|k| Latent {
                    styles: 2,
                    dim: 3,
                    data: vec![v + k as f32; 6],
                })
                .collect(),
        }
    }
}

const RESULTS: TableDefinition<u64, &[u8]> = TableDefinition::new("results");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Guild id -> its [`GuildSettings`] as JSON.
const GUILDS: TableDefinition<u64, &[u8]> = TableDefinition::new("guild_settings");
/// (guild id or 0 for DMs, user) -> (start of the quota window in unix
/// seconds, jobs charged in it).
const QUOTA: TableDefinition<(u64, u64), (u64, u32)> = TableDefinition::new("quota");

/// A charge taken (`Ok`) or refused (`Err`), with the window either way.
pub type Charged = Result<Usage, Usage>;

/// A member's quota window after a charge (or a refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used: u32,
    pub window_start: u64,
}

impl Usage {
    /// When the window ends and the quota is whole again.
    pub fn resets_at(&self) -> u64 {
        self.window_start + QUOTA_WINDOW_S
    }
}

pub struct Store {
    db: Database,
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

/// redb's error, boxed: the unboxed one is large, and every store call
/// returns it.
#[derive(Debug)]
struct DbError(Box<redb::Error>);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A user's undo history, written inside a larger transaction.
fn put_history(t: &redb::WriteTransaction, user: u64, hist: &[Ref]) -> Result<(), DbError> {
    let bytes = serde_json::to_vec(hist).expect("refs serialise");
    t.open_table(HISTORY)?.insert(user, bytes.as_slice())?;
    Ok(())
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> BotError {
    BotError::Store(format!("{}: {e}", path.display()))
}

/// What opening found, for the log: warnings (a corrupt file set aside,
/// unreadable records skipped) and notes (an interrupted creation cleared
/// away, which loses nothing).
pub struct Opened {
    pub store: Store,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// Test-only: the environment variable that makes [`Store::open`] stop for
/// good at one step of creating a store (`created`: the temporary file
/// exists, still empty; `initialised`: its tables are committed, it is not
/// in place yet), after printing [`PAUSE_MARKER`] and the step to stderr. A
/// test waits for that line and kills the process there, so a kill during
/// creation is driven by an event, not by timing. Not for production: a
/// process with it set never finishes starting.
pub const TEST_PAUSE_ENV: &str = "C2G_TEST_STORE_PAUSE";
/// What the paused process prints, followed by the step and the file.
pub const PAUSE_MARKER: &str = "test hook: store creation paused at";

fn test_pause(step: &str, file: &Path) {
    if std::env::var(TEST_PAUSE_ENV).is_ok_and(|v| v == step) {
        eprintln!("{PAUSE_MARKER} {step}: {}", file.display());
        loop {
            std::thread::park();
        }
    }
}

impl Store {
    /// Open the store, or create it if there is none.
    ///
    /// A new store is made under a temporary name (`.<name>.creating`) and
    /// moved into place only once its tables are committed and fsynced, so
    /// a process stopped while creating it (redb writes its header, with the
    /// magic number, last) leaves no half-made file at `path`: the next
    /// start finds the temporary file, removes it (nothing was ever stored
    /// in it) and starts again. A file at `path` is therefore always one
    /// that was complete once; if it is not a readable database it is
    /// renamed to `<name>.corrupt-<unix time>` and a fresh store is
    /// started, so one bad file never keeps the bot down.
    pub fn open(path: &Path, history_depth: usize, max_latents: usize) -> Result<Opened, BotError> {
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| db_err(path, e))?;
        }
        let creating = creating_path(path);
        if clear_interrupted(&creating, path)? {
            notes.push(format!(
                "an unfinished creation of the results store ({}, left by a process stopped \
                 while creating it; nothing had been stored in it) was removed",
                creating.display()
            ));
        }
        let opened = match std::fs::metadata(path) {
            // An empty file holds nothing: redb had not written a byte
            // (say, one made by hand, or by a version that created the
            // store in place). Create it properly.
            Ok(m) if m.len() == 0 => {
                std::fs::remove_file(path).map_err(|e| db_err(path, e))?;
                notes.push(format!(
                    "{} was empty and was created afresh",
                    path.display()
                ));
                create(path, &creating)
            }
            Ok(_) => open_existing(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path, &creating),
            Err(e) => return Err(db_err(path, e)),
        };
        let db = match opened {
            Ok(db) => db,
            Err(Unreadable::Fatal(e)) => return Err(e),
            Err(Unreadable::Corrupt(why)) => {
                let aside = set_aside(path)?;
                warnings.push(format!(
                    "the results store {} could not be read ({why}); it was moved to {} and a \
                     new, empty store was started (earlier images can no longer be edited)",
                    path.display(),
                    aside.display()
                ));
                create(path, &creating).map_err(|e| match e {
                    Unreadable::Fatal(e) => e,
                    Unreadable::Corrupt(why) => db_err(path, why),
                })?
            }
        };
        let store = Store {
            db,
            path: path.to_path_buf(),
            history_depth,
            max_latents,
            results: DashMap::new(),
            history: DashMap::new(),
            guilds: DashMap::new(),
            quota: DashMap::new(),
            order: Mutex::new(Order::default()),
        };
        store.load(&mut warnings)?;
        Ok(Opened {
            store,
            warnings,
            notes,
        })
    }

    fn load(&self, warnings: &mut Vec<String>) -> Result<(), BotError> {
        let e = |e: redb::Error| db_err(&self.path, e);
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let mut order = self.lock();
        let mut skipped = 0;
        let results = txn.open_table(RESULTS).map_err(|x| e(x.into()))?;
        for item in results.iter().map_err(|x| e(x.into()))? {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            match decode_record(v.value()) {
                Ok(r) if r.id == k.value() => {
                    order.by_id.insert(r.id, r.latents.len());
                    order.latents += r.latents.len();
                    self.results.insert(r.id, Arc::new(r));
                }
                _ => skipped += 1,
            }
        }
        // The JSON tables: a row that no longer parses is skipped, not fatal.
        let json_rows = |table, into: &mut dyn FnMut(u64, &[u8]) -> bool| {
            let t = txn.open_table(table).map_err(|x| e(x.into()))?;
            let mut bad = 0;
            for item in t.iter().map_err(|x| e(x.into()))? {
                let (k, v) = item.map_err(|x| e(x.into()))?;
                if !into(k.value(), v.value()) {
                    bad += 1;
                }
            }
            Ok::<_, BotError>(bad)
        };
        skipped += json_rows(HISTORY, &mut |k, v| {
            serde_json::from_slice::<Vec<Ref>>(v)
                .map(|h| self.history.insert(k, h))
                .is_ok()
        })?;
        skipped += json_rows(GUILDS, &mut |k, v| {
            serde_json::from_slice::<GuildSettings>(v)
                .map(|g| self.guilds.insert(k, g))
                .is_ok()
        })?;
        let quota = txn.open_table(QUOTA).map_err(|x| e(x.into()))?;
        for item in quota.iter().map_err(|x| e(x.into()))? {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            self.quota.insert(k.value(), v.value());
        }
        let meta = txn.open_table(META).map_err(|x| e(x.into()))?;
        let stored_next = meta
            .get("next_id")
            .map_err(|x| e(x.into()))?
            .map(|v| v.value())
            .unwrap_or(1);
        let after_last = order.by_id.keys().next_back().map_or(1, |k| k + 1);
        order.next_id = stored_next.max(after_last);
        if skipped > 0 {
            warnings.push(format!(
                "{skipped} unreadable entries in {} were skipped",
                self.path.display()
            ));
        }
        Ok(())
    }

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

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), DbError>,
    ) -> Result<(), BotError> {
        let run = || -> Result<(), DbError> {
            let txn = self.db.begin_write()?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        };
        run().map_err(|e| db_err(&self.path, e))
    }
}

fn init_tables(db: Database, path: &Path) -> Result<Database, BotError> {
    let run = || -> Result<(), DbError> {
        let txn = db.begin_write()?;
        txn.open_table(RESULTS)?;
        txn.open_table(HISTORY)?;
        txn.open_table(META)?;
        txn.open_table(GUILDS)?;
        txn.open_table(QUOTA)?;
        txn.commit()?;
        Ok(())
    };
    run().map_err(|e| db_err(path, e))?;
    Ok(db)
}

/// Why a store could not be opened: a file that is not a readable database
/// (set aside, and a new store started), or anything else (stop, and say).
enum Unreadable {
    Corrupt(String),
    Fatal(BotError),
}

fn in_use(path: &Path) -> BotError {
    BotError::Store(format!(
        "{} is in use by another process (another clip2gan bot?); stop it or set \
         bot.store_path to another file",
        path.display()
    ))
}

/// Where a new store is made before it is moved to `path`: hidden, next to
/// it (a rename within one directory is atomic), and always the same name,
/// so that the next start finds one a stopped process left behind.
fn creating_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    path.with_file_name(format!(".{name}.creating"))
}

/// Remove what a process stopped while creating the store left behind.
/// Returns whether there was such a file (not counting a second name of a
/// store already in place, see [`publish`]). A process creating the store
/// at this moment holds redb's lock on the file: then the store is in use.
fn clear_interrupted(creating: &Path, path: &Path) -> Result<bool, BotError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(creating)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(db_err(creating, e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock(2) on the descriptor `file` owns, open until the
        // end of this function (which also releases the lock).
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(in_use(path));
            }
            return Err(db_err(creating, e));
        }
    }
    #[cfg(unix)]
    let second_name = {
        use std::os::unix::fs::MetadataExt;
        file.metadata().map_err(|e| db_err(creating, e))?.nlink() > 1
    };
    #[cfg(not(unix))]
    let second_name = false;
    std::fs::remove_file(creating).map_err(|e| db_err(creating, e))?;
    drop(file);
    Ok(!second_name)
}

/// A readable store at `path` (made complete once, see [`Store::open`]).
fn open_existing(path: &Path) -> Result<Database, Unreadable> {
    match Database::open(path) {
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(Unreadable::Fatal(in_use(path))),
        Err(e) => Err(Unreadable::Corrupt(e.to_string())),
        // A store from an older version may lack a table added since.
        Ok(db) => init_tables(db, path).map_err(|e| Unreadable::Corrupt(e.to_string())),
    }
}

/// A new, empty store at `path`, made at `creating` and moved into place
/// once its tables are committed (redb fsyncs each commit), then the
/// directory fsynced: nothing is stored in it before its name is durable,
/// so a crash loses nothing that was ever acknowledged.
fn create(path: &Path, creating: &Path) -> Result<Database, Unreadable> {
    let fatal = |e: &dyn std::fmt::Display| Unreadable::Fatal(db_err(creating, e));
    // create_new: never take over a file another process is making now
    // (any left by a stopped one was cleared first).
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(creating)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Unreadable::Fatal(in_use(path)))
        }
        Err(e) => return Err(fatal(&e)),
    };
    test_pause("created", creating);
    let made = Database::builder()
        .create_file(file)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Unreadable::Fatal(in_use(path)),
            e => fatal(&e),
        })
        .and_then(|db| init_tables(db, creating).map_err(Unreadable::Fatal));
    let db = match made {
        Ok(db) => db,
        Err(e) => {
            let _ = std::fs::remove_file(creating);
            return Err(e);
        }
    };
    test_pause("initialised", creating);
    match publish(creating, path) {
        Ok(true) => Ok(db),
        // Another process put a store in place meanwhile: use that one.
        Ok(false) => {
            drop(db);
            open_existing(path)
        }
        Err(e) => {
            let _ = std::fs::remove_file(creating);
            Err(Unreadable::Fatal(db_err(
                path,
                format!("cannot put the new store in place: {e}"),
            )))
        }
    }
}

/// Give the store made at `creating` its name `path`, durably. `false`:
/// there is a store at `path` already (another process made one in the
/// meantime), left as it is.
///
/// A hard link, unlike a rename, never replaces a file already there. A
/// stop between the link and the removal leaves the store under both names;
/// the next start removes the second one.
fn publish(creating: &Path, path: &Path) -> std::io::Result<bool> {
    match std::fs::hard_link(creating, path) {
        Ok(()) => std::fs::remove_file(creating)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(creating)?;
            return Ok(false);
        }
        // A file system without hard links: a rename. It would replace a
        // store another process put in place in the instant since `open`
        // found none: only two bots started at once on one new store could
        // meet that.
        Err(_) => std::fs::rename(creating, path)?,
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

fn set_aside(path: &Path) -> Result<PathBuf, BotError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    let aside = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    std::fs::rename(path, &aside).map_err(|e| {
        BotError::Store(format!(
            "{} is unreadable and could not be moved aside ({e}); move or delete it",
            path.display()
        ))
    })?;
    Ok(aside)
}

/// On disk: `u32` length of a JSON header (the record without latents, plus
/// their shape), the header, then the latents as little-endian f32.
#[derive(Serialize, Deserialize)]
struct Header {
    record: Record,
    styles: usize,
    dim: usize,
    count: usize,
}

pub(crate) fn encode_record(r: &Record) -> Vec<u8> {
    let (styles, dim) = r.latents.first().map_or((0, 0), |l| (l.styles, l.dim));
    let header = serde_json::to_vec(&Header {
        record: r.clone(),
        styles,
        dim,
        count: r.latents.len(),
    })
    .expect("records serialise");
    let mut out = Vec::with_capacity(4 + header.len() + 4 * styles * dim * r.latents.len());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for l in &r.latents {
        for v in &l.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    let n = u32::from_le_bytes(
        bytes
            .get(..4)
            .ok_or("short record")?
            .try_into()
            .map_err(|_| "short record")?,
    ) as usize;
    let header: Header = serde_json::from_slice(bytes.get(4..4 + n).ok_or("short header")?)
        .map_err(|e| e.to_string())?;
    let body = &bytes[4 + n..];
    let per = header.styles * header.dim;
    if body.len() != 4 * per * header.count {
        return Err("latent data has the wrong length".into());
    }
    let mut rec = header.record;
    rec.latents = body
        .chunks_exact(4 * per.max(1))
        .take(header.count)
        .map(|c| Latent {
            styles: header.styles,
            dim: header.dim,
            data: c
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
        })
        .collect();
    Ok(rec)
}

#[cfg(test)]
mod tests {
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
