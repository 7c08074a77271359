//! The HTTP server's edge: accept connections within caps (in all and per client address),
//! shape boot downloads, give every connection a deadline for its request headers (slowloris),
//! optionally wrap it in TLS, and hand it to the router with the peer address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// The request headers must arrive within this (also the idle limit between requests).
    pub header_timeout: Duration,
}

/// Open connections per client address.
#[derive(Default)]
struct Open(Mutex<HashMap<IpAddr, usize>>);

/// A connection slot, given back when the connection ends.
struct Slot {
    open: Arc<Open>,
    ip: IpAddr,
}

impl Open {
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Slot, &'static str> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.values().sum::<usize>() >= limits.max_connections {
            return Err("too-many-connections");
        }
        let n = m.entry(ip).or_default();
        if *n >= limits.max_connections_per_client {
            return Err("too-many-connections-from-client");
        }
        *n += 1;
        Ok(Slot {
            open: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.open.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// How a listener's connections are set up.
pub struct Edge {
    pub limits: Limits,
    /// TLS for the admin listener.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Shape TCP for boot ROMs (the node listener).
    pub shape: bool,
}

/// Serve `app` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    edge: Edge,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let open = Arc::new(Open::default());
    let edge = Arc::new(edge);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!("http: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return Ok(()) }
                continue;
            }
        };
        let slot = match open.take(peer.ip(), &edge.limits) {
            Ok(s) => s,
            Err(reason) => {
                if metrics.drop_log.allow("http refusals") {
                    tracing::debug!(%peer, "http: connection refused: {reason}");
                }
                metrics.refused(&metrics.http_refused, reason);
                drop(stream);
                continue;
            }
        };
        if edge.shape {
            if let Err(e) = super::tune_boot_socket(&stream) {
                tracing::debug!("http: cannot tune socket: {e}");
            }
        }
        let (app, edge, metrics, shutdown) =
            (app.clone(), edge.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            connection(stream, peer, app, &edge, &metrics, shutdown).await;
            drop(slot);
        });
    }
}

/// Marks a request that came through the admin socket from root (or the head's own user):
/// the CLI on the head, an admin by the file system's word.
#[derive(Debug, Clone, Copy)]
pub struct LocalAdmin;

/// Connections the admin socket serves at once at most.
const MAX_LOCAL_CONNECTIONS: usize = 64;

/// Serve `app` on the admin socket until `shutdown`: connections from root (or the head's own
/// user, by `SO_PEERCRED`) are admins; anyone else is turned away (the socket is 0600 in the
/// 0700 state folder anyway).
pub async fn serve_local(
    listener: UnixListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let edge = Arc::new(Edge {
        limits,
        tls: None,
        shape: false,
    });
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("admin socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return }
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        let busy = open.load(std::sync::atomic::Ordering::Relaxed) >= MAX_LOCAL_CONNECTIONS;
        if busy || !uid.is_some_and(|u| u == 0 || u == me) {
            tracing::debug!(?uid, busy, "admin socket: connection refused");
            metrics.refused(&metrics.http_refused, "local-not-admin");
            continue;
        }
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (app, edge, open, shutdown) =
            (app.clone(), edge.clone(), open.clone(), shutdown.clone());
        tokio::spawn(async move {
            let local = SocketAddr::from(([127, 0, 0, 1], 0));
            let svc =
                app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(local));
                    req.extensions_mut().insert(LocalAdmin);
                    req
                });
            http1(TokioIo::new(stream), svc, &edge, shutdown).await;
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    edge: &Edge,
    metrics: &Metrics,
    shutdown: watch::Receiver<bool>,
) {
    let svc = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    match &edge.tls {
        None => http1(TokioIo::new(stream), svc, edge, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(edge.limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => http1(TokioIo::new(tls), svc, edge, shutdown).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "https: handshake failed: {e}");
                    metrics.refused(&metrics.http_refused, "tls-handshake");
                }
                Err(_) => {
                    tracing::debug!(%peer, "https: handshake timed out");
                    metrics.refused(&metrics.http_refused, "tls-timeout");
                }
            }
        }
    }
}

async fn http1<I, S>(io: I, svc: S, edge: &Edge, mut shutdown: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(edge.limits.header_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let stop = async move {
        let _ = shutdown.wait_for(|v| *v).await;
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("http: connection ended: {e}");
            }
            return;
        }
        _ = stop => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}
