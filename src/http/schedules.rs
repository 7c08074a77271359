//! Admin API for schedules: where each scheduled group stands and its next change (anyone who
//! may view the dashboard), skip or un-skip that change, or run it now (admin login).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enlist_api::admin::{ScheduleAction, ScheduleList};
use jiff::Timestamp;

use crate::timetable::TimetableError;

use super::auth::{Admin, Viewer};
use super::{error, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/schedules", get(list))
        .route("/api/v1/schedules/{group}/{action}", post(change))
}

async fn list(State(s): State<Shared>, _v: Viewer) -> Response {
    let list = s
        .schedules
        .as_ref()
        .map(|sched| sched.list(Timestamp::now()))
        .unwrap_or_default();
    Json(ScheduleList { schedules: list }).into_response()
}

/// `skip`, `unskip` or `run-now`; a run-now is acted on at once, not at the next look.
async fn change(
    State(s): State<Shared>,
    _a: Admin,
    Path((group, action)): Path<(String, String)>,
) -> Response {
    let Some(sched) = s.schedules.clone() else {
        return error(StatusCode::NOT_FOUND, "no schedules are configured");
    };
    let now = Timestamp::now();
    let Some(action) = ScheduleAction::parse(&action) else {
        return error(StatusCode::NOT_FOUND, format!("no action {action:?}"));
    };
    let r = match action {
        ScheduleAction::Skip => sched.skip(&group, true, now),
        ScheduleAction::Unskip => sched.skip(&group, false, now),
        ScheduleAction::RunNow => sched.run_now(&group, now),
    };
    match r {
        Ok(view) => {
            tracing::info!(%group, action = action.name(), "schedule changed by admin");
            if action == ScheduleAction::RunNow {
                tokio::spawn(async move { sched.tick(Timestamp::now()).await });
            }
            Json(view).into_response()
        }
        Err(e @ (TimetableError::NoSchedule(_) | TimetableError::NothingAhead(_))) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => {
            tracing::error!("schedule: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
