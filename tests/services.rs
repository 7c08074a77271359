//! The head's DHCP and TFTP services against real clients (busybox udhcpc, ISC dhclient,
//! tftp-hpa, curl) in a private network namespace. Needs root: run by `cargo xtask test`.

#![allow(clippy::unwrap_used)] // tests unwrap what they set up

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use enlist_lab::host::{in_netns, Host};
use enlist_lab::{run, Lab};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A lab with no PCs, a second subnet behind a relay, and a TFTP root holding a 7 MB file.
fn services_lab(test: &str) -> Lab {
    services_lab_with(
        test,
        "dhcp",
        "\x20   - { subnet: 10.77.0.0/24, pool: [10.77.0.100, 10.77.0.199], routers: [10.77.0.1] }\n\
         \x20   - { subnet: 10.78.0.0/24, pool: [10.78.0.100, 10.78.0.150], routers: [10.78.0.1], relays: [10.78.0.1] }\n",
    )
}

/// A lab with no PCs, its head's DHCP in `mode` with `subnets` (YAML list items), and a TFTP
/// root holding a 7 MB file.
fn services_lab_with(test: &str, mode: &str, subnets: &str) -> Lab {
    let ns = format!("svc-{test}-{}", std::process::id() % 10000);
    let dir = root().join("lab").join(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(&ns, &dir).unwrap_or_else(|e| panic!("{e}"));
    let tftp_root = dir.join("tftproot");
    std::fs::create_dir_all(&tftp_root).expect("tftp root");
    let big: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tftp_root.join("big.bin"), &big).expect("big file");
    std::fs::write(dir.join("secret.txt"), "outside the root").expect("secret");
    let cfg = format!(
        "state_dir: {state}\nhttp: {{ listen: 0.0.0.0:8080, public_url: http://10.77.0.1:8080 }}\n\
         tftp: {{ listen: 0.0.0.0:69, ipxe_dir: {root}, max_blksize: 1468, max_windowsize: 64 }}\n\
         dhcp:\n  interfaces: [{{ name: br0, mode: {mode} }}]\n  subnets:\n{subnets}\
         images: {{ dir: {dir}/images, bios: i586 }}\n",
        state = dir.join("state").display(),
        root = tftp_root.display(),
        dir = dir.display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, cfg).expect("config");
    lab.start_head(&root().join("target/release/enlist"), &path)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.head_log()));
    lab
}

/// A relay (a router with a helper address) on the lab bridge at 10.77.0.254, with a second
/// LAN 10.78.0.0/24 where it is 10.78.0.1; the head routes that LAN through it.
fn relay(lab: &Lab) -> Host {
    let relay = client(lab, "r", "02:00:00:00:00:03");
    let ip = |args: &[&str]| run(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("{e}"));
    ip(&[
        "-n",
        &relay.ns,
        "addr",
        "add",
        "10.77.0.254/24",
        "dev",
        &relay.iface,
    ]);
    // The relay's second LAN (a veth pair inside its namespace: no dummy module needed).
    ip(&[
        "-n", &relay.ns, "link", "add", "lan2", "type", "veth", "peer", "name", "lan2p",
    ]);
    ip(&["-n", &relay.ns, "link", "set", "lan2p", "up"]);
    ip(&[
        "-n",
        &relay.ns,
        "addr",
        "add",
        "10.78.0.1/24",
        "dev",
        "lan2",
    ]);
    ip(&["-n", &relay.ns, "link", "set", "lan2", "up"]);
    ip(&[
        "-n",
        &lab.ns,
        "route",
        "add",
        "10.78.0.0/24",
        "via",
        "10.77.0.254",
    ]);
    relay
}

/// What the head answers the relay (bound at 10.78.0.1:67) to a DISCOVER it forwards for
/// `mac`, PXE if `pxe`; None if nothing comes in 3 s.
fn relayed_discover(relay: &Host, mac: [u8; 6], pxe: bool) -> Option<(Message, SocketAddr)> {
    in_netns(&relay.ns, move || {
        let sock = UdpSocket::bind("10.78.0.1:67").expect("bind relay port");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_xid(0x1234_5678)
            .set_flags(Flags::default())
            .set_giaddr(Ipv4Addr::new(10, 78, 0, 1))
            .set_chaddr(&mac);
        m.set_hops(1);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        if pxe {
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
            ));
            m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(
                dhcproto::v4::Architecture::X86_Bios,
            ));
        }
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).expect("encode");
        sock.send_to(&buf, "10.77.0.1:67").expect("send");
        let mut rx = [0u8; 1500];
        let (n, from) = sock.recv_from(&mut rx).ok()?;
        Some((
            Message::decode(&mut Decoder::new(&rx[..n])).expect("decode"),
            from,
        ))
    })
}

/// A client namespace on the lab bridge with the given MAC.
fn client(lab: &Lab, name: &str, mac: &str) -> Host {
    Host::new(lab, name, mac).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "needs root: run `cargo xtask test`"]
fn dhcp_clients_get_leases_that_survive_kill_9() {
    let mut lab = services_lab("dhcp");
    let u = client(&lab, "u", "02:00:00:00:00:01");
    let d = client(&lab, "d", "02:00:00:00:00:02");
    let a1 = u.udhcpc(false).unwrap_or_else(|e| panic!("{e}"));
    let b1 = d.dhclient(&lab.dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        a1.starts_with("10.77.0.") && b1.starts_with("10.77.0."),
        "{a1} {b1}"
    );
    assert_ne!(a1, b1, "two clients, two addresses");

    lab.kill_head();
    let cfg = lab.dir.join("config.yaml");
    let r = lab.start_head(&root().join("target/release/enlist"), &cfg);
    assert!(r.is_ok(), "{r:?}\n{}", lab.head_log());
    assert_eq!(
        u.udhcpc(false).unwrap_or_else(|e| panic!("{e}")),
        a1,
        "udhcpc keeps its address after kill -9\n{}",
        lab.head_log()
    );
    assert_eq!(
        d.dhclient(&lab.dir).unwrap_or_else(|e| panic!("{e}")),
        b1,
        "dhclient keeps its address after kill -9\n{}",
        lab.head_log()
    );

    // The metrics of all this pass Prometheus' own checker.
    let metrics = run(lab
        .exec("curl")
        .args(["-sSf", "http://10.77.0.1:8080/metrics"]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        metrics.contains("enlist_dhcp_packets_total{type=\"discover\",outcome=\"reply\"}"),
        "{metrics}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(metrics.as_bytes()).expect("write");
    }
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs root: run `cargo xtask test`"]
fn relayed_discover_gets_an_address_from_the_relays_subnet() {
    let lab = services_lab("relay");
    let relay = relay(&lab);
    let (reply, from) =
        relayed_discover(&relay, [2, 0, 0, 0, 0, 0x33], false).expect("an OFFER back to the relay");
    assert_eq!(reply.opts().msg_type(), Some(MessageType::Offer));
    let y = reply.yiaddr();
    assert!(
        y.octets()[..3] == [10, 78, 0] && (100..=150).contains(&y.octets()[3]),
        "offered {y} from {from}"
    );
}

/// Proxy mode behind a router: a room's subnet with no pool (the campus server gives the
/// addresses) lists its relay. A PC enlist knows (reserved by MAC and name, no address) gets
/// its boot file through the relay; an unknown PC gets nothing (the campus PXE service's).
#[test]
#[ignore = "needs root: run `cargo xtask test`"]
fn relayed_proxy_dhcp_answers_known_pcs_through_the_relay_only() {
    let lab = services_lab_with(
        "proxyrelay",
        "proxy",
        "\x20   - { subnet: 10.78.0.0/24, relays: [10.78.0.1], group: room2,\n\
         \x20       reservations: [{ mac: \"02:00:00:00:00:34\", name: lab201-01 }] }\n",
    );
    let relay = relay(&lab);
    let (reply, from) = relayed_discover(&relay, [2, 0, 0, 0, 0, 0x34], true)
        .unwrap_or_else(|| panic!("no proxy OFFER through the relay\n{}", lab.head_log()));
    assert_eq!(reply.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(reply.yiaddr(), Ipv4Addr::UNSPECIFIED, "proxy: no address");
    assert_eq!(reply.giaddr(), Ipv4Addr::new(10, 78, 0, 1));
    assert!(
        reply.flags().broadcast(),
        "no address to unicast to: the relay is told to broadcast (dnsmasq drops it otherwise)"
    );
    assert!(
        !reply.fname().unwrap_or_default().is_empty(),
        "a boot file, from {from}"
    );
    assert!(
        relayed_discover(&relay, [2, 0, 0, 0, 0, 0x35], true).is_none(),
        "an unknown PC was answered"
    );
    assert_eq!(
        lab.metric("enlist_dhcp_dropped_total{reason=\"proxy-not-ours\"}"),
        1.0
    );
}

fn tftp_rrq(file: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [file, "octet"]
        .iter()
        .chain(opts.iter().flat_map(|(k, v)| [k, v]))
    {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

#[test]
#[ignore = "needs root: run `cargo xtask test`"]
fn tftp_serves_real_clients_and_refuses_escapes() {
    let lab = services_lab("tftp");
    let c = client(&lab, "t", "02:00:00:00:00:04");
    let ip = |args: &[&str]| run(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("{e}"));
    ip(&["-n", &c.ns, "addr", "add", "10.77.0.50/24", "dev", &c.iface]);
    let want = std::fs::read(lab.dir.join("tftproot/big.bin")).expect("big");

    // tftp-hpa with blksize 1468 (its -B option is not universal: use the interactive command).
    let out_hpa = lab.dir.join("hpa.bin");
    let st = c
        .exec("sh")
        .arg("-c")
        .arg(format!(
            "printf 'binary\\nblksize 1468\\nget big.bin {}\\nquit\\n' | tftp 10.77.0.1",
            out_hpa.display()
        ))
        .output()
        .expect("tftp");
    let got = std::fs::read(&out_hpa).unwrap_or_default();
    assert!(
        got == want,
        "tftp-hpa: {} of {} bytes; {}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&st.stderr)
    );

    // curl with blksize 1468.
    let out_curl = lab.dir.join("curl.bin");
    let st = c
        .exec("curl")
        .args(["-sS", "--tftp-blksize", "1468", "-o"])
        .arg(&out_curl)
        .arg("tftp://10.77.0.1/big.bin")
        .output()
        .expect("curl");
    assert!(
        std::fs::read(&out_curl).unwrap_or_default() == want,
        "curl: {}",
        String::from_utf8_lossy(&st.stderr)
    );

    // A node's script by TFTP (for cards in images.tftp_nics): made for that MAC, not a file.
    let st = c
        .exec("curl")
        .args(["-sS", "tftp://10.77.0.1/boot/52-54-00-77-09-09.ipxe"])
        .output()
        .expect("curl");
    let script = String::from_utf8_lossy(&st.stdout);
    assert!(
        script.starts_with("#!ipxe\n")
            && script
                .contains("chain --autofree http://10.77.0.1:8080/boot/52-54-00-77-09-09.ipxe"),
        "TFTP script: {script} {}",
        String::from_utf8_lossy(&st.stderr)
    );

    // Escapes are refused with an error packet.
    for bad in ["../secret.txt", "/etc/passwd", "a/../../secret.txt"] {
        let st = c
            .exec("curl")
            .args(["-sS", "-o", "/dev/null"])
            .arg(format!("tftp://10.77.0.1/{bad}"))
            .output()
            .expect("curl");
        assert!(!st.status.success(), "{bad} must be refused");
    }

    // windowsize 16 and blksize 1468 by hand; then a tsize probe aborted with error 8.
    let (total, probe_quiet) = in_netns(&c.ns, move || {
        let s = UdpSocket::bind("10.77.0.50:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.send_to(
            &tftp_rrq(
                "big.bin",
                &[("blksize", "1468"), ("windowsize", "16"), ("tsize", "0")],
            ),
            "10.77.0.1:69",
        )
        .expect("rrq");
        let mut buf = [0u8; 2048];
        let (n, server) = s.recv_from(&mut buf).expect("oack");
        assert_eq!(&buf[..2], &[0, 6], "OACK expected, got {:?}", &buf[..n]);
        let oack = String::from_utf8_lossy(&buf[2..n]).to_string();
        assert!(
            oack.contains("windowsize\u{0}16") && oack.contains("blksize\u{0}1468"),
            "{oack:?}"
        );
        s.send_to(&[0, 4, 0, 0], server).expect("ack 0");
        let (mut total, mut expect) = (0usize, 1u16);
        loop {
            let (n, _) = s.recv_from(&mut buf).expect("data");
            if buf[1] != 3 {
                continue;
            }
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            if block != expect {
                continue;
            }
            total += n - 4;
            let last = n - 4 < 1468;
            if expect % 16 == 0 || last {
                s.send_to(&[0, 4, buf[2], buf[3]], server).expect("ack");
            }
            expect = expect.wrapping_add(1);
            if last {
                break;
            }
        }
        // A tsize probe from the same port at once (a new request, not a repeat of the one
        // just served), then error 8 as PXE ROMs do: that transfer must stop at once. Late
        // packets of the finished transfer (its port) are not the probe's.
        s.send_to(&tftp_rrq("big.bin", &[("tsize", "0")]), "10.77.0.1:69")
            .expect("probe");
        let probe = loop {
            let (n, from) = s.recv_from(&mut buf).expect("the probe's OACK");
            if n >= 2 && buf[1] == 6 && from != server {
                break from;
            }
        };
        s.send_to(b"\0\x05\0\x08tsize probe\0", probe)
            .expect("error 8");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let quiet_until = std::time::Instant::now() + Duration::from_secs(4);
        let mut quiet = true;
        while std::time::Instant::now() < quiet_until {
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                quiet &= from != probe;
            }
        }
        (total, quiet)
    });
    assert_eq!(total, want.len(), "windowsize 16 transfer");
    assert!(
        probe_quiet,
        "after a client ERROR the server must not retransmit the OACK"
    );
}

#[test]
#[ignore = "needs root: run `cargo xtask test`"]
fn dhcp_does_not_answer_on_unconfigured_interfaces() {
    let lab = services_lab("ifaces");
    // br1 carries the head's address too, but is not in dhcp.interfaces.
    let ip = |args: &[&str]| run(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("{e}"));
    ip(&["-n", &lab.ns, "link", "add", "br1", "type", "bridge"]);
    ip(&["-n", &lab.ns, "addr", "add", "10.77.1.1/24", "dev", "br1"]);
    ip(&["-n", &lab.ns, "link", "set", "br1", "up"]);
    let c =
        Host::on_bridge(&lab, "x", "02:00:00:00:00:05", "br1").unwrap_or_else(|e| panic!("{e}"));
    let out = c
        .exec("udhcpc")
        .args([
            "-i",
            &c.iface,
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ])
        .output()
        .expect("udhcpc");
    assert!(
        !out.status.success(),
        "a client on an unconfigured interface got an answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs root: run `cargo xtask test`"]
fn enlist_wake_sends_a_magic_packet_for_the_pc_on_the_lab_network() {
    let lab = services_lab("wake");
    let mac = "02:00:00:00:00:77";
    let pc = client(&lab, "w", mac);
    pc.udhcpc(true).unwrap_or_else(|e| panic!("{e}"));
    // The PC asks for its boot script once, as a PXE boot would: now the head knows it.
    let script = pc
        .exec("curl")
        .args([
            "-sSf",
            "-o",
            "/dev/null",
            "http://10.77.0.1:8080/boot/02-00-00-00-00-77.ipxe",
        ])
        .status()
        .unwrap();
    assert!(script.success(), "boot script");
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    let name = node["node"]["name"].as_str().unwrap_or("").to_string();
    assert!(!name.is_empty(), "{node}");

    // Powered off, its card listens for the magic packet: here, a socket on port 9.
    let ns = pc.ns.clone();
    let listener = std::thread::spawn(move || {
        in_netns(&ns, || {
            let s = UdpSocket::bind("0.0.0.0:9").expect("port 9");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = [0u8; 512];
            s.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec())
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = lab
        .exec(&root().join("target/release/enlist").display().to_string())
        .args(["wake", &name, "--config"])
        .arg(lab.dir.join("config.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packet = listener
        .join()
        .unwrap()
        .expect("a magic packet within 10 s");
    let mut want = vec![0xffu8; 6];
    for _ in 0..16 {
        want.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    }
    assert_eq!(packet, want);
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    assert!(
        node["events"]
            .to_string()
            .contains("magic packet sent (br0)"),
        "{node}"
    );
}

/// The storm's clients: 02:00:00:00:10:00 and on.
fn storm_mac(i: usize) -> [u8; 6] {
    [2, 0, 0, 0, 0x10 + (i / 256) as u8, (i % 256) as u8]
}

/// One DORA round for every storm client: DISCOVERs, then a REQUEST for each OFFER. The ACKs.
fn dora_round(h: &Host, clients: usize) -> Vec<Message> {
    use common::dhcp::{discover, encode, exchange, kind, request};
    let discovers = (0..clients)
        .map(|i| encode(&discover(storm_mac(i))))
        .collect();
    let offers = exchange(h, discovers, Duration::from_millis(1500));
    let head = Ipv4Addr::new(10, 77, 0, 1);
    let requests = offers
        .iter()
        .filter(|m| kind(m) == Some(MessageType::Offer))
        .filter_map(|m| {
            <[u8; 6]>::try_from(m.chaddr().get(..6)?)
                .ok()
                .map(|mac| (mac, m.yiaddr()))
        })
        .map(|(mac, ip)| encode(&request(mac, ip, head)))
        .collect();
    exchange(h, requests, Duration::from_millis(1500))
        .into_iter()
        .filter(|m| kind(m) == Some(MessageType::Ack))
        .collect()
}

/// The bound leases in a database file: MAC -> address.
fn bound_leases(db: &std::path::Path) -> std::collections::BTreeMap<String, Ipv4Addr> {
    let c = rusqlite::Connection::open(db).expect("open backup");
    let mut st = c
        .prepare("SELECT mac, ip FROM leases WHERE state = 'bound'")
        .expect("query");
    st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .expect("rows")
        .map(|r| r.map(|(m, ip)| (m, Ipv4Addr::from(ip))).expect("row"))
        .collect()
}

#[test]
#[ignore = "needs root: run `cargo xtask test`"]
fn a_backup_taken_during_a_dhcp_storm_restores_to_a_head_that_serves_every_lease() {
    const CLIENTS: usize = 90;
    let mut lab = services_lab("backup");
    let storm = client(&lab, "storm", "02:00:00:00:0f:00");
    let cfg = lab.dir.join("config.yaml");
    let backup = lab.dir.join("backup.db");
    let enlist = root().join("target/release/enlist");
    // The storm: DORA rounds for 90 clients, the backup taken during the second round.
    let (acks, out) = std::thread::scope(|sc| {
        let rounds = sc.spawn(|| {
            (0..4)
                .map(|_| dora_round(&storm, CLIENTS).len())
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(3500));
        let out = Command::new(&enlist)
            .args(["admin", "backup"])
            .arg(&backup)
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("enlist admin backup");
        (rounds.join().expect("storm"), out)
    });
    assert!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        acks.iter().all(|n| *n > 0),
        "every round got leases: {acks:?}\n{}",
        lab.head_log()
    );
    let saved = bound_leases(&backup);
    assert!(
        saved.len() >= CLIENTS / 2,
        "the backup holds {} leases",
        saved.len()
    );

    // The database is lost; the backup is restored; a head starts on it.
    lab.kill_head();
    for f in ["enlist.db", "enlist.db-wal", "enlist.db-shm"] {
        let _ = std::fs::remove_file(lab.dir.join("state").join(f));
    }
    let out = Command::new(&enlist)
        .args(["admin", "restore"])
        .arg(&backup)
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("enlist admin restore");
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.start_head(&enlist, &cfg)
        .unwrap_or_else(|e| panic!("{e}"));

    // Every client the backup knows is offered its own address again (asked in the reverse
    // order: a head that had lost the leases would hand the addresses out differently).
    let discovers = (0..CLIENTS)
        .rev()
        .map(|i| common::dhcp::encode(&common::dhcp::discover(storm_mac(i))))
        .collect();
    let offered: std::collections::BTreeMap<String, Ipv4Addr> =
        common::dhcp::exchange(&storm, discovers, Duration::from_secs(2))
            .into_iter()
            .filter_map(|m| {
                let mac = m.chaddr().get(..6)?;
                let mac = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                Some((mac, m.yiaddr()))
            })
            .collect();
    for (mac, ip) in &saved {
        assert_eq!(
            offered.get(mac),
            Some(ip),
            "{mac} had {ip} in the backup; the restored head offered {:?}",
            offered.get(mac)
        );
    }
}
