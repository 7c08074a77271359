//! Admin API for `enlist exec`: run a shell command on chosen nodes (admin login; it runs as
//! root there), then read each node's answer. The nodes: a host list (`node-[01-03]`), a
//! group, or every node that is up.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enlist_api::{ExecSpec, Mac};
use serde::Deserialize;

use crate::exec::MAX_TARGETS;
use crate::registry::{Registry, RegistryError};

use super::admin::blocking;
use super::auth::Admin;
use super::{error, Shared};

/// What `enlist exec` waits for a node unless told: clush's default is none; a node that hangs
/// must not hang the admin's terminal.
const DEFAULT_TIMEOUT_SECS: u32 = 60;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/exec", post(start))
        .route("/api/v1/exec/{id}", get(read))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecRequest {
    command: String,
    #[serde(default)]
    timeout_secs: Option<u32>,
    /// A host list: `node-[01-03],lab-pc-7`.
    #[serde(default)]
    nodes: Option<String>,
    #[serde(default)]
    group: Option<String>,
    /// Every node that is up.
    #[serde(default)]
    all: bool,
    /// Nodes running it at once at most (clush's fan-out).
    #[serde(default)]
    fanout: Option<usize>,
}

async fn start(
    State(s): State<Shared>,
    _a: Admin,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<ExecRequest>,
) -> Response {
    let spec = ExecSpec {
        command: req.command.clone(),
        timeout_secs: req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
    };
    if let Err(e) = spec.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let (reg, execs) = (s.registry.clone(), s.execs.clone());
    let who = format!("admin from {}", peer.ip());
    let r = blocking(move || {
        let macs = match targets(&reg, &req) {
            Ok(m) => m,
            Err(why) => return Ok(Err(why)),
        };
        let names: Vec<String> = macs
            .iter()
            .filter_map(|m| reg.node(*m).ok().map(|r| r.name))
            .collect();
        let fanout = req.fanout.unwrap_or(crate::exec::DEFAULT_FANOUT);
        let id = execs.start(&reg, &macs, &spec, fanout, &who)?;
        Ok(Ok((id, names)))
    })
    .await;
    match r {
        Ok(Ok((id, nodes))) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "id": id, "nodes": nodes })),
        )
            .into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(r) => r,
    }
}

/// The nodes a request names, each once, in name order.
fn targets(reg: &Registry, req: &ExecRequest) -> Result<Vec<Mac>, String> {
    let chosen = [req.nodes.is_some(), req.group.is_some(), req.all];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Err("name the nodes: exactly one of nodes, group, all".into());
    }
    let mut macs = Vec::new();
    if let Some(list) = &req.nodes {
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
        let views = reg.views().map_err(|e| e.to_string())?;
        macs = views
            .iter()
            .filter(|v| v.state.is_alive() && !v.candidate)
            .filter(|v| req.group.as_ref().is_none_or(|g| &v.group == g))
            .map(|v| v.mac)
            .collect();
        if macs.is_empty() {
            return Err(match &req.group {
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
