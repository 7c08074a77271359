//! TFTP server I/O: the well-known port takes requests; each transfer gets its own socket (its
//! own TID, RFC 1350) and task.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::bootfiles::{Blob, BootFiles, FetchObserver, Kind, ResolveError};
use crate::bootscript;
use crate::metrics::{labels, Metrics};
use crate::registry::Registry;

use super::packet::{self, ErrorCode, Limits, Packet};

/// How many times a block (or OACK) is sent before the transfer is abandoned.
const MAX_TRIES: u32 = 6;
/// IPv4 (20) + UDP (8) + TFTP (4) headers.
const HEADER_OVERHEAD: u32 = 32;

pub struct TftpContext {
    pub files: Arc<BootFiles>,
    /// For node scripts (`boot/<mac>.ipxe`): the boot decision.
    pub registry: Arc<Registry>,
    pub max_blksize: u16,
    pub max_windowsize: u16,
    pub metrics: Arc<Metrics>,
    pub observer: Arc<dyn FetchObserver>,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(addr).await
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
            }) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    transfer(ctx, peer, file, mode, options).await;
                });
            }
            Ok(Packet::Wrq { file }) => {
                tracing::debug!(%peer, file, "tftp: write request refused");
                ctx.metrics
                    .tftp_refused
                    .get_or_create(&labels(&[("reason", "write-request")]))
                    .inc();
                let _ = socket
                    .send_to(
                        &packet::error(ErrorCode::AccessViolation, "this server is read-only"),
                        peer,
                    )
                    .await;
            }
            Ok(other) => {
                tracing::debug!(%peer, "tftp: unexpected packet on the request port: {other:?}");
                ctx.metrics
                    .tftp_refused
                    .get_or_create(&labels(&[("reason", "unexpected-packet")]))
                    .inc();
            }
            Err(e) => {
                tracing::debug!(%peer, len, "tftp: dropping malformed packet: {e}");
                ctx.metrics
                    .tftp_refused
                    .get_or_create(&labels(&[("reason", "malformed")]))
                    .inc();
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

async fn transfer(
    ctx: Arc<TftpContext>,
    peer: SocketAddr,
    file: String,
    mode: String,
    options: Vec<(String, String)>,
) {
    let sock = match UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("tftp: cannot open transfer socket: {e}");
            return;
        }
    };
    if let Err(e) = sock.connect(peer).await {
        tracing::warn!(%peer, "tftp: cannot reach client: {e}");
        return;
    }
    let refuse = |reason: &'static str| {
        ctx.metrics
            .tftp_refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    };
    if mode != "octet" {
        tracing::debug!(%peer, file, mode, "tftp: refused non-octet mode");
        refuse("mode");
        let _ = sock
            .send(&packet::error(
                ErrorCode::IllegalOperation,
                "only octet mode is served",
            ))
            .await;
        return;
    }
    let blob = if let Some(mac) = bootscript::mac_of_tftp_path(&file) {
        // A node script, for PCs whose cards should not use TCP (see `images.tftp_nics`).
        let (reg, images) = (ctx.registry.clone(), ctx.files.images().clone());
        let ip = match peer {
            SocketAddr::V4(a) => Some(*a.ip()),
            SocketAddr::V6(_) => None,
        };
        let rendered =
            tokio::task::spawn_blocking(move || bootscript::render(&reg, &images, &mac, ip, "pxe"))
                .await;
        match rendered {
            Ok(Ok(text)) => Blob::from_bytes(text.into_bytes(), Kind::Script),
            Ok(Err(e)) => {
                tracing::error!(%peer, file, "tftp: boot script: {e}");
                refuse("registry-error");
                let _ = sock
                    .send(&packet::error(
                        ErrorCode::NotDefined,
                        "boot script unavailable",
                    ))
                    .await;
                return;
            }
            Err(e) => {
                tracing::error!("tftp: boot script task failed: {e}");
                return;
            }
        }
    } else {
        let files = ctx.files.clone();
        let path = file.clone();
        match tokio::task::spawn_blocking(move || files.resolve(&path)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!(%peer, file, "tftp: {e}");
                refuse(e.reason());
                let code = match e {
                    ResolveError::Refused { .. } => ErrorCode::AccessViolation,
                    ResolveError::NotFound(_) => ErrorCode::FileNotFound,
                    ResolveError::Io { .. } => ErrorCode::NotDefined,
                };
                let _ = sock.send(&packet::error(code, &e.to_string())).await;
                return;
            }
            Err(e) => {
                tracing::error!("tftp: resolve task failed: {e}");
                return;
            }
        }
    };
    // Clamp the block size so a DATA packet fits the interface MTU unfragmented.
    let local_ip = match sock.local_addr() {
        Ok(SocketAddr::V4(a)) => Some(*a.ip()),
        _ => None,
    };
    let mtu = local_ip
        .and_then(crate::netif::mtu_for_addr)
        .unwrap_or(1500);
    let limits = Limits {
        max_blksize: ctx
            .max_blksize
            .min(mtu.saturating_sub(HEADER_OVERHEAD).clamp(512, 65464) as u16),
        max_windowsize: ctx.max_windowsize,
    };
    let neg = packet::negotiate(&options, blob.len(), &limits);
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
                    .fetched(blob.mac.as_deref(), peer.ip(), blob.kind, &file);
            }
        }
        End::ClientError => tracing::debug!(%peer, file, "tftp: client ended the transfer"),
        _ => tracing::info!(%peer, file, bytes = sent, "tftp: transfer failed ({})", end.as_str()),
    }
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
    use crate::bootfiles::{Blob, Kind};
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
