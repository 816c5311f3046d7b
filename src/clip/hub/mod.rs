//! Where CLIP weights come from: a local directory in transformers layout,
//! or a repo on the Hugging Face hub, downloaded once into the hub cache.
//!
//! The hub side behaves like the Python client (`huggingface_hub`), so that
//! a user's setup carries over unchanged:
//! - `HF_ENDPOINT`: another hub or a mirror (its base URL);
//! - the cache: `clip.cache_dir` when the user sets it, else `HF_HUB_CACHE`,
//!   else `$HF_HOME/hub` (`HF_HOME` defaults to
//!   `$XDG_CACHE_HOME/huggingface`, i.e. `~/.cache/huggingface`), in the
//!   same layout (`models--org--name/{blobs,snapshots,refs}`), so a download
//!   made from Python is reused and the other way round;
//! - `HF_TOKEN` (else the token file, `HF_TOKEN_PATH` or `$HF_HOME/token`),
//!   sent as `Authorization: Bearer`, never logged or shown;
//! - `HF_HUB_OFFLINE=1` (or `clip.offline`): the cache only.
//!
//! A file already in the cache is used without asking the hub. Downloads are
//! `hf-hub`'s: the body goes to `blobs/<etag>.part` (which the next run
//! resumes with a range request) and is renamed to `blobs/<etag>` only once
//! complete, and only then linked from the snapshot. Each fresh download is
//! also checked against its etag (git's sha1, or sha256 for LFS files): a
//! file that was cut short, or resumed onto the wrong bytes, is removed
//! instead of being loaded as the model.
//!
//! `env` reads the hub settings from the environment ([`HubEnv`]); this
//! file resolves a model to files: the local directory, the cache, the
//! download and its check, and the messages when a file cannot be had.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};
use sha2::Digest;

use crate::error::{Error, Result};

mod env;
pub use env::HubEnv;

/// The files of one checkpoint.
#[derive(Debug, Clone)]
pub struct ClipFiles {
    pub config: PathBuf,
    /// `model.safetensors` or `pytorch_model.bin`.
    pub weights: PathBuf,
    pub preprocessor: Option<PathBuf>,
}

/// The `[clip]` section: which checkpoint, from where.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipConfig {
    /// A local directory in transformers layout, or a Hugging Face repo id.
    pub model: String,
    /// Hub revision (branch, tag or commit) when `model` is a repo id.
    pub revision: String,
    /// Hub download cache, relative to `models_dir` unless absolute. Unset:
    /// the Python client's (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`), so that its downloads are shared.
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network; use the cache only (also: HF_HUB_OFFLINE=1).
    pub offline: bool,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            model: "openai/clip-vit-base-patch32".into(),
            revision: "main".into(),
            cache_dir: None,
            offline: false,
        }
    }
}

impl ClipConfig {
    /// Locate (and download if needed) the configured checkpoint; a
    /// relative `cache_dir` is taken inside `models_dir`.
    pub fn files(&self, models_dir: &Path) -> Result<ClipFiles> {
        resolve(
            &self.model,
            &self.revision,
            self.cache_dir
                .as_ref()
                .map(|d| models_dir.join(d))
                .as_deref(),
            self.offline,
        )
    }
}

const CONFIG: &str = "config.json";
const SAFETENSORS: &str = "model.safetensors";
const PTH: &str = "pytorch_model.bin";
const PREPROCESSOR: &str = "preprocessor_config.json";
const WEIGHT_FILES: [&str; 2] = [SAFETENSORS, PTH];

/// Files in a local directory.
pub fn from_dir(dir: &Path) -> Result<ClipFiles> {
    let config = dir.join(CONFIG);
    let weights = WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists());
    match (config.exists(), weights) {
        (true, Some(weights)) => Ok(ClipFiles {
            config,
            weights,
            preprocessor: Some(dir.join(PREPROCESSOR)).filter(|p| p.exists()),
        }),
        _ => Err(Error::MissingWeights {
            path: dir.to_path_buf(),
            hint:
                "A CLIP directory needs config.json and model.safetensors (or pytorch_model.bin), \
                   as on the checkpoint's Hugging Face page."
                    .into(),
        }),
    }
}

/// Resolve `model` (a directory, or a hub repo id such as
/// `openai/clip-vit-base-patch32`) to files, downloading if allowed.
/// `cache_dir` is the user's explicit `clip.cache_dir`; without it the
/// cache is the Python client's (see [`HubEnv`]).
pub fn resolve(
    model: &str,
    revision: &str,
    cache_dir: Option<&Path>,
    offline: bool,
) -> Result<ClipFiles> {
    let as_dir = Path::new(model);
    if as_dir.is_dir() {
        return from_dir(as_dir);
    }
    let env = HubEnv::from_env(cache_dir.map(Path::to_path_buf), offline);
    resolve_hub(model, revision, &env)
}

/// [`resolve`] for a hub repo id with explicit settings.
pub fn resolve_hub(model: &str, revision: &str, env: &HubEnv) -> Result<ClipFiles> {
    let is_repo_id = model
        .split_once('/')
        .is_some_and(|(org, name)| !org.is_empty() && !name.is_empty() && !name.contains('/'))
        && !model.starts_with('.')
        && !model.starts_with('~');
    if !is_repo_id {
        return Err(Error::MissingWeights {
            path: PathBuf::from(model),
            hint: format!(
                "clip.model = {model:?} is neither an existing directory nor a hub repo id \
                 like openai/clip-vit-base-patch32"
            ),
        });
    }
    let hub = Hub {
        model,
        revision,
        env,
        cache: RepoCache {
            dir: env
                .cache_dir
                .join(Repo::model(model.to_string()).folder_name()),
            revision: revision.to_string(),
        },
    };
    if env.offline {
        hub.offline()
    } else {
        hub.online()
    }
}

/// What the cache knows about one file at the configured revision.
enum Cached {
    Found(PathBuf),
    /// The hub said it does not exist (`.no_exist/<commit>/<file>`).
    Absent,
    Unknown,
}

/// One repo in the cache, read as `huggingface_hub.try_to_load_from_cache` does.
struct RepoCache {
    dir: PathBuf,
    revision: String,
}

impl RepoCache {
    /// `refs/<revision>` holds the commit of a branch or tag; a commit
    /// names its snapshot directly (Python writes no ref for it).
    fn commit(&self) -> String {
        match std::fs::read_to_string(self.dir.join("refs").join(&self.revision)) {
            Ok(c) => c.trim().to_string(),
            Err(_) => self.revision.clone(),
        }
    }

    fn get(&self, file: &str) -> Cached {
        let commit = self.commit();
        if self
            .dir
            .join(".no_exist")
            .join(&commit)
            .join(file)
            .is_file()
        {
            return Cached::Absent;
        }
        let p = self.dir.join("snapshots").join(&commit).join(file);
        if p.is_file() {
            Cached::Found(p)
        } else {
            Cached::Unknown
        }
    }

    /// Remember that `file` does not exist at `commit`, as Python does, so
    /// that later runs need not ask again. Best effort.
    fn mark_absent(&self, commit: Option<&str>, file: &str) {
        if let Some(commit) = commit {
            let dir = self.dir.join(".no_exist").join(commit);
            if std::fs::create_dir_all(&dir).is_ok() {
                let _ = std::fs::File::create(dir.join(file));
            }
        }
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    /// Snapshot links to `file` whose blob is gone (deleted by hand, or
    /// removed as corrupt) would make hf-hub's link step fail.
    fn remove_dangling(&self, file: &str) {
        let Ok(snapshots) = std::fs::read_dir(self.dir.join("snapshots")) else {
            return;
        };
        for s in snapshots.flatten() {
            let link = s.path().join(file);
            if link.symlink_metadata().is_ok() && !link.exists() {
                let _ = std::fs::remove_file(&link);
            }
        }
    }

    /// Drop partial downloads that cannot be resumed.
    fn discard_partials(&self) {
        let Ok(blobs) = std::fs::read_dir(self.blobs()) else {
            return;
        };
        for b in blobs.flatten() {
            if b.path().extension().is_some_and(|e| e == "part") {
                let _ = std::fs::remove_file(b.path());
            }
        }
    }
}

/// The commit a snapshot path belongs to (`snapshots/<commit>/<file>`).
fn snapshot_commit(path: &Path) -> Option<String> {
    Some(path.parent()?.file_name()?.to_str()?.to_string())
}

/// Why a download failed, sorted by what the user can do about it.
#[derive(Debug)]
enum Failure {
    /// 404, with the hub's `X-Error-Code` (EntryNotFound, RevisionNotFound, ...).
    NotFound(Option<String>),
    /// 401 or 403: no such repo, or private or gated.
    Denied(u16, Option<String>),
    Status(u16),
    Unreachable(String),
    Dropped(String),
    Disk(String),
    NotAHub(String),
    Busy(PathBuf),
    Corrupt(String),
    Other(String),
}

impl Failure {
    /// The file is not in the repo (at this revision).
    fn is_absent_file(&self) -> bool {
        matches!(self, Failure::NotFound(code) if code.as_deref().is_none_or(|c| c == "EntryNotFound"))
    }
}

fn classify(e: ApiError) -> Failure {
    use std::io::ErrorKind as K;
    match e {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(status, resp) => {
                let code = resp.header("x-error-code").map(str::to_string);
                match status {
                    404 => Failure::NotFound(code),
                    401 | 403 => Failure::Denied(status, code),
                    _ => Failure::Status(status),
                }
            }
            ureq::Error::Transport(t) => Failure::Unreachable(t.to_string()),
        },
        ApiError::IoError(e) => match e.kind() {
            K::UnexpectedEof
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::BrokenPipe
            | K::TimedOut
            | K::Interrupted => Failure::Dropped(e.to_string()),
            _ => Failure::Disk(e.to_string()),
        },
        ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => {
            Failure::NotAHub(format!("header {h}"))
        }
        ApiError::ParseIntError(_) => Failure::NotAHub("header content-range".into()),
        ApiError::LockAcquisition(p) => Failure::Busy(p),
        ApiError::TooManyRetries(e) => classify(*e),
        other => Failure::Other(other.to_string()),
    }
}

/// A partial download that a range request cannot complete: larger than
/// the file (hf-hub's InvalidResume) or already whole (416).
fn is_stale_partial(e: &ApiError) -> bool {
    match e {
        ApiError::InvalidResume => true,
        ApiError::RequestError(e) => matches!(**e, ureq::Error::Status(416, _)),
        _ => false,
    }
}

fn hash_file(path: &Path, mut update: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Check a fresh download against its blob name, the hub's etag: sha256 of
/// the content for LFS files, git's blob sha1 for the others. A blob named
/// otherwise (a server with other etags) is not checked. On a mismatch the
/// blob and its snapshot link are removed.
fn verify(link: &Path) -> std::result::Result<(), Failure> {
    let blob = std::fs::canonicalize(link).map_err(|e| Failure::Disk(e.to_string()))?;
    let name = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let is_hex =
        |n: usize| name.len() == n && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let disk = |e: std::io::Error| Failure::Disk(e.to_string());
    let (kind, actual) = if is_hex(64) {
        let mut h = sha2::Sha256::new();
        hash_file(&blob, |b| h.update(b)).map_err(disk)?;
        ("sha256", hex(&h.finalize()))
    } else if is_hex(40) {
        let len = std::fs::metadata(&blob).map_err(disk)?.len();
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        hash_file(&blob, |b| h.update(b)).map_err(disk)?;
        ("git sha1", hex(&h.finalize()))
    } else {
        return Ok(());
    };
    if actual == name {
        return Ok(());
    }
    let _ = std::fs::remove_file(&blob);
    let _ = std::fs::remove_file(link);
    Err(Failure::Corrupt(format!(
        "{kind} {actual}, expected {name}"
    )))
}

struct Hub<'a> {
    model: &'a str,
    revision: &'a str,
    env: &'a HubEnv,
    cache: RepoCache,
}

impl Hub<'_> {
    /// What to do by hand, whatever went wrong.
    fn manual(&self) -> String {
        format!(
            "To set it up by hand: download {CONFIG}, {SAFETENSORS} and {PREPROCESSOR} from the \
             Hugging Face repo {} (revision {}) into a directory and set clip.model to that \
             directory (or CLIP2GAN_CLIP__MODEL=/path/to/dir).",
            self.model, self.revision
        )
    }

    fn offline(&self) -> Result<ClipFiles> {
        let found = |f: &str| match self.cache.get(f) {
            Cached::Found(p) => Some(p),
            _ => None,
        };
        let config = found(CONFIG);
        let weights = WEIGHT_FILES.iter().find_map(|f| found(f));
        match (config, weights) {
            (Some(config), Some(weights)) => Ok(ClipFiles {
                config,
                weights,
                preprocessor: found(PREPROCESSOR),
            }),
            (config, weights) => {
                let mut missing = vec![];
                if config.is_none() {
                    missing.push(CONFIG);
                }
                if weights.is_none() {
                    missing.push(SAFETENSORS);
                }
                Err(Error::MissingWeights {
                    path: self.cache.dir.clone(),
                    hint: format!(
                        "Offline mode is on (HF_HUB_OFFLINE or clip.offline) and CLIP {} \
                         (revision {}) is not in the hub cache {}: {} missing. Run once with \
                         the network to download it, or point HF_HUB_CACHE at a cache that has \
                         it. {}",
                        self.model,
                        self.revision,
                        self.env.cache_dir.display(),
                        missing.join(" and "),
                        self.manual()
                    ),
                })
            }
        }
    }

    fn online(&self) -> Result<ClipFiles> {
        let api = self.env.api().map_err(|e| {
            Error::Fetch(format!(
                "cannot set up the hub client: {e}.\n  {}",
                self.manual()
            ))
        })?;
        let repo = api.repo(Repo::with_revision(
            self.model.to_string(),
            RepoType::Model,
            self.revision.to_string(),
        ));
        let config = match self.cache.get(CONFIG) {
            Cached::Found(p) => p,
            _ => self
                .download(&repo, CONFIG)
                .map_err(|f| self.error(CONFIG, f))?,
        };
        let commit = snapshot_commit(&config);
        let weights = match (self.cache.get(SAFETENSORS), self.cache.get(PTH)) {
            (Cached::Found(p), _) | (_, Cached::Found(p)) => p,
            (st, _) => {
                let st = match st {
                    Cached::Absent => Err(Failure::NotFound(None)),
                    _ => self.download(&repo, SAFETENSORS),
                };
                match st {
                    Ok(p) => p,
                    Err(f) if f.is_absent_file() => {
                        self.cache.mark_absent(commit.as_deref(), SAFETENSORS);
                        self.download(&repo, PTH).map_err(|f| {
                            if f.is_absent_file() {
                                Error::Fetch(format!(
                                    "{} has neither {SAFETENSORS} nor {PTH} at revision {}: \
                                     not a CLIP checkpoint in transformers layout? Check \
                                     clip.model and clip.revision.\n  {}",
                                    self.model,
                                    self.revision,
                                    self.manual()
                                ))
                            } else {
                                self.error(PTH, f)
                            }
                        })?
                    }
                    Err(f) => return Err(self.error(SAFETENSORS, f)),
                }
            }
        };
        let preprocessor = match self.cache.get(PREPROCESSOR) {
            Cached::Found(p) => Some(p),
            Cached::Absent => None,
            Cached::Unknown => match self.download(&repo, PREPROCESSOR) {
                Ok(p) => Some(p),
                Err(f) if f.is_absent_file() => {
                    self.cache.mark_absent(commit.as_deref(), PREPROCESSOR);
                    None
                }
                Err(f) => return Err(self.error(PREPROCESSOR, f)),
            },
        };
        Ok(ClipFiles {
            config,
            weights,
            preprocessor,
        })
    }

    fn download(&self, repo: &ApiRepo, file: &str) -> std::result::Result<PathBuf, Failure> {
        self.cache.remove_dangling(file);
        tracing::info!(
            "downloading {file} of {} (revision {}) from {} into {}",
            self.model,
            self.revision,
            self.env.hub_name(),
            self.env.cache_dir.display()
        );
        let got = match repo.download(file) {
            Err(e) if is_stale_partial(&e) => {
                self.cache.discard_partials();
                repo.download(file)
            }
            got => got,
        };
        let path = got.map_err(classify)?;
        verify(&path)?;
        Ok(path)
    }

    fn error(&self, file: &str, f: Failure) -> Error {
        let (m, r, hub) = (self.model, self.revision, self.env.hub_name());
        let what = match f {
            Failure::NotFound(code) => match code.as_deref() {
                Some("RevisionNotFound") => format!(
                    "revision {r:?} does not exist in {m}: clip.revision must be a branch, tag \
                     or commit of the repo (usually \"main\")."
                ),
                Some("RepositoryNotFound") => format!(
                    "{hub} has no repo {m}: check clip.model (a hub repo id, or the path of an \
                     existing directory)."
                ),
                Some("EntryNotFound") | None => format!(
                    "{m} has no {file} at revision {r} ({hub} answered 404): not a CLIP \
                     checkpoint in transformers layout, or a wrong revision? Check clip.model \
                     and clip.revision."
                ),
                Some(other) => format!("{hub} answered 404 ({other}) for {file} of {m}."),
            },
            Failure::Denied(status, code) => {
                let code = code.map(|c| format!(", {c}")).unwrap_or_default();
                let token = match self.env.token_source() {
                    None => "No token was sent: for a private or gated repo, accept its terms on \
                             the hub, then set HF_TOKEN (or log in with `hf auth login`, which \
                             writes $HF_HOME/token)."
                        .to_string(),
                    Some(source) => format!(
                        "A token was sent (from {source}): check that it is valid and has \
                         access to {m}."
                    ),
                };
                format!(
                    "{hub} refused {m} (HTTP {status}{code}): the repo does not exist, or it is \
                     private or gated. Check clip.model (a hub repo id, or the path of an \
                     existing directory). {token}"
                )
            }
            Failure::Status(status) => format!(
                "{hub} answered HTTP {status} for {file} of {m}; try again later, or use a \
                 mirror (HF_ENDPOINT)."
            ),
            Failure::Unreachable(e) => format!(
                "cannot reach {hub} ({e}). Check the network or proxy (HTTPS_PROXY), set \
                 HF_ENDPOINT to a mirror, or use a cache that has the model with HF_HUB_OFFLINE=1."
            ),
            Failure::Dropped(e) => format!(
                "the connection dropped while downloading {file} of {m} ({e}). What arrived is \
                 kept as a .part file in {} and the next run resumes from it: run the command \
                 again.",
                self.cache.blobs().display()
            ),
            Failure::Disk(e) => format!(
                "cannot write {file} into the hub cache {} ({e}): free some space, or point \
                 HF_HUB_CACHE (or clip.cache_dir) at a writable directory.",
                self.env.cache_dir.display()
            ),
            Failure::NotAHub(what) => format!(
                "{hub} does not answer like a Hugging Face hub ({what} missing or invalid in its \
                 reply for {file}): check HF_ENDPOINT."
            ),
            Failure::Busy(lock) => format!(
                "another process is downloading {file} of {m} into the cache (lock {}): let it \
                 finish, then run again.",
                lock.display()
            ),
            Failure::Corrupt(detail) => format!(
                "the download of {file} of {m} does not match its checksum ({detail}), so it \
                 was removed from the cache: run the command again."
            ),
            Failure::Other(e) => format!("downloading {file} of {m} failed: {e}."),
        };
        Error::Fetch(format!("{what}\n  {}", self.manual()))
    }
}

#[cfg(test)]
mod tests {
    use super::env::tests::env;
    use super::*;

    #[test]
    fn repo_ids_and_paths() {
        let e = env(&[("HF_HUB_OFFLINE", "1")], Some("/nonexistent-cache"));
        for bad in ["noslash", "./a/b", "a/b/c", "/abs/path", "~/x", "/x"] {
            let err = resolve_hub(bad, "main", &e).unwrap_err().to_string();
            assert!(
                err.contains("neither an existing directory nor a hub repo id"),
                "{bad}: {err}"
            );
        }
        let err = resolve_hub("org/name", "main", &e).unwrap_err().to_string();
        assert!(err.contains("Offline mode is on"), "{err}");
    }
}
