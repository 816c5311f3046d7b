//! Saving a change: one redb transaction per change, and what a disk that
//! refuses writes (full, failing) or a damaged file does to the handle.

use std::panic::AssertUnwindSafe;

use redb::Database;

use super::db::{db_err, open_existing, panic_text, DbError, Unreadable};
use super::Store;
use crate::bot::BotError;

impl Store {
    pub(super) fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), DbError>,
    ) -> Result<(), BotError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if db.is_none() {
            let again = open_existing(&self.path).map_err(|e| match e {
                Unreadable::Fatal(e) => e,
                Unreadable::Corrupt(why) => db_err(&self.path, why),
            });
            *db = Some(again.map_err(|e| self.not_saved(e))?);
        }
        let run = |d: &Database| -> Result<(), DbError> {
            let txn = d.begin_write()?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        };
        let d = db.as_ref().expect("opened above");
        // redb asserts on damaged pages instead of returning an error; the
        // handle is dropped, and opening the file again checks every page.
        match std::panic::catch_unwind(AssertUnwindSafe(|| run(d))) {
            Ok(Err(e)) if e.is_io() => {
                *db = None;
                Err(self.not_saved(db_err(&self.path, e)))
            }
            Ok(r) => r.map_err(|e| db_err(&self.path, e)),
            Err(p) => {
                *db = None;
                Err(db_err(
                    &self.path,
                    format!(
                        "the file is damaged ({}); restart the bot to set it aside and \
                         start a new store",
                        panic_text(&*p)
                    ),
                ))
            }
        }
    }

    /// An I/O failure said as such, with what to do.
    fn not_saved(&self, e: BotError) -> BotError {
        BotError::Store(format!(
            "{e} (the disk refused the write: is it full? Results keep being served from \
             memory; saving resumes by itself once there is space)"
        ))
    }
}
