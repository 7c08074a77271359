//! The jobs' admin API: rotating the cluster's munge key; Slurm's power saving (its resume
//! and suspend programs call these through the admin socket).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use enlist_api::admin::PowerRequest;

use crate::jobs::JobsError;
use crate::timetable::TimetableError;

use super::auth::Admin;
use super::{error, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/jobs/rotate-key", post(rotate_key))
        .route("/api/v1/jobs/resume", post(resume))
        .route("/api/v1/jobs/suspend", post(suspend))
}

/// Slurm's ResumeProgram: wake these nodes (see [`crate::timetable::on_demand`]).
async fn resume(State(s): State<Shared>, _a: Admin, body: axum::body::Bytes) -> Response {
    power(&s, &body, true).await
}

/// Slurm's SuspendProgram: release these nodes; Slurm keeps them, asleep.
async fn suspend(State(s): State<Shared>, _a: Admin, body: axum::body::Bytes) -> Response {
    power(&s, &body, false).await
}

async fn power(s: &Shared, body: &[u8], resume: bool) -> Response {
    let Some(t) = &s.schedules else {
        return error(
            StatusCode::CONFLICT,
            "no group is woken on demand on this head (schedules[].wake)",
        );
    };
    let req: PowerRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let r = if resume {
        t.resume(&req.nodes).await
    } else {
        t.suspend(&req.nodes).await
    };
    match r {
        Ok(a) => Json(a).into_response(),
        Err(e @ TimetableError::BadRequest(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
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
