//! The store's file: its tables, redb's errors, and making the file
//! durably: a new store is created under a temporary name and moved into
//! place once complete, one a stopped process left behind is cleared away,
//! and an unreadable one is set aside.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

use super::record::Ref;
use crate::bot::BotError;

pub(super) const RESULTS: TableDefinition<u64, &[u8]> = TableDefinition::new("results");
pub(super) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Guild id -> its [`GuildSettings`] as JSON.
pub(super) const GUILDS: TableDefinition<u64, &[u8]> = TableDefinition::new("guild_settings");
/// (guild id or 0 for DMs, user) -> (start of the quota window in unix
/// seconds, jobs charged in it).
pub(super) const QUOTA: TableDefinition<(u64, u64), (u64, u32)> = TableDefinition::new("quota");

/// redb's error, boxed: the unboxed one is large, and every store call
/// returns it.
#[derive(Debug)]
pub(super) struct DbError(Box<redb::Error>);

impl DbError {
    /// The file could not be read or written (a full disk, an I/O error),
    /// as opposed to a problem with what is in it.
    pub(super) fn is_io(&self) -> bool {
        match &*self.0 {
            redb::Error::Io(e) => disk_failure(e),
            redb::Error::PreviousIo => true,
            _ => false,
        }
    }
}

/// Whether an I/O error is the disk's (full, failing) rather than redb
/// reporting content it cannot parse, which it also words as I/O errors
/// (invalid data, unexpected end of file: a damaged file).
fn disk_failure(e: &std::io::Error) -> bool {
    !matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
    )
}

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
pub(super) fn put_history(
    t: &redb::WriteTransaction,
    user: u64,
    hist: &[Ref],
) -> Result<(), DbError> {
    let bytes = serde_json::to_vec(hist).expect("refs serialise");
    t.open_table(HISTORY)?.insert(user, bytes.as_slice())?;
    Ok(())
}

/// A panic's message (redb's assertions on damaged files).
pub(super) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

pub(super) fn db_err(path: &Path, e: impl std::fmt::Display) -> BotError {
    BotError::Store(format!("{}: {e}", path.display()))
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

/// Every table made (a store from an older version may lack one). Failing
/// on I/O it is [`Unreadable::Fatal`]: a full disk says nothing about the
/// file, and setting it aside would lose every result in it.
fn init_tables(db: Database, path: &Path) -> Result<Database, Unreadable> {
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
    match run() {
        Ok(()) => Ok(db),
        Err(e) if e.is_io() => Err(Unreadable::Fatal(db_err(path, e))),
        Err(e) => Err(Unreadable::Corrupt(db_err(path, e).to_string())),
    }
}

/// Why a store could not be opened: a file that is not a readable database
/// (set aside, and a new store started), or anything else (stop, and say).
pub(super) enum Unreadable {
    Corrupt(String),
    Fatal(BotError),
}

pub(super) fn in_use(path: &Path) -> BotError {
    BotError::Store(format!(
        "{} is in use by another process (another clip2gan bot?); stop it or set \
         bot.store_path to another file",
        path.display()
    ))
}

/// Where a new store is made before it is moved to `path`: hidden, next to
/// it (a rename within one directory is atomic), and always the same name,
/// so that the next start finds one a stopped process left behind.
pub(super) fn creating_path(path: &Path) -> PathBuf {
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
pub(super) fn clear_interrupted(creating: &Path, path: &Path) -> Result<bool, BotError> {
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
pub(super) fn open_existing(path: &Path) -> Result<Database, Unreadable> {
    // redb asserts on some damaged headers (a file cut short, a page size
    // that disagrees) instead of returning an error; a panic while opening
    // means the same as an error: the file is not a readable store.
    let opened = catch_unwind(|| Database::open(path)).map_err(|p| {
        Unreadable::Corrupt(format!("redb could not read it ({})", panic_text(&*p)))
    })?;
    // Then every page against its checksum, once at start (a second or so
    // for the largest stores): redb also asserts on damaged pages met later,
    // in the middle of a write, which would fail every save of a bot that
    // started on such a file. A damaged file found here is set aside.
    let opened =
        opened.and_then(
            |mut db| match catch_unwind(AssertUnwindSafe(|| db.check_integrity())) {
                Ok(Ok(_)) => Ok(db),
                Ok(Err(e)) => Err(e),
                Err(p) => Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                    format!("its pages do not check out ({})", panic_text(&*p)),
                ))),
            },
        );
    match opened {
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(Unreadable::Fatal(in_use(path))),
        // A disk that fails (full, say, while redb repairs the file after a
        // crash) says nothing about the file: setting it aside would lose
        // every result in it.
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) if disk_failure(&e) => {
            Err(Unreadable::Fatal(db_err(path, e)))
        }
        Err(redb::DatabaseError::Storage(e @ redb::StorageError::PreviousIo)) => {
            Err(Unreadable::Fatal(db_err(path, e)))
        }
        Err(e) => Err(Unreadable::Corrupt(e.to_string())),
        // A store from an older version may lack a table added since.
        // redb asserts on some damaged pages that pass the check (met
        // writing the tables): the same as a failed check.
        Ok(db) => catch_unwind(AssertUnwindSafe(|| init_tables(db, path))).unwrap_or_else(|p| {
            Err(Unreadable::Corrupt(format!(
                "redb could not write it ({})",
                panic_text(&*p)
            )))
        }),
    }
}

/// A new, empty store at `path`, made at `creating` and moved into place
/// once its tables are committed (redb fsyncs each commit), then the
/// directory fsynced: nothing is stored in it before its name is durable,
/// so a crash loses nothing that was ever acknowledged.
pub(super) fn create(path: &Path, creating: &Path) -> Result<Database, Unreadable> {
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
        .and_then(|db| {
            init_tables(db, creating).map_err(|e| match e {
                Unreadable::Corrupt(why) => Unreadable::Fatal(db_err(creating, why)),
                fatal => fatal,
            })
        });
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

pub(super) fn set_aside(path: &Path) -> Result<PathBuf, BotError> {
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
