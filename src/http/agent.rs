//! Agent API routes. Every request but `nonce` is signed (see `enlist_api`) and checked by the
//! [`Agent`] extractor before its handler runs; every reply is signed for the node, so an agent
//! on an open network can tell the head's answers from anyone else's.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enlist_api::{
    headers as h, paths, CommandResult, CommandsResponse, CopyFetch, ExecResult, Heartbeat,
    JobsDescriptor, JobsRequest, Leaving, Mac, NodeLogs, NodeStatus, NonceResponse, PeersResponse,
    ReplyAuth,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

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
        .route(paths::JOBS, post(jobs))
        .route(paths::STATUS, post(status))
        .route(paths::EXEC_RESULT, post(exec_result))
        .route(paths::LOGS, post(logs))
        .route(paths::COPY_FILE, post(copy_file))
}

fn agent_error(e: AgentError) -> Response {
    let status = match &e {
        AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AgentError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
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

/// The signature headers and body of a request, before they are checked.
struct Raw {
    from: std::net::IpAddr,
    method: String,
    path: String,
    node: String,
    session: String,
    seq: u64,
    signature: String,
    body: Bytes,
}

impl Raw {
    async fn read(req: Request, s: &Shared) -> Result<Raw, Response> {
        let (parts, body) = req.into_parts();
        let from = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let body = axum::body::to_bytes(body, enlist_api::MAX_BODY)
            .await
            .map_err(|_| {
                let e = AgentError::TooLarge;
                s.metrics.refused(&s.metrics.agent_refused, e.reason());
                agent_error(e)
            })?;
        Ok(Raw {
            from,
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            node: header(h::NODE),
            session: header(h::SESSION),
            seq: header(h::SEQ).parse().unwrap_or(0),
            signature: header(h::SIGNATURE),
            body,
        })
    }

    fn signed(&self) -> Signed<'_> {
        Signed {
            from: self.from,
            method: &self.method,
            path: &self.path,
            node: &self.node,
            session: &self.session,
            seq: self.seq,
            signature: &self.signature,
            body: &self.body,
        }
    }
}

/// An authenticated agent request (signature, session and sequence number checked; memory
/// and CPU only, so on the async threads).
pub struct Agent {
    pub mac: Mac,
    raw: Raw,
}

impl FromRequest<Shared> for Agent {
    type Rejection = Response;

    async fn from_request(req: Request, s: &Shared) -> Result<Self, Self::Rejection> {
        let raw = Raw::read(req, s).await?;
        let mac = s
            .registry
            .authenticate(&raw.signed())
            .map_err(agent_error)?;
        Ok(Agent { mac, raw })
    }
}

impl Agent {
    /// The body, read and checked (every wire type checks its values as it is parsed); a
    /// refusal is counted as the registry counts its own.
    fn body<T: DeserializeOwned>(&self, s: &Shared) -> Result<T, AgentError> {
        serde_json::from_slice(&self.raw.body).map_err(|e| {
            let e = AgentError::BadRequest(format!("body: {e}"));
            s.metrics.refused(&s.metrics.agent_refused, e.reason());
            e
        })
    }

    /// A JSON reply signed for this node and request.
    fn reply<T: Serialize>(&self, s: &Shared, value: &T) -> Response {
        signed_reply(
            s,
            self.mac,
            &self.raw.path,
            &self.raw.session,
            self.raw.seq,
            value,
        )
    }
}

fn signed_reply<T: Serialize>(
    s: &Shared,
    mac: Mac,
    path: &str,
    session: &str,
    seq: u64,
    value: &T,
) -> Response {
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    signed_bytes(s, mac, (path, session, seq), "application/json", body)
}

/// A reply of `body` signed for the node and its request (path, session, sequence number).
fn signed_bytes(
    s: &Shared,
    mac: Mac,
    (path, session, seq): (&str, &str, u64),
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    let sig = ReplyAuth { path, session, seq }.sign(&s.registry.reply_key(mac), &body);
    let mut resp = ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&sig) {
        resp.headers_mut().insert(h::REPLY_SIGNATURE, v);
    }
    resp
}

/// Run `f` on the blocking pool (it may write the database).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(agent_error)
}

async fn nonce(State(s): State<Shared>) -> Json<NonceResponse> {
    Json(NonceResponse {
        nonce: s.registry.nonce(),
    })
}

async fn register(State(s): State<Shared>, req: Request) -> Response {
    let raw = match Raw::read(req, &s).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let reg = s.registry.clone();
    let r = tokio::task::spawn_blocking(move || reg.register(&raw.signed())).await;
    match r {
        // Signed over the agent's own challenge: a recorded reply is no good to anyone.
        Ok(Ok(ok)) => signed_reply(&s, ok.mac, paths::REGISTER, &ok.challenge, 0, &ok.response),
        Ok(Err(e)) => agent_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn heartbeat(State(s): State<Shared>, a: Agent) -> Response {
    let hb: Heartbeat = match a.body(&s) {
        Ok(hb) => hb,
        Err(e) => return agent_error(e),
    };
    // The accounts jobs run as: a node that has another version fetches them again.
    let with_accounts = |mut r: enlist_api::HeartbeatResponse| {
        r.accounts_version = s.jobs.as_ref().map_or(0, |j| j.accounts_version());
        r
    };
    // A steady node's heartbeat is answered from memory, without a trip to the blocking pool.
    match s.registry.heartbeat_in_memory(a.mac, &hb) {
        Ok(Some(r)) => return a.reply(&s, &with_accounts(r)),
        Ok(None) => {}
        Err(e) => return agent_error(e),
    }
    let (reg, mac) = (s.registry.clone(), a.mac);
    match blocking(move || reg.heartbeat(mac, &hb)).await {
        Ok(r) => a.reply(&s, &with_accounts(r)),
        Err(r) => r,
    }
}

/// Long poll: answers as soon as a command is queued for this node, or after [`COMMAND_POLL`].
async fn commands(State(s): State<Shared>, a: Agent) -> Response {
    let deadline = tokio::time::Instant::now() + COMMAND_POLL;
    loop {
        let (cmds, notify) = s.registry.take_commands(a.mac);
        if !cmds.is_empty() {
            return a.reply(&s, &CommandsResponse { commands: cmds });
        }
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Re-check after arming, so a command queued in between is not missed.
        let (cmds, _) = s.registry.take_commands(a.mac);
        if !cmds.is_empty() {
            return a.reply(&s, &CommandsResponse { commands: cmds });
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return a.reply(&s, &CommandsResponse { commands: vec![] });
        }
    }
}

async fn result(State(s): State<Shared>, a: Agent) -> Response {
    let r: CommandResult = match a.body(&s) {
        Ok(r) => r,
        Err(e) => return agent_error(e),
    };
    let (reg, mac) = (s.registry.clone(), a.mac);
    match blocking(move || reg.command_result(mac, &r)).await {
        Ok(()) => a.reply(&s, &serde_json::Value::Null),
        Err(r) => r,
    }
}

async fn leaving(State(s): State<Shared>, a: Agent) -> Response {
    let l: Leaving = match a.body(&s) {
        Ok(l) => l,
        Err(e) => return agent_error(e),
    };
    let (reg, mac) = (s.registry.clone(), a.mac);
    match blocking(move || reg.leaving(mac, &l.reason)).await {
        Ok(()) => a.reply(&s, &serde_json::Value::Null),
        Err(r) => r,
    }
}

/// A batch of the node's log lines: appended to its log at the head.
async fn logs(State(s): State<Shared>, a: Agent) -> Response {
    // Checked as it is parsed (lines, sizes, sources), as every agent body is.
    let batch: NodeLogs = match a.body(&s) {
        Ok(b) => b,
        Err(e) => return agent_error(e),
    };
    let (logs, mac) = (s.logs.clone(), a.mac);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let written = tokio::task::spawn_blocking(move || {
        logs.append(mac, batch.boot, batch.dropped, &batch.lines, &now)
    })
    .await;
    match written {
        Ok(Ok(())) => a.reply(&s, &serde_json::Value::Null),
        Ok(Err(e)) => {
            tracing::warn!(%mac, "{e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// How this node joins the scheduler (off when jobs are off); its munge key sealed for it.
async fn jobs(State(s): State<Shared>, a: Agent) -> Response {
    let req: JobsRequest = match a.body(&s) {
        Ok(r) => r,
        Err(e) => return agent_error(e),
    };
    let off = || JobsDescriptor {
        enabled: false,
        controller: String::new(),
        munge_socket: String::new(),
        munge_key: None,
        bundle: None,
        env: None,
        home: None,
        users: vec![],
        groups: vec![],
        accounts_version: 0,
        feature: String::new(),
        mem_reserve_mb: 0,
        now_unix: crate::store::now(),
        slurmd_port: 0,
        slurmd_allow: vec![],
    };
    let Some(jobs) = s.jobs.clone() else {
        return a.reply(&s, &off());
    };
    // Only a node that may be in the cluster gets the key: enlisted and let in (not one
    // being released, held back, or waiting for approval).
    let (reg, mac) = (s.registry.clone(), a.mac);
    let r = blocking(move || {
        let row = reg
            .node(mac)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let member = row.state.is_peer() && row.approved && !row.released;
        if member {
            jobs.note_joining(&row);
        }
        Ok(member.then(|| jobs.descriptor(mac, &row.group, &req)))
    })
    .await;
    match r {
        Ok(d) => a.reply(&s, &d.unwrap_or_else(off)),
        Err(r) => r,
    }
}

/// What the agent says of its part in the jobs.
async fn status(State(s): State<Shared>, a: Agent) -> Response {
    let st: NodeStatus = match a.body(&s) {
        Ok(r) => r,
        Err(e) => return agent_error(e),
    };
    let (reg, mac) = (s.registry.clone(), a.mac);
    let r = tokio::task::spawn_blocking(move || reg.jobs_status(mac, &st)).await;
    match r {
        Ok(Ok(())) => a.reply(&s, &serde_json::Value::Null),
        Ok(Err(e)) => agent_error(AgentError::BadRequest(e.to_string())),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A node's answer to an `enlist exec` command: kept with its run, noted in its history.
/// The file of a copy command, to the node it was sent to while the command runs (the agent
/// checks it against the command's signed size and SHA-256).
async fn copy_file(State(s): State<Shared>, a: Agent) -> Response {
    let fetch: CopyFetch = match a.body(&s) {
        Ok(f) => f,
        Err(e) => return agent_error(e),
    };
    let Some(bytes) = s.execs.copy_file(a.mac, fetch.id) else {
        tracing::debug!(mac = %a.mac, id = fetch.id, "copy file refused: no such copy running for the node");
        s.metrics.refused(&s.metrics.http_refused, "copy-unknown");
        return error(
            StatusCode::NOT_FOUND,
            format!("no copy #{} running for this node", fetch.id),
        );
    };
    let raw = &a.raw;
    signed_bytes(
        &s,
        a.mac,
        (&raw.path, &raw.session, raw.seq),
        "application/octet-stream",
        bytes.to_vec(),
    )
}

async fn exec_result(State(s): State<Shared>, a: Agent) -> Response {
    // Checked as it is read (its output within MAX_EXEC_OUTPUT), as every agent body is.
    let r: ExecResult = match a.body(&s) {
        Ok(r) => r,
        Err(e) => return agent_error(e),
    };
    let summary = r.done.then(|| crate::exec::summary(&r));
    let (reg, execs, mac) = (s.registry.clone(), s.execs.clone(), a.mac);
    // The run's bookkeeping and the history write (the next node's command, how this one
    // ended) touch the database: off the async workers.
    let answered = blocking(move || {
        if !execs.answer(&reg, mac, r) {
            return Ok(false);
        }
        // Progress reports (output so far) are not history; how it ended is.
        match summary {
            Some(summary) => reg
                .note(mac, "exec", &summary)
                .map(|()| true)
                .map_err(|e| AgentError::BadRequest(e.to_string())),
            None => Ok(true),
        }
    })
    .await;
    match answered {
        Ok(true) => a.reply(&s, &serde_json::Value::Null),
        Ok(false) => {
            tracing::debug!(mac = %a.mac, "exec answer dropped: no such command running");
            s.metrics.refused(&s.metrics.http_refused, "exec-unknown");
            a.reply(&s, &serde_json::Value::Null)
        }
        Err(r) => r,
    }
}

async fn peers(State(s): State<Shared>, a: Agent) -> Response {
    let (version, peers) = s.registry.peers();
    a.reply(&s, &PeersResponse { version, peers })
}
