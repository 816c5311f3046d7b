//! A fake Discord on 127.0.0.1 for the bot's end-to-end tests: the HTTP API
//! routes the bot uses (under `/api/v10`) and a gateway websocket that
//! speaks Hello / Identify / READY / Resume / heartbeats and dispatches
//! interactions. It records every call, and can be told to fail edits
//! (5xx, 429), to drop the gateway connection or to refuse new ones (an
//! unreachable gateway). Every request body is
//! checked against Discord's OpenAPI schema ([`schema`]); what fails is
//! kept in [`Fake::violations`].
//!
//! It also plays Discord's attachment CDN: a plain HTTP/1.1 server on its
//! own port, written by hand so that it can misbehave exactly (stall after
//! some bytes, cut the connection, claim a size it never sends, stream
//! without end, redirect).

#![allow(dead_code)]

pub mod schema;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

pub const APP_ID: u64 = 4242;

/// What happened to one interaction's response, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// The first response (`type` 4 message, 5 defer, 6 acknowledge, 9 modal).
    Callback {
        kind: u64,
        data: Value,
    },
    /// `PATCH .../messages/@original`: the payload and any uploaded files.
    Edit {
        payload: Value,
        files: Vec<(String, Vec<u8>)>,
        /// The status the fake answered (forced failures included).
        status: u16,
    },
    Delete,
    Followup {
        payload: Value,
    },
}

impl Event {
    pub fn content(&self) -> Option<&str> {
        match self {
            Event::Callback { data, .. } => data.get("content")?.as_str(),
            Event::Edit { payload, .. } | Event::Followup { payload } => {
                payload.get("content")?.as_str()
            }
            Event::Delete => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Timed {
    pub at: Instant,
    pub event: Event,
}

/// A forced answer to the next edit of a token.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    Status(u16),
    /// 429 with this retry-after (seconds).
    RateLimited(f64),
}

/// How the fake CDN answers for one file.
#[derive(Debug, Clone)]
pub enum Serve {
    /// 200 with this content type and body.
    File { content_type: String, body: Vec<u8> },
    /// Headers that promise `len` bytes, the first bytes of `body`, then
    /// silence until the client gives up.
    Stall { body: Vec<u8>, len: usize },
    /// Headers that promise `len` bytes, `body`, then the connection closes.
    Cut { body: Vec<u8>, len: usize },
    /// An image/png body with no declared length that never ends (until
    /// the client hangs up, or 256 MiB).
    Endless,
    /// 302 to this address.
    Redirect(String),
}

enum GwCmd {
    Dispatch(&'static str, Value),
    Drop,
}

#[derive(Default)]
struct Inner {
    connections: usize,
    /// While set, gateway connections are refused (503 to the upgrade).
    gateway_down: bool,
    /// Gateway connections refused so far.
    refused: usize,
    identifies: usize,
    resumes: usize,
    heartbeats: usize,
    registrations: Vec<(String, Value)>,
    responses: HashMap<String, Vec<Timed>>,
    failures: HashMap<String, VecDeque<Failure>>,
    pending: Vec<(&'static str, Value)>,
    unhandled: Vec<String>,
    next_id: u64,
    seq: u64,
    sent: HashMap<String, Instant>,
    /// Schema violations of the bodies received: "METHOD path: error".
    violations: Vec<String>,
    files: HashMap<String, Serve>,
    /// Names of the files requested, in order.
    file_hits: Vec<String>,
    /// Roles and permission bits of members (guild interactions).
    members: HashMap<u64, (Vec<u64>, u64)>,
}

pub struct Fake {
    pub base: String,
    inner: Mutex<Inner>,
    changed: Notify,
    gateway: Mutex<Option<mpsc::UnboundedSender<GwCmd>>>,
    /// Connections by the shard they identified as (`[id, total]`), so a
    /// server's interactions go to its shard, `(guild >> 22) % total`, as
    /// Discord sends them; DMs go to shard 0.
    shards: Mutex<HashMap<u32, (u32, mpsc::UnboundedSender<GwCmd>)>>,
    port: u16,
    /// Guild of the interactions sent without one named (None: DMs).
    guild: Mutex<Option<u64>>,
    /// `attachment_size_limit` of the interactions sent.
    size_limit: Mutex<u32>,
    /// Channel of the interactions sent.
    channel: Mutex<u64>,
    /// The fake CDN, `http://127.0.0.1:<port>`.
    pub files_base: String,
    /// A test's hook: the events still to come before it runs, and what it
    /// does (see [`Fake::after_events`]).
    trip: Mutex<Option<Trip>>,
    /// Whether every answer closes its connection (see
    /// [`Fake::close_connections`]).
    close: std::sync::atomic::AtomicBool,
}

struct Trip {
    left: usize,
    counts: Box<dyn Fn(&Event) -> bool + Send>,
    then: Box<dyn FnOnce() + Send>,
}

type St = State<Arc<Fake>>;

impl Fake {
    pub async fn start() -> Arc<Fake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cdn = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn_port = cdn.local_addr().unwrap().port();
        let fake = Arc::new(Fake {
            base: format!("http://127.0.0.1:{port}"),
            inner: Mutex::new(Inner {
                next_id: 1_000_000,
                ..Default::default()
            }),
            changed: Notify::new(),
            gateway: Mutex::new(None),
            shards: Mutex::new(HashMap::new()),
            port,
            guild: Mutex::new(None),
            size_limit: Mutex::new(8 * 1024 * 1024),
            channel: Mutex::new(777),
            files_base: format!("http://127.0.0.1:{cdn_port}"),
            trip: Mutex::new(None),
            close: Default::default(),
        });
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = cdn.accept().await {
                tokio::spawn(serve_file(sock, f.clone()));
            }
        });
        let app = Router::new()
            .route("/api/v10/gateway", get(gateway_url))
            .route("/api/v10/gateway/bot", get(gateway_bot))
            .route("/gateway", get(ws))
            .route("/api/v10/applications/{app}/commands", put(register))
            .route(
                "/api/v10/applications/{app}/guilds/{guild}/commands",
                put(register),
            )
            .route(
                "/api/v10/interactions/{id}/{token}/callback",
                post(callback),
            )
            .route(
                "/api/v10/webhooks/{app}/{token}/messages/{msg}",
                any(original),
            )
            .route("/api/v10/webhooks/{app}/{token}", post(followup))
            .fallback(unhandled)
            .layer(axum::middleware::map_response_with_state(
                fake.clone(),
                close_if_told,
            ))
            .with_state(fake.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, token: &str, event: Event) {
        let due = {
            let mut trip = self.trip.lock().unwrap();
            match trip.as_mut() {
                Some(t) if !(t.counts)(&event) => None,
                Some(t) if t.left > 1 => {
                    t.left -= 1;
                    None
                }
                Some(_) => trip.take().map(|t| t.then),
                None => None,
            }
        };
        self.lock()
            .responses
            .entry(token.to_string())
            .or_default()
            .push(Timed {
                at: Instant::now(),
                event,
            });
        // Inside the handler: the event is recorded (Discord has it) and
        // not yet answered.
        if let Some(then) = due {
            then();
        }
        self.changed.notify_waiters();
    }

    /// Run `then` when the `n`-th event from now that `counts` accepts (a
    /// callback, an edit, a delete, a follow-up) has been recorded, before
    /// the fake answers that call: a bot killed there has had its call
    /// received by Discord and never sees the answer. One hook at a time; a
    /// new one replaces it.
    pub fn after_events(
        &self,
        n: usize,
        counts: impl Fn(&Event) -> bool + Send + 'static,
        then: impl FnOnce() + Send + 'static,
    ) {
        *self.trip.lock().unwrap() = Some(Trip {
            left: n.max(1),
            counts: Box::new(counts),
            then: Box::new(then),
        });
    }

    /// Answer every call with `connection: close` (`true`), so that the
    /// bot keeps no connection open between calls (nor the tasks that
    /// serve one), or keep them alive as Discord does (`false`, the
    /// default).
    pub fn close_connections(&self, close: bool) {
        self.close.store(close, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drop the hook if it has not run; whether it had.
    pub fn disarm(&self) -> bool {
        self.trip.lock().unwrap().take().is_none()
    }

    /// Every event recorded so far, of every token.
    pub fn all_events(&self) -> Vec<(String, Timed)> {
        self.lock()
            .responses
            .iter()
            .flat_map(|(t, evs)| evs.iter().map(move |e| (t.clone(), e.clone())))
            .collect()
    }

    pub fn identifies(&self) -> usize {
        self.lock().identifies
    }
    pub fn resumes(&self) -> usize {
        self.lock().resumes
    }
    pub fn connections(&self) -> usize {
        self.lock().connections
    }
    pub fn registrations(&self) -> Vec<(String, Value)> {
        self.lock().registrations.clone()
    }
    pub fn unhandled(&self) -> Vec<String> {
        self.lock().unhandled.clone()
    }
    pub fn events(&self, token: &str) -> Vec<Timed> {
        self.lock()
            .responses
            .get(token)
            .cloned()
            .unwrap_or_default()
    }
    pub fn sent_at(&self, token: &str) -> Option<Instant> {
        self.lock().sent.get(token).copied()
    }

    /// Request bodies that did not match Discord's schema.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    fn check(&self, template: &str, method: &str, path: &str, body: &Value) {
        let errors = schema::spec().check(template, method, body);
        if !errors.is_empty() {
            let mut i = self.lock();
            for e in errors {
                i.violations.push(format!("{method} {path}: {e}"));
            }
        }
    }

    /// Serve a file on the fake CDN; returns its address.
    pub fn serve(&self, name: &str, how: Serve) -> String {
        self.lock().files.insert(name.to_string(), how);
        self.file_url(name)
    }

    pub fn file_url(&self, name: &str) -> String {
        format!("{}/files/{name}", self.files_base)
    }

    /// How often `name` was requested from the fake CDN.
    pub fn file_hits(&self, name: &str) -> usize {
        self.lock().file_hits.iter().filter(|n| *n == name).count()
    }

    /// The roles and permissions `user` has in guild interactions (default:
    /// no roles, no permissions).
    pub fn set_member(&self, user: u64, roles: &[u64], permissions: u64) {
        self.lock()
            .members
            .insert(user, (roles.to_vec(), permissions));
    }

    pub fn set_channel(&self, channel: u64) {
        *self.channel.lock().unwrap() = channel;
    }

    /// Make the next result deliveries of `token` (edits that carry an
    /// image) fail as given, in order. Progress edits pass untouched: how
    /// many of them a job gets depends on how long it waits in the queue.
    pub fn fail_deliveries(&self, token: &str, failures: &[Failure]) {
        self.lock()
            .failures
            .entry(token.to_string())
            .or_default()
            .extend(failures.iter().copied());
    }

    /// Refuse new gateway connections (`true`) or take them again: a
    /// gateway that cannot be reached, as far as serenity can tell.
    pub fn set_gateway_down(&self, down: bool) {
        self.lock().gateway_down = down;
    }

    /// Gateway connections refused while it was down.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    /// Close the gateway connection abruptly (no close frame).
    pub fn drop_gateway(&self) {
        if let Some(tx) = self.gateway.lock().unwrap().take() {
            let _ = tx.send(GwCmd::Drop);
        }
    }

    /// Wait until `f` holds, checking after every recorded change.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&Fake) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f(self) {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Wait until the gateway has identified `n` times in all.
    pub async fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |f| {
            (f.identifies() + f.resumes() >= n).then_some(())
        })
        .await
        .is_some()
    }

    fn dispatch(&self, t: &'static str, d: Value) {
        // The shard of the interaction's server, if that shard is connected.
        let sharded = {
            let shards = self.shards.lock().unwrap();
            let total = shards.values().next().map_or(1, |(n, _)| *n).max(1) as u64;
            let guild = d["guild_id"].as_str().and_then(|g| g.parse::<u64>().ok());
            let shard = guild.map_or(0, |g| (g >> 22) % total) as u32;
            shards.get(&shard).map(|(_, tx)| tx.clone())
        };
        if let Some(tx) = sharded {
            if tx.send(GwCmd::Dispatch(t, d.clone())).is_ok() {
                return;
            }
        }
        let gw = self.gateway.lock().unwrap();
        match gw.as_ref() {
            Some(tx) if tx.send(GwCmd::Dispatch(t, d.clone())).is_ok() => {}
            _ => self.lock().pending.push((t, d)),
        }
    }

    fn new_id(&self) -> u64 {
        let mut i = self.lock();
        i.next_id += 1;
        i.next_id
    }

    fn base_interaction(
        &self,
        kind: u64,
        user: u64,
        guild: Option<u64>,
        data: Value,
    ) -> (String, Value) {
        let id = self.new_id();
        let token = format!("tok-{id}");
        let channel = *self.channel.lock().unwrap();
        let mut v = json!({
            "id": id.to_string(),
            "application_id": APP_ID.to_string(),
            "type": kind,
            "data": data,
            "channel_id": channel.to_string(),
            "user": user_json(user),
            "token": token,
            "version": 1,
            "app_permissions": "0",
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {},
            "context": if guild.is_some() { 0 } else { 1 },
            "attachment_size_limit": *self.size_limit.lock().unwrap(),
        });
        if let Some(g) = guild {
            v["guild_id"] = json!(g.to_string());
            // In a guild Discord sends the member (with the user in it and
            // their permissions in the channel), not `user`.
            let (roles, perms) = self.lock().members.get(&user).cloned().unwrap_or_default();
            let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
            v["member"] = json!({
                "user": user_json(user), "roles": roles, "permissions": perms.to_string(),
                "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false,
                "flags": 0, "pending": false, "nick": null, "avatar": null,
            });
            v.as_object_mut().unwrap().remove("user");
        }
        self.lock().sent.insert(token.clone(), Instant::now());
        (token, v)
    }

    pub fn set_guild(&self, guild: Option<u64>) {
        *self.guild.lock().unwrap() = guild;
    }

    pub fn set_size_limit(&self, bytes: u32) {
        *self.size_limit.lock().unwrap() = bytes;
    }

    fn default_guild(&self) -> Option<u64> {
        *self.guild.lock().unwrap()
    }

    /// A slash command from `user`; returns the interaction token.
    pub fn command(&self, user: u64, name: &str, options: Value) -> String {
        self.command_in(user, self.default_guild(), name, options)
    }

    pub fn command_in(&self, user: u64, guild: Option<u64>, name: &str, options: Value) -> String {
        let data = json!({"id": "9001", "name": name, "type": 1, "options": options});
        let (token, v) = self.base_interaction(2, user, guild, data);
        self.dispatch("INTERACTION_CREATE", v);
        token
    }

    /// A slash command with attachments: `options` refer to them by id
    /// (`{"name": "image", "type": 11, "value": id}`), and Discord sends
    /// what it knows of each in `resolved`.
    pub fn command_with_files(
        &self,
        user: u64,
        name: &str,
        options: Value,
        attachments: &[Value],
    ) -> String {
        let resolved: serde_json::Map<String, Value> = attachments
            .iter()
            .map(|a| (a["id"].as_str().unwrap().to_string(), a.clone()))
            .collect();
        let data = json!({"id": "9001", "name": name, "type": 1, "options": options,
                          "resolved": {"attachments": resolved}});
        let (token, v) = self.base_interaction(2, user, self.default_guild(), data);
        self.dispatch("INTERACTION_CREATE", v);
        token
    }

    /// A message command (type 3) on a message with these attachments.
    pub fn message_command(&self, user: u64, name: &str, attachments: &[Value]) -> String {
        let msg = self.new_id();
        let mut m = message_json(msg, "look at this", attachments);
        m["author"] = user_json(user);
        let data = json!({"id": "9002", "name": name, "type": 3, "target_id": msg.to_string(),
                          "resolved": {"messages": {msg.to_string(): m}}});
        let (token, v) = self.base_interaction(2, user, self.default_guild(), data);
        self.dispatch("INTERACTION_CREATE", v);
        token
    }

    /// A button press on the message of an earlier response.
    pub fn button(&self, user: u64, custom_id: &str) -> String {
        let data = json!({"custom_id": custom_id, "component_type": 2});
        let (token, mut v) = self.base_interaction(3, user, self.default_guild(), data);
        v["message"] = message_json(self.new_id(), "", &[]);
        self.dispatch("INTERACTION_CREATE", v);
        token
    }

    /// A submitted modal with text fields.
    pub fn modal(&self, user: u64, custom_id: &str, fields: &[(&str, &str)]) -> String {
        let rows: Vec<Value> = fields
            .iter()
            .map(|(id, value)| {
                json!({"type": 1, "components": [{"type": 4, "custom_id": id, "value": value}]})
            })
            .collect();
        let data = json!({"custom_id": custom_id, "components": rows});
        let (token, v) = self.base_interaction(5, user, self.default_guild(), data);
        self.dispatch("INTERACTION_CREATE", v);
        token
    }

    /// The first event for `token` that `pred` accepts.
    pub async fn wait_event(
        &self,
        token: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<Timed> {
        self.wait_until(timeout, |f| {
            f.events(token).into_iter().find(|t| pred(&t.event))
        })
        .await
    }

    /// The final answer: an ephemeral reply, an edit with an image, an
    /// edit with a final error, or a delete.
    pub async fn wait_answer(&self, token: &str, timeout: Duration) -> Option<Timed> {
        self.wait_event(token, timeout, is_answer).await
    }
}

/// Whether an event posts an image (an edit with a file).
pub fn is_image(e: &Event) -> bool {
    matches!(e, Event::Edit { files, .. } if !files.is_empty())
}

/// Whether an event finishes an interaction (as far as the user sees).
pub fn is_answer(e: &Event) -> bool {
    match e {
        Event::Callback { kind, .. } => *kind == 4 || *kind == 9,
        Event::Edit {
            files,
            payload,
            status,
        } => {
            *status < 300
                && (!files.is_empty()
                    || payload
                        .get("content")
                        .and_then(Value::as_str)
                        .is_some_and(|c| c.starts_with('❌') || c.contains("no longer")))
        }
        Event::Delete => true,
        Event::Followup { .. } => true,
    }
}

fn user_json(id: u64) -> Value {
    json!({"id": id.to_string(), "username": format!("user{id}"), "discriminator": "0",
           "global_name": null, "avatar": null, "bot": false})
}

fn message_json(id: u64, content: &str, attachments: &[Value]) -> Value {
    json!({
        "id": id.to_string(), "channel_id": "777",
        "author": {"id": APP_ID.to_string(), "username": "clip2gan", "discriminator": "0",
                   "global_name": null, "avatar": null, "bot": true},
        "content": content, "timestamp": "2026-01-01T00:00:00.000000+00:00",
        "edited_timestamp": null, "tts": false, "mention_everyone": false, "mentions": [],
        "mention_roles": [], "attachments": attachments, "embeds": [], "pinned": false, "type": 20,
        "components": [],
    })
}

async fn close_if_told(State(f): St, mut r: Response) -> Response {
    // Not the gateway's upgrade (101), whose connection becomes the socket.
    let upgrade = r.status() == StatusCode::SWITCHING_PROTOCOLS;
    if f.close.load(std::sync::atomic::Ordering::SeqCst) && !upgrade {
        r.headers_mut()
            .insert("connection", "close".parse().unwrap());
    }
    r
}

async fn gateway_url(State(f): St) -> Json<Value> {
    Json(json!({"url": format!("ws://127.0.0.1:{}/gateway", f.port)}))
}

async fn gateway_bot(State(f): St) -> Json<Value> {
    Json(json!({
        "url": format!("ws://127.0.0.1:{}/gateway", f.port), "shards": 1,
        "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
    }))
}

async fn register(State(f): St, uri: Uri, Json(body): Json<Value>) -> Json<Value> {
    let template = if uri.path().contains("/guilds/") {
        "/applications/{application_id}/guilds/{guild_id}/commands"
    } else {
        "/applications/{application_id}/commands"
    };
    f.check(template, "put", uri.path(), &body);
    f.lock()
        .registrations
        .push((uri.path().to_string(), body.clone()));
    f.changed.notify_waiters();
    let out: Vec<Value> = body
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c["id"] = json!((500 + i).to_string());
            c["application_id"] = json!(APP_ID.to_string());
            c["version"] = json!("1");
            c["default_member_permissions"] = Value::Null;
            if c.get("type").is_none() {
                c["type"] = json!(1);
            }
            // Discord answers "" for the description of message commands,
            // which have none (serenity needs the field).
            if c.get("description").is_none() {
                c["description"] = json!("");
            }
            c
        })
        .collect();
    Json(Value::Array(out))
}

async fn callback(
    State(f): St,
    Path((_id, token)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> StatusCode {
    f.check(
        "/interactions/{interaction_id}/{interaction_token}/callback",
        "post",
        &format!("/interactions/…/{token}/callback"),
        &body,
    );
    let kind = body["type"].as_u64().unwrap_or(0);
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    f.record(&token, Event::Callback { kind, data });
    StatusCode::NO_CONTENT
}

/// A JSON body, or multipart with `payload_json` and `files[n]`.
async fn payload(req: Request) -> (Value, Vec<(String, Vec<u8>)>) {
    let is_multipart = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/"));
    if !is_multipart {
        let bytes = Bytes::from_request(req, &()).await.unwrap_or_default();
        return (
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Vec::new(),
        );
    }
    let mut mp = Multipart::from_request(req, &())
        .await
        .expect("multipart body");
    let (mut json, mut files) = (Value::Null, Vec::new());
    while let Ok(Some(field)) = mp.next_field().await {
        let name = field.name().unwrap_or("").to_string();
        let filename = field.file_name().unwrap_or("").to_string();
        let data = field.bytes().await.unwrap_or_default().to_vec();
        if name == "payload_json" {
            json = serde_json::from_slice(&data).unwrap_or(Value::Null);
        } else {
            files.push((filename, data));
        }
    }
    (json, files)
}

async fn original(
    State(f): St,
    Path((_app, token, msg)): Path<(String, String, String)>,
    method: Method,
    req: Request,
) -> Response {
    if msg != "@original" {
        return StatusCode::NOT_FOUND.into_response();
    }
    if method == Method::DELETE {
        f.record(&token, Event::Delete);
        return StatusCode::NO_CONTENT.into_response();
    }
    let (payload, files) = payload(req).await;
    f.check(
        "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
        "patch",
        &format!("/webhooks/…/{token}/messages/@original"),
        &payload,
    );
    let forced = if files.is_empty() {
        None
    } else {
        f.lock()
            .failures
            .get_mut(&token)
            .and_then(|q| q.pop_front())
    };
    let (status, resp) = match forced {
        Some(Failure::Status(s)) => (
            s,
            (
                StatusCode::from_u16(s).unwrap(),
                Json(json!({"code": 0, "message": "injected failure"})),
            )
                .into_response(),
        ),
        Some(Failure::RateLimited(secs)) => {
            let mut h = HeaderMap::new();
            h.insert("retry-after", secs.to_string().parse().unwrap());
            h.insert("x-ratelimit-scope", "user".parse().unwrap());
            (
                429,
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    h,
                    Json(json!({"message": "You are being rate limited.", "retry_after": secs, "global": false, "code": 0})),
                )
                    .into_response(),
            )
        }
        None => {
            let id = f.new_id();
            let content = payload.get("content").and_then(Value::as_str).unwrap_or("");
            let atts: Vec<Value> = files
                .iter()
                .enumerate()
                .map(|(i, (name, data))| {
                    json!({"id": (id + 1 + i as u64).to_string(), "filename": name, "size": data.len(),
                           "url": "http://127.0.0.1/x.png", "proxy_url": "http://127.0.0.1/x.png"})
                })
                .collect();
            (200, Json(message_json(id, content, &atts)).into_response())
        }
    };
    f.record(
        &token,
        Event::Edit {
            payload,
            files,
            status,
        },
    );
    resp
}

async fn followup(
    State(f): St,
    Path((_app, token)): Path<(String, String)>,
    req: Request,
) -> Response {
    let (payload, _) = payload(req).await;
    f.check(
        "/webhooks/{webhook_id}/{webhook_token}",
        "post",
        &format!("/webhooks/…/{token}"),
        &payload,
    );
    let id = f.new_id();
    f.record(&token, Event::Followup { payload });
    Json(message_json(id, "", &[])).into_response()
}

async fn unhandled(State(f): St, method: Method, uri: Uri) -> Response {
    f.lock().unhandled.push(format!("{method} {uri}"));
    (
        StatusCode::NOT_FOUND,
        Json(json!({"code": 0, "message": "unknown route"})),
    )
        .into_response()
}

async fn ws(State(f): St, up: WebSocketUpgrade) -> Response {
    {
        let mut i = f.lock();
        if i.gateway_down {
            i.refused += 1;
            drop(i);
            f.changed.notify_waiters();
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    up.on_upgrade(move |socket| gateway(socket, f))
}

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    socket
        .send(WsMessage::Text(v.to_string().into()))
        .await
        .is_ok()
}

async fn gateway(mut socket: WebSocket, f: Arc<Fake>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    f.lock().connections += 1;
    if !send(
        &mut socket,
        json!({"op": 10, "d": {"heartbeat_interval": 41250}, "s": null, "t": null}),
    )
    .await
    {
        return;
    }
    let mut ready = false;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                let text = match msg {
                    WsMessage::Text(t) => t.to_string(),
                    WsMessage::Close(frame) => {
                        let _ = socket.send(WsMessage::Close(frame)).await;
                        break;
                    }
                    _ => continue,
                };
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match v["op"].as_u64() {
                    Some(1) => {
                        f.lock().heartbeats += 1;
                        send(&mut socket, json!({"op": 11, "d": null, "s": null, "t": null})).await;
                    }
                    Some(2) | Some(6) => {
                        let identify = v["op"] == 2;
                        if let Some([id, total]) = v["d"]["shard"].as_array().map(|a| {
                            [0, 1].map(|i| a.get(i).and_then(Value::as_u64).unwrap_or(0) as u32)
                        }) {
                            f.shards.lock().unwrap().insert(id, (total, tx.clone()));
                        }
                        let seq = {
                            let mut i = f.lock();
                            if identify { i.identifies += 1 } else { i.resumes += 1 }
                            i.seq += 1;
                            i.seq
                        };
                        let event = if identify {
                            json!({"op": 0, "s": seq, "t": "READY", "d": {
                                "v": 10, "user": {"id": APP_ID.to_string(), "username": "clip2gan",
                                    "discriminator": "0", "global_name": null, "avatar": null, "bot": true},
                                "guilds": [], "session_id": "sess-1",
                                "resume_gateway_url": format!("ws://127.0.0.1:{}/gateway", f.port),
                                "shard": [0, 1], "application": {"id": APP_ID.to_string(), "flags": 0}}})
                        } else {
                            json!({"op": 0, "s": seq, "t": "RESUMED", "d": {}})
                        };
                        send(&mut socket, event).await;
                        if !ready {
                            ready = true;
                            // From now on this connection receives dispatches.
                            let pending = std::mem::take(&mut f.lock().pending);
                            for (t, d) in pending {
                                let _ = tx.send(GwCmd::Dispatch(t, d));
                            }
                            *f.gateway.lock().unwrap() = Some(tx.clone());
                        }
                        f.changed.notify_waiters();
                    }
                    _ => {}
                }
            }
            cmd = rx.recv() => match cmd {
                Some(GwCmd::Dispatch(t, d)) => {
                    let seq = { let mut i = f.lock(); i.seq += 1; i.seq };
                    if !send(&mut socket, json!({"op": 0, "s": seq, "t": t, "d": d})).await {
                        break;
                    }
                }
                // Abrupt: the socket is dropped without a close frame.
                Some(GwCmd::Drop) | None => return,
            },
        }
    }
}

/// One request to the fake CDN: `GET /files/<name>`, answered as told.
async fn serve_file(mut sock: tokio::net::TcpStream, f: Arc<Fake>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 65536 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let name = path
        .strip_prefix("/files/")
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
        .to_string();
    let how = {
        let mut i = f.lock();
        i.file_hits.push(name.clone());
        i.files.get(&name).cloned()
    };
    let header = |status: &str, ct: &str, len: Option<usize>, extra: &str| {
        let len = len.map_or(String::new(), |n| format!("content-length: {n}\r\n"));
        format!("HTTP/1.1 {status}\r\ncontent-type: {ct}\r\n{len}{extra}connection: close\r\n\r\n")
    };
    let hold = matches!(how, Some(Serve::Stall { .. }));
    match how {
        None => {
            let _ = sock
                .write_all(header("404 Not Found", "text/plain", Some(0), "").as_bytes())
                .await;
        }
        Some(Serve::File { content_type, body }) => {
            let _ = sock
                .write_all(header("200 OK", &content_type, Some(body.len()), "").as_bytes())
                .await;
            let _ = sock.write_all(&body).await;
        }
        // Both promise `len` bytes and send fewer; they differ only in
        // whether the connection is then held or dropped.
        Some(Serve::Stall { body, len } | Serve::Cut { body, len }) => {
            let _ = sock
                .write_all(header("200 OK", "image/png", Some(len), "").as_bytes())
                .await;
            let _ = sock.write_all(&body).await;
            let _ = sock.flush().await;
            if hold {
                // Hold the connection open until the client hangs up.
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
            // A cut one is dropped here, mid-body.
        }
        Some(Serve::Endless) => {
            if sock
                .write_all(header("200 OK", "image/png", None, "").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..4096 {
                if sock.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }
        Some(Serve::Redirect(to)) => {
            let extra = format!("location: {to}\r\n");
            let _ = sock
                .write_all(header("302 Found", "text/plain", Some(0), &extra).as_bytes())
                .await;
        }
    }
}

/// An attachment as Discord describes it in `resolved` and in messages.
pub fn attachment_json(
    id: u64,
    filename: &str,
    url: &str,
    size: usize,
    content_type: Option<&str>,
    dims: Option<(u32, u32)>,
) -> Value {
    let mut a = json!({"id": id.to_string(), "filename": filename, "size": size, "url": url,
                       "proxy_url": url});
    if let Some(ct) = content_type {
        a["content_type"] = json!(ct);
    }
    if let Some((w, h)) = dims {
        a["width"] = json!(w);
        a["height"] = json!(h);
    }
    a
}
