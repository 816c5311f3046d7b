//! A fake Hugging Face hub on 127.0.0.1 for download tests. It speaks the
//! part of the protocol that hf-hub's blocking client uses, as the real hub
//! answers it:
//!
//! - `GET /{org}/{name}/resolve/{revision}/{file}`: with `Range: bytes=0-0`
//!   the metadata probe (`X-Repo-Commit`, `ETag`, `Content-Range`), with
//!   `Range: bytes=N-` the body from byte N (206), without a range the whole
//!   file (200). A revision is `main` or the commit. Regular files carry
//!   their git sha1 as `ETag`; LFS files (`*.safetensors`, `*.bin`) answer
//!   302 with `X-Linked-Etag` (their sha256) and `X-Linked-Size`, pointing
//!   at `/cdn/{sha256}` on the same server, which serves the bytes.
//! - Errors as the real hub sends them, with `X-Error-Code`: 404
//!   `EntryNotFound` (no such file), 404 `RevisionNotFound`, 401
//!   `RepositoryNotFound` (unknown repo, or a required token missing or
//!   wrong), 416 for a range past the end.
//!
//! Any other request is answered 500, printed, and recorded: the harness
//! panics on drop (and [`FakeHub::assert_expected`] fails) if there was one.
//! Failures on request: [`FakeHub::remove`] a file, [`FakeHub::drop_body`]
//! (headers with the full `Content-Length`, half the body, then the
//! connection is closed), [`FakeHub::require_token`].

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::Digest;

/// One request as the fake saw it. `Debug` does not print the token.
#[derive(Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    /// The status the fake answered.
    pub status: u16,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} range={:?} auth={} -> {}",
            self.method,
            self.path,
            self.range,
            if self.authorization.is_some() {
                "<set>"
            } else {
                "none"
            },
            self.status
        )
    }
}

impl Request {
    /// A body download, not the metadata probe (`Range: bytes=0-0`).
    pub fn is_body(&self) -> bool {
        self.method == "GET" && self.range.as_deref() != Some("bytes=0-0")
    }
}

struct File {
    bytes: Vec<u8>,
    sha256: String,
    git_sha1: String,
}

fn git_sha1(bytes: &[u8]) -> String {
    let mut g = sha1::Sha1::new();
    g.update(format!("blob {}\0", bytes.len()).as_bytes());
    g.update(bytes);
    hex(&g.finalize())
}

impl File {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            sha256: hex(&sha2::Sha256::digest(&bytes)),
            git_sha1: git_sha1(&bytes),
            bytes,
        }
    }
}

struct RepoData {
    commit: String,
    files: BTreeMap<String, File>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, RepoData>,
    removed: HashSet<String>,
    /// File name -> body downloads still to cut short.
    drops: HashMap<String, usize>,
    token: Option<String>,
    log: Vec<Request>,
    unexpected: Vec<String>,
}

pub struct FakeHub {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".bin")
}

impl FakeHub {
    /// Start a hub serving the files of `dir` (not recursive) as the repo
    /// `repo_id` at `main`. Its base URL is [`FakeHub::url`] (for HF_ENDPOINT).
    pub fn serve(repo_id: &str, dir: &Path) -> Self {
        let hub = Self::start();
        hub.add_repo(repo_id, dir);
        hub
    }

    /// A hub with no repos.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop, url) = (state.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (state, url) = (state.clone(), url.clone());
                    std::thread::spawn(move || serve_connection(conn, &state, &url));
                }
            })
        };
        Self {
            url,
            state,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serve the files of `dir` as `repo_id`; its commit is derived from
    /// the contents (40 hex digits, like a git commit).
    pub fn add_repo(&self, repo_id: &str, dir: &Path) {
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                let name = e.file_name().into_string().unwrap();
                files.insert(name, File::new(std::fs::read(e.path()).unwrap()));
            }
        }
        let mut c = sha1::Sha1::new();
        c.update(repo_id.as_bytes());
        for (name, f) in &files {
            c.update(name.as_bytes());
            c.update(f.sha256.as_bytes());
        }
        let commit = hex(&c.finalize());
        self.lock()
            .repos
            .insert(repo_id.to_string(), RepoData { commit, files });
    }

    pub fn commit(&self, repo_id: &str) -> String {
        self.lock().repos[repo_id].commit.clone()
    }

    /// The blob name the cache must use: sha256 for LFS files, else git sha1.
    pub fn etag(&self, repo_id: &str, file: &str) -> String {
        let s = self.lock();
        let f = &s.repos[repo_id].files[file];
        if is_lfs(file) {
            f.sha256.clone()
        } else {
            f.git_sha1.clone()
        }
    }

    /// The file as served.
    pub fn bytes(&self, repo_id: &str, file: &str) -> Vec<u8> {
        self.lock().repos[repo_id].files[file].bytes.clone()
    }

    /// Answer 404 EntryNotFound for `file` (in every repo) from now on.
    pub fn remove(&self, file: &str) {
        self.lock().removed.insert(file.to_string());
    }

    /// Cut the next `times` body downloads of `file` short: the headers
    /// announce the whole length, half of it is sent, the connection closes.
    pub fn drop_body(&self, file: &str, times: usize) {
        self.lock().drops.insert(file.to_string(), times);
    }

    /// Refuse (401) every resolve request without `Authorization: Bearer <token>`.
    pub fn require_token(&self, token: &str) {
        self.lock().token = Some(token.to_string());
    }

    /// The requests so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().log.clone()
    }

    /// The requests so far, and forget them.
    pub fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut self.lock().log)
    }

    /// Panic if a request was not part of the protocol.
    pub fn assert_expected(&self) {
        let u = self.lock().unexpected.clone();
        assert!(u.is_empty(), "the fake hub got unexpected requests: {u:#?}");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        if !std::thread::panicking() {
            self.assert_expected();
        }
    }
}

struct Parsed {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Parsed> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Parsed {
        method,
        path,
        headers,
    })
}

/// A reply: status, headers, body; `cut` sends only the first half of the
/// body (after headers announcing all of it) and closes the connection.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut: bool,
}

impl Reply {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: vec![],
            cut: false,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn error(status: u16, code: &str, message: &str) -> Self {
        let mut r = Self::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
            .header("Content-Type", "application/json");
        r.body = format!("{{\"error\":\"{message}\"}}").into_bytes();
        r
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Error",
    }
}

fn serve_connection(conn: TcpStream, state: &Mutex<State>, base: &str) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    while let Some(req) = read_request(&mut reader) {
        let reply = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let reply = route(&mut s, &req, base);
            s.log.push(Request {
                method: req.method.clone(),
                path: req.path.clone(),
                range: req.headers.get("range").cloned(),
                authorization: req.headers.get("authorization").cloned(),
                status: reply.status,
            });
            reply
        };
        let head_only = req.method == "HEAD";
        let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        for (k, v) in &reply.headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += &format!("Content-Length: {}\r\n\r\n", reply.body.len());
        let mut bytes = head.into_bytes();
        if !head_only {
            let n = if reply.cut {
                reply.body.len() / 2
            } else {
                reply.body.len()
            };
            bytes.extend_from_slice(&reply.body[..n]);
        }
        if out.write_all(&bytes).and_then(|_| out.flush()).is_err() || reply.cut {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        if req
            .headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

/// `bytes=a-` or `bytes=a-b` over `len` bytes: Ok(range), or Err(()) when
/// the range starts past the end (416).
fn parse_range(range: Option<&String>, len: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = range?.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: usize = a.parse().ok()?;
    if a >= len {
        return Some(Err(()));
    }
    let b = if b.is_empty() {
        len - 1
    } else {
        b.parse::<usize>().ok()?.min(len - 1)
    };
    Some(Ok((a, b)))
}

/// The bytes of `data` the request's range asks for.
fn body_reply(req: &Parsed, data: &[u8], cut: bool) -> Reply {
    let mut r = match parse_range(req.headers.get("range"), data.len()) {
        None => {
            let mut r = Reply::new(200);
            r.body = data.to_vec();
            r
        }
        Some(Err(())) => {
            return Reply::new(416).header("Content-Range", format!("bytes */{}", data.len()))
        }
        Some(Ok((a, b))) => {
            let mut r =
                Reply::new(206).header("Content-Range", format!("bytes {a}-{b}/{}", data.len()));
            r.body = data[a..=b].to_vec();
            r
        }
    };
    r.cut = cut;
    r.header("Accept-Ranges", "bytes")
}

fn unexpected(s: &mut State, req: &Parsed) -> Reply {
    let what = format!("{} {}", req.method, req.path);
    eprintln!("fake hub: unexpected request {what}");
    s.unexpected.push(what);
    Reply::error(500, "Unexpected", "the fake hub does not serve this")
}

/// Whether this request is a body download to cut short (and count it).
fn take_drop(s: &mut State, req: &Parsed, file: &str) -> bool {
    let is_body =
        req.method == "GET" && req.headers.get("range").map(String::as_str) != Some("bytes=0-0");
    match s.drops.get_mut(file) {
        Some(n) if is_body && *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

fn route(s: &mut State, req: &Parsed, base: &str) -> Reply {
    if req.method != "GET" && req.method != "HEAD" {
        return unexpected(s, req);
    }
    let path = req.path.split('?').next().unwrap_or_default().to_string();
    // The CDN that LFS files are redirected to.
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let found = s.repos.values().find_map(|r| {
            r.files
                .iter()
                .find(|(n, f)| f.sha256 == sha && is_lfs(n))
                .map(|(n, f)| (n.clone(), f.bytes.clone()))
        });
        let Some((name, bytes)) = found else {
            return unexpected(s, req);
        };
        let cut = take_drop(s, req, &name);
        return body_reply(req, &bytes, cut);
    }
    // /{org}/{name}/resolve/{revision}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() != 5 || parts[2] != "resolve" {
        return unexpected(s, req);
    }
    let repo_id = format!("{}/{}", parts[0], parts[1]);
    let revision = parts[3].replace("%2F", "/");
    let file = parts[4].to_string();
    if let Some(token) = &s.token {
        let want = format!("Bearer {token}");
        if req.headers.get("authorization") != Some(&want) {
            return Reply::error(401, "RepositoryNotFound", "Repository not found");
        }
    }
    let Some(repo) = s.repos.get(&repo_id) else {
        return Reply::error(401, "RepositoryNotFound", "Repository not found");
    };
    let commit = repo.commit.clone();
    if revision != "main" && revision != commit {
        return Reply::error(404, "RevisionNotFound", "Invalid rev id");
    }
    let entry = repo
        .files
        .get(&file)
        .filter(|_| !s.removed.contains(&file))
        .map(|f| (f.bytes.clone(), f.sha256.clone(), f.git_sha1.clone()));
    let Some((bytes, sha256, git_oid)) = entry else {
        return Reply::error(404, "EntryNotFound", "Entry not found")
            .header("X-Repo-Commit", commit);
    };
    if is_lfs(&file) {
        // The ETag of an LFS file is its pointer's git sha1; clients use
        // X-Linked-Etag, the content's sha256.
        let pointer = format!("oid sha256:{sha256}\nsize {}\n", bytes.len());
        return Reply::new(302)
            .header("Location", format!("{base}/cdn/{sha256}"))
            .header("X-Repo-Commit", commit)
            .header("X-Linked-Etag", format!("\"{sha256}\""))
            .header("X-Linked-Size", bytes.len().to_string())
            .header("ETag", format!("\"{}\"", git_sha1(pointer.as_bytes())));
    }
    let cut = take_drop(s, req, &file);
    body_reply(req, &bytes, cut)
        .header("X-Repo-Commit", commit)
        .header("ETag", format!("\"{git_oid}\""))
}
