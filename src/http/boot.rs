//! iPXE boot scripts and boot files over HTTP (with Content-Length and Range). What is served
//! is [`crate::bootfiles::BootFiles::resolve`]'s decision, as for TFTP; this is only HTTP.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use enlist_api::Mac;
use serde::Deserialize;

use crate::bootfiles::{Blob, Request, ResolveError};
use crate::bootpath::{BootPath, Kind, Proto};
use crate::metrics::labels;

use super::range::{self, Ranged};
use super::{error, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/boot.ipxe", get(script_by_query))
        .route("/boot/{*path}", get(boot_path))
        .route("/ipxe/{*path}", get(plain_file))
        .route("/images/{*path}", get(plain_file))
}

#[derive(Deserialize)]
struct MacQuery {
    mac: String,
    #[serde(default)]
    via: Option<String>,
}

#[derive(Deserialize, Default)]
struct ViaQuery {
    /// How the PC came to iPXE (`floppy`, `usb`); absent means PXE.
    #[serde(default)]
    via: Option<String>,
}

/// The boot method put on the kernel command line for the agent to report.
fn boot_method(via: Option<&str>) -> &'static str {
    match via {
        Some("floppy") => "floppy",
        Some("usb") => "usb",
        _ => "pxe",
    }
}

/// `/boot.ipxe?mac=...`: what the boot floppy and older scripts ask for.
async fn script_by_query(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<MacQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(mac) = Mac::parse(&q.mac) else {
        return refuse(&s, peer, StatusCode::BAD_REQUEST, "bad-mac", "boot script");
    };
    let method = boot_method(q.via.as_deref());
    file(s, peer, BootPath::Script(mac), method, headers).await
}

/// `/boot/...` (a node's script or initrd), as iPXE asks, with how it came (`?via=`).
async fn boot_path(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    Query(q): Query<ViaQuery>,
    headers: HeaderMap,
) -> Response {
    let method = boot_method(q.via.as_deref());
    by_uri(s, peer, &uri, method, headers).await
}

/// `/ipxe/<file>` and `/images/...`.
async fn plain_file(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    by_uri(s, peer, &uri, "pxe", headers).await
}

/// The boot path an HTTP request names ([`BootPath::from_http`]), sent.
async fn by_uri(
    s: Shared,
    peer: SocketAddr,
    uri: &Uri,
    method: &'static str,
    headers: HeaderMap,
) -> Response {
    match BootPath::from_http(uri.path()) {
        Ok(p) => file(s, peer, p, method, headers).await,
        Err(e) => {
            let shown = e.path.clone();
            refuse_resolve(&s, peer, &shown, &ResolveError::Refused(e))
        }
    }
}

fn refuse(s: &Shared, peer: SocketAddr, status: StatusCode, reason: &str, what: &str) -> Response {
    tracing::debug!(%peer, "http: refused {what}: {reason}");
    s.metrics
        .http_refused
        .get_or_create(&labels(&[("reason", reason)]))
        .inc();
    error(status, format!("{what}: {reason}"))
}

fn refuse_resolve(s: &Shared, peer: SocketAddr, path: &str, e: &ResolveError) -> Response {
    let status = match e {
        ResolveError::Refused(_) | ResolveError::Forbidden { .. } => StatusCode::FORBIDDEN,
        ResolveError::NotFound(_) => StatusCode::NOT_FOUND,
        ResolveError::Io { .. } => {
            tracing::warn!(%peer, "http: {e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    refuse(s, peer, status, e.reason(), path)
}

/// Resolve `boot` for `peer` and send it (or the part a Range header asks for).
async fn file(
    s: Shared,
    peer: SocketAddr,
    boot: BootPath,
    method: &'static str,
    headers: HeaderMap,
) -> Response {
    let files = s.files.clone();
    let path = boot.to_string();
    let p = path.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        let req = Request {
            path: &p,
            from: peer.ip(),
            proto: Proto::Http,
            method,
        };
        files.resolve_path(&boot, &req)
    })
    .await;
    let blob = match resolved {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return refuse_resolve(&s, peer, &path, &e),
        Err(e) => {
            tracing::error!("http file task: {e}");
            return refuse(
                &s,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &path,
            );
        }
    };
    let len = blob.len();
    let ranged = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(Ranged::Whole, |v| range::parse(v, len));
    let (start, end) = match ranged {
        Ranged::Whole => (0, len),
        Ranged::Part { start, end } => (start, end),
        Ranged::Unsatisfiable => {
            let mut r = refuse(
                &s,
                peer,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad-range",
                &path,
            );
            if let Ok(v) = format!("bytes */{len}").parse() {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    if start == 0 {
        record(&s, peer, &blob, &path);
    }
    s.metrics.http_bytes.inc_by(end - start);
    respond(&blob, start, end, matches!(ranged, Ranged::Part { .. }))
}

/// Count the transfer; tell the registry (off the transfer's path: it may write to disk).
fn record(s: &Shared, peer: SocketAddr, blob: &Blob, path: &str) {
    s.metrics
        .http_transfers
        .get_or_create(&labels(&[("kind", blob.kind.as_str())]))
        .inc();
    // A script's fetch is recorded by the boot decision that made it.
    if blob.kind != Kind::Script {
        let (reg, mac, kind, p) = (s.registry.clone(), blob.mac, blob.kind, path.to_string());
        tokio::task::spawn_blocking(move || {
            crate::bootfiles::FetchObserver::fetched(&*reg, mac, peer.ip(), kind, &p, Proto::Http)
        });
    }
}

fn respond(blob: &Blob, start: u64, end: u64, partial: bool) -> Response {
    let chunks = blob.slice(start, end);
    let body = Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    let ctype = if blob.kind == Kind::Script {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    // An image version's files never change (a new build is a new version): an HTTP cache
    // near a room (images.mirrors) may keep them for good. A node's script and initrd are its
    // own, for one boot: never kept. iPXE binaries change with an upgrade: asked again.
    let cache = match (blob.mac, blob.kind) {
        (Some(_), _) => "no-store",
        (None, Kind::Ipxe) => "no-cache",
        (None, _) => "public, max-age=31536000, immutable",
    };
    let mut resp = Response::builder()
        .header(header::CACHE_CONTROL, cache)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes");
    if partial {
        resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", end - 1, blob.len()),
        );
    }
    resp.body(body)
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
