//! Agent API routes. Every request but `nonce` is signed (see `enlist_api`); the registry
//! checks signatures, sessions and sequence numbers.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enlist_api::{
    headers as h, paths, CommandResult, CommandsResponse, Heartbeat, Leaving, NonceResponse,
    PeersResponse,
};
use serde::de::DeserializeOwned;

use crate::registry::{AgentError, Signed};

use super::{error, Shared};

/// How long a command poll waits before answering "nothing" (agents poll again at once).
const COMMAND_POLL: Duration = Duration::from_secs(25);

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(paths::NONCE, get(nonce))
        .route(paths::REGISTER, post(register))
        .route(paths::HEARTBEAT, post(heartbeat))
        .route(paths::COMMANDS, post(commands))
        .route(paths::RESULT, post(result))
        .route(paths::LEAVING, post(leaving))
        .route(paths::PEERS, post(peers))
}

fn agent_error(e: AgentError) -> Response {
    let status = match &e {
        AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AgentError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        AgentError::Forbidden(_) => StatusCode::FORBIDDEN,
        AgentError::Store(err) => {
            tracing::error!("agent api: {err}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    tracing::debug!("agent api: refused: {e}");
    error(status, e.to_string())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn signed<'a>(
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: &'a [u8],
) -> Signed<'a> {
    Signed {
        method: method.as_str(),
        path: uri.path(),
        node: header(headers, h::NODE),
        session: header(headers, h::SESSION),
        seq: header(headers, h::SEQ).parse().unwrap_or(0),
        signature: header(headers, h::SIGNATURE),
        body,
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AgentError> {
    serde_json::from_slice(body).map_err(|e| AgentError::BadRequest(format!("body: {e}")))
}

/// Authenticate (memory and CPU only), then run `f`, which may use the database, on the
/// blocking pool.
async fn authed<T: Send + 'static>(
    s: &Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    f: impl FnOnce(&crate::registry::Registry, String, &[u8]) -> Result<T, AgentError> + Send + 'static,
) -> Result<T, Response> {
    let mac = s
        .registry
        .authenticate(&signed(&method, &uri, &headers, &body))
        .map_err(agent_error)?;
    let reg = s.registry.clone();
    tokio::task::spawn_blocking(move || f(&reg, mac, &body))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(agent_error)
}

async fn nonce(State(s): State<Shared>) -> Json<NonceResponse> {
    Json(NonceResponse {
        nonce: s.registry.nonce(),
    })
}

async fn register(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reg = s.registry.clone();
    let r =
        tokio::task::spawn_blocking(move || reg.register(&signed(&method, &uri, &headers, &body)))
            .await;
    match r {
        Ok(Ok(resp)) => Json(resp).into_response(),
        Ok(Err(e)) => agent_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn heartbeat(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A steady node's heartbeat is answered from memory, without a trip to the blocking pool.
    let fast = s
        .registry
        .authenticate(&signed(&method, &uri, &headers, &body))
        .and_then(|mac| Ok((parse::<Heartbeat>(&body)?, mac)));
    let (hb, mac) = match fast {
        Ok(x) => x,
        Err(e) => return agent_error(e),
    };
    if let Some(r) = s.registry.heartbeat_in_memory(&mac, &hb) {
        return Json(r).into_response();
    }
    let reg = s.registry.clone();
    match tokio::task::spawn_blocking(move || reg.heartbeat(&mac, hb)).await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => agent_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Long poll: answers as soon as a command is queued for this node, or after [`COMMAND_POLL`].
async fn commands(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mac = match authed(&s, method, uri, headers, body, |_, mac, _| Ok(mac)).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let deadline = tokio::time::Instant::now() + COMMAND_POLL;
    loop {
        let (cmds, notify) = s.registry.take_commands(&mac);
        if !cmds.is_empty() {
            return Json(CommandsResponse { commands: cmds }).into_response();
        }
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Re-check after arming, so a command queued in between is not missed.
        let (cmds, _) = s.registry.take_commands(&mac);
        if !cmds.is_empty() {
            return Json(CommandsResponse { commands: cmds }).into_response();
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Json(CommandsResponse { commands: vec![] }).into_response();
        }
    }
}

async fn result(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match authed(&s, method, uri, headers, body, |reg, mac, body| {
        let r: CommandResult = parse(body)?;
        reg.command_result(&mac, &r)
    })
    .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

async fn leaving(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match authed(&s, method, uri, headers, body, |reg, mac, body| {
        let l: Leaving = parse(body)?;
        reg.leaving(&mac, &l.reason)
    })
    .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r,
    }
}

async fn peers(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match authed(&s, method, uri, headers, body, |reg, _, _| {
        let (version, peers) = reg.peers();
        Ok(PeersResponse { version, peers })
    })
    .await
    {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}
