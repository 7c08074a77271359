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

async fn serve_socket(
    l: Listener,
    handler: Arc<Handler>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = Arc::new(l.socket);
    let mut buf = vec![0u8; 1500];
    loop {
        let (len, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(iface = %l.arrival.iface, "dhcp receive failed: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let SocketAddr::V4(src) = src else { continue };
        let msg = match dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..len])) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(iface = %l.arrival.iface, %src, len, "dhcp: dropping malformed packet: {e}");
                metrics.dhcp_drop("malformed");
                metrics
                    .dhcp_packets
                    .get_or_create(&labels(&[("type", "malformed"), ("outcome", "drop")]))
                    .inc();
                continue;
            }
        };
        let mtype = msg
            .opts()
            .msg_type()
            .map(|t| format!("{t:?}").to_lowercase())
            .unwrap_or_else(|| "none".into());
        let mut arrival = l.arrival.clone();
        arrival.src = src;
        let h = handler.clone();
        let now = crate::store::now();
        let result = tokio::task::spawn_blocking(move || {
            let outcome = h.handle(&arrival, &msg, now);
            (outcome, msg)
        })
        .await;
        let (outcome, msg) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("dhcp handler task failed: {e}");
                continue;
            }
        };
        match outcome {
            Ok(Outcome::Reply { msg: reply, to }) => {
                let mut out = Vec::with_capacity(576);
                if let Err(e) = reply.encode(&mut Encoder::new(&mut out)) {
                    tracing::error!("dhcp: cannot encode reply: {e}");
                    continue;
                }
                tracing::debug!(iface = %l.arrival.iface, xid = msg.xid(), %to, "dhcp reply {:?}", reply.opts().msg_type());
                if let Err(e) = socket.send_to(&out, SocketAddr::V4(to)).await {
                    tracing::warn!(iface = %l.arrival.iface, %to, "dhcp send failed: {e}");
                    metrics.dhcp_drop("send-failed");
                }
                metrics
                    .dhcp_packets
                    .get_or_create(&labels(&[("type", &mtype), ("outcome", "reply")]))
                    .inc();
            }
            Ok(Outcome::Drop(reason)) => {
                tracing::debug!(iface = %l.arrival.iface, %src, xid = msg.xid(), mac = ?msg.chaddr().get(..6), "dhcp {mtype}: no reply ({reason})");
                metrics.dhcp_drop(reason);
                metrics
                    .dhcp_packets
                    .get_or_create(&labels(&[("type", &mtype), ("outcome", "drop")]))
                    .inc();
            }
            Err(e) => {
                tracing::error!(iface = %l.arrival.iface, "dhcp: lease database error, request dropped: {e}");
                metrics.dhcp_drop("database-error");
            }
        }
    }
}
