//! Admin API for `enlist exec`: run a shell command on chosen nodes (admin login; it runs as
//! root there), then read each node's answer. The nodes: a host list (`node-[01-03]`), a
//! group, or every node that is up.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enlist_api::admin::{CopyOrder, CopyRequest, ExecOrder, ExecRequest, ExecStarted, Targets};
use enlist_api::Mac;

use crate::exec::{Work, MAX_TARGETS};
use crate::registry::{Registry, RegistryError};

use super::admin::blocking;
use super::auth::Admin;
use super::{error, Shared};

/// What `enlist exec` waits for a node unless told: clush's default is none; a node that hangs
/// must not hang the admin's terminal.
/// The largest body of `POST /api/v1/copy`: the file's base64 and the rest of the request.
const COPY_BODY: usize = enlist_api::MAX_COPY_BYTES.div_ceil(3) * 4 + 16 * 1024;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/exec", post(start))
        // A file's base64 is larger than the API's other bodies.
        .route(
            "/api/v1/copy",
            post(copy).layer(DefaultBodyLimit::max(COPY_BODY)),
        )
        .route("/api/v1/exec/{id}", get(read))
}

async fn start(
    State(s): State<Shared>,
    _a: Admin,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<ExecRequest>,
) -> Response {
    match ExecOrder::try_from(req) {
        Ok(o) => begin(s, peer, o.targets, Work::Exec(o.spec), o.fanout).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `enlist copy`: a file for the nodes, run as an exec run is (its results read the same).
async fn copy(
    State(s): State<Shared>,
    _a: Admin,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<CopyRequest>,
) -> Response {
    match CopyOrder::try_from(req) {
        Ok(o) => {
            let work = Work::Copy(o.spec, std::sync::Arc::new(o.bytes));
            begin(s, peer, o.targets, work, o.fanout).await
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Start a run of `work` on `targets`: 202 with its id and nodes.
async fn begin(
    s: Shared,
    peer: SocketAddr,
    targets: Targets,
    work: Work,
    fanout: usize,
) -> Response {
    let (reg, execs) = (s.registry.clone(), s.execs.clone());
    let who = format!("admin from {}", peer.ip());
    let r = blocking(move || {
        let macs = match self::targets(&reg, &targets) {
            Ok(m) => m,
            Err(why) => return Ok(Err(why)),
        };
        let names: Vec<String> = macs
            .iter()
            .filter_map(|m| reg.node(*m).ok().map(|r| r.name))
            .collect();
        let id = execs.start(&reg, &macs, work, fanout, &who)?;
        Ok(Ok(ExecStarted { id, nodes: names }))
    })
    .await;
    match r {
        Ok(Ok(started)) => (StatusCode::ACCEPTED, Json(started)).into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(r) => r,
    }
}

fn targets(reg: &Registry, targets: &Targets) -> Result<Vec<Mac>, String> {
    let mut macs = Vec::new();
    if let Targets::Nodes(list) = targets {
        let names = crate::hostlist::expand(list).map_err(|e| format!("nodes: {e}"))?;
        if names.len() > MAX_TARGETS {
            return Err(format!("nodes: more than {MAX_TARGETS}"));
        }
        for n in names {
            let row = reg.find(&n).map_err(|e| match e {
                RegistryError::UnknownNode(_) | RegistryError::NotFound(_) => {
                    format!("nodes: no node {n:?}")
                }
                other => other.to_string(),
            })?;
            macs.push(row.mac);
        }
    } else {
        let group = match targets {
            Targets::Group(g) => Some(g),
            _ => None,
        };
        let views = reg.views().map_err(|e| e.to_string())?;
        macs = views
            .iter()
            .filter(|v| v.state.is_alive() && !v.candidate)
            .filter(|v| group.is_none_or(|g| &v.group == g))
            .map(|v| v.mac)
            .collect();
        if macs.is_empty() {
            return Err(match group {
                Some(g) => format!("no node of group {g:?} is up"),
                None => "no node is up".into(),
            });
        }
    }
    macs.dedup();
    Ok(macs)
}

async fn read(State(s): State<Shared>, _a: Admin, Path(id): Path<u64>) -> Response {
    let (reg, execs) = (s.registry.clone(), s.execs.clone());
    let r = blocking(move || Ok(execs.view(&reg, id, Instant::now()))).await;
    match r {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no exec run {id}")),
        Err(r) => r,
    }
}
