//! TFTP server I/O: the well-known port takes requests; each transfer gets its own socket (its
//! own TID, RFC 1350) and task. Transfers are capped in all and per client address, so a flood
//! of spoofed requests costs a bounded number of sockets; what is served, and refused, is
//! [`BootFiles::resolve`]'s decision, as for HTTP.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::bootfiles::{Blob, BootFiles, FetchObserver, Request, ResolveError};
use crate::bootpath::{Kind, Proto};
use crate::config::TftpConfig;
use crate::metrics::{labels, Metrics};

use super::packet::{self, ErrorCode, Limits, Packet};

/// How many times a block (or OACK) is sent before the transfer is abandoned.
const MAX_TRIES: u32 = 6;
/// IPv4 (20) + UDP (8) + TFTP (4) headers.
const HEADER_OVERHEAD: u32 = 32;

pub struct TftpContext {
    pub files: Arc<BootFiles>,
    pub limits: TftpConfig,
    pub metrics: Arc<Metrics>,
    pub observer: Arc<dyn FetchObserver>,
    /// Open transfers per client address (their sum is the total).
    pub open: Mutex<HashMap<IpAddr, usize>>,
}

impl TftpContext {
    pub fn new(
        files: Arc<BootFiles>,
        limits: TftpConfig,
        metrics: Arc<Metrics>,
        observer: Arc<dyn FetchObserver>,
    ) -> TftpContext {
        TftpContext {
            files,
            limits,
            metrics,
            observer,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn refused(&self, reason: &str) {
        self.metrics.refused(&self.metrics.tftp_refused, reason);
    }

    /// Take a transfer slot for `ip`, or say which cap is full.
    fn slot(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.values().sum::<usize>() >= self.limits.max_transfers {
            return Err("too-many-transfers");
        }
        let n = open.entry(ip).or_default();
        if *n >= self.limits.max_transfers_per_client {
            return Err("too-many-transfers-from-client");
        }
        *n += 1;
        Ok(Slot {
            ctx: self.clone(),
            ip,
        })
    }
}

/// A transfer slot, given back when the transfer ends however it ends.
struct Slot {
    ctx: Arc<TftpContext>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.ctx.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Receive buffer of the request socket: room for a storm of requests (or a flood, of which
/// all but the per-client cap are then refused and counted rather than lost unseen).
const REQUEST_BUFFER: usize = 1 << 20;

pub async fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(REQUEST_BUFFER);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Serve requests arriving on `socket` until `shutdown` turns true.
pub async fn run(socket: UdpSocket, ctx: Arc<TftpContext>, mut shutdown: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!("tftp receive failed: {e}"); continue; }
            },
            _ = shutdown.changed() => return,
        };
        match packet::parse(&buf[..len]) {
            Ok(Packet::Rrq {
                file,
                mode,
                options,
            }) => match ctx.slot(peer.ip()) {
                Ok(slot) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        transfer(&ctx, peer, &file, &mode, &options).await;
                        drop(slot);
                    });
                }
                Err(reason) => {
                    // Silence, not an error packet: a flood of spoofed requests gets nothing
                    // to reflect at its victims. A real client retries.
                    if ctx.metrics.drop_log.allow("tftp refusals") {
                        tracing::debug!(%peer, file, "tftp: request refused: {reason}");
                    }
                    ctx.refused(reason);
                }
            },
            Ok(Packet::Wrq { file }) => {
                tracing::debug!(%peer, file, "tftp: write request refused");
                ctx.refused("write-request");
                let _ = socket
                    .send_to(
                        &packet::error(ErrorCode::AccessViolation, "this server is read-only"),
                        peer,
                    )
                    .await;
            }
            Ok(other) => {
                tracing::debug!(%peer, "tftp: unexpected packet on the request port: {other:?}");
                ctx.refused("unexpected-packet");
            }
            Err(e) => {
                if ctx.metrics.drop_log.allow("tftp refusals") {
                    tracing::debug!(%peer, len, "tftp: dropping malformed packet: {e}");
                }
                ctx.refused("malformed");
            }
        }
    }
}

/// Why a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    ClientError,
    TimedOut,
    SendFailed,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::ClientError => "client-error",
            End::TimedOut => "timeout",
            End::SendFailed => "send-failed",
        }
    }
}

/// One read request, start to end, on its own socket.
async fn transfer(
    ctx: &TftpContext,
    peer: SocketAddr,
    file: &str,
    mode: &str,
    options: &[(String, String)],
) {
    let Some(sock) = transfer_socket(peer).await else {
        return;
    };
    if mode != "octet" {
        tracing::debug!(%peer, file, mode, "tftp: refused non-octet mode");
        ctx.refused("mode");
        let _ = sock
            .send(&packet::error(
                ErrorCode::IllegalOperation,
                "only octet mode is served",
            ))
            .await;
        return;
    }
    let Some(blob) = resolve(ctx, &sock, peer, file).await else {
        return;
    };
    let limits = Limits {
        max_blksize: ctx.limits.max_blksize.min(mtu_blksize(&sock)),
        max_windowsize: ctx.limits.max_windowsize,
        max_timeout: ctx.limits.max_timeout,
    };
    let neg = packet::negotiate(options, blob.len(), &limits);
    tracing::debug!(%peer, file, blksize = neg.blksize, window = neg.windowsize, size = blob.len(), "tftp: transfer starts");
    let (end, sent) = send_blob(&sock, &blob, &neg).await;
    ctx.metrics
        .tftp_transfers
        .get_or_create(&labels(&[("outcome", end.as_str())]))
        .inc();
    ctx.metrics.tftp_bytes.inc_by(sent);
    match end {
        End::Complete => {
            tracing::info!(%peer, file, bytes = sent, "tftp: sent");
            // A script's fetch is recorded by the boot decision that made it.
            if blob.kind != Kind::Script {
                ctx.observer
                    .fetched(blob.mac, peer.ip(), blob.kind, file, Proto::Tftp);
            }
        }
        End::ClientError => tracing::debug!(%peer, file, "tftp: client ended the transfer"),
        _ => tracing::info!(%peer, file, bytes = sent, "tftp: transfer failed ({})", end.as_str()),
    }
}

/// A socket of its own for a transfer (its TID), connected to the client.
async fn transfer_socket(peer: SocketAddr) -> Option<UdpSocket> {
    let sock = match UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("tftp: cannot open transfer socket: {e}");
            return None;
        }
    };
    if let Err(e) = sock.connect(peer).await {
        tracing::warn!(%peer, "tftp: cannot reach client: {e}");
        return None;
    }
    Some(sock)
}

/// The file, or an error packet sent (and counted) and `None`.
async fn resolve(
    ctx: &TftpContext,
    sock: &UdpSocket,
    peer: SocketAddr,
    file: &str,
) -> Option<Blob> {
    let files = ctx.files.clone();
    let path = file.to_string();
    let from = peer.ip();
    let resolved = tokio::task::spawn_blocking(move || {
        files.resolve(&Request {
            path: &path,
            from,
            proto: Proto::Tftp,
            method: "pxe",
        })
    })
    .await;
    let e = match resolved {
        Ok(Ok(b)) => return Some(b),
        Ok(Err(e)) => e,
        Err(e) => {
            tracing::error!("tftp: resolve task failed: {e}");
            return None;
        }
    };
    tracing::debug!(%peer, file, "tftp: {e}");
    ctx.refused(e.reason());
    let code = match e {
        ResolveError::Refused(_) | ResolveError::Forbidden { .. } => ErrorCode::AccessViolation,
        ResolveError::NotFound(_) => ErrorCode::FileNotFound,
        ResolveError::Io { .. } => ErrorCode::NotDefined,
    };
    let _ = sock.send(&packet::error(code, &e.to_string())).await;
    None
}

/// The largest block that fits the interface MTU unfragmented.
fn mtu_blksize(sock: &UdpSocket) -> u16 {
    let local_ip = match sock.local_addr() {
        Ok(SocketAddr::V4(a)) => Some(*a.ip()),
        _ => None,
    };
    let mtu = local_ip
        .and_then(crate::netif::mtu_for_addr)
        .unwrap_or(1500);
    mtu.saturating_sub(HEADER_OVERHEAD).clamp(512, 65464) as u16
}

/// What arrived from the client while we waited.
enum Reply {
    Ack(u16),
    ClientError,
    Timeout,
}

/// Wait until `deadline` for an ACK or an ERROR; anything else is skipped.
async fn wait_reply(sock: &UdpSocket, deadline: tokio::time::Instant) -> Reply {
    let mut buf = [0u8; 600];
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match timeout(left, sock.recv(&mut buf)).await {
            Err(_) => return Reply::Timeout,
            // ICMP port unreachable and the like: the client is gone.
            Ok(Err(_)) => return Reply::ClientError,
            Ok(Ok(n)) => match packet::parse(&buf[..n]) {
                Ok(Packet::Ack { block }) => return Reply::Ack(block),
                Ok(Packet::Error { .. }) => return Reply::ClientError,
                _ => continue,
            },
        }
    }
}

/// Send the whole blob with the negotiated options. Returns how it ended and bytes sent.
async fn send_blob(
    sock: &UdpSocket,
    blob: &crate::bootfiles::Blob,
    neg: &packet::Negotiated,
) -> (End, u64) {
    let mut sent: u64 = 0;
    if !neg.ack.is_empty() {
        let oack = packet::oack(&neg.ack);
        let mut acked = false;
        for _ in 0..MAX_TRIES {
            if sock.send(&oack).await.is_err() {
                return (End::SendFailed, 0);
            }
            match wait_reply(sock, tokio::time::Instant::now() + neg.timeout).await {
                Reply::Ack(0) => {
                    acked = true;
                    break;
                }
                Reply::Ack(_) | Reply::Timeout => continue,
                // PXE ROMs probe tsize this way and abort with error 8: stop at once.
                Reply::ClientError => return (End::ClientError, 0),
            }
        }
        if !acked {
            return (End::TimedOut, 0);
        }
    }
    let bs = neg.blksize as u64;
    let len = blob.len();
    // Blocks are numbered from 1; the last one is shorter than blksize (possibly empty).
    let last = len / bs + 1;
    let mut base: u64 = 1;
    let mut tries = 0;
    let mut pkt = vec![0u8; 4 + neg.blksize];
    while base <= last {
        let window_end = (base + neg.windowsize as u64 - 1).min(last);
        for k in base..=window_end {
            let off = (k - 1) * bs;
            packet::data_header(&mut pkt, k as u16);
            let n = if off < len {
                blob.read_at(off, &mut pkt[4..])
            } else {
                0
            };
            if sock.send(&pkt[..4 + n]).await.is_err() {
                return (End::SendFailed, sent);
            }
            sent += n as u64;
        }
        // Wait for an ACK that moves the window; ignore stale duplicates (no Sorcerer's
        // Apprentice retransmits), retransmit from `base` on timeout. The deadline is fixed
        // when the window goes out: a client that keeps repeating its last ACK (iPXE does,
        // with backoff) must not postpone our retransmission.
        let deadline = tokio::time::Instant::now() + neg.timeout;
        loop {
            match wait_reply(sock, deadline).await {
                Reply::Ack(a) => {
                    // Map the 16-bit block number (it wraps) into [base-1, window_end].
                    let k = (base - 1..=window_end).rev().find(|k| *k as u16 == a);
                    match k {
                        Some(k) if k >= base => {
                            base = k + 1;
                            tries = 0;
                            break;
                        }
                        _ => continue,
                    }
                }
                Reply::ClientError => return (End::ClientError, sent),
                Reply::Timeout => {
                    tries += 1;
                    if tries >= MAX_TRIES {
                        return (End::TimedOut, sent);
                    }
                    break;
                }
            }
        }
    }
    (End::Complete, sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootfiles::Blob;
    use crate::bootpath::Kind;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_client_repeating_its_last_ack_does_not_postpone_the_retransmission() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        server.connect(client.local_addr().unwrap()).await.unwrap();
        client.connect(server.local_addr().unwrap()).await.unwrap();
        let neg = packet::Negotiated {
            blksize: 512,
            windowsize: 1,
            timeout: Duration::from_millis(600),
            ack: vec![],
        };
        let blob = Blob::from_bytes(vec![7u8; 1000], Kind::Other);
        let task = tokio::spawn(async move { send_blob(&server, &blob, &neg).await });
        let mut buf = [0u8; 600];
        client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..4], &[0, 3, 0, 1], "DATA 1");
        // Block 1 "was lost": repeat ACK 0 every 200 ms, as iPXE repeats its last ACK.
        let start = Instant::now();
        let again = loop {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "block 1 never came again"
            );
            client.send(&[0, 4, 0, 0]).await.unwrap();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf)).await
            {
                if buf[..4] == [0, 3, 0, 1] && n == 516 {
                    break start.elapsed();
                }
            }
        };
        assert!(
            again < Duration::from_millis(900),
            "retransmitted after {again:?}: the repeated ACKs postponed the timeout"
        );
        // Finish: ACK 1, receive block 2 (488 bytes, the last), ACK 2.
        client.send(&[0, 4, 0, 1]).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!((&buf[..4], n), (&[0u8, 3, 0, 2][..], 4 + 488));
        client.send(&[0, 4, 0, 2]).await.unwrap();
        let (end, _) = task.await.unwrap();
        assert!(matches!(end, End::Complete));
    }
}
