//! iPXE boot scripts and boot files over HTTP (with Content-Length and Range).

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::bootfiles::ResolveError;
use crate::bootscript;
use crate::metrics::labels;

use super::{error, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/boot.ipxe", get(script_by_query))
        .route("/boot/{*path}", get(boot_path))
        .route("/ipxe/{*path}", get(ipxe_file))
        .route("/images/{*path}", get(image_file))
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

async fn script_by_query(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<MacQuery>,
) -> Response {
    script(s, peer, &q.mac, boot_method(q.via.as_deref())).await
}

/// `/boot/<mac>.ipxe` is a script; `/boot/<mac>/<image>/<version>/initrd` a per-node initrd.
async fn boot_path(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    Query(q): Query<ViaQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(mac) = path.strip_suffix(".ipxe").filter(|m| !m.contains('/')) {
        return script(s, peer, mac, boot_method(q.via.as_deref())).await;
    }
    file(s, peer, format!("boot/{path}"), headers).await
}

async fn ipxe_file(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    file(s, peer, path, headers).await
}

async fn image_file(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    file(s, peer, format!("images/{path}"), headers).await
}

fn refuse(s: &Shared, peer: SocketAddr, status: StatusCode, reason: &str, what: &str) -> Response {
    tracing::debug!(%peer, "http: refused {what}: {reason}");
    s.metrics
        .http_refused
        .get_or_create(&labels(&[("reason", reason)]))
        .inc();
    error(status, format!("{what}: {reason}"))
}

async fn script(s: Shared, peer: SocketAddr, mac: &str, method: &'static str) -> Response {
    let Some(mac) = enlist_api::normalize_mac(mac) else {
        return refuse(&s, peer, StatusCode::BAD_REQUEST, "bad-mac", "boot script");
    };
    let ip = match peer.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    };
    let reg = s.registry.clone();
    let images = s.files.images().clone();
    let m = mac.clone();
    let rendered =
        tokio::task::spawn_blocking(move || bootscript::render(&reg, &images, &m, ip, method))
            .await;
    let text = match rendered {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::error!(%mac, "boot script: {e}");
            return refuse(
                &s,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                "registry-error",
                "boot script",
            );
        }
        Err(e) => {
            tracing::error!(%mac, "boot script task: {e}");
            return refuse(
                &s,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "boot script",
            );
        }
    };
    s.metrics
        .http_transfers
        .get_or_create(&labels(&[("kind", "script")]))
        .inc();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// Parse a single `bytes=` range against a length. `None` means "serve it all".
fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multipart ranges are never needed for boot files; serve the whole file.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| ())?;
            let b: u64 = b.parse().map_err(|_| ())?;
            (a, b.saturating_add(1).min(len))
        }
    };
    if start >= end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn file(s: Shared, peer: SocketAddr, path: String, headers: HeaderMap) -> Response {
    let files = s.files.clone();
    let p = path.clone();
    let blob = match tokio::task::spawn_blocking(move || files.resolve(&p)).await {
        Ok(r) => r,
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
    let blob = match blob {
        Ok(b) => b,
        Err(e @ ResolveError::Refused { .. }) => {
            return refuse(&s, peer, StatusCode::FORBIDDEN, e.reason(), &path)
        }
        Err(e @ ResolveError::NotFound(_)) => {
            return refuse(&s, peer, StatusCode::NOT_FOUND, e.reason(), &path)
        }
        Err(e) => {
            tracing::warn!(%peer, "http: {e}");
            return refuse(
                &s,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                e.reason(),
                &path,
            );
        }
    };
    let len = blob.len();
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) => match parse_range(v, len) {
            Ok(r) => r,
            Err(()) => {
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
        },
        None => None,
    };
    let (start, end) = range.unwrap_or((0, len));
    if start == 0 {
        let (reg, mac, kind, p) = (
            s.registry.clone(),
            blob.mac.clone(),
            blob.kind,
            path.clone(),
        );
        // Registry writes hit the disk: keep them off the async workers, and off the transfer's path.
        tokio::task::spawn_blocking(move || reg.fetched_http(mac.as_deref(), peer.ip(), kind, &p));
        s.metrics
            .http_transfers
            .get_or_create(&labels(&[("kind", blob.kind.as_str())]))
            .inc();
    }
    s.metrics.http_bytes.inc_by(end - start);
    let chunks = blob.slice(start, end);
    let body = Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes");
    if range.is_some() {
        resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    resp.body(body)
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 100))));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=990-5000", 1000), Ok(Some((990, 1000))));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(()));
        assert_eq!(parse_range("bytes=5-2", 1000), Err(()));
        assert_eq!(parse_range("bytes=a-b", 1000), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
    }
}
