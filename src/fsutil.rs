//! File writes that never leave a half-written file behind: write a sibling
//! temporary file, flush it to disk, then rename it over the target (and
//! clear the temporary files of earlier writers that were killed).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let werr = |err| Error::Write {
        path: path.to_path_buf(),
        err,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(werr)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    remove_stale_partials(dir, &name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Ok(())
}

/// Remove what writes of `name` by processes that no longer run left
/// behind (a process killed between creating its temporary file and the
/// rename): nothing ever reads them, and a large file (a mapper) would
/// otherwise stay for good. A temporary file of a process still running
/// (another writer of the same file, or one whose pid was reused) is left.
fn remove_stale_partials(dir: &Path, name: &str) {
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".partial"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_exists(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(unix)]
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid, 0) };
    // EPERM: it exists, under another user.
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_exists(_pid: u32) -> bool {
    true
}

/// Fail early, before expensive work, when `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let probe = dir.join(format!(".clip2gan-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|err| Error::Write {
        path: path.to_path_buf(),
        err,
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_writers_partial_file_is_cleared_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        // pid 0x3fffffff is above any pid_max: no such process.
        let dead = dir.path().join(".m.safetensors.1073741823.partial");
        // pid 1 always runs: a writer that may still be writing.
        let alive = dir.path().join(".m.safetensors.1.partial");
        let other = dir.path().join(".other.1073741823.partial");
        for p in [&dead, &alive, &other] {
            std::fs::write(p, b"half").unwrap();
        }
        write_atomic(&path, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert!(!dead.exists(), "the dead writer's file is gone");
        assert!(alive.exists(), "a running writer's file is left");
        assert!(other.exists(), "another file's are not ours to clear");
    }
}
