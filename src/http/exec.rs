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
use enlist_api::admin::{ExecOrder, ExecRequest, ExecStarted, Targets};
use enlist_api::Mac;

use crate::exec::MAX_TARGETS;
use crate::registry::{Registry, RegistryError};

use super::admin::blocking;
use super::auth::Admin;
use super::{error, Shared};

/// What `enlist exec` waits for a node unless told: clush's default is none; a node that hangs
/// must not hang the admin's terminal.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/exec", post(start))
        .route("/api/v1/exec/{id}", get(read))
}

async fn start(
    State(s): State<Shared>,
    _a: Admin,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<ExecRequest>,
) -> Response {
    let order = match ExecOrder::try_from(req) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (reg, execs) = (s.registry.clone(), s.execs.clone());
    let who = format!("admin from {}", peer.ip());
    let r = blocking(move || {
        let macs = match targets(&reg, &order.targets) {
            Ok(m) => m,
            Err(why) => return Ok(Err(why)),
        };
        let names: Vec<String> = macs
            .iter()
            .filter_map(|m| reg.node(*m).ok().map(|r| r.name))
            .collect();
        let id = execs.start(&reg, &macs, &order.spec, order.fanout, &who)?;
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
