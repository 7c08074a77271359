//! The head's HTTP service (axum): boot scripts and files for iPXE, the agent API, the admin
//! API and dashboard, and `/metrics`.
//!
//! | module      | routes                                                              |
//! |-------------|---------------------------------------------------------------------|
//! | `boot`      | `/boot/<mac>.ipxe`, `/boot.ipxe?mac=`, `/ipxe/*`, `/images/*`, `/boot/*` |
//! | `agent`     | `/api/v1/agent/*` (signed by node keys, replies signed too)          |
//! | `admin`     | `/api/v1/login`, `/api/v1/nodes...`, `/api/v1/events`, `/api/v1/stream` |
//! | `jobs`      | `/api/v1/jobs/rotate-key`                                            |
//! | `dashboard` | `/`, assets, `/api/v1/openapi.json`                                  |
//!
//! Nodes use the first two; admins the last two, on the same listener or (with `admin.listen`)
//! on their own, with TLS. `listener` is the socket edge (caps, timeouts, TLS).

mod admin;
mod agent;
pub mod auth;
mod boot;
mod dashboard;
mod exec;
mod jobs;
pub mod listener;
pub mod range;
mod schedules;
pub mod tls;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

use crate::bootfiles::BootFiles;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Everything the handlers share.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub files: Arc<BootFiles>,
    pub metrics: Arc<Metrics>,
    pub auth: auth::Auth,
    /// Live dashboard streams at most (`http.max_streams`), and how many are open.
    pub max_streams: usize,
    pub streams: AtomicUsize,
    /// Jobs through Slurm, when `jobs.enabled`.
    pub jobs: Option<Arc<crate::jobs::Jobs>>,
    /// The workload manager releases go through (Slurm, or none when jobs are off).
    pub workload: Arc<dyn crate::workload::Workload>,
    /// `enlist exec` runs and their answers.
    pub execs: Arc<crate::exec::Execs>,
    /// Group schedules, when the config has any.
    pub schedules: Option<Arc<crate::timetable::Timetable>>,
    /// Each node's logs, as its agent sends them.
    pub logs: Arc<crate::nodelogs::NodeLogs>,
}

pub type Shared = Arc<AppState>;

/// Largest request body (agents send a few KB; admins less).
const MAX_BODY: usize = enlist_api::MAX_BODY;

/// What nodes use: boot files and the agent API.
pub fn node_router(state: Shared) -> Router {
    Router::new()
        .merge(boot::routes())
        .merge(agent::routes())
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// What admins use: the dashboard and the admin API.
pub fn admin_router(state: Shared) -> Router {
    Router::new()
        .merge(admin::routes())
        .merge(exec::routes())
        .merge(schedules::routes())
        .merge(jobs::routes())
        .merge(dashboard::routes())
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Everything on one listener (no `admin.listen`).
pub fn router(state: Shared) -> Router {
    Router::new()
        .merge(boot::routes())
        .merge(agent::routes())
        .merge(admin::routes())
        .merge(exec::routes())
        .merge(schedules::routes())
        .merge(jobs::routes())
        .merge(dashboard::routes())
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the classic text format.
async fn metrics(
    axum::extract::State(s): axum::extract::State<Shared>,
    headers: axum::http::HeaderMap,
) -> impl axum::response::IntoResponse {
    use axum::http::header;
    let wants_om = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.contains("application/openmetrics-text"))
        .unwrap_or(false);
    if wants_om {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.metrics.render(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.metrics.render_prometheus(),
        )
    }
}

/// Shape TCP for the NICs of period PCs. Their boot ROMs (iPXE on an EtherExpress or NE2000)
/// have a handful of receive buffers and an emulated or slow CPU; a line-rate burst overflows
/// them, and with a rate-probing congestion control (BBR) the losses repeat until the RTO
/// backs off to tens of seconds. Loss-based Reno plus a pacing cap keeps downloads flowing.
#[allow(unsafe_code)] // setsockopt(SO_MAX_PACING_RATE): no safe wrapper in socket2
pub(crate) fn tune_boot_socket(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    sock.set_nodelay(true)?;
    // Bound the unacknowledged data to a few segments: what a boot ROM's receive ring holds.
    sock.set_send_buffer_size(SEND_BUFFER_BYTES)?;
    // Reno is always allowed for unprivileged sockets; failure only means keeping the default.
    let _ = sock.set_tcp_congestion(b"reno");
    // With so few segments in flight a lost one is found by its timeout, not by duplicate
    // ACKs; on a lossy cable the timeout then doubled with every loss in a row (0.2, 0.4,
    // 0.8, 1.6 s). Linear timeouts for such thin streams keep each retry at the first.
    let _ = sock.set_thin_linear_timeouts(true);
    // SO_MAX_PACING_RATE, bytes per second (Linux paces TCP internally without fq).
    let rate: u32 = PACING_BYTES_PER_SEC;
    // SAFETY: plain setsockopt on a valid fd with a u32 value.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(tcp),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&rate as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel doubles this; with per-packet overhead it allows about three full segments in flight.
const SEND_BUFFER_BYTES: usize = 4096;

/// Per download.
const PACING_BYTES_PER_SEC: u32 = 4_000_000;

/// A JSON error body with a status code; every refusal goes through here.
pub(crate) fn error(
    status: axum::http::StatusCode,
    message: impl Into<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}
