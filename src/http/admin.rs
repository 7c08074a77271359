//! Admin API (JSON): login, nodes, events, actions, and the live stream the dashboard uses.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enlist_api::CommandKind;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;

use crate::registry::{RegistryError, Update};

use super::auth::{session_cookie, Admin, Viewer, COOKIE};
use super::{error, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/session", get(session))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{node}", get(node))
        .route("/api/v1/nodes/{node}/{action}", post(action))
        .route("/api/v1/events", get(events))
        .route("/api/v1/stream", get(stream))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    password: String,
}

async fn login(State(s): State<Shared>, Json(req): Json<LoginRequest>) -> Response {
    let store_auth = s.clone();
    let r = tokio::task::spawn_blocking(move || store_auth.auth.login(&req.password)).await;
    match r {
        Ok(Ok(Some((token, csrf)))) => (
            [(
                header::SET_COOKIE,
                format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200"),
            )],
            Json(serde_json::json!({ "csrf": csrf })),
        )
            .into_response(),
        Ok(Ok(None)) => {
            tracing::debug!("admin login refused: wrong password");
            s.metrics
                .http_refused
                .get_or_create(&crate::metrics::labels(&[("reason", "bad-password")]))
                .inc();
            error(StatusCode::UNAUTHORIZED, "wrong password")
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
            format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        StatusCode::NO_CONTENT,
    )
        .into_response()
}

/// Who is looking: logged in or not, and the CSRF token to send with actions.
async fn session(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let csrf = session_cookie(&headers).and_then(|t| s.auth.session_csrf(&t));
    Json(serde_json::json!({
        "logged_in": csrf.is_some(),
        "csrf": csrf,
        "public_read": s.auth.public_read(),
    }))
    .into_response()
}

fn registry_error(e: RegistryError) -> Response {
    match e {
        RegistryError::UnknownNode(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        RegistryError::NameTaken(_) => error(StatusCode::CONFLICT, e.to_string()),
        RegistryError::BadName(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        RegistryError::Store(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
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
        Ok(v) => Json(serde_json::json!({ "nodes": v })).into_response(),
        Err(r) => r,
    }
}

async fn node(State(s): State<Shared>, _v: Viewer, Path(node): Path<String>) -> Response {
    let reg = s.registry.clone();
    let r = blocking(move || {
        let row = reg.find(&node)?;
        let events = reg.store().events_of(&row.mac, 200)?;
        Ok((reg.view(row), events))
    })
    .await;
    match r {
        Ok((view, events)) => {
            Json(serde_json::json!({ "node": view, "events": events })).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    name: Option<String>,
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
    let reg = s.registry.clone();
    let r = blocking(move || {
        let mac = reg.find(&node)?.mac;
        match action.as_str() {
            "approve" => reg.approve(&mac)?,
            "release" => reg.release(&mac)?,
            "enlist" => reg.enlist(&mac)?,
            "reboot" => {
                reg.command(&mac, CommandKind::Reboot)?;
            }
            "power-off" => {
                reg.command(&mac, CommandKind::PowerOff)?;
            }
            "refresh-peers" => {
                reg.command(&mac, CommandKind::RefreshPeers)?;
            }
            "rename" => {
                let name = body.name.unwrap_or_default();
                reg.rename(&mac, &name)?;
            }
            other => return Ok(Err(other.to_string())),
        }
        Ok(Ok(reg.view(reg.find(&mac)?)))
    })
    .await;
    match r {
        Ok(Ok(view)) => Json(view).into_response(),
        Ok(Err(other)) => error(StatusCode::NOT_FOUND, format!("no action {other:?}")),
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
        Ok(ev) => Json(serde_json::json!({ "events": ev })).into_response(),
        Err(r) => r,
    }
}

/// Server-sent events: every node change and registry event, as it happens.
async fn stream(
    State(s): State<Shared>,
    _v: Viewer,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.registry.subscribe();
    let stream = BroadcastStream::new(rx).filter_map(|m| async move {
        match m {
            Ok(update) => {
                let name = match &update {
                    Update::Node(_) => "node",
                    Update::Event(_) => "event",
                };
                Event::default().event(name).json_data(&update).ok().map(Ok)
            }
            // A slow dashboard missed updates: tell it to reload its snapshot.
            Err(_) => Some(Ok(Event::default().event("resync").data("{}"))),
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
