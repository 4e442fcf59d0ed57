//! An in-process Kubernetes API server for the cluster-mode tests and
//! benchmarks (no real one can be installed on these machines).
//!
//! It speaks the protocol kube-rs and client-go use, with real JSON objects:
//! - list (`GET .../services?limit=&continue=`) with the list's
//!   resourceVersion, paging and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`);
//! - watch (`?watch=1&resourceVersion=N`): a stream of `{"type","object"}`
//!   lines replaying the history after N, then live changes; `BOOKMARK`
//!   events when asked (`allowWatchBookmarks`); `timeoutSeconds`; an
//!   `ERROR` event with a 410 `Expired` Status when N is older than the
//!   last [`FakeApi::compact`];
//! - get, create, update (with resourceVersion preconditions: 409
//!   Conflict), merge patch, delete, and the `status` subresource;
//! - 403 with the real API server's message for denied `(verb, resource)`s.
//!
//! And it fails on demand: [`FakeApi::drop_connections`] cuts every open
//! connection (watches end mid-stream), [`FakeApi::refuse_connections`]
//! closes the listening socket so that connecting fails. Clients are told
//! apart by their bearer token ([`FakeApi::kubeconfig`]).

mod store;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use store::{
    forbidden_message, matches_fields, resource_of_kind, status, Change, Key, Store, WriteError,
};
pub use store::{merge_patch, PolicyRule, Resource, RESOURCES};

type Body = BoxBody<Bytes, Infallible>;

/// A request that changed something, as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `POST`, `PUT`, `PATCH`, `DELETE`.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The bearer token (see [`FakeApi::kubeconfig`]).
    pub token: Option<String>,
    /// The request body.
    pub body: String,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to cut every connection.
    cut: watch::Sender<u64>,
    refusing: watch::Sender<bool>,
    writes: Mutex<Vec<Recorded>>,
    /// Requests RBAC refused.
    refused: Mutex<Vec<String>>,
    /// `path?query` of every request.
    requests: Mutex<Vec<String>>,
    bookmark_interval: Duration,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Starts serving on a free loopback port, on a thread of its own.
    pub fn start() -> Result<FakeApi> {
        Self::start_with(Duration::from_millis(500))
    }

    /// Starts with bookmarks every `bookmark_interval` on watches that ask.
    pub fn start_with(bookmark_interval: Duration) -> Result<FakeApi> {
        Self::start_inner(bookmark_interval, None)
    }

    /// Starts on `ip` (a free port) in the network namespace `netns` (a
    /// name under /run/netns): its loopback for a node's own agent, the
    /// node's address for processes on other nodes too.
    pub fn start_in_netns(netns: &str, ip: std::net::IpAddr) -> Result<FakeApi> {
        Self::start_inner(Duration::from_millis(500), Some((netns, ip)))
    }

    fn start_inner(
        bookmark_interval: Duration,
        netns: Option<(&str, std::net::IpAddr)>,
    ) -> Result<FakeApi> {
        let bind_ip = netns.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |(_, ip)| ip);
        let ns = netns
            .map(|(ns, _)| gangplank_sim::sys::open_netns(ns))
            .transpose()?;
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            changes: broadcast::channel(1 << 16).0,
            cut: watch::channel(0).0,
            refusing: watch::channel(false).0,
            writes: Mutex::default(),
            refused: Mutex::default(),
            requests: Mutex::default(),
            bookmark_interval,
        });
        let (stop, stop_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the fake API server's runtime")?;
        let s = shared.clone();
        // Bound and served from a thread inside the namespace: sockets
        // belong to the namespace of the thread that makes them.
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fake-api".into())
            .spawn(move || {
                let bound = (|| -> Result<(std::net::TcpListener, SocketAddr)> {
                    if let Some(ns) = &ns {
                        gangplank_sim::sys::setns_net(ns)
                            .context("entering the network namespace")?;
                    }
                    let listener = std::net::TcpListener::bind((bind_ip, 0))
                        .context("binding the fake API server")?;
                    listener.set_nonblocking(true)?;
                    let addr = listener.local_addr()?;
                    Ok((listener, addr))
                })();
                match bound {
                    Ok((listener, addr)) => {
                        let _ = bound_tx.send(Ok(addr));
                        runtime.block_on(serve(s, addr, Some(listener), stop_rx));
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                }
            })
            .context("starting the fake API server thread")?;
        let addr = bound_rx
            .recv()
            .context("the fake API server thread ended")??;
        Ok(FakeApi {
            addr,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig for this server into `dir`; the client
    /// authenticates with the bearer token `identity`.
    pub fn kubeconfig(&self, dir: &Path, identity: &str) -> Result<PathBuf> {
        let path = dir.join(format!("kubeconfig-{identity}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: {identity}\n  user:\n    token: {identity}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {identity}\n\
             current-context: fake\n",
            addr = self.addr
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Creates or replaces `object` (any resourceVersion in it is ignored).
    /// Returns it as stored.
    pub fn apply(&self, mut object: Value) -> Value {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let mut store = self.shared.store();
        match store.put(object, false) {
            Ok((stored, change)) => {
                let _ = self.shared.changes.send(change);
                stored
            }
            Err(e) => panic!("fake API: cannot apply object: {e:?}"),
        }
    }

    /// Applies every document of a YAML manifest (as kubectl apply would).
    pub fn apply_yaml(&self, text: &str) -> Result<()> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value: Value =
                serde::Deserialize::deserialize(doc).context("parsing a manifest")?;
            if !value.is_null() {
                self.apply(value);
            }
        }
        Ok(())
    }

    /// Deletes `kind` `namespace/name`; false if it did not exist.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let Some(key) = key(kind, namespace, name) else {
            return false;
        };
        let mut store = self.shared.store();
        match store.delete(&key) {
            Ok((_, change)) => {
                let _ = self.shared.changes.send(change);
                true
            }
            Err(_) => false,
        }
    }

    /// The stored `kind` `namespace/name`.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.shared
            .store()
            .get(&key(kind, namespace, name)?)
            .cloned()
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Forgets the history: watches resuming from before now get 410 Gone
    /// and must list again.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Cuts every open connection (watch streams end without a word).
    pub fn drop_connections(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// While `refuse`, the port is closed: connecting fails, and open
    /// connections are cut.
    pub fn refuse_connections(&self, refuse: bool) {
        self.shared.refusing.send_replace(refuse);
    }

    /// Answers `verb` (`list`, `watch`, `get`, `create`, `update`,
    /// `patch`, `delete`) on `plural` with 403 until [`FakeApi::allow`].
    pub fn deny(&self, verb: &str, plural: &str) {
        self.shared
            .store()
            .denied
            .insert((verb.to_owned(), plural.to_owned()));
    }

    /// Turns RBAC on: from now on, a request with bearer token `token`
    /// (see [`FakeApi::kubeconfig`]) is allowed only if one of `rules`
    /// allows it, and a request with a token without rules is refused.
    pub fn authorize(&self, token: &str, rules: Vec<PolicyRule>) {
        self.shared
            .store()
            .authorized
            .insert(token.to_owned(), rules);
    }

    /// Requests refused by RBAC ([`FakeApi::authorize`]) so far:
    /// `verb resource namespace/name`.
    pub fn refused(&self) -> Vec<String> {
        self.shared
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Undoes [`FakeApi::deny`].
    pub fn allow(&self, verb: &str, plural: &str) {
        self.shared
            .store()
            .denied
            .remove(&(verb.to_owned(), plural.to_owned()));
    }

    /// `METHOD path?query` (query decoded) of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every write so far, oldest first.
    pub fn writes(&self) -> Vec<Recorded> {
        self.shared
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn key(kind: &str, namespace: Option<&str>, name: &str) -> Option<Key> {
    let resource = resource_of_kind(kind)?;
    let ns = if resource.namespaced {
        namespace.unwrap_or("default")
    } else {
        ""
    };
    Some((resource.plural.to_owned(), ns.to_owned(), name.to_owned()))
}

async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    mut first: Option<std::net::TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    let mut refusing = shared.refusing.subscribe();
    let mut cut = shared.cut.subscribe();
    loop {
        // Closed while refusing.
        while *refusing.borrow_and_update() {
            tokio::select! {
                _ = refusing.changed() => {}
                _ = stop.changed() => return,
            }
        }
        let listener = match first.take() {
            Some(l) => tokio::net::TcpListener::from_std(l),
            None => tokio::net::TcpListener::bind(addr).await,
        };
        let Ok(listener) = listener else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    // As Go's net/http (the real API server) does: watch
                    // events are small writes that must not wait for an ACK.
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = cut.changed() => conns.abort_all(),
                _ = refusing.changed() => {
                    if *refusing.borrow() {
                        conns.abort_all();
                        break;
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// What a request path names.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let resource = RESOURCES
        .iter()
        .copied()
        .find(|r| r.plural == plural && r.api_version == api_version)?;
    Some(Target {
        resource,
        namespace,
        name,
        status,
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    // Two hex digits make one byte.
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status(code, reason, message),
    )
}

fn write_failure(e: WriteError) -> Response<Body> {
    match e {
        WriteError::NotFound => failure(404, "NotFound", "not found"),
        WriteError::Conflict(m) => failure(409, "Conflict", &m),
        WriteError::Invalid(m) => failure(400, "BadRequest", &m),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    shared
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(format!(
            "{} {path}?{}",
            req.method(),
            percent_decode(&query)
        ));
    if path == "/version" {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
        ));
    }
    let Some(target) = parse_path(&path) else {
        return Ok(failure(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ));
    };
    let method = req.method().clone();
    let watching = matches!(query_param(&query, "watch").as_deref(), Some("1" | "true"));
    let verb = match (&method, &target.name) {
        (&Method::GET, None) if watching => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, None) => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        _ => return Ok(failure(405, "MethodNotAllowed", "method not allowed")),
    };
    if shared
        .store()
        .denied
        .contains(&(verb.to_owned(), target.resource.plural.to_owned()))
    {
        let message = forbidden_message(verb, &target.resource, target.namespace.as_deref());
        return Ok(failure(403, "Forbidden", &message));
    }
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(refusal) = rbac_refusal(&shared, &target, verb, token.as_deref()) {
        let message = forbidden_message(verb, &target.resource, target.namespace.as_deref());
        shared
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(refusal);
        return Ok(failure(403, "Forbidden", &message));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(failure(400, "BadRequest", "unreadable body")),
    };
    if verb != "list" && verb != "watch" && verb != "get" {
        shared
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Recorded {
                method: method.to_string(),
                path: path.clone(),
                token,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
    }
    let selector = query_param(&query, "fieldSelector");
    Ok(match verb {
        "list" => list(&shared, &target, &query, selector.as_deref()),
        "watch" => start_watch(&shared, target, &query, selector),
        "get" => {
            let key = item_key(&target);
            match shared.store().get(&key) {
                Some(object) => json_response(StatusCode::OK, object),
                None => failure(
                    404,
                    "NotFound",
                    &format!("{} {:?} not found", target.resource.plural, key.2),
                ),
            }
        }
        "delete" => {
            let mut store = shared.store();
            match store.delete(&item_key(&target)) {
                Ok((object, change)) => {
                    let _ = shared.changes.send(change);
                    json_response(StatusCode::OK, &object)
                }
                Err(e) => write_failure(e),
            }
        }
        _ => write(&shared, &target, verb, &body),
    })
}

fn item_key(target: &Target) -> Key {
    (
        target.resource.plural.to_owned(),
        if target.resource.namespaced {
            target.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        },
        target.name.clone().unwrap_or_default(),
    )
}

/// With RBAC on, why the request is refused (`verb resource ns/name`).
fn rbac_refusal(
    shared: &Shared,
    target: &Target,
    verb: &str,
    token: Option<&str>,
) -> Option<String> {
    let store = shared.store();
    if store.authorized.is_empty() {
        return None;
    }
    let resource = if target.status {
        format!("{}/status", target.resource.plural)
    } else {
        target.resource.plural.to_owned()
    };
    let allowed = token
        .and_then(|t| store.authorized.get(t))
        .is_some_and(|rules| {
            rules.iter().any(|r| {
                r.allows(
                    verb,
                    target.resource.group(),
                    &resource,
                    target.namespace.as_deref(),
                    target.name.as_deref(),
                )
            })
        });
    (!allowed).then(|| {
        format!(
            "{verb} {resource} {}/{} (token {})",
            target.namespace.as_deref().unwrap_or(""),
            target.name.as_deref().unwrap_or(""),
            token.unwrap_or("none")
        )
    })
}

fn write(shared: &Shared, target: &Target, verb: &str, body: &[u8]) -> Response<Body> {
    let Ok(sent) = serde_json::from_slice::<Value>(body) else {
        return failure(400, "BadRequest", "the body is not JSON");
    };
    let mut store = shared.store();
    let current = target
        .name
        .as_ref()
        .and_then(|_| store.get(&item_key(target)).cloned());
    let mut object = match (verb, current) {
        ("create", _) => sent,
        (_, None) => return write_failure(WriteError::NotFound),
        ("update", Some(current)) if target.status => {
            // As the real API server's status strategies for built-in
            // kinds (Ingress): only the spec is kept from storage;
            // metadata (labels, annotations, finalizers) comes from the
            // body, so a client that sends less erases them.
            let mut object = sent;
            object["spec"] = current["spec"].clone();
            object
        }
        ("update", Some(_)) => sent,
        (_, Some(current)) => {
            let mut object = current;
            if target.status {
                merge_patch(&mut object["status"], &sent["status"]);
            } else {
                merge_patch(&mut object, &sent);
            }
            if let Some(meta) = object["metadata"].as_object_mut() {
                // A patch applies to the latest version unless it says
                // otherwise.
                if sent["metadata"]["resourceVersion"].is_null() {
                    meta.remove("resourceVersion");
                }
            }
            object
        }
    };
    object["kind"] = json!(target.resource.kind);
    if target.resource.namespaced {
        if let Some(ns) = &target.namespace {
            object["metadata"]["namespace"] = json!(ns);
        }
    }
    if let Some(name) = &target.name {
        if object["metadata"]["name"].as_str() != Some(name) {
            return failure(400, "BadRequest", "metadata.name does not match the path");
        }
    }
    match store.put(object, verb == "create") {
        Ok((stored, change)) => {
            let _ = shared.changes.send(change);
            json_response(
                if verb == "create" {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &stored,
            )
        }
        Err(e) => write_failure(e),
    }
}

fn list(shared: &Shared, target: &Target, query: &str, selector: Option<&str>) -> Response<Body> {
    let offset: usize = query_param(query, "continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = query_param(query, "limit")
        .and_then(|l| l.parse().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let store = shared.store();
    let (page, total) = store.list(
        target.resource.plural,
        target.namespace.as_deref(),
        selector,
        offset,
        limit,
    );
    let end = offset.saturating_add(page.len());
    let mut metadata = json!({"resourceVersion": store.resource_version().to_string()});
    drop(store);
    if end < total {
        metadata["continue"] = json!(end.to_string());
        metadata["remainingItemCount"] = json!(total - end);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": target.resource.api_version,
            "kind": format!("{}List", target.resource.kind),
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn event_line(kind: &str, object: &Value) -> Frame<Bytes> {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Frame::data(Bytes::from(line))
}

fn start_watch(
    shared: &Arc<Shared>,
    target: Target,
    query: &str,
    selector: Option<String>,
) -> Response<Body> {
    let from: u64 = query_param(query, "resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let bookmarks = matches!(
        query_param(query, "allowWatchBookmarks").as_deref(),
        Some("true" | "1")
    );
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(1024);
    let shared = shared.clone();
    tokio::spawn(async move {
        // Subscribed under the lock: nothing falls between history and
        // live changes.
        let start = {
            let store = shared.store();
            if from < store.compacted() {
                Err(status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", store.compacted()),
                ))
            } else {
                Ok((
                    shared.changes.subscribe(),
                    store.changes_since(from, target.resource.plural),
                    store.resource_version(),
                ))
            }
        };
        let (mut live, backlog, mut seen) = match start {
            Ok(start) => start,
            Err(gone) => {
                let _ = tx.send(event_line("ERROR", &gone)).await;
                return;
            }
        };
        let matches = |c: &Change| {
            c.key.0 == target.resource.plural
                && target.namespace.as_ref().is_none_or(|ns| &c.key.1 == ns)
                && matches_fields(&c.object, selector.as_deref())
        };
        for change in backlog.iter().filter(|c| matches(c)) {
            if tx
                .send(event_line(change.kind, &change.object))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(shared.bookmark_interval);
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) => {
                        seen = seen.max(change.rv);
                        if change.rv > from && matches(&change) && tx.send(event_line(change.kind, &change.object)).await.is_err() {
                            return;
                        }
                    }
                    // Too slow a reader: end the stream, as the API server
                    // does; the client resumes from what it saw.
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let mark = json!({
                        "kind": target.resource.kind,
                        "apiVersion": target.resource.api_version,
                        "metadata": {"resourceVersion": seen.to_string()},
                    });
                    if tx.send(event_line("BOOKMARK", &mark)).await.is_err() {
                        return;
                    }
                }
                () = &mut deadline => return,
                () = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, Infallible>(frame), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources() {
        let t = parse_path("/api/v1/namespaces/web/services/front").expect("parsed");
        assert_eq!(
            (
                t.resource.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.status
            ),
            ("services", Some("web"), Some("front"), false)
        );
        let t = parse_path("/apis/networking.k8s.io/v1/namespaces/web/ingresses/site/status")
            .expect("parsed");
        assert_eq!((t.resource.kind, t.status), ("Ingress", true));
        let t = parse_path("/apis/discovery.k8s.io/v1/endpointslices").expect("parsed");
        assert_eq!((t.resource.kind, t.namespace), ("EndpointSlice", None));
        assert!(parse_path("/apis/discovery.k8s.io/v2/endpointslices").is_none());
        assert_eq!(
            percent_decode("metadata.name%3Dnode-a"),
            "metadata.name=node-a"
        );
    }
}
