//! The DHCP pipeline: one request in, one reply (or a reasoned drop) out.
//!
//! No sockets here: [`Handler::handle_batch`] takes decoded messages and where they arrived,
//! writes their leases (one transaction) and returns what to send where. Its tests are the
//! captured-packet fixtures in `tests/dhcp_fixtures.rs` and the hostile inputs in
//! `tests/hostile.rs`.
//!
//! Every request is untrusted: `hlen` is checked before `chaddr` is read, relays must be listed
//! (`subnets[].relays`), a DECLINE takes only the decliner's own address, and a panic while
//! handling one packet costs that packet alone (caught, rolled back, counted).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use enlist_api::Mac;
use ipnet::Ipv4Net;

use crate::config::{Config, Current, DhcpMode, SubnetConfig};
use crate::store::{LeaseBatch, OfferRequest, PoolRange, Store, StoreError};

use super::holds::OfferHolds;

use super::boot::{self, BootTarget};
use super::client::{classify, ClientInfo};

/// How long an offered address is held (in memory) for the client that was offered it.
const OFFER_HOLD_SECS: i64 = 60;
/// Offers held at most, whatever the pools: beyond this a DISCOVER is answered without a
/// hold (see `holds`), so a flood of made-up MACs costs bounded memory and scanning.
const MAX_HOLDS: usize = 4096;
/// How long a declined address stays out of the pool.
const DECLINE_QUARANTINE_SECS: i64 = 600;
/// PXE vendor option 43, sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: use the boot file name in
/// the reply, no boot server discovery.
const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];

/// How often quarantines that have ended are removed.
const PRUNE_EVERY_SECS: i64 = 60;

/// Things the rest of the head wants to know about DHCP traffic (the node registry).
pub trait BootObserver: Send + Sync {
    /// A network-boot client spoke to us; `ip` is the address it was given, if any; `via` is
    /// its relay, or the address of the interface it reached us on.
    fn dhcp_seen(&self, client: &ClientInfo, ip: Option<Ipv4Addr>, via: Ipv4Addr);

    /// Whether proxyDHCP may answer the PXE client `mac`. Beside a campus DHCP server the
    /// segment's network boot is the campus' own (WDS, FOG, SCCM) for every PC enlist should
    /// not boot: an answer would take that PC over. Every client, unless the observer knows.
    fn proxy_may_answer(&self, _mac: Mac) -> bool {
        true
    }
}

/// An observer that ignores everything (tests, `check-config`).
pub struct NoObserver;
impl BootObserver for NoObserver {
    fn dhcp_seen(&self, _: &ClientInfo, _: Option<Ipv4Addr>, _: Ipv4Addr) {}
}

/// Clients to tell the observer about once the batch is committed.
type Seen = Vec<(ClientInfo, Option<Ipv4Addr>, Ipv4Addr)>;

/// Where a packet arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub iface: String,
    /// This head's address on the interface: server identifier and next-server.
    pub iface_addr: Ipv4Addr,
    pub mode: DhcpMode,
    /// 67, or 4011 for PXE boot-server (proxyDHCP) requests.
    pub port: u16,
    pub src: SocketAddrV4,
}

#[derive(Debug)]
pub enum Outcome {
    Reply {
        msg: Box<Message>,
        to: SocketAddrV4,
        /// Set when `to` is the address being offered to a client that has none yet and asked
        /// for no broadcast (RFC 2131 4.1): its hardware address, which the sender puts in the
        /// ARP table before sending (or, if it cannot, broadcasts instead).
        link: Option<Mac>,
    },
    Drop(&'static str),
}

pub struct Handler {
    /// Shared with the registry: a reload swaps it (reservations take effect at once).
    cfg: Arc<Current>,
    store: Store,
    observer: Arc<dyn BootObserver>,
    /// When ended quarantines were last removed (unix seconds).
    pruned: AtomicI64,
    /// Addresses offered and not yet requested, in memory (offers are not leases).
    holds: Mutex<OfferHolds>,
    /// Relay addresses already warned about (no subnet lists them): each is said once at
    /// WARN, the packets after at DEBUG like every drop. At most [`WARNED_RELAYS`].
    warned_relays: Mutex<HashSet<Ipv4Addr>>,
}

/// Unknown relays warned about at most (a forged giaddr per packet must not fill the log).
const WARNED_RELAYS: usize = 16;

/// What a request is answered from: its subnet, the client's reservation, the pool.
struct Lease<'a> {
    /// The config this request is answered from (one for the whole request).
    cfg: &'a Config,
    subnet: &'a SubnetConfig,
    reservation: Option<&'a crate::config::Reservation>,
    range: PoolRange,
    secs: i64,
}

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
/// PXE boot-server port, where proxyDHCP answers requests of clients that have an address.
pub const PXE_PORT: u16 = 4011;

impl Handler {
    pub fn new(cfg: Arc<Current>, store: Store, observer: Arc<dyn BootObserver>) -> Handler {
        // Pools change only at a restart. Half of the addresses can be held at once (up to MAX_HOLDS): under a flood of
        // DISCOVERs the other half is still offered to whoever asks, without a hold.
        let pool: u64 = cfg
            .get()
            .dhcp
            .subnets
            .iter()
            .filter_map(|s| s.pool)
            .map(|[first, last]| u64::from(u32::from(last) - u32::from(first)) + 1)
            .sum();
        let cap = ((pool / 2) as usize).clamp(1, MAX_HOLDS);
        Handler {
            cfg,
            store,
            observer,
            pruned: AtomicI64::new(0),
            holds: Mutex::new(OfferHolds::new(cap)),
            warned_relays: Mutex::new(HashSet::new()),
        }
    }

    /// Handle one request. `now` is Unix seconds.
    pub fn handle(&self, at: &Arrival, msg: &Message, now: i64) -> Result<Outcome, StoreError> {
        let mut out = self.handle_batch(&[(at.clone(), msg.clone())], now);
        out.pop().unwrap_or(Ok(Outcome::Drop("empty-batch")))
    }

    /// Handle a burst of requests with one lease commit (see [`crate::store::LeaseBatch`]).
    /// Outcomes come back in order. If the commit fails every request gets the error: none of
    /// the replies may be sent. The observer hears about the clients after the commit.
    pub fn handle_batch(
        &self,
        batch: &[(Arrival, Message)],
        now: i64,
    ) -> Vec<Result<Outcome, StoreError>> {
        let mut seen = Vec::new();
        let prune = now - self.pruned.load(Ordering::Relaxed) >= PRUNE_EVERY_SECS;
        let committed = self.store.lease_batch(|leases| {
            if prune {
                self.pruned.store(now, Ordering::Relaxed);
                if let Err(e) = leases.prune_declined(now) {
                    tracing::warn!("dhcp: cannot remove ended quarantines: {e}");
                }
            }
            batch
                .iter()
                .map(|(at, msg)| self.handle_guarded(leases, &mut seen, at, msg, now))
                .collect::<Vec<_>>()
        });
        match committed {
            Ok(outcomes) => {
                for (client, ip, via) in &seen {
                    self.observer.dhcp_seen(client, *ip, *via);
                }
                outcomes
            }
            Err(e) => {
                let msg = e.to_string();
                batch
                    .iter()
                    .map(|_| Err(StoreError::Commit(msg.clone())))
                    .collect()
            }
        }
    }

    /// One packet, with a panic (a bug, never expected) costing that packet alone: its lease
    /// savepoint rolls back as the panic unwinds, the rest of the batch goes on.
    fn handle_guarded(
        &self,
        leases: &mut LeaseBatch,
        seen: &mut Seen,
        at: &Arrival,
        msg: &Message,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        let seen_before = seen.len();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.handle_one(leases, seen, at, msg, now)
        }));
        r.unwrap_or_else(|_| {
            seen.truncate(seen_before);
            tracing::error!(iface = %at.iface, xid = msg.xid(), "dhcp: handling a packet panicked; dropped it (a bug: please report it with the packet)");
            Ok(Outcome::Drop("panic"))
        })
    }

    fn handle_one(
        &self,
        leases: &mut LeaseBatch,
        seen: &mut Seen,
        at: &Arrival,
        msg: &Message,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        if msg.opcode() != Opcode::BootRequest {
            return Ok(Outcome::Drop("not-a-request"));
        }
        let client = match classify(msg) {
            Ok(c) => c,
            Err(super::client::ClientError::NotEthernet) => {
                return Ok(Outcome::Drop("not-ethernet"))
            }
            Err(super::client::ClientError::NoMessageType) => return Ok(Outcome::Drop("bootp")),
        };
        match at.mode {
            DhcpMode::Dhcp => self.full(leases, seen, at, msg, &client, now),
            DhcpMode::Proxy => Ok(self.proxy(seen, at, msg, &client)),
        }
    }

    /// The subnet a request is served from: the listed relay's (giaddr), or the receiving
    /// interface's. A giaddr no subnet lists is refused: anyone can put one in a packet.
    fn subnet_for<'c>(
        &self,
        cfg: &'c Config,
        at: &Arrival,
        msg: &Message,
    ) -> Result<&'c SubnetConfig, &'static str> {
        let giaddr = msg.giaddr();
        let subnets = &cfg.dhcp.subnets;
        if giaddr.is_unspecified() {
            return subnets
                .iter()
                .find(|s| s.subnet.contains(&at.iface_addr))
                .ok_or("no-subnet-for-client");
        }
        self.relay_subnet(cfg, giaddr).ok_or("unknown-relay")
    }

    /// The subnet that lists relay `giaddr`; if none does, said once at WARN with the fix
    /// (an upgrade from a release that answered any relay leaves a room dark otherwise).
    fn relay_subnet<'c>(&self, cfg: &'c Config, giaddr: Ipv4Addr) -> Option<&'c SubnetConfig> {
        let found = cfg.dhcp.subnets.iter().find(|s| s.relays.contains(&giaddr));
        if found.is_none() {
            self.warn_unknown_relay(giaddr);
        }
        found
    }

    /// Say once per relay, at WARN, that its requests go unanswered and what fixes it.
    fn warn_unknown_relay(&self, giaddr: Ipv4Addr) {
        let mut warned = self.warned_relays.lock().unwrap_or_else(|p| p.into_inner());
        if warned.len() < WARNED_RELAYS && warned.insert(giaddr) {
            tracing::warn!(
                relay = %giaddr,
                "dhcp: requests relayed by {giaddr} are not answered: no subnet lists it in \
                 `relays` (add it to the subnet of the room behind it; said once per relay)"
            );
        }
    }

    fn full(
        &self,
        leases: &mut LeaseBatch,
        seen: &mut Seen,
        at: &Arrival,
        msg: &Message,
        client: &ClientInfo,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        if at.port != SERVER_PORT {
            return Ok(Outcome::Drop("port-4011-in-dhcp-mode"));
        }
        let cfg = self.cfg.get();
        let subnet = match self.subnet_for(&cfg, at, msg) {
            Ok(s) => s,
            Err(reason) => return Ok(Outcome::Drop(reason)),
        };
        let reservation = subnet.reservations.iter().find(|r| r.mac == client.mac);
        // Without a pool the subnet serves its reservations only, each from its own address.
        let range = match (subnet.pool, reservation.and_then(|r| r.ip)) {
            (Some([first, last]), _) => PoolRange { first, last },
            (None, Some(ip)) => PoolRange {
                first: ip,
                last: ip,
            },
            (None, None) => return Ok(Outcome::Drop("no-pool")),
        };
        let lease = Lease {
            cfg: &cfg,
            subnet,
            reservation,
            range,
            secs: subnet.lease_time.as_secs() as i64,
        };
        let via = relay_or(msg, at.iface_addr);
        match client.msg_type {
            MessageType::Discover => {
                let Some(ip) = self.offer(leases, client, &lease, now)? else {
                    return Ok(Outcome::Drop("pool-exhausted"));
                };
                seen.push((client.clone(), Some(ip), via));
                Ok(self.lease_reply(msg, at, client, &lease, MessageType::Offer, ip))
            }
            MessageType::Request => self.request(leases, seen, at, msg, client, &lease, now),
            MessageType::Release => {
                self.holds().release(client.mac);
                let released = leases.release(client.mac, msg.ciaddr())?;
                Ok(Outcome::Drop(if released {
                    "released"
                } else {
                    "release-unknown-lease"
                }))
            }
            MessageType::Decline => self.decline(leases, at, client, &lease, now),
            MessageType::Inform => {
                let mut reply = self.base_reply(msg, MessageType::Ack, at.iface_addr);
                self.lease_options(&mut reply, subnet, 0, None);
                self.boot_options(&mut reply, client, at.iface_addr);
                Ok(self.addressed(reply, msg, false))
            }
            _ => Ok(Outcome::Drop("unexpected-message-type")),
        }
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, OfferHolds> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address to offer a DISCOVER, held for the client (if the cap allows) so clients
    /// booting together get different ones. Reads the leases, writes nothing.
    fn offer(
        &self,
        leases: &mut LeaseBatch,
        client: &ClientInfo,
        lease: &Lease,
        now: i64,
    ) -> Result<Option<Ipv4Addr>, StoreError> {
        let mut holds = self.holds();
        let mac = client.mac;
        let unavailable =
            |ip: Ipv4Addr| lease.cfg.reserved_ip(ip) || holds.held_for_other(ip, mac, now);
        let ip = leases.choose_offer(&OfferRequest {
            mac,
            range: lease.range,
            reserved: lease.reservation.and_then(|r| r.ip),
            unavailable: &unavailable,
            requested: client.requested_ip,
            now,
        })?;
        if let Some(ip) = ip {
            holds.hold(mac, ip, now + OFFER_HOLD_SECS, now);
        }
        Ok(ip)
    }

    /// REQUEST: bind the address the client asks for (SELECTING / INIT-REBOOT name it in
    /// option 50; RENEWING / REBINDING in ciaddr), or NAK.
    #[allow(clippy::too_many_arguments)] // the request, where it came from, and its lease
    fn request(
        &self,
        leases: &mut LeaseBatch,
        seen: &mut Seen,
        at: &Arrival,
        msg: &Message,
        client: &ClientInfo,
        lease: &Lease,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        if let Some(sid) = client.server_id {
            if sid != at.iface_addr {
                // The client chose another server's offer: forget ours.
                self.holds().release(client.mac);
                return Ok(Outcome::Drop("request-for-other-server"));
            }
        }
        let Some(ip) = client.requested_ip.or_else(|| {
            let c = msg.ciaddr();
            (!c.is_unspecified()).then_some(c)
        }) else {
            return Ok(Outcome::Drop("request-without-address"));
        };
        let allowed = match lease.reservation.and_then(|r| r.ip) {
            Some(reserved) => reserved == ip,
            None => {
                lease.subnet.subnet.contains(&ip)
                    && lease.range.contains(ip)
                    && !lease.cfg.reserved_ip(ip)
            }
        };
        let hostname = client.hostname.as_deref();
        if !allowed || !leases.bind(client.mac, ip, now + lease.secs, hostname, now)? {
            let mut nak = self.base_reply(msg, MessageType::Nak, at.iface_addr);
            nak.set_yiaddr(Ipv4Addr::UNSPECIFIED);
            return Ok(self.addressed(nak, msg, true));
        }
        {
            let mut holds = self.holds();
            holds.release(client.mac);
            holds.taken(ip);
        }
        seen.push((client.clone(), Some(ip), relay_or(msg, at.iface_addr)));
        Ok(self.lease_reply(msg, at, client, lease, MessageType::Ack, ip))
    }

    /// DECLINE: the client found `ip` in use. Believed only when addressed to this server,
    /// for an address of the pool that the decliner itself was offered or holds.
    fn decline(
        &self,
        leases: &mut LeaseBatch,
        at: &Arrival,
        client: &ClientInfo,
        lease: &Lease,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        if client.server_id != Some(at.iface_addr) {
            return Ok(Outcome::Drop("decline-for-other-server"));
        }
        let Some(ip) = client.requested_ip else {
            return Ok(Outcome::Drop("decline-without-address"));
        };
        if !lease.range.contains(ip) || lease.cfg.reserved_ip(ip) {
            return Ok(Outcome::Drop("decline-outside-pool"));
        }
        let offered = self.holds().held_for(client.mac, now) == Some(ip);
        if !leases.decline(client.mac, ip, offered, now + DECLINE_QUARANTINE_SECS, now)? {
            return Ok(Outcome::Drop("decline-not-holder"));
        }
        self.holds().release(client.mac);
        tracing::warn!(mac = %client.mac, %ip, "client declined address (in use by another host); quarantined");
        Ok(Outcome::Drop("declined"))
    }

    /// An OFFER or ACK of `ip`: lease options, boot options, addressed per RFC 2131 4.1.
    fn lease_reply(
        &self,
        msg: &Message,
        at: &Arrival,
        client: &ClientInfo,
        lease: &Lease,
        mtype: MessageType,
        ip: Ipv4Addr,
    ) -> Outcome {
        let mut reply = self.base_reply(msg, mtype, at.iface_addr);
        reply.set_yiaddr(ip);
        let name = lease.reservation.and_then(|r| r.name.as_deref());
        self.lease_options(&mut reply, lease.subnet, lease.secs, name);
        self.boot_options(&mut reply, client, at.iface_addr);
        self.addressed(reply, msg, false)
    }

    /// proxyDHCP (PXE spec 2.1): boot information only, never an address, PXE clients only.
    fn proxy(&self, seen: &mut Seen, at: &Arrival, msg: &Message, client: &ClientInfo) -> Outcome {
        if !client.is_pxe() {
            // Not ours to answer, but the registry hears of it: a PC whose own OS is up.
            let asked = client
                .requested_ip
                .or_else(|| Some(msg.ciaddr()).filter(|ip| !ip.is_unspecified()));
            seen.push((client.clone(), asked, relay_or(msg, at.iface_addr)));
            return Outcome::Drop("proxy-not-pxe-client");
        }
        if !self.observer.proxy_may_answer(client.mac) {
            return Outcome::Drop("proxy-not-ours");
        }
        // Relayed (a router's helper address names this head): answered through the relay,
        // if a subnet lists it; anyone can write a giaddr into a packet.
        let relay = Some(msg.giaddr()).filter(|g| !g.is_unspecified());
        if relay.is_some_and(|g| self.relay_subnet(&self.cfg.get(), g).is_none()) {
            return Outcome::Drop("unknown-relay");
        }
        let mtype = match (at.port, client.msg_type) {
            (SERVER_PORT, MessageType::Discover) => MessageType::Offer,
            (SERVER_PORT, MessageType::Request) => {
                // The client is taking an address from the real DHCP server; with a boot file in
                // our offer it needs nothing more from us on port 67.
                return Outcome::Drop("proxy-request-on-67");
            }
            (_, MessageType::Request) | (_, MessageType::Inform) => MessageType::Ack,
            _ => return Outcome::Drop("proxy-unexpected-message-type"),
        };
        let mut reply = self.base_reply(msg, mtype, at.iface_addr);
        reply.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        reply.set_ciaddr(msg.ciaddr());
        if !self.boot_options(&mut reply, client, at.iface_addr) {
            return Outcome::Drop("proxy-no-boot-file-for-client");
        }
        if let Some(DhcpOption::ClientMachineIdentifier(id)) = msg
            .opts()
            .get(dhcproto::v4::OptionCode::ClientMachineIdentifier)
        {
            reply
                .opts_mut()
                .insert(DhcpOption::ClientMachineIdentifier(id.clone()));
        }
        seen.push((client.clone(), None, relay_or(msg, at.iface_addr)));
        if at.port == SERVER_PORT {
            let to = match relay {
                Some(g) => {
                    // A proxy offer has no address in it: the relay cannot unicast it to a
                    // client that has none yet, and (dnsmasq) drops it unless told to
                    // broadcast (RFC 1542 4.1.2).
                    reply.set_flags(Flags::default().set_broadcast());
                    SocketAddrV4::new(g, SERVER_PORT)
                }
                None => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
            };
            Outcome::Reply {
                msg: Box::new(reply),
                to,
                link: None,
            }
        } else {
            // Port 4011: the client has its address; answer where it asked from.
            Outcome::Reply {
                msg: Box::new(reply),
                to: at.src,
                link: None,
            }
        }
    }

    fn base_reply(&self, req: &Message, mtype: MessageType, server: Ipv4Addr) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(req.htype())
            .set_xid(req.xid())
            .set_flags(req.flags())
            .set_giaddr(req.giaddr())
            .set_chaddr(req.chaddr());
        m.opts_mut().insert(DhcpOption::MessageType(mtype));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        m
    }

    fn lease_options(
        &self,
        m: &mut Message,
        s: &SubnetConfig,
        lease_secs: i64,
        name: Option<&str>,
    ) {
        let net: Ipv4Net = s.subnet;
        let o = m.opts_mut();
        o.insert(DhcpOption::SubnetMask(net.netmask()));
        o.insert(DhcpOption::BroadcastAddr(net.broadcast()));
        if !s.routers.is_empty() {
            o.insert(DhcpOption::Router(s.routers.clone()));
        }
        if !s.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(s.dns.clone()));
        }
        if let Some(d) = &s.domain {
            o.insert(DhcpOption::DomainName(d.clone()));
        }
        if let Some(n) = name {
            o.insert(DhcpOption::Hostname(n.to_string()));
        }
        if lease_secs > 0 {
            let secs = u32::try_from(lease_secs).unwrap_or(u32::MAX);
            o.insert(DhcpOption::AddressLeaseTime(secs));
            o.insert(DhcpOption::Renewal(secs / 2));
            o.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
    }

    /// Add boot information; returns false if there is nothing to boot for this client.
    fn boot_options(&self, m: &mut Message, client: &ClientInfo, server: Ipv4Addr) -> bool {
        let cfg = self.cfg.get();
        let target = boot::select(
            client,
            &cfg.dhcp.boot_files,
            cfg.http.public_url.base(),
            &cfg.images.tftp_nics,
        );
        match target {
            BootTarget::None => return false,
            BootTarget::Tftp(file) => {
                m.set_siaddr(server);
                m.set_fname_str(file);
            }
            BootTarget::Http(url) => {
                m.set_siaddr(server);
                m.set_fname_str(url);
            }
        }
        if let Some(class) = &client.vendor_class {
            let echo = if class.starts_with("HTTPClient") {
                "HTTPClient"
            } else {
                "PXEClient"
            };
            m.opts_mut()
                .insert(DhcpOption::ClassIdentifier(echo.as_bytes().to_vec()));
            if echo == "PXEClient" && !client.ipxe {
                m.opts_mut()
                    .insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTIONS.to_vec()));
            }
        }
        true
    }

    /// Where a reply goes (RFC 2131 4.1): to the relay, to the client's address, to the
    /// address being offered at the client's hardware address (unless the client asked for a
    /// broadcast), or broadcast. Unicast matters in boot storms: every broadcast lands in every
    /// booting PC's receive ring, and the small rings of boot ROMs overflow.
    fn addressed(&self, mut reply: Message, req: &Message, nak: bool) -> Outcome {
        let mut link = None;
        let to = if !req.giaddr().is_unspecified() {
            if nak {
                reply.set_flags(Flags::default().set_broadcast());
            }
            SocketAddrV4::new(req.giaddr(), SERVER_PORT)
        } else if !nak && !req.ciaddr().is_unspecified() {
            SocketAddrV4::new(req.ciaddr(), CLIENT_PORT)
        } else if let Some(mac) = unicast_link(req, &reply, nak) {
            link = Some(mac);
            SocketAddrV4::new(reply.yiaddr(), CLIENT_PORT)
        } else {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        };
        Outcome::Reply {
            msg: Box::new(reply),
            to,
            link,
        }
    }
}

/// The relay a request came through, else `iface` (where it reached us).
fn relay_or(msg: &Message, iface: Ipv4Addr) -> Ipv4Addr {
    let g = msg.giaddr();
    if g.is_unspecified() {
        iface
    } else {
        g
    }
}

/// The client's Ethernet address, if a reply may go to it by unicast although it has no
/// address yet: not a NAK, an address offered, and no broadcast asked for.
fn unicast_link(req: &Message, reply: &Message, nak: bool) -> Option<Mac> {
    if nak || req.flags().broadcast() || reply.yiaddr().is_unspecified() {
        return None;
    }
    super::client::ethernet_mac(req)
}
