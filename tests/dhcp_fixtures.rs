//! The DHCP pipeline against real packets captured with tshark from QEMU's iPXE ROM, Debian's
//! iPXE (the boot floppy's ipxe.lkrn), busybox udhcpc (the node OS) and ISC dhclient.
//! `tests/fixtures/dhcp/capture.sh` recaptures them (see the README there).

#![allow(clippy::unwrap_used)] // tests unwrap what they set up

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};
use enlist::config::{Config, Current, DhcpMode};
use enlist::dhcp::client::{classify, Firmware};
use enlist::dhcp::handler::{Arrival, Handler, NoObserver, Outcome};
use enlist::store::Store;

const CONFIG: &str = "
state_dir: /nonexistent
http: { listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }
dhcp:
  interfaces: [{ name: br0, mode: dhcp }]
  subnets: [{ subnet: 10.77.0.0/24, pool: [10.77.0.100, 10.77.0.199], router: 10.77.0.1 }]
images: { dir: /nonexistent, bios: i586 }
";

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dhcp");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixture folder")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().map(|x| x == "bin").unwrap_or(false))
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}

fn fixture(name: &str) -> Message {
    let (_, bytes) = fixtures()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fixture {name} missing"));
    Message::decode(&mut Decoder::new(&bytes)).expect("fixture decodes")
}

fn handler(mode: DhcpMode) -> (Handler, Arrival) {
    handler_with(CONFIG, mode)
}

fn handler_with(config: &str, mode: DhcpMode) -> (Handler, Arrival) {
    let cfg = Arc::new(Config::parse(config, Path::new("t.yaml")).expect("config"));
    let h = Handler::new(
        Arc::new(Current::new(cfg)),
        Store::memory().expect("db"),
        Arc::new(NoObserver),
    );
    let at = Arrival {
        iface: "br0".into(),
        iface_addr: Ipv4Addr::new(10, 77, 0, 1),
        mode,
        port: 67,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    };
    (h, at)
}

fn reply(h: &Handler, at: &Arrival, m: &Message) -> Option<Message> {
    match h.handle(at, m, 1_000_000).expect("handler") {
        Outcome::Reply { msg, .. } => Some(*msg),
        Outcome::Drop(_) => None,
    }
}

fn boot_file(m: &Message) -> String {
    let f = m
        .fname()
        .map(|b| {
            String::from_utf8_lossy(b)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_default();
    if !f.is_empty() {
        return f;
    }
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => String::from_utf8_lossy(b).to_string(),
        _ => String::new(),
    }
}

#[test]
fn there_are_fixtures_from_every_client() {
    let names: Vec<String> = fixtures().into_iter().map(|(n, _)| n).collect();
    for client in ["qemu-ipxe-rom", "ipxe-lkrn", "udhcpc", "dhclient"] {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(client) && n.contains("discover")),
            "no {client} DISCOVER in {names:?}"
        );
    }
}

#[test]
fn ipxe_clients_get_their_boot_script_url() {
    // QEMU's ROM runs on an EtherExpress Pro/100 (in images.tftp_nics by default): its script
    // comes by TFTP, so that PC uses no TCP at all. ipxe.lkrn ran on an NE2000 (10ec:8029).
    for (name, busid, script) in [
        ("qemu-ipxe-rom-discover.bin", "8086:1229", "boot/{mac}.ipxe"),
        (
            "ipxe-lkrn-discover.bin",
            "10ec:8029",
            "http://10.77.0.1:8080/boot/{mac}.ipxe",
        ),
    ] {
        let m = fixture(name);
        let c = classify(&m).expect("classify");
        assert!(c.ipxe, "{name}: iPXE recognised");
        assert_eq!(
            c.busid.map(|b| b.to_string()).as_deref(),
            Some(busid),
            "{name}: option 175.177"
        );
        assert_eq!(c.firmware, Firmware::Bios, "{name}");
        let (h, at) = handler(DhcpMode::Dhcp);
        let r = reply(&h, &at, &m).unwrap_or_else(|| panic!("{name}: no OFFER"));
        assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
        let mac = c.mac.hyphenated();
        assert_eq!(boot_file(&r), script.replace("{mac}", &mac), "{name}");
        assert_eq!(r.siaddr(), at.iface_addr, "{name}: next-server");
        assert!(r.yiaddr().octets()[..3] == [10, 77, 0]);
    }
}

#[test]
fn plain_dhcp_clients_get_an_address_and_no_boot_file() {
    for name in ["udhcpc-discover.bin", "dhclient-discover.bin"] {
        let m = fixture(name);
        assert_eq!(
            classify(&m).expect("classify").firmware,
            Firmware::None,
            "{name}"
        );
        let (h, at) = handler(DhcpMode::Dhcp);
        let r = reply(&h, &at, &m).unwrap_or_else(|| panic!("{name}: no OFFER"));
        assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(boot_file(&r), "", "{name}");
        // In proxy mode a plain client is none of our business.
        let (h, at) = handler(DhcpMode::Proxy);
        assert!(
            reply(&h, &at, &m).is_none(),
            "{name}: proxyDHCP must not answer"
        );
    }
}

/// A subnet with no pool hands out its reservations' addresses, and nothing to anyone else.
#[test]
fn a_subnet_without_a_pool_serves_its_reservations_only() {
    let reserved = fixture("udhcpc-discover.bin");
    let mac = classify(&reserved).expect("classify").mac;
    let config = CONFIG.replace(
        "subnets: [{ subnet: 10.77.0.0/24, pool: [10.77.0.100, 10.77.0.199], router: 10.77.0.1 }]",
        &format!("subnets: [{{ subnet: 10.77.0.0/24, reservations: [{{ mac: \"{mac}\", ip: 10.77.0.42 }}] }}]"),
    );
    assert_ne!(config, CONFIG);
    let (h, at) = handler_with(&config, DhcpMode::Dhcp);
    let r = reply(&h, &at, &reserved).expect("the reservation's OFFER");
    assert_eq!(r.yiaddr(), Ipv4Addr::new(10, 77, 0, 42));
    let other = fixture("dhclient-discover.bin");
    assert_ne!(classify(&other).expect("classify").mac, mac);
    assert!(matches!(
        outcome_of(&h, &at, &other, "dhclient"),
        Outcome::Drop("no-pool")
    ));
}

#[test]
fn proxy_mode_answers_pxe_clients_without_an_address() {
    let m = fixture("qemu-ipxe-rom-discover.bin");
    let (h, at) = handler(DhcpMode::Proxy);
    let r = reply(&h, &at, &m).expect("proxy OFFER");
    assert_eq!(
        r.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "proxyDHCP never hands out addresses"
    );
    assert!(
        matches!(r.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(v)) if v == b"PXEClient")
    );
}

#[test]
fn requests_from_fixtures_are_acked_after_their_offer() {
    for client in ["udhcpc", "dhclient", "qemu-ipxe-rom"] {
        let Some((_, bytes)) = fixtures()
            .into_iter()
            .find(|(n, _)| n == &format!("{client}-request.bin"))
        else {
            continue;
        };
        let req = Message::decode(&mut Decoder::new(&bytes)).expect("decode");
        let (h, at) = handler(DhcpMode::Dhcp);
        // The captured REQUEST asks for the address the real head offered. A fresh head with an
        // empty database has that address free, so it ACKs exactly the address asked for.
        let disc = fixture(&format!("{client}-discover.bin"));
        reply(&h, &at, &disc).expect("offer");
        let asked = classify(&req)
            .expect("classify")
            .requested_ip
            .unwrap_or(req.ciaddr());
        let r = reply(&h, &at, &req).expect("reply to REQUEST");
        assert_eq!(r.opts().msg_type(), Some(MessageType::Ack), "{client}");
        assert_eq!(r.yiaddr(), asked, "{client}");
        // Another client asking for the same address now is refused.
        let mut other = req.clone();
        other.set_chaddr(&[2, 0xde, 0xad, 0, 0, 1]);
        let r2 = reply(&h, &at, &other);
        assert!(
            r2.map(|m| m.opts().msg_type() != Some(MessageType::Ack) || m.yiaddr() != asked)
                .unwrap_or(true),
            "{client}: one address, two clients"
        );
    }
}

#[test]
fn offers_go_by_unicast_to_the_offered_address_unless_the_client_asks_for_broadcast() {
    let mut unicast = 0;
    for (name, bytes) in fixtures()
        .into_iter()
        .filter(|(n, _)| n.ends_with("-discover.bin"))
    {
        let disc = Message::decode(&mut Decoder::new(&bytes)).expect("decode");
        let (h, at) = handler(DhcpMode::Dhcp);
        let Outcome::Reply { msg, to, link } = h.handle(&at, &disc, 1_000_000).expect("handler")
        else {
            panic!("{name}: no offer");
        };
        if disc.flags().broadcast() {
            assert_eq!(*to.ip(), Ipv4Addr::BROADCAST, "{name}");
            assert_eq!(link, None, "{name}");
        } else {
            // RFC 2131 4.1: to yiaddr at chaddr; the sender puts that pairing in the ARP table.
            assert_eq!(*to.ip(), msg.yiaddr(), "{name}");
            assert_eq!(
                link.as_ref().map(|m| &m.0[..]),
                disc.chaddr().get(..6),
                "{name}"
            );
            unicast += 1;
        }
        assert_eq!(to.port(), 68, "{name}");
        // A broadcast request is answered by broadcast.
        let mut asked = disc.clone();
        asked.set_flags(dhcproto::v4::Flags::default().set_broadcast());
        let Outcome::Reply { to, link, .. } = h.handle(&at, &asked, 1_000_000).expect("handler")
        else {
            panic!("{name}: no offer to the broadcast request");
        };
        assert_eq!((*to.ip(), link), (Ipv4Addr::BROADCAST, None), "{name}");
    }
    // iPXE (the boot ROMs) clears the broadcast flag on Ethernet.
    assert!(unicast >= 2, "only {unicast} fixtures asked for unicast");
}

/// What the handler made of a packet: no database error, and never a caught panic.
fn outcome_of(h: &Handler, at: &Arrival, m: &Message, what: &str) -> Outcome {
    let o = h
        .handle(at, m, 1)
        .unwrap_or_else(|e| panic!("{what}: database error {e}"));
    assert!(
        !matches!(o, Outcome::Drop("panic")),
        "{what}: the handler panicked"
    );
    o
}

#[test]
fn truncated_and_corrupted_packets_are_answered_or_dropped_never_panicked_on() {
    let (mut replies, mut drops) = (0, 0);
    for (name, bytes) in fixtures() {
        let (h, at) = handler(DhcpMode::Dhcp);
        let variants = (0..bytes.len())
            .map(|cut| (format!("{name} cut at {cut}"), bytes[..cut].to_vec()))
            .chain((0..bytes.len()).step_by(7).map(|i| {
                let mut b = bytes.clone();
                b[i] ^= 0xff;
                (format!("{name} byte {i} flipped"), b)
            }));
        for (what, b) in variants {
            let Ok(m) = Message::decode(&mut Decoder::new(&b)) else {
                continue;
            };
            match outcome_of(&h, &at, &m, &what) {
                Outcome::Reply { msg, .. } => {
                    // A reply is only ever made for a well-formed Ethernet request.
                    assert_eq!((m.hlen(), msg.hlen()), (6, 6), "{what}");
                    replies += 1;
                }
                Outcome::Drop(_) => drops += 1,
            }
        }
    }
    assert!(replies > 0 && drops > 0, "{replies} replies, {drops} drops");
}

#[test]
fn impossible_hardware_lengths_are_dropped_before_chaddr_is_read() {
    let (_, bytes) = fixtures()
        .into_iter()
        .find(|(n, _)| n == "udhcpc-discover.bin")
        .expect("fixture");
    for hlen in [0u8, 5, 7, 16, 17, 255] {
        let mut b = bytes.clone();
        b[2] = hlen; // op, htype, hlen: RFC 2131 section 2
        let m = Message::decode(&mut Decoder::new(&b)).expect("decodes");
        assert_eq!(m.hlen(), hlen);
        let (h, at) = handler(DhcpMode::Dhcp);
        let o = outcome_of(&h, &at, &m, &format!("hlen {hlen}"));
        assert!(
            matches!(o, Outcome::Drop("not-ethernet")),
            "hlen {hlen}: {o:?}"
        );
    }
}

/// Inputs the fuzzer crashed on (`cargo xtask fuzz`), kept as `*.crash` beside the captures:
/// each goes through the server's decoder without taking the socket task down.
#[test]
fn inputs_the_fuzzer_found_are_dropped_not_panicked_on() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dhcp");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fixtures") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "crash") {
            let bytes = std::fs::read(&p).expect("read");
            if let Ok(m) = enlist::dhcp::server::decode_packet(&bytes) {
                let (h, at) = handler(DhcpMode::Dhcp);
                outcome_of(&h, &at, &m, &p.display().to_string());
            }
            n += 1;
        }
    }
    assert!(n >= 1, "the crash inputs are in {}", dir.display());
}

/// DHCP starvation: DISCOVERs from thousands of made-up MACs do not take the pool (offers are
/// held in memory, and only up to half the pool); a real client is still offered an address
/// and its REQUEST is acknowledged. Nothing of the flood is written.
#[test]
fn a_flood_of_made_up_macs_does_not_starve_the_pool() {
    let (h, at) = handler(DhcpMode::Dhcp);
    let template = fixture("udhcpc-discover.bin");
    for i in 0..5000u32 {
        let mut m = template.clone();
        let b = i.to_be_bytes();
        m.set_chaddr(&[0x02, 0xee, b[0], b[1], b[2], b[3]]);
        m.set_xid(i);
        outcome_of(&h, &at, &m, "flood");
    }
    let real = fixture("dhclient-discover.bin");
    let Outcome::Reply { msg: offer, .. } = outcome_of(&h, &at, &real, "real DISCOVER") else {
        panic!("the real client got no OFFER after the flood");
    };
    let mut req = real.clone();
    req.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(at.iface_addr));
    let Outcome::Reply { msg: ack, .. } = outcome_of(&h, &at, &req, "real REQUEST") else {
        panic!("no reply to the real REQUEST");
    };
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
}
