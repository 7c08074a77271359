//! TFTP server I/O: the well-known port takes requests; each transfer gets its own socket (its
//! own TID, RFC 1350) and task. Transfers are capped in all and per client address, so a flood
//! of spoofed requests costs a bounded number of sockets; what is served, and refused, is
//! [`BootFiles::resolve`]'s decision, as for HTTP.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};
use tokio::time::timeout;

use crate::bootfiles::{Blob, BootFiles, FetchObserver, Request, ResolveError};
use crate::bootpath::{Kind, Proto};
use crate::config::TftpConfig;
use crate::metrics::{labels, Metrics};

use super::packet::{self, ErrorCode, Limits, Packet};
use super::sender::{Estimate, RoundTrips, Rto, Sender, Step};

/// How long a client may be silent (no ACK moving the transfer) before it is abandoned.
const GIVE_UP: Duration = Duration::from_secs(10);
/// IPv4 (20) + UDP (8) + TFTP (4) headers.
const HEADER_OVERHEAD: u32 = 32;

pub struct TftpContext {
    pub files: Arc<BootFiles>,
    pub limits: TftpConfig,
    pub metrics: Arc<Metrics>,
    pub observer: Arc<dyn FetchObserver>,
    /// Open transfers per client address (their sum is the total).
    pub open: Mutex<HashMap<IpAddr, usize>>,
    /// Transfers in progress by client address and port, with the request that started each:
    /// told when their client sends that same request again (it did not hear us yet), which
    /// is not a new transfer. A different request from there (a finished transfer's client
    /// asking for the next file, or for a tsize probe, from the same port) is a new one.
    active: Mutex<HashMap<SocketAddr, Active>>,
    /// Round trips measured to recent clients, where their next transfer starts from.
    round_trips: Mutex<RoundTrips>,
}

struct Active {
    request: Vec<u8>,
    notify: Arc<Notify>,
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
            active: Mutex::new(HashMap::new()),
            round_trips: Mutex::new(RoundTrips::default()),
        }
    }

    /// The timeout a new transfer to `client` starts with: fitted to its last transfer's
    /// round trip if there was one lately, else the negotiated `timeout` (at most that).
    fn first_rto(&self, client: IpAddr, timeout: std::time::Duration) -> Rto {
        let trips = self.round_trips.lock().unwrap_or_else(|p| p.into_inner());
        match trips.recall(client, std::time::Instant::now()) {
            Some(e) => Rto::resume(e, timeout),
            None => Rto::new(timeout, timeout),
        }
    }

    fn keep_round_trip(&self, client: IpAddr, e: Option<Estimate>) {
        if let Some(e) = e {
            self.round_trips
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remember(client, e, std::time::Instant::now());
        }
    }

    /// The transfer in progress for `peer` that `request` repeats, if any.
    fn repeated(&self, peer: SocketAddr, request: &[u8]) -> Option<Arc<Notify>> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .filter(|a| a.request == request)
            .map(|a| a.notify.clone())
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
            peer: None,
            notify: None,
        })
    }
}

/// A transfer slot, given back when the transfer ends however it ends.
struct Slot {
    ctx: Arc<TftpContext>,
    ip: IpAddr,
    /// Set once the transfer is known by its client's address and port.
    peer: Option<SocketAddr>,
    /// Its entry in `active` (told of repeated requests).
    notify: Option<Arc<Notify>>,
}

impl Slot {
    /// Register the transfer `request` started for `peer`; the same request from there again
    /// notifies it. It replaces an earlier transfer's entry for `peer` (that client moved on).
    fn activate(&mut self, peer: SocketAddr, request: &[u8]) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.ctx
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                peer,
                Active {
                    request: request.to_vec(),
                    notify: notify.clone(),
                },
            );
        self.peer = Some(peer);
        self.notify = Some(notify.clone());
        notify
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (Some(peer), Some(mine)) = (self.peer, &self.notify) {
            let mut active = self.ctx.active.lock().unwrap_or_else(|p| p.into_inner());
            // Only its own entry: a newer transfer for the same peer may have replaced it.
            if active
                .get(&peer)
                .is_some_and(|a| Arc::ptr_eq(&a.notify, mine))
            {
                active.remove(&peer);
            }
        }
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
    crate::netif::grow_receive_buffer(&s, REQUEST_BUFFER, &format!("tftp on {addr}"));
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
            Ok(Packet::Rrq { .. }) if ctx.repeated(peer, &buf[..len]).is_some() => {
                // The client's own retransmission: the transfer answers it at once.
                if let Some(n) = ctx.repeated(peer, &buf[..len]) {
                    n.notify_one();
                }
                ctx.refused("repeated-request");
            }
            Ok(Packet::Rrq {
                file,
                mode,
                options,
            }) => match ctx.slot(peer.ip()) {
                Ok(mut slot) => {
                    let ctx = ctx.clone();
                    let repeated = slot.activate(peer, &buf[..len]);
                    tokio::spawn(async move {
                        transfer(&ctx, peer, &file, &mode, &options, &repeated).await;
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
    repeated: &Notify,
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
    // Recorded as it starts, as HTTP records it: a boot's timeline then shows each step from
    // its request to the next one's, by either protocol. A script's fetch is recorded by the
    // boot decision that made it.
    if blob.kind != Kind::Script {
        ctx.observer
            .fetched(blob.mac, peer.ip(), blob.kind, file, Proto::Tftp);
    }
    let rto = ctx.first_rto(peer.ip(), neg.timeout);
    let (end, sent, measured) = send_blob(&sock, &blob, &neg, rto, repeated).await;
    ctx.keep_round_trip(peer.ip(), measured);
    ctx.metrics
        .tftp_transfers
        .get_or_create(&labels(&[("outcome", end.as_str())]))
        .inc();
    ctx.metrics.tftp_bytes.inc_by(sent);
    match end {
        End::Complete => tracing::info!(%peer, file, bytes = sent, "tftp: sent"),
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

/// Send the whole blob with the negotiated options: the OACK first if there is one, then the
/// blocks as [`Sender`] says, waiting as `rto` says at first (the client's negotiated timeout
/// is the longest it waits; the measured round trip sets how long it actually does). Returns
/// how it ended, the bytes sent and the round trip measured.
async fn send_blob(
    sock: &UdpSocket,
    blob: &Blob,
    neg: &packet::Negotiated,
    mut rto: Rto,
    repeated: &Notify,
) -> (End, u64, Option<Estimate>) {
    if !neg.ack.is_empty() {
        if let Err(end) = send_oack(sock, neg, &mut rto, repeated).await {
            return (end, 0, rto.estimate());
        }
    }
    let now = tokio::time::Instant::now().into_std();
    let mut s = Sender::new(
        blob.len(),
        neg.blksize as u64,
        neg.windowsize,
        rto,
        GIVE_UP,
        now,
    );
    let mut step = s.start(now);
    let mut sent = 0;
    let mut pkt = vec![0u8; 4 + neg.blksize];
    loop {
        match step {
            Step::Send { first, last } => {
                for k in first..=last {
                    match send_block(sock, blob, neg.blksize, k, &mut pkt).await {
                        Ok(n) => sent += n,
                        Err(()) => return (End::SendFailed, sent, s.estimate()),
                    }
                }
            }
            Step::Wait => {}
            Step::Done => return (End::Complete, sent, s.estimate()),
            Step::GiveUp => return (End::TimedOut, sent, s.estimate()),
        }
        let deadline = s
            .deadline()
            .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
        step = tokio::select! {
            r = wait_reply(sock, deadline) => {
                let now = tokio::time::Instant::now().into_std();
                match r {
                    Reply::Ack(a) => s.on_ack(a, now),
                    Reply::Timeout => s.on_timeout(now),
                    Reply::ClientError => return (End::ClientError, sent, s.estimate()),
                }
            }
            _ = repeated.notified() => s.on_repeated_request(tokio::time::Instant::now().into_std()),
        };
    }
}

/// Block `k` (from 1) of `blob`; returns the data bytes sent.
async fn send_block(
    sock: &UdpSocket,
    blob: &Blob,
    blksize: usize,
    k: u64,
    pkt: &mut [u8],
) -> Result<u64, ()> {
    let off = (k - 1) * blksize as u64;
    packet::data_header(pkt, k as u16);
    let n = if off < blob.len() {
        blob.read_at(off, &mut pkt[4..4 + blksize])
    } else {
        0
    };
    sock.send(&pkt[..4 + n]).await.map_err(|_| ())?;
    Ok(n as u64)
}

/// Send the OACK until the client acknowledges it (ACK 0), timing the round trip.
async fn send_oack(
    sock: &UdpSocket,
    neg: &packet::Negotiated,
    rto: &mut Rto,
    repeated: &Notify,
) -> Result<(), End> {
    let oack = packet::oack(&neg.ack);
    let start = tokio::time::Instant::now();
    let mut sent_once = true;
    loop {
        let sent_at = tokio::time::Instant::now();
        sock.send(&oack).await.map_err(|_| End::SendFailed)?;
        let deadline = sent_at + rto.timeout();
        let answered = tokio::select! {
            r = wait_reply(sock, deadline) => r,
            _ = repeated.notified() => Reply::Timeout,
        };
        match answered {
            Reply::Ack(0) => {
                if sent_once {
                    rto.sample(sent_at.elapsed());
                }
                return Ok(());
            }
            // PXE ROMs probe tsize this way and abort with error 8: stop at once.
            Reply::ClientError => return Err(End::ClientError),
            Reply::Ack(_) | Reply::Timeout => {
                if start.elapsed() >= GIVE_UP {
                    return Err(End::TimedOut);
                }
                rto.back_off();
                sent_once = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootpath::Kind;

    /// The retransmission rules are tested exactly in `sender`; this is the socket loop: a
    /// lockstep client loses block 2 once and repeats its ACKs, and still gets the file whole.
    #[tokio::test]
    async fn a_lost_block_and_repeated_acks_still_deliver_the_file_intact() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        server.connect(client.local_addr().unwrap()).await.unwrap();
        client.connect(server.local_addr().unwrap()).await.unwrap();
        let neg = packet::Negotiated {
            blksize: 512,
            windowsize: 1,
            timeout: Duration::from_secs(1),
            ack: vec![],
        };
        let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let blob = Blob::from_bytes(data.clone(), Kind::Other);
        let repeated = Arc::new(Notify::new());
        let r = repeated.clone();
        let task = tokio::spawn(async move {
            send_blob(&server, &blob, &neg, Rto::new(neg.timeout, neg.timeout), &r).await
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 600];
        let mut dropped = false;
        loop {
            let n = client.recv(&mut buf).await.unwrap();
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            if block == 2 && !dropped {
                // Lost on the cable; the client repeats its last ACK, twice.
                dropped = true;
                client.send(&[0, 4, 0, 1]).await.unwrap();
                client.send(&[0, 4, 0, 1]).await.unwrap();
                continue;
            }
            if usize::from(block) == got.len() / 512 + 1 {
                got.extend_from_slice(&buf[4..n]);
            }
            client.send(&[0, 4, buf[2], buf[3]]).await.unwrap();
            if n < 516 {
                break;
            }
        }
        let (end, _, measured) = task.await.unwrap();
        assert!(measured.is_some(), "the round trips were measured");
        assert_eq!(end, End::Complete);
        assert_eq!(got, data);
    }
}
