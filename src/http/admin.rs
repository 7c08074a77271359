//! Admin API (JSON): login, nodes, events, actions, and the live stream the dashboard uses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enlist_api::admin::{
    ActionBody, BadAction, Enrollment, EnrollmentRequest, EventList, Forgotten, LoginAnswer,
    LoginRequest, NameList, NodeAction, NodeDetail, NodeList, NodeLogText, SessionView, Summary,
};
use enlist_api::Order;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;

use crate::registry::{RegistryError, Update};
use crate::workload::release_node;

use super::auth::{session_cookie, Admin, Login, Viewer, COOKIE};
use super::{error, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/session", get(session))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{node}", get(node).delete(forget))
        .route("/api/v1/nodes/{node}/initrd", post(initrd))
        .route("/api/v1/nodes/{node}/logs", get(node_logs))
        .route("/api/v1/nodes/{node}/{action}", post(action))
        .route("/api/v1/events", get(events))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/enrollment", get(enrollment).post(open_enrollment))
        .route("/api/v1/names", get(names).post(import))
}

/// The enrollment policy, and the window open now (seconds left), if one is.
fn enrollment_view(s: &Shared) -> Enrollment {
    Enrollment {
        policy: s.registry.config().nodes.enrollment.as_str().to_string(),
        window_secs: s.registry.enrollment_left().map(|d| d.as_secs()),
    }
}

async fn enrollment(State(s): State<Shared>, _v: Viewer) -> Response {
    Json(enrollment_view(&s)).into_response()
}

/// Open (or close) the enrollment window: new PCs that boot meanwhile become nodes with no
/// approval, whatever the policy.
async fn open_enrollment(
    State(s): State<Shared>,
    _a: Admin,
    Json(req): Json<EnrollmentRequest>,
) -> Response {
    let max = crate::registry::MAX_ENROLLMENT_WINDOW.as_secs();
    if req.for_secs > max {
        return error(
            StatusCode::BAD_REQUEST,
            format!("an enrollment window is at most {max} s (a day)"),
        );
    }
    s.registry
        .open_enrollment(std::time::Duration::from_secs(req.for_secs));
    Json(enrollment_view(&s)).into_response()
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<u64>,
    file: Option<u64>,
    from: Option<u64>,
}

/// A node's log: its end, or what follows a previous piece (`enlist node logs [-f]`).
async fn node_logs(
    State(s): State<Shared>,
    _a: Admin,
    Path(node): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let (reg, logs) = (s.registry.clone(), s.logs.clone());
    let r = blocking(move || {
        let mac = reg.find(&node)?.mac;
        let from = q.file.zip(q.from);
        logs.read(mac, from, q.tail.unwrap_or(64 * 1024))
            .map_err(|e| RegistryError::NotFound(e.to_string()))
    })
    .await;
    match r {
        Ok(p) => Json(NodeLogText {
            file: p.file,
            end: p.end,
            text: p.text,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// The names the admin imported, by MAC.
async fn names(State(s): State<Shared>, _a: Admin) -> Response {
    Json(NameList {
        nodes: s.registry.names(),
    })
    .into_response()
}

/// Name PCs by MAC (`enlist node import`): all or nothing.
async fn import(State(s): State<Shared>, _a: Admin, Json(req): Json<NameList>) -> Response {
    let reg = s.registry.clone();
    match blocking(move || reg.import(&req.nodes)).await {
        Ok(answer) => Json(answer).into_response(),
        Err(r) => r,
    }
}

async fn login(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<LoginRequest>,
) -> Response {
    match s.auth.login(req.password, peer.ip()).await {
        Ok(Login::Ok(token, csrf)) => (
            [(
                header::SET_COOKIE,
                format!(
                    "{COOKIE}={token}; {}; Max-Age=43200",
                    s.auth.cookie_attributes()
                ),
            )],
            Json(LoginAnswer { csrf }),
        )
            .into_response(),
        Ok(Login::Wrong) => {
            tracing::debug!(%peer, "admin login refused: wrong password");
            s.metrics.refused(&s.metrics.http_refused, "bad-password");
            error(StatusCode::UNAUTHORIZED, "wrong password")
        }
        Ok(Login::Throttled(wait)) => {
            tracing::debug!(%peer, "admin login refused: throttled");
            s.metrics
                .refused(&s.metrics.http_refused, "login-throttled");
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many login attempts; try again in {} s",
                    wait.as_secs().max(1)
                ),
            );
            if let Ok(v) = wait.as_secs().max(1).to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn logout(State(s): State<Shared>, _admin: Admin, headers: HeaderMap) -> Response {
    if let Some(t) = session_cookie(&headers) {
        s.auth.logout(&t);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; {}; Max-Age=0", s.auth.cookie_attributes()),
        )],
        StatusCode::NO_CONTENT,
    )
        .into_response()
}

/// Who is looking: logged in or not, and the CSRF token to send with actions.
async fn session(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let csrf = session_cookie(&headers).and_then(|t| s.auth.session_csrf(&t));
    Json(SessionView {
        logged_in: csrf.is_some(),
        csrf,
        public_read: s.auth.public_read(),
    })
    .into_response()
}

pub(super) fn registry_error(e: RegistryError) -> Response {
    match e {
        RegistryError::UnknownNode(_) | RegistryError::NotFound(_) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        RegistryError::NameTaken(_) | RegistryError::NotOnline(_) | RegistryError::Up(_) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        RegistryError::BadName(_) | RegistryError::BadImport(_) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        RegistryError::Refused(_) => error(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        RegistryError::Store(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(registry_error)
}

async fn nodes(State(s): State<Shared>, _v: Viewer) -> Response {
    let reg = s.registry.clone();
    match blocking(move || reg.views()).await {
        Ok(nodes) => Json(NodeList::of(nodes)).into_response(),
        Err(r) => r,
    }
}

async fn node(State(s): State<Shared>, _v: Viewer, Path(node): Path<String>) -> Response {
    let reg = s.registry.clone();
    let r = blocking(move || {
        let row = reg.find(&node)?;
        let events = reg.store().events_of(row.mac, 200)?;
        Ok((reg.view(&row), events))
    })
    .await;
    match r {
        Ok((node, events)) => Json(NodeDetail { node, events }).into_response(),
        Err(r) => r,
    }
}

async fn action(
    State(s): State<Shared>,
    _a: Admin,
    Path((node, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let body: ActionBody = if body.is_empty() {
        ActionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let action = match NodeAction::parse(&action, body) {
        Ok(a) => a,
        Err(e @ BadAction::Unknown(_)) => return error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let reg = s.registry.clone();
    let workload = s.workload.clone();
    let rt = tokio::runtime::Handle::current();
    let r = blocking(move || {
        let mac = reg.find(&node)?.mac;
        match action {
            NodeAction::Approve => reg.approve(mac)?,
            // With jobs on, the scheduler drains the node first (in the background: it may
            // wait for its jobs); the view answered is the node draining.
            NodeAction::Release => release_node(&rt, &reg, &workload, mac)?,
            NodeAction::Enlist => reg.enlist(mac)?,
            NodeAction::Reboot => reg.command(mac, Order::Reboot).map(drop)?,
            NodeAction::PowerOff => reg.command(mac, Order::PowerOff).map(drop)?,
            NodeAction::RefreshPeers => reg.command(mac, Order::RefreshPeers).map(drop)?,
            // Wake-on-LAN: the magic packet on every served interface (and the PC's relayed
            // subnet); what happened goes into its history.
            NodeAction::Wake => reg.wake(mac).map(drop)?,
            NodeAction::Rename(name) => reg.rename(mac, &name)?,
            NodeAction::Group(group) => reg.set_group(mac, &group)?,
        }
        Ok(reg.view(&reg.node(mac)?))
    })
    .await;
    match r {
        Ok(view) => Json(view).into_response(),
        Err(r) => r,
    }
}

/// `DELETE /api/v1/nodes/{node}` (`enlist node forget`): a node that is not up is forgotten,
/// by the workload manager (Slurm deletes its record, asleep or down) and then by the
/// registry (its row; its history stays under its MAC). 409 while it is up.
async fn forget(State(s): State<Shared>, _a: Admin, Path(node): Path<String>) -> Response {
    let reg = s.registry.clone();
    let workload = s.workload.clone();
    let rt = tokio::runtime::Handle::current();
    let r = blocking(move || {
        let row = reg.find(&node)?;
        crate::registry::Registry::forgettable(&row)?;
        let said = match rt.block_on(workload.forget(&row.name)) {
            Ok(()) => format!("forgotten by the workload manager ({})", workload.name()),
            Err(e) => format!("not forgotten by the workload manager: {e}"),
        };
        let row = reg.forget(row.mac, &said)?;
        Ok(Forgotten {
            name: row.name,
            mac: row.mac,
            workload: said,
        })
    })
    .await;
    match r {
        Ok(answer) => Json(answer).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

async fn events(State(s): State<Shared>, _v: Viewer, Query(q): Query<EventsQuery>) -> Response {
    let reg = s.registry.clone();
    let limit = q.limit.clamp(1, 1000);
    match blocking(move || Ok(reg.store().recent_events(limit)?)).await {
        Ok(events) => Json(EventList { events }).into_response(),
        Err(r) => r,
    }
}

/// Nodes per state: what the dashboard's header shows, to anyone (counts are not secret).
async fn summary(State(s): State<Shared>) -> Response {
    let jobs = s.jobs.as_ref().map(|_| s.registry.sched_totals());
    Json(Summary::new(s.registry.counts(), jobs)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitrdQuery {
    #[serde(default)]
    image: Option<String>,
}

/// The initrd a node boots with (image initrd + its settings, with a new key), for an admin
/// who boots a PC by hand (`-kernel`/`-initrd`, a USB stick) instead of by network. A POST:
/// it changes the node (a new key epoch), so a browser session needs its CSRF token.
async fn initrd(
    State(s): State<Shared>,
    _a: Admin,
    Path(node): Path<String>,
    Query(q): Query<InitrdQuery>,
) -> Response {
    let Some(mac) = enlist_api::Mac::parse(&node) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{node:?} is not a MAC address"),
        );
    };
    let reg = s.registry.clone();
    let images = s.files.images().clone();
    let image = q.image;
    let r = blocking(move || {
        let image = image.unwrap_or_else(|| {
            let cpu_64bit = reg.node(mac).is_ok_and(|row| row.cpu_64bit());
            reg.config().bios_image(mac, cpu_64bit).to_string()
        });
        let version = images
            .current(&image)
            .map_err(|e| RegistryError::NotFound(e.to_string()))?;
        let path = images
            .file(&image, &version, "initrd")
            .map_err(|e| RegistryError::NotFound(e.to_string()))?;
        let base = std::fs::read(&path)
            .map_err(|e| RegistryError::NotFound(format!("{}: {e}", path.display())))?;
        let overlay = reg.direct_overlay(mac, (&image, &version))?;
        Ok([base, overlay].concat())
    })
    .await;
    match r {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(r) => r,
    }
}

/// Counts an open dashboard stream while it lives.
struct StreamSlot(Shared);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Server-sent events: every node change and registry event, as it happens. At most
/// `http.max_streams` at once.
async fn stream(State(s): State<Shared>, _v: Viewer) -> Response {
    if s.streams.fetch_add(1, Ordering::Relaxed) >= s.max_streams {
        s.streams.fetch_sub(1, Ordering::Relaxed);
        s.metrics
            .refused(&s.metrics.http_refused, "too-many-streams");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboards open; try again later",
        );
    }
    let slot = StreamSlot(s.clone());
    let rx = s.registry.subscribe();
    let stream = BroadcastStream::new(rx).filter_map(move |m| {
        let _held = &slot;
        let out = match m {
            Ok(update) => {
                let name = match &update {
                    Update::Node(_) => "node",
                    Update::Event(_) => "event",
                };
                Event::default().event(name).json_data(&update).ok().map(Ok)
            }
            // A slow dashboard missed updates: tell it to reload its snapshot.
            Err(_) => Some(Ok(Event::default().event("resync").data("{}"))),
        };
        async move { out }
    });
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(stream);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
