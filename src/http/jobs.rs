//! The jobs' admin API: rotating the cluster's munge key.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use crate::jobs::JobsError;

use super::auth::Admin;
use super::{error, Shared};

pub fn routes() -> Router<Shared> {
    Router::new().route("/api/v1/jobs/rotate-key", post(rotate_key))
}

/// Replace the munge key: the nodes that are up take it, then the head's munged. Answers once
/// done (the nodes have a minute): who was told, and who did not confirm.
async fn rotate_key(State(s): State<Shared>, _a: Admin) -> Response {
    let Some(jobs) = &s.jobs else {
        return error(
            StatusCode::CONFLICT,
            "jobs are off on this head (jobs.enabled)",
        );
    };
    match jobs.rotate_key().await {
        Ok(r) => Json(r).into_response(),
        Err(e @ JobsError::External(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
