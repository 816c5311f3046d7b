//! Opening the store: an interrupted creation cleared, an empty file
//! created afresh, an unreadable one (or one redb panics on) set aside and
//! started over, then everything read into memory.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use redb::ReadableTable;

use super::db::{
    clear_interrupted, create, creating_path, db_err, open_existing, panic_text, set_aside,
    Unreadable, GUILDS, HISTORY, META, QUOTA, RESULTS,
};
use super::record::{decode_record, Ref};
use super::{Opened, Order, Store};
use crate::bot::guild::GuildSettings;
use crate::bot::BotError;

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
            Err(Unreadable::Corrupt(why)) => start_over(path, &creating, &why, &mut warnings)?,
        };
        let store = Store {
            db: Mutex::new(Some(db)),
            path: path.to_path_buf(),
            history_depth,
            max_latents,
            results: DashMap::new(),
            history: DashMap::new(),
            guilds: DashMap::new(),
            quota: DashMap::new(),
            order: Mutex::new(Order::default()),
        };
        // redb asserts on some damaged pages instead of returning an error;
        // met while reading everything in, the file is as unreadable as one
        // that failed to open: set aside, and a new store started.
        let mut store = store;
        match std::panic::catch_unwind(AssertUnwindSafe(|| store.load(&mut warnings))) {
            Ok(loaded) => loaded?,
            Err(p) => {
                let why = panic_text(&*p);
                drop(store.db.lock().unwrap_or_else(|e| e.into_inner()).take());
                let db = start_over(path, &creating, &why, &mut warnings)?;
                store = Store {
                    db: Mutex::new(Some(db)),
                    results: DashMap::new(),
                    history: DashMap::new(),
                    guilds: DashMap::new(),
                    quota: DashMap::new(),
                    order: Mutex::new(Order::default()),
                    ..store
                };
                store.load(&mut warnings)?;
            }
        }
        Ok(Opened {
            store,
            warnings,
            notes,
        })
    }

    fn load(&self, warnings: &mut Vec<String>) -> Result<(), BotError> {
        let e = |e: redb::Error| db_err(&self.path, e);
        let txn = {
            let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
            let db = db.as_ref().expect("a store being opened has its database");
            db.begin_read().map_err(|x| e(x.into()))?
        };
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
}

/// An unreadable store file set aside (with a warning that says where) and
/// a new, empty store created in its place.
fn start_over(
    path: &Path,
    creating: &Path,
    why: &dyn std::fmt::Display,
    warnings: &mut Vec<String>,
) -> Result<redb::Database, BotError> {
    let aside = set_aside(path)?;
    warnings.push(format!(
        "the results store {} could not be read ({why}); it was moved to {} and a \
         new, empty store was started (earlier images can no longer be edited)",
        path.display(),
        aside.display()
    ));
    create(path, creating).map_err(|e| match e {
        Unreadable::Fatal(e) => e,
        Unreadable::Corrupt(why) => db_err(path, why),
    })
}
