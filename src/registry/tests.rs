//! The registry as the rest of the head uses it: boots, tokens, registrations, the clock
//! (injected: `sweep` takes the time), and the rules that keep strangers out.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enlist_api::admin::NamedPc;
use enlist_api::{paths, Mac, NodeKey, RegisterRequest, RequestAuth};

use super::*;
use crate::bootpath::Proto;
use crate::config::Config;
use crate::dhcp::client::{ClientInfo, Firmware};
use crate::dhcp::handler::BootObserver;
use crate::metrics::Metrics;
use crate::store::Store;

/// The image the tests' nodes boot.
const IMG: (&str, &str) = ("i586", "v1");

pub(crate) const A: Mac = Mac([0x52, 0x54, 0, 0, 0, 0x0a]);
pub(crate) const B: Mac = Mac([0x52, 0x54, 0, 0, 0, 0x0b]);
pub(crate) const C: Mac = Mac([0x52, 0x54, 0, 0, 0, 0x0c]);

pub(crate) fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, 0, n))
}

/// A registry on an in-memory database; `mode` is the DHCP mode of its one interface.
fn registry_with(mode: &str, nodes: &str) -> Arc<Registry> {
    registry_from(mode, nodes, "")
}

/// The same with more top-level config (`extra`, e.g. `schedules:`).
pub(crate) fn registry_from(mode: &str, nodes: &str, extra: &str) -> Arc<Registry> {
    let subnets = if mode == "dhcp" {
        "  subnets: [{ subnet: 10.77.0.0/24, pool: [10.77.0.100, 10.77.0.199] }]\n"
    } else {
        ""
    };
    let text = format!(
        "http: {{ listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }}\n\
         dhcp:\n  interfaces: [{{ name: lo, mode: {mode} }}]\n{subnets}\
         images: {{ dir: /nonexistent, bios: i586 }}\n\
         nodes: {{ heartbeat: 2s, lost_after: 10s, stuck_after: 60s{nodes} }}\n{extra}"
    );
    let cfg = Arc::new(Config::parse(&text, Path::new("test.yaml")).expect("config"));
    Registry::new(cfg, Store::memory().expect("db"), Arc::new(Metrics::new())).expect("registry")
}

pub(crate) fn registry() -> Arc<Registry> {
    registry_with("proxy", "")
}

fn state(r: &Registry, mac: Mac) -> NodeState {
    r.node(mac).expect("node").state
}

/// The PC's script from `from`; its token if it may boot.
fn script(r: &Registry, mac: Mac, from: IpAddr) -> Result<String, BootDecision> {
    match r.boot_decision(mac, from, Proto::Http).expect("decision") {
        BootDecision::Boot { token, .. } => Ok(token),
        other => Err(other),
    }
}

/// The node key in an overlay (the `key=` line of node.conf).
fn key_in(overlay: &[u8]) -> NodeKey {
    let text = String::from_utf8_lossy(overlay);
    let hex = text
        .split("key=")
        .nth(1)
        .and_then(|t| t.get(..64))
        .expect("key line");
    NodeKey::from_hex(hex).expect("key")
}

/// Register `mac` with `key` as its agent would; the session on success.
fn register(r: &Registry, mac: Mac, key: &NodeKey, from: IpAddr) -> Result<String, AgentError> {
    register_with(r, mac, key, from, &[])
}

/// The same, the agent reporting these CPU flags.
fn register_with(
    r: &Registry,
    mac: Mac,
    key: &NodeKey,
    from: IpAddr,
    cpu_flags: &[&str],
) -> Result<String, AgentError> {
    let info = enlist_api::NodeInfo {
        ip: from.to_string(),
        cpu_flags: cpu_flags.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    };
    register_info(r, mac, key, from, info)
}

/// The same, the agent reporting `info`.
fn register_info(
    r: &Registry,
    mac: Mac,
    key: &NodeKey,
    from: IpAddr,
    info: enlist_api::NodeInfo,
) -> Result<String, AgentError> {
    let nonce = r.nonce();
    let body = serde_json::to_vec(&RegisterRequest {
        info,
        challenge: "c".repeat(32),
    })
    .expect("json");
    let node = mac.to_string();
    let signature = RequestAuth {
        method: "POST",
        path: paths::REGISTER,
        node: &node,
        session: &nonce,
        seq: 0,
    }
    .sign(key, &body);
    r.register(&Signed {
        from,
        method: "POST",
        path: paths::REGISTER,
        node: &node,
        session: &nonce,
        seq: 0,
        signature: &signature,
        body: &body,
    })
    .map(|ok| ok.response.session)
}

/// Boot `mac` from `from` up to its node OS: script and initrd overlay; its key.
fn boot_os(r: &Registry, mac: Mac, from: IpAddr) -> NodeKey {
    let token = script(r, mac, from).expect("a boot script");
    key_in(&r.overlay(mac, &token, from, IMG).expect("overlay"))
}

/// Boot `mac` from `from` to `registered`: script, initrd overlay, registration.
pub(crate) fn boot(r: &Registry, mac: Mac, from: IpAddr) -> NodeKey {
    let key = boot_os(r, mac, from);
    register(r, mac, &key, from).expect("registered");
    key
}

pub(crate) fn pxe(mac: Mac) -> ClientInfo {
    ClientInfo {
        mac,
        msg_type: dhcproto::v4::MessageType::Discover,
        firmware: Firmware::Bios,
        ipxe: false,
        busid: None,
        isa_card: false,
        hostname: None,
        requested_ip: None,
        server_id: None,
        vendor_class: Some("PXEClient".into()),
    }
}

#[test]
fn a_pc_boots_from_dhcp_to_registered() {
    let r = registry();
    r.dhcp_seen(
        &pxe(A),
        Some(Ipv4Addr::new(10, 77, 0, 100)),
        Ipv4Addr::new(10, 77, 0, 1),
    );
    assert_eq!(state(&r, A), NodeState::Seen);
    let token = script(&r, A, ip(100)).expect("boots");
    assert_eq!(state(&r, A), NodeState::Booting);
    let overlay = r.overlay(A, &token, ip(100), IMG).expect("overlay");
    assert_eq!(
        r.overlay(A, &token, ip(100), IMG).expect("again"),
        overlay,
        "a retried download gets the same bytes (and the same key)"
    );
    let key = key_in(&overlay);
    register(&r, A, &key, ip(100)).expect("registered");
    let row = r.node(A).expect("node");
    assert_eq!(row.state, NodeState::Registered);
    assert_eq!(row.ip, Some(Ipv4Addr::new(10, 77, 0, 100)));
    assert!(row.boot_seconds.is_some());
    let steps: Vec<String> = r.view(&row).boot.iter().map(|s| s.step.clone()).collect();
    assert_eq!(steps, ["dhcp", "script", "registered"]);
    assert!(
        r.overlay(A, &token, ip(100), IMG).is_err(),
        "the token ends when the node registers"
    );
}

#[test]
fn the_initrd_goes_only_to_the_address_that_fetched_the_script() {
    let r = registry();
    let token = script(&r, A, ip(100)).expect("boots");
    let e = r.overlay(A, &token, ip(66), IMG).unwrap_err();
    assert_eq!(e.reason(), "token-wrong-address");
    assert_eq!(
        r.overlay(A, "guess", ip(100), IMG).unwrap_err().reason(),
        "token-mismatch"
    );
    assert_eq!(
        r.overlay(B, &token, ip(100), IMG).unwrap_err().reason(),
        "token-unknown"
    );
}

#[test]
fn every_boot_gets_a_new_key_and_the_old_one_stops_working() {
    let r = registry();
    let old = boot(&r, A, ip(100));
    r.leaving(A, "reboot").expect("leaving");
    let new = boot(&r, A, ip(100));
    assert_ne!(old, new);
    assert!(
        matches!(
            register(&r, A, &old, ip(100)),
            Err(AgentError::Unauthorized("bad-signature"))
        ),
        "last boot's key is worthless"
    );
}

#[test]
fn strangers_cannot_change_an_alive_node_or_get_its_key() {
    let r = registry();
    boot(&r, A, ip(100));
    let before = r.node(A).expect("node");
    // Its script asked for from a third address; a spoofed DHCP; a file fetch.
    assert_eq!(
        script(&r, A, ip(66)).unwrap_err(),
        BootDecision::Refused("node-up-elsewhere")
    );
    r.dhcp_seen(
        &pxe(A),
        Some(Ipv4Addr::new(10, 77, 0, 66)),
        Ipv4Addr::new(10, 77, 0, 1),
    );
    crate::bootfiles::FetchObserver::fetched(
        &*r,
        Some(A),
        ip(66),
        crate::bootpath::Kind::Kernel,
        "x",
        Proto::Tftp,
    );
    let after = r.node(A).expect("node");
    assert_eq!(after.state, before.state);
    assert_eq!(after.ip, before.ip);
    assert_eq!(after.key_epoch, before.key_epoch);
    // From its own address neither: the PC rebooted without a word, or a second PC took its
    // MAC and address. No new key (it would lock the node's agent out); the boot waits.
    assert!(matches!(
        script(&r, A, ip(100)).unwrap_err(),
        BootDecision::Retry(why) if why.contains("is up as a node")
    ));
    assert_eq!(r.node(A).expect("node").key_epoch, before.key_epoch);
}

#[test]
fn a_second_pc_booting_a_nodes_mac_while_it_beats_holds_the_node_back() {
    let r = registry();
    let key = boot(&r, A, ip(100));
    let session = register(&r, A, &key, ip(100)).expect("registered");
    assert!(!session.is_empty());
    // Another PC boots with A's MAC and address: refused, remembered.
    assert!(script(&r, A, ip(100)).is_err());
    // A heartbeat right after (in flight as the PC crashed) proves nothing...
    r.clone_check(A, Instant::now()).expect("check");
    assert_eq!(r.node(A).expect("node").quarantine, None);
    // ...one well after shows both are up: the node is held back, its key revoked.
    let epoch = r.node(A).expect("node").key_epoch;
    r.clone_check(A, Instant::now() + super::quarantine::CLONE_MARGIN)
        .expect("check");
    let held = r.node(A).expect("node");
    assert_eq!(held.state, NodeState::Pending);
    assert!(!held.approved && held.key_epoch > epoch);
    assert!(
        held.quarantine
            .as_deref()
            .is_some_and(|q| q.contains("another PC booted with its MAC")),
        "{:?}",
        held.quarantine
    );
    assert!(matches!(
        script(&r, A, ip(100)).unwrap_err(),
        BootDecision::AwaitingApproval { .. }
    ));
    // An admin lets it in again: it boots afresh.
    r.approve(A).expect("approve");
    let back = r.node(A).expect("node");
    assert!(back.approved && back.quarantine.is_none());
    assert_eq!(back.state, NodeState::Seen);
    assert!(script(&r, A, ip(100)).is_ok());
}

#[test]
fn a_node_that_went_quiet_boots_again_and_is_not_held_back() {
    let r = registry();
    let key = boot(&r, A, ip(100));
    register(&r, A, &key, ip(100)).expect("registered");
    // The PC crashed and reboots at once: it waits while its node still counts as up...
    assert!(script(&r, A, ip(100)).is_err());
    // ...and boots once the node is lost, with no quarantine (no heartbeat came meanwhile).
    r.sweep(Instant::now() + Duration::from_secs(3600))
        .expect("sweep");
    assert_eq!(r.node(A).expect("node").state, NodeState::Lost);
    assert!(script(&r, A, ip(100)).is_ok());
    r.clone_check(A, Instant::now() + Duration::from_secs(60))
        .expect("check");
    assert_eq!(r.node(A).expect("node").quarantine, None);
}

#[test]
fn registering_with_another_inventory_holds_the_node_back() {
    let r = registry();
    let info = |model: &str, mem_kb| enlist_api::NodeInfo {
        cpu_model: model.into(),
        cores: 1,
        mem_total_kb: mem_kb,
        ..Default::default()
    };
    let key = boot_os(&r, A, ip(100));
    register_info(&r, A, &key, ip(100), info("Pentium II", 124_000)).expect("first");
    // It leaves; a PC with the same MAC and other hardware boots and registers.
    r.leaving(A, "poweroff").expect("leaving");
    r.sweep(Instant::now() + Duration::from_secs(3600))
        .expect("sweep");
    let key = boot_os(&r, A, ip(100));
    let e = register_info(&r, A, &key, ip(100), info("Intel Core i7", 16_000_000)).unwrap_err();
    assert!(matches!(e, AgentError::Forbidden("quarantined")), "{e}");
    let held = r.node(A).expect("node");
    assert_eq!(held.state, NodeState::Pending);
    assert!(held
        .quarantine
        .as_deref()
        .is_some_and(|q| q.contains("another inventory") && q.contains("Core i7")));
    // The same hardware again (a reboot of the real PC) is no change.
    r.approve(A).expect("approve");
    let key = boot_os(&r, A, ip(100));
    register_info(&r, A, &key, ip(100), info("Intel Core i7", 16_000_000)).expect("approved");
    r.leaving(A, "reboot").expect("leaving");
    let key = boot_os(&r, A, ip(100));
    register_info(&r, A, &key, ip(100), info("Intel Core i7", 16_000_000)).expect("again");
}

#[test]
fn in_dhcp_mode_the_script_needs_the_address_leased_to_the_mac() {
    let r = registry_with("dhcp", "");
    assert_eq!(
        script(&r, A, ip(100)).unwrap_err(),
        BootDecision::Refused("not-the-leased-address")
    );
    let leased = Ipv4Addr::new(10, 77, 0, 100);
    assert!(r
        .store()
        .bind(
            A,
            leased,
            crate::store::now() + 600,
            None,
            crate::store::now()
        )
        .expect("bind"));
    assert!(script(&r, A, IpAddr::V4(leased)).is_ok());
    assert_eq!(
        script(&r, A, ip(101)).unwrap_err(),
        BootDecision::Refused("not-the-leased-address"),
        "another address of the subnet"
    );
}

#[test]
fn registration_needs_a_known_node_and_writes_nothing_before_the_signature() {
    let r = registry();
    let made_up = r.keys().node_key(B, 0);
    assert!(matches!(
        register(&r, B, &made_up, ip(5)),
        Err(AgentError::Unauthorized("unknown-node"))
    ));
    assert!(r.store().node(B).expect("db").is_none(), "nothing created");
}

#[test]
fn the_clock_marks_lost_gone_and_stuck() {
    let r = registry();
    boot(&r, A, ip(100));
    let now = Instant::now();
    r.sweep(now + Duration::from_secs(5)).expect("sweep");
    assert_eq!(
        state(&r, A),
        NodeState::Registered,
        "not silent long enough"
    );
    r.sweep(now + Duration::from_secs(11)).expect("sweep");
    assert_eq!(state(&r, A), NodeState::Lost);

    // A PC that fetched its OS and never registered is stuck.
    let token = script(&r, B, ip(101)).expect("boots");
    r.overlay(B, &token, ip(101), IMG).expect("overlay");
    crate::bootfiles::FetchObserver::fetched(
        &*r,
        Some(B),
        ip(101),
        crate::bootpath::Kind::Initrd,
        "initrd",
        Proto::Http,
    );
    r.sweep(Instant::now() + Duration::from_secs(30))
        .expect("sweep");
    assert_eq!(state(&r, B), NodeState::Booting);
    r.sweep(Instant::now() + Duration::from_secs(61))
        .expect("sweep");
    assert_eq!(state(&r, B), NodeState::Stuck);
    let events = r.store().events_of(B, 50).expect("events");
    let to_stuck = events
        .iter()
        .find(|e| e.detail.contains("→ stuck"))
        .map(|e| e.detail.clone());
    assert!(
        to_stuck
            .as_deref()
            .is_some_and(|d| d.contains("; last seen: initrd by http, ")),
        "its history says what was last seen: {to_stuck:?}"
    );
    let view = r.views().expect("views").into_iter().find(|n| n.mac == B);
    let problem = view.and_then(|v| v.problem);
    assert!(
        problem
            .as_deref()
            .is_some_and(|p| p.starts_with("never registered; last seen: initrd by http")),
        "{problem:?}"
    );
}

#[test]
fn leaving_then_silence_is_gone() {
    let r = registry();
    boot(&r, A, ip(100));
    r.leaving(A, "reboot").expect("leaving");
    assert_eq!(state(&r, A), NodeState::Leaving);
    r.sweep(Instant::now() + Duration::from_secs(11))
        .expect("sweep");
    assert_eq!(state(&r, A), NodeState::Gone);
}

#[test]
fn known_macs_creates_nothing_for_strangers() {
    let r = registry_with("proxy", ", enrollment: known-macs");
    assert_eq!(
        script(&r, A, ip(100)).unwrap_err(),
        BootDecision::NotEnlisted
    );
    r.dhcp_seen(&pxe(A), None, Ipv4Addr::new(10, 77, 0, 1));
    assert!(r.store().node(A).expect("db").is_none());
    assert!(r.views().expect("views").is_empty());
}

#[test]
fn approve_mode_shows_strangers_as_pending_and_stores_nothing_until_approved() {
    let r = registry_with("proxy", ", enrollment: approve");
    assert!(matches!(
        script(&r, A, ip(100)),
        Err(BootDecision::AwaitingApproval { .. })
    ));
    assert!(r.store().node(A).expect("db").is_none(), "nothing stored");
    let views = r.views().expect("views");
    assert_eq!(
        (views.len(), views[0].state, views[0].candidate),
        (1, NodeState::Pending, true)
    );
    r.approve(A).expect("approve");
    assert!(r.store().node(A).expect("db").is_some());
    boot(&r, A, ip(100));
    assert_eq!(state(&r, A), NodeState::Registered);
}

#[test]
fn new_nodes_from_one_source_are_rate_limited() {
    let r = registry_with("proxy", ", new_burst: 2, new_per_minute: 1");
    assert!(script(&r, Mac([2, 0, 0, 0, 0, 1]), ip(50)).is_ok());
    assert!(script(&r, Mac([2, 0, 0, 0, 0, 2]), ip(50)).is_ok());
    let third = Mac([2, 0, 0, 0, 0, 3]);
    assert!(matches!(
        script(&r, third, ip(50)),
        Err(BootDecision::Retry(_))
    ));
    assert!(r.store().node(third).expect("db").is_none());
    assert!(
        script(&r, third, ip(51)).is_ok(),
        "another source has its own allowance"
    );
}

#[test]
fn release_while_offline_revokes_the_key() {
    let r = registry();
    boot(&r, A, ip(100));
    let epoch = r.node(A).expect("node").key_epoch;
    r.sweep(Instant::now() + Duration::from_secs(11))
        .expect("sweep");
    r.release(A).expect("release");
    let row = r.node(A).expect("node");
    assert_eq!((row.state, row.released), (NodeState::Released, true));
    assert!(row.key_epoch > epoch);
    assert_eq!(script(&r, A, ip(100)).unwrap_err(), BootDecision::LocalDisk);
    assert_eq!(state(&r, A), NodeState::Gone);
}

#[test]
fn a_gone_pc_sent_to_its_disk_shows_in_its_history_once_per_ten_minutes() {
    let r = registry();
    boot(&r, A, ip(100));
    r.release(A).expect("release");
    r.leaving(A, "release").expect("the agent says it leaves");
    r.sweep(Instant::now() + Duration::from_secs(60))
        .expect("sweep");
    assert_eq!(
        state(&r, A),
        NodeState::Gone,
        "it left before its next boot"
    );
    let answered = || {
        r.store()
            .events_of(A, 1000)
            .expect("events")
            .iter()
            .filter(|e| e.detail.contains("answered with local disk boot"))
            .count()
    };
    for _ in 0..50 {
        assert_eq!(script(&r, A, ip(100)).unwrap_err(), BootDecision::LocalDisk);
    }
    assert_eq!(
        answered(),
        1,
        "recorded, but not once per (unauthenticated) request"
    );
}

#[test]
fn heartbeats_out_of_range_are_refused() {
    let r = registry();
    boot(&r, A, ip(100));
    let hb = enlist_api::Heartbeat {
        load1: f32::INFINITY,
        ..Default::default()
    };
    assert!(matches!(
        r.heartbeat_in_memory(A, &hb),
        Err(AgentError::BadRequest(_))
    ));
}

/// The agent session `mac` registered with (what its commands are signed for).
pub(crate) fn session_of(r: &Registry, mac: Mac) -> String {
    r.inner()
        .live
        .get(&mac)
        .and_then(|l| l.session.clone())
        .expect("session")
}

#[test]
fn new_nodes_join_their_reservations_or_subnets_group_and_an_admin_may_move_them() {
    let text = "http: { listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }\n\
        dhcp:\n  interfaces: [{ name: lo, mode: proxy }]\n  subnets:\n\
        \x20   - { subnet: 10.77.0.0/24, pool: [10.77.0.100, 10.77.0.199], group: room-b,\n\
        \x20       reservations: [{ mac: '52:54:00:00:00:0b', ip: 10.77.0.50, group: teacher }] }\n\
        images: { dir: /nonexistent, bios: i586 }\n\
        nodes: { heartbeat: 2s, lost_after: 10s, stuck_after: 60s }\n";
    let cfg = Arc::new(Config::parse(text, Path::new("t.yaml")).expect("config"));
    let r = Registry::new(cfg, Store::memory().expect("db"), Arc::new(Metrics::new())).expect("r");
    boot(&r, A, ip(100));
    boot(&r, B, ip(50));
    assert_eq!(r.node(A).expect("A").group, "room-b", "by subnet");
    assert_eq!(r.node(B).expect("B").group, "teacher", "by reservation");
    let elsewhere = Mac([0x52, 0x54, 0, 0, 0, 0x0c]);
    boot(&r, elsewhere, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 5)));
    assert_eq!(
        r.node(elsewhere).expect("C").group,
        "default",
        "nodes.group"
    );
    r.set_group(A, "night-shift").expect("moved");
    assert_eq!(r.node(A).expect("A").group, "night-shift");
    assert!(matches!(
        r.set_group(A, "no spaces"),
        Err(RegistryError::BadName(_))
    ));
    let history = r.store().events_of(A, 10).expect("events");
    assert!(history.iter().any(|e| e.detail == "room-b → night-shift"));
}

/// iPXE tells the card's PCI id: a card the image has no driver for is named in the PC's boot
/// trace and history (once), a card it drives is not.
#[test]
fn a_card_the_image_cannot_drive_is_named_at_dhcp_time() {
    let dir = tempfile::tempdir().expect("dir");
    let manifest = serde_json::json!({
        "drivers": [{ "pattern": "pci:v00008086d0000100Esv*sd*bc*sc*i*", "driver": "e1000" }]
    });
    crate::image::store::ImageStore::new(dir.path())
        .publish(
            "x86_64",
            "v1",
            &[("manifest.json", manifest.to_string().as_bytes())],
        )
        .expect("publish");
    let text = format!(
        "http: {{ listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }}\n\
         dhcp:\n  interfaces: [{{ name: lo, mode: proxy }}]\n\
         images: {{ dir: {}, bios: x86_64 }}\n",
        dir.path().display()
    );
    let cfg = Arc::new(Config::parse(&text, Path::new("test.yaml")).expect("config"));
    let r = Registry::new(cfg, Store::memory().expect("db"), Arc::new(Metrics::new()))
        .expect("registry");
    let ipxe = |mac: Mac, busid: &str| ClientInfo {
        ipxe: true,
        busid: crate::config::PciId::parse(busid),
        isa_card: false,
        ..pxe(mac)
    };
    let via = Ipv4Addr::new(10, 77, 0, 1);
    r.dhcp_seen(&ipxe(A, "1011:0019"), None, via);
    r.dhcp_seen(&ipxe(A, "1011:0019"), None, via);
    r.dhcp_seen(&ipxe(B, "8086:100e"), None, via);
    let notes = |mac: Mac| -> Vec<String> {
        r.store()
            .events_of(mac, 50)
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == "nic")
            .map(|e| e.detail)
            .collect()
    };
    let a = notes(A);
    assert_eq!(a.len(), 1, "once, not at every DHCP: {a:?}");
    assert!(
        a[0].contains("PCI 1011:0019: no driver for it in image x86_64"),
        "{a:?}"
    );
    let steps: Vec<String> = r
        .view(&r.node(A).expect("A"))
        .boot
        .iter()
        .map(|s| s.step.clone())
        .collect();
    assert!(steps.contains(&"nic".to_string()), "{steps:?}");
    assert!(notes(B).is_empty(), "an e1000 is driven by the image");
}

/// Where iPXE cannot tell a 64-bit CPU (no `cpuid` command; the script's test fails) the PC's
/// first boot is on the default image, and once its node OS reported `lm` it gets
/// `images.bios_x64` (here `efi_x64`'s, the default), with a note saying so once; a
/// reservation's image still wins.
#[test]
fn a_pc_found_to_be_64_bit_boots_the_64_bit_image_from_its_next_boot() {
    let text = "http: { listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }\n\
                dhcp:\n  interfaces: [{ name: lo, mode: proxy }]\n  subnets:\n\
                \x20   - subnet: 10.77.0.0/24\n\
                \x20     pool: [10.77.0.100, 10.77.0.199]\n\
                \x20     reservations: [{ mac: \"52:54:00:00:00:0b\", ip: 10.77.0.11, image: i586 }]\n\
                images: { dir: /nonexistent, bios: i586, efi_x64: x86_64 }\n";
    let cfg = Arc::new(Config::parse(text, Path::new("test.yaml")).expect("config"));
    let r = Registry::new(cfg, Store::memory().expect("db"), Arc::new(Metrics::new()))
        .expect("registry");
    let image_of = |mac: Mac, from: IpAddr| match r.boot_decision(mac, from, Proto::Http) {
        Ok(BootDecision::Boot { image, .. }) => image.to_string(),
        other => panic!("{other:?}"),
    };
    let image_notes = |mac: Mac| -> Vec<String> {
        let events = r.store().events_of(mac, 50).expect("events");
        events
            .into_iter()
            .filter(|e| e.kind == "image")
            .map(|e| e.detail)
            .collect()
    };
    let boot_with = |mac: Mac, from: IpAddr, flags: &[&str]| {
        let token = script(&r, mac, from).expect("a boot script");
        let key = key_in(&r.overlay(mac, &token, from, IMG).expect("overlay"));
        register_with(&r, mac, &key, from, flags).expect("registered");
    };
    assert_eq!(image_of(A, ip(10)), "i586", "not known yet: the default");
    boot_with(A, ip(10), &["fpu", "lm", "pae"]);
    assert_eq!(
        image_notes(A),
        ["64-bit CPU: its next BIOS network boot is of image x86_64 (images.bios_x64), not i586"]
    );
    r.leaving(A, "reboot").expect("leaving");
    assert_eq!(image_of(A, ip(10)), "x86_64");
    boot_with(A, ip(10), &["fpu", "lm", "pae"]);
    assert_eq!(image_notes(A).len(), 1, "said once");
    // A 32-bit CPU stays on the default; a reservation's image is kept on a 64-bit one.
    let c = Mac([0x52, 0x54, 0, 0, 0, 0x0c]);
    boot_with(c, ip(12), &["fpu", "pae"]);
    r.leaving(c, "reboot").expect("leaving");
    assert_eq!(image_of(c, ip(12)), "i586");
    boot_with(B, ip(11), &["lm"]);
    r.leaving(B, "reboot").expect("leaving");
    assert_eq!(image_of(B, ip(11)), "i586");
    assert!(image_notes(B).is_empty(), "{:?}", image_notes(B));
}

/// Beside a campus PXE service, proxyDHCP answers only the PCs enlist should boot: an
/// unknown PC is the campus service's (even with enrollment open), unless an enrollment
/// window is open; a PC that became a node is answered from then on.
#[test]
fn proxy_dhcp_answers_known_pcs_and_new_ones_only_in_an_enrollment_window() {
    let r = registry_from("proxy", ", enrollment: open", "");
    assert!(
        !r.proxy_may_answer(A),
        "an unknown PC: the campus' PXE answers it"
    );
    r.open_enrollment(Duration::from_secs(60));
    assert!(r.proxy_may_answer(A), "in the window");
    r.dhcp_seen(&pxe(A), None, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(state(&r, A), NodeState::Seen);
    r.open_enrollment(Duration::ZERO);
    assert!(r.proxy_may_answer(A), "a node now");
    assert!(!r.proxy_may_answer(B), "still not another unknown PC");
}

#[test]
fn a_name_pattern_numbers_pcs_in_join_order_around_the_names_the_admin_gave() {
    let r = registry_with("proxy", ", name_pattern: \"lab101-{index:02}\"");
    // C is imported as lab101-01: A, joining first, takes the next free one.
    let c = NamedPc {
        mac: C,
        name: "lab101-01".into(),
        group: Some("lab101".into()),
    };
    let answer = r.import(&[c]).expect("import");
    assert_eq!(answer.waiting, ["lab101-01"]);
    script(&r, A, ip(100)).expect("A boots");
    script(&r, B, ip(101)).expect("B boots");
    script(&r, C, ip(102)).expect("C boots");
    let name = |m| r.node(m).expect("node").name;
    assert_eq!(
        (name(A), name(B), name(C)),
        ("lab101-02".into(), "lab101-03".into(), "lab101-01".into())
    );
    assert_eq!(r.node(C).expect("node").group, "lab101");
}

#[test]
fn an_import_renames_nodes_names_pcs_not_seen_yet_and_lets_them_in_as_known() {
    let r = registry_with("proxy", ", enrollment: known-macs");
    assert_eq!(
        script(&r, A, ip(100)).unwrap_err(),
        BootDecision::NotEnlisted
    );
    let pcs = |names: [&str; 2]| {
        [A, B]
            .iter()
            .zip(names)
            .map(|(m, n)| NamedPc {
                mac: *m,
                name: n.into(),
                group: Some("lab101".into()),
            })
            .collect::<Vec<_>>()
    };
    r.import(&pcs(["lab101-01", "lab101-02"])).expect("import");
    script(&r, A, ip(100)).expect("an imported PC is known");
    assert_eq!(r.node(A).expect("node").name, "lab101-01");
    assert_eq!(r.names().len(), 2);
    // Again with other names: A is renamed now, B (not seen yet) will be called so.
    let a = r.import(&pcs(["lab101-11", "lab101-12"])).expect("import");
    assert_eq!(
        (a.changed.len(), a.waiting.clone()),
        (1, vec!["lab101-12".to_string()])
    );
    assert_eq!(r.node(A).expect("node").name, "lab101-11");
    // A name another node has refuses the whole list; so does a name twice.
    let taken = NamedPc {
        mac: B,
        name: "lab101-11".into(),
        group: None,
    };
    let e = r.import(&[taken]).unwrap_err().to_string();
    assert!(e.contains("another node's name"), "{e}");
    let mut twice = pcs(["x-1", "x-1"]);
    twice[1].mac = C;
    assert!(r.import(&twice).is_err());
    assert_eq!(
        r.node(A).expect("node").name,
        "lab101-11",
        "nothing changed"
    );
}

#[test]
fn a_reload_renames_the_node_a_new_reservation_names_and_lets_a_reserved_pc_in() {
    let base = "http: { listen: 127.0.0.1:0, public_url: http://10.77.0.1:8080 }\n\
         dhcp:\n  interfaces: [{ name: lo, mode: proxy }]\n  subnets:\n    - subnet: 10.77.0.0/24\n";
    let nodes = "images: { dir: /nonexistent, bios: i586 }\nnodes: { heartbeat: 2s, lost_after: 10s, enrollment: known-macs }\n";
    let reserve = |mac: Mac| {
        format!("      reservations: [{{ mac: \"{mac}\", name: teacher, group: front }}]\n")
    };
    let old = format!("{base}      reservations: [{{ mac: \"{A}\" }}]\n{nodes}");
    let cfg = Arc::new(Config::parse(&old, Path::new("t.yaml")).expect("config"));
    let r =
        Registry::new(cfg, Store::memory().expect("db"), Arc::new(Metrics::new())).expect("reg");
    script(&r, A, ip(100)).expect("A is reserved");
    assert_eq!(
        script(&r, B, ip(101)).unwrap_err(),
        BootDecision::NotEnlisted
    );
    // A's reservation now names it; B is reserved too.
    let new = format!(
        "{base}{}{nodes}",
        reserve(A).replace(" }]", " }, { mac: \"52:54:00:00:00:0b\" }]")
    );
    let new = new.replace("52:54:00:00:00:0b", &B.to_string());
    let done = r.reload(&Config::parse(&new, Path::new("t.yaml")).expect("new config"));
    assert_eq!(done.applied, ["dhcp.subnets[].reservations"]);
    assert!(done.restart.is_empty(), "{done:?}");
    let a = r.node(A).expect("node");
    assert_eq!((a.name.as_str(), a.group.as_str()), ("teacher", "front"));
    script(&r, B, ip(101)).expect("B is reserved now");
}

#[test]
fn a_forgotten_node_is_gone_from_the_registry_but_its_history_stays() {
    let r = registry();
    let key = boot_os(&r, A, ip(100));
    register(&r, A, &key, ip(100)).expect("registered");
    assert!(
        matches!(r.forget(A, "test"), Err(RegistryError::Up(_))),
        "an up node is not forgotten"
    );
    r.release(A).expect("release");
    let before = r.counts().get(&state(&r, A)).copied().unwrap_or(0);
    let was = state(&r, A);
    let row = r
        .forget(A, "forgotten by the workload manager (none)")
        .expect("forget");
    assert!(matches!(r.node(A), Err(RegistryError::UnknownNode(_))));
    assert_eq!(r.counts().get(&was).copied().unwrap_or(0), before - 1);
    assert!(r.members().1.is_empty(), "no peer left");
    let history = r.store().events_of(A, 10).expect("events");
    assert_eq!(history[0].kind, "forgotten");
    assert!(history[0]
        .detail
        .starts_with(&format!("{} forgotten", row.name)));
    assert!(history.len() > 1, "the older events stay");
    // Its next boot is a new PC's.
    boot_os(&r, A, ip(100));
    assert_eq!(state(&r, A), NodeState::Booting);
}

/// A PC whose boot fetched the node OS through an ISA card (iPXE's bus type) and never
/// registered boots with acpi=off from its next boot on, said in its history; a PCI PC in the
/// same plight, or an ISA PC that registered, is left as it is.
#[test]
fn an_isa_pc_that_fetched_its_os_and_never_registered_boots_with_acpi_off_next() {
    use crate::bootfiles::FetchObserver;
    use crate::bootpath::{Kind, Proto};
    let r = registry();
    let isa = |mac| ClientInfo {
        ipxe: true,
        isa_card: true,
        ..pxe(mac)
    };
    let via = Ipv4Addr::new(10, 77, 0, 1);
    let boot_once = |client: &ClientInfo, from: IpAddr| {
        r.dhcp_seen(client, Some(Ipv4Addr::new(10, 77, 0, 100)), via);
        let _ = boot_os(&r, client.mac, from);
        r.fetched(
            Some(client.mac),
            from,
            Kind::Kernel,
            "/images/i586/v/vmlinuz",
            Proto::Http,
        );
    };
    boot_once(&isa(A), ip(100));
    assert_eq!(
        r.node(A).expect("node").kernel_args,
        "",
        "not before its next boot"
    );
    r.dhcp_seen(&isa(A), Some(Ipv4Addr::new(10, 77, 0, 100)), via);
    let row = r.node(A).expect("node");
    assert_eq!(row.kernel_args, "acpi=off");
    let history = r.store().events_of(A, 10).expect("events");
    assert!(
        history.iter().any(|e| e.kind == "kernel-args"),
        "{history:?}"
    );
    assert_eq!(r.view(&row).kernel_args, "acpi=off");
    // Said once: its next DHCP packets change nothing.
    r.dhcp_seen(&isa(A), Some(Ipv4Addr::new(10, 77, 0, 100)), via);
    assert_eq!(r.node(A).expect("node").kernel_args, "acpi=off");

    // A PCI card's PC that fetched and never registered: no such fix.
    let pci = ClientInfo {
        ipxe: true,
        ..pxe(B)
    };
    boot_once(&pci, ip(101));
    r.dhcp_seen(&pci, Some(Ipv4Addr::new(10, 77, 0, 101)), via);
    assert_eq!(r.node(B).expect("node").kernel_args, "");

    // An ISA PC that registered, released and booting again: its card works as it is.
    r.dhcp_seen(&isa(C), Some(Ipv4Addr::new(10, 77, 0, 102)), via);
    let key = boot_os(&r, C, ip(102));
    r.fetched(
        Some(C),
        ip(102),
        Kind::Kernel,
        "/images/i586/v/vmlinuz",
        Proto::Http,
    );
    register(&r, C, &key, ip(102)).expect("registered");
    r.release(C).expect("release");
    r.leaving(C, "release").expect("leaving");
    r.dhcp_seen(&isa(C), Some(Ipv4Addr::new(10, 77, 0, 102)), via);
    assert_eq!(r.node(C).expect("node").kernel_args, "");
}
