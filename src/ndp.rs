//! Answer IPv6 router solicitations on the boot interfaces with a minimal router advertisement
//! (no prefix, router lifetime 0: "I am not your router, and there is no SLAAC here").
//!
//! iPXE configures IPv4 (DHCP) and IPv6 (NDP) together and waits until both finish; on a network
//! without an IPv6 router it waits out its solicitation timeout, about 15 s of every PXE boot.
//! One advertisement ends that wait at once. A lifetime-0 advertisement never makes the head a
//! default router (RFC 4861 6.3.4), so it is harmless beside real IPv6 routers.
//!
//! Written by hand: it is 16 bytes of ICMPv6 on a raw socket (the kernel fills the checksum).

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// At most one advertisement per this interval. It goes to all nodes, so one answers every PC
/// that solicited before it; in a boot storm of 40 PCs that is one packet per PC instead of 40.
/// RFC 4861 6.2.6 asks 3 s between multicast answers; iPXE would wait that long, so less here.
pub const MIN_GAP: Duration = Duration::from_millis(500);

/// When to answer solicitations: at once after a quiet spell, else once at the end of the gap
/// for all that arrived during it. Pure, so the timing is testable without a raw socket.
#[derive(Debug, Default)]
pub struct Pacer {
    last_sent: Option<Instant>,
    scheduled: Option<Instant>,
}

impl Pacer {
    /// A solicitation arrived at `now`: when the advertisement answering it goes out.
    pub fn solicited(&mut self, now: Instant) -> Instant {
        if let Some(at) = self.scheduled {
            return at;
        }
        let at = match self.last_sent {
            Some(last) if now < last + MIN_GAP => last + MIN_GAP,
            _ => now,
        };
        self.scheduled = Some(at);
        at
    }

    /// The scheduled advertisement, if one is due.
    pub fn due(&self) -> Option<Instant> {
        self.scheduled
    }

    /// The advertisement went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.scheduled = None;
    }
}

/// The advertisement: type, code, checksum (kernel), hop limit 64, no flags, lifetime 0,
/// reachable time 0, retransmit timer 0, no options.
pub fn advertisement() -> [u8; 16] {
    [
        ROUTER_ADVERTISEMENT,
        0,
        0,
        0,
        64,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// Whether an ICMPv6 message (as a raw socket delivers it, without the IPv6 header) is a
/// router solicitation.
pub fn is_solicitation(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] == ROUTER_SOLICITATION && packet[1] == 0
}

fn open(iface: &str, ifindex: u32) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(iface.as_bytes()))?;
    // Neighbour discovery messages must carry hop limit 255 (RFC 4861 6.1.2).
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_if_v6(ifindex)?;
    s.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
    s.set_nonblocking(true)?;
    // A raw socket is datagram-shaped: tokio's UdpSocket gives it async send_to/recv_from.
    UdpSocket::from_std(std::net::UdpSocket::from(s))
}

/// Serve one interface until `shutdown`. Failing to open the socket is not fatal: PCs still
/// boot, only slower, so it is logged once.
pub async fn run(
    iface: String,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ifindex = match nix::net::if_::if_nametoindex(iface.as_str()) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(%iface, "router advertisements off: no interface index: {e}");
            return;
        }
    };
    let socket = match open(&iface, ifindex) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%iface, "router advertisements off (PXE boots wait ~15 s for IPv6): {e}");
            return;
        }
    };
    tracing::info!(%iface, "answering IPv6 router solicitations (lifetime 0) so iPXE does not wait for IPv6");
    let to = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
    let mut buf = [0u8; 1500];
    let mut pacer = Pacer::default();
    loop {
        let due = pacer.due();
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) if is_solicitation(&buf[..n]) => {
                    let at = pacer.solicited(Instant::now());
                    tracing::debug!(%iface, %from, "router solicitation, answered in {:?}", at.saturating_duration_since(Instant::now()));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(%iface, "ndp receive: {e}"),
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                pacer.sent(Instant::now());
                if let Err(e) = socket.send_to(&advertisement(), to).await {
                    tracing::debug!(%iface, "router advertisement not sent: {e}");
                    metrics.dhcp_drop("ra-send-failed");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_solicitations_gets_one_advertisement_per_gap() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        // A lone PC is answered at once.
        assert_eq!(p.solicited(t0), t0);
        assert_eq!(p.due(), Some(t0));
        p.sent(t0);
        assert_eq!(p.due(), None);
        // Three more within the gap share one answer at its end.
        let end = t0 + MIN_GAP;
        for ms in [10, 60, 120] {
            assert_eq!(p.solicited(t0 + Duration::from_millis(ms)), end);
        }
        p.sent(end);
        // After a quiet spell, at once again.
        let later = end + MIN_GAP + Duration::from_millis(1);
        assert_eq!(p.solicited(later), later);
    }

    #[test]
    fn advertisement_says_no_router_and_no_prefix() {
        let ra = advertisement();
        assert_eq!(ra[0], 134);
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(ra[5], 0, "no managed/other flags: no DHCPv6 either");
        assert!(is_solicitation(&[133, 0, 0x12, 0x34, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0]));
    }
}
