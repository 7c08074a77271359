//! DHCP socket I/O: one socket per configured interface (and port 4011 in proxy mode), each
//! bound to its device with SO_BINDTODEVICE, so nothing arriving on another interface is ever
//! seen, let alone answered.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::config::{DhcpMode, InterfaceConfig};
use crate::metrics::{labels, Metrics};
use crate::netif;

use super::handler::{Arrival, Handler, Outcome, PXE_PORT, SERVER_PORT};

#[derive(Debug, thiserror::Error)]
pub enum DhcpServerError {
    #[error("dhcp interface {iface}: {source}")]
    Interface {
        iface: String,
        source: netif::NetifError,
    },
    #[error("dhcp interface {iface}: cannot bind UDP port {port}: {source}")]
    Bind {
        iface: String,
        port: u16,
        source: std::io::Error,
    },
}

/// A socket bound to one interface and port, with what the handler needs to know about it.
pub struct Listener {
    pub socket: UdpSocket,
    pub arrival: Arrival,
}

fn bind_device_socket(iface: &str, port: u16) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    crate::netif::grow_receive_buffer(&s, RECV_BUFFER, &format!("dhcp on {iface} port {port}"));
    s.bind_device(Some(iface.as_bytes()))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Bind the sockets for every configured interface. Fails naming the interface at fault.
pub fn bind(interfaces: &[InterfaceConfig]) -> Result<Vec<Listener>, DhcpServerError> {
    let mut out = Vec::new();
    for ifc in interfaces {
        let info = netif::lookup(&ifc.name).map_err(|source| DhcpServerError::Interface {
            iface: ifc.name.clone(),
            source,
        })?;
        let mut ports = vec![SERVER_PORT];
        if ifc.mode == DhcpMode::Proxy {
            ports.push(PXE_PORT);
        }
        for port in ports {
            let socket =
                bind_device_socket(&ifc.name, port).map_err(|source| DhcpServerError::Bind {
                    iface: ifc.name.clone(),
                    port,
                    source,
                })?;
            tracing::info!(iface = %ifc.name, addr = %info.addr, port, mode = ?ifc.mode, "dhcp listening");
            out.push(Listener {
                socket,
                arrival: Arrival {
                    iface: ifc.name.clone(),
                    iface_addr: info.addr,
                    mode: ifc.mode,
                    port,
                    src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                },
            });
        }
    }
    Ok(out)
}

/// Serve until `shutdown` turns true.
pub async fn run(
    listeners: Vec<Listener>,
    handler: Arc<Handler>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        tasks.spawn(serve_socket(
            l,
            handler.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

/// Most packets handled as one lease batch (one commit).
const BATCH_MAX: usize = 2048;
/// Receive buffer: room for the burst that arrives while a batch is being committed.
const RECV_BUFFER: usize = 4 << 20;
/// Packets received and decoded but not yet handled, per socket: what arrives while a slow
/// disk flushes a batch waits here (counted when full) rather than in the kernel's buffer,
/// where it would be lost unseen. About 1 KiB each.
const QUEUE_MAX: usize = 16_384;

/// A decoded packet waiting for its batch, with its message type.
type Queued = ((Arrival, dhcproto::v4::Message), String);

/// One socket: a reader that keeps draining it into a bounded queue, and a worker that
/// handles what queued as one batch (group commit: the burst that arrives during one commit
/// is the next batch) and replies.
async fn serve_socket(
    l: Listener,
    handler: Arc<Handler>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = Arc::new(l.socket);
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_MAX);
    let reader = tokio::spawn(read_socket(socket.clone(), l.arrival, metrics.clone(), tx));
    tokio::select! {
        _ = handle_queue(&socket, &handler, &metrics, rx) => {}
        _ = shutdown.changed() => {}
    }
    reader.abort();
}

/// Receive and decode until the worker is gone; a packet that finds the queue full is dropped
/// and counted (`queue-full`).
async fn read_socket(
    socket: Arc<UdpSocket>,
    arrival: Arrival,
    metrics: Arc<Metrics>,
    tx: tokio::sync::mpsc::Sender<Queued>,
) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok((len, SocketAddr::V4(src))) => (len, src),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(iface = %arrival.iface, "dhcp receive failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(msg) = decode(&arrival.iface, &buf[..len], src, &metrics) else {
            continue;
        };
        let mtype = message_type(&msg);
        let mut a = arrival.clone();
        a.src = src;
        match tx.try_send(((a, msg), mtype)) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(((a, msg), mtype))) => {
                if metrics.drop_log.allow("dhcp drops") {
                    tracing::debug!(iface = %a.iface, src = %a.src, xid = msg.xid(), "dhcp {mtype}: dropped, {QUEUE_MAX} packets already wait");
                }
                metrics.dhcp_drop("queue-full");
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Take what has queued (up to [`BATCH_MAX`]) and handle it: DISCOVERs first, apart (their
/// offers are held in memory, so their batch commits nothing and they are answered at once,
/// not after the disk has flushed the REQUESTs' leases), then the rest as one commit.
async fn handle_queue(
    socket: &UdpSocket,
    handler: &Arc<Handler>,
    metrics: &Metrics,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let (offers, rest): (Vec<_>, Vec<_>) = batch.drain(..).partition(|(_, t)| t == "discover");
        for part in [offers, rest] {
            if !part.is_empty() {
                handle_and_respond(socket, handler, metrics, part).await;
            }
        }
    }
}

/// Handle one batch as one lease commit, then send each packet's reply.
async fn handle_and_respond(
    socket: &UdpSocket,
    handler: &Arc<Handler>,
    metrics: &Metrics,
    part: Vec<((Arrival, dhcproto::v4::Message), String)>,
) {
    let (batch, types): (Vec<_>, Vec<_>) = part.into_iter().unzip();
    let h = handler.clone();
    let now = crate::store::now();
    metrics.dhcp_batch_packets.observe(batch.len() as f64);
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let outcomes = h.handle_batch(&batch, now);
        (outcomes, batch)
    })
    .await;
    metrics
        .dhcp_batch_seconds
        .observe(started.elapsed().as_secs_f64());
    let (outcomes, batch) = match result {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("dhcp handler task failed: {e}");
            return;
        }
    };
    for ((outcome, (arrival, msg)), mtype) in outcomes.into_iter().zip(&batch).zip(&types) {
        respond(socket, &arrival.iface, outcome, msg, mtype, metrics).await;
    }
}

/// Decode one datagram, or say why it is dropped. A panic in the decoder (dhcproto has
/// `debug_assert`s on option lengths, which a fuzzer found) costs this packet alone; a packet
/// whose `hlen` is past 16 goes no further (dhcproto slices `chaddr` by `hlen`). Pure: the
/// fuzz target calls it too.
pub fn decode_packet(bytes: &[u8]) -> Result<dhcproto::v4::Message, &'static str> {
    let decoded =
        std::panic::catch_unwind(|| dhcproto::v4::Message::decode(&mut Decoder::new(bytes)));
    match decoded {
        Err(_) => Err("decoder-panic"),
        Ok(Err(_)) => Err("malformed"),
        Ok(Ok(m)) if usize::from(m.hlen()) > 16 => Err("bad-hlen"),
        Ok(Ok(m)) => Ok(m),
    }
}

fn decode(
    iface: &str,
    bytes: &[u8],
    src: SocketAddrV4,
    metrics: &Metrics,
) -> Option<dhcproto::v4::Message> {
    match decode_packet(bytes) {
        Ok(m) => Some(m),
        Err(reason) => {
            if metrics.drop_log.allow("dhcp drops") {
                tracing::debug!(%iface, %src, len = bytes.len(), "dhcp: dropping packet ({reason})");
            }
            metrics.dhcp_drop(reason);
            metrics
                .dhcp_packets
                .get_or_create(&labels(&[("type", "malformed"), ("outcome", "drop")]))
                .inc();
            None
        }
    }
}

fn message_type(msg: &dhcproto::v4::Message) -> String {
    msg.opts()
        .msg_type()
        .map(|t| format!("{t:?}").to_lowercase())
        .unwrap_or_else(|| "none".into())
}

async fn respond(
    socket: &UdpSocket,
    iface: &str,
    outcome: Result<Outcome, crate::store::StoreError>,
    msg: &dhcproto::v4::Message,
    mtype: &str,
    metrics: &Metrics,
) {
    match outcome {
        Ok(Outcome::Reply {
            msg: reply,
            to,
            link,
        }) => {
            let mut out = Vec::with_capacity(576);
            if let Err(e) = reply.encode(&mut Encoder::new(&mut out)) {
                tracing::error!("dhcp: cannot encode reply: {e}");
                metrics.dhcp_drop("encode-failed");
                return;
            }
            // Unicast to a client without an address: the ARP table must know it first.
            let to = match link {
                Some(mac) => match crate::netif::set_arp_entry(socket, iface, *to.ip(), mac) {
                    Ok(()) => to,
                    Err(e) => {
                        // Still answered, only by broadcast; say so once (e.g. no CAP_NET_ADMIN).
                        static WARNED: std::sync::Once = std::sync::Once::new();
                        WARNED.call_once(|| tracing::warn!(%iface, "dhcp: cannot add ARP entries ({e}); replying by broadcast, which boot ROMs handle worse in boot storms"));
                        tracing::debug!(%iface, %to, "dhcp: no ARP entry for a unicast reply, broadcasting: {e}");
                        SocketAddrV4::new(Ipv4Addr::BROADCAST, to.port())
                    }
                },
                None => to,
            };
            if metrics.drop_log.allow("dhcp replies") {
                tracing::debug!(%iface, xid = msg.xid(), %to, "dhcp reply {:?}", reply.opts().msg_type());
            }
            if let Err(e) = socket.send_to(&out, SocketAddr::V4(to)).await {
                tracing::warn!(%iface, %to, "dhcp send failed: {e}");
                metrics.dhcp_drop("send-failed");
            }
            metrics
                .dhcp_packets
                .get_or_create(&labels(&[("type", mtype), ("outcome", "reply")]))
                .inc();
        }
        Ok(Outcome::Drop(reason)) => {
            if metrics.drop_log.allow("dhcp drops") {
                let mac = super::client::ethernet_mac(msg);
                tracing::debug!(%iface, xid = msg.xid(), mac = ?mac, "dhcp {mtype}: no reply ({reason})");
            }
            metrics.dhcp_drop(reason);
            metrics
                .dhcp_packets
                .get_or_create(&labels(&[("type", mtype), ("outcome", "drop")]))
                .inc();
        }
        Err(e) => {
            tracing::error!(%iface, xid = msg.xid(), "dhcp: lease database error, request dropped: {e}");
            metrics.dhcp_drop("database-error");
        }
    }
}
