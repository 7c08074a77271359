//! The lab's power buttons: QEMU PCs cannot be woken by a magic packet, so a watcher reads
//! every frame in the lab's namespace (an AF_PACKET socket) and records each Wake-on-LAN
//! magic packet (6 x 0xff, then the MAC 16 times) the head sends, by MAC and when it first
//! came. It has its own port on the bridge (a veth pair, always up), as a switch's port
//! stays up whatever its PCs do: a bridge whose PCs are all off has no carrier, and the
//! kernel sends nothing out of it (no magic packet, no ARP). A test powers a PC on when its packet has come ([`crate::Pc::power_cycle`]): the
//! packet is the head's real one; the test is only the power button.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The magic packets seen, by MAC (`52:54:00:77:01:02`): how many, first and last seen.
type Seen = Arc<Mutex<HashMap<String, (usize, Instant, Instant)>>>;

pub struct WolWatch {
    seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The MAC the Wake-on-LAN frame `frame` wakes, if it is one: a magic packet in a UDP
/// datagram to port 9 or 7 (as the head and `etherwake -b`/`wakeonlan` send it) or in an
/// Ethernet frame of type 0x0842. Other frames are not looked into: a kernel or a DHCP
/// packet may hold six 0xff bytes and a repeated pattern by chance.
pub fn wol_mac(frame: &[u8]) -> Option<String> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let payload = match ethertype {
        0x0842 => frame.get(14..)?,
        0x0800 => {
            let ip = frame.get(14..)?;
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 17 {
                return None;
            }
            let udp = ip.get(ihl..)?;
            let port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
            if port != 9 && port != 7 {
                return None;
            }
            udp.get(8..)?
        }
        _ => return None,
    };
    magic_mac(payload)
}

/// The MAC a magic packet in `frame` wakes, if it holds one.
pub fn magic_mac(frame: &[u8]) -> Option<String> {
    let start = frame.windows(6).position(|w| w == [0xff; 6])?;
    let body = frame.get(start + 6..start + 6 + 96)?;
    let mac = &body[..6];
    if mac == [0xff; 6] || !body.chunks_exact(6).all(|c| c == mac) {
        // A run of 0xff longer than six: the packet may start further on.
        return magic_mac(frame.get(start + 1..)?);
    }
    Some(
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

impl WolWatch {
    /// Watch namespace `ns` from now on.
    pub fn start(ns: &str) -> Result<WolWatch, String> {
        let ip = |args: &[&str]| crate::run(std::process::Command::new("ip").args(args));
        ip(&[
            "-n", ns, "link", "add", "wolw0", "type", "veth", "peer", "name", "wolw1",
        ])?;
        ip(&["-n", ns, "link", "set", "wolw0", "master", "br0", "up"])?;
        ip(&["-n", ns, "link", "set", "wolw1", "up"])?;
        let socket = crate::host::in_netns(ns, || {
            let all = i32::from((libc::ETH_P_ALL as u16).to_be());
            socket2::Socket::new(
                socket2::Domain::PACKET,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(all)),
            )
        })
        .map_err(|e| format!("AF_PACKET socket in {ns}: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let seen: Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut socket = socket;
            let mut buf = [0u8; 2048];
            // A packet is seen once per port it crosses (the head's bridge, each tap): the
            // copies within a second are one packet.
            while !stop2.load(Ordering::Relaxed) {
                let Ok(n) = socket.read(&mut buf) else {
                    continue;
                };
                let Some(mac) = wol_mac(&buf[..n]) else {
                    continue;
                };
                let now = Instant::now();
                let mut seen = s2.lock().unwrap_or_else(|p| p.into_inner());
                let e = seen
                    .entry(mac)
                    .or_insert((0, now, now - Duration::from_secs(5)));
                if now.duration_since(e.2) > Duration::from_secs(1) {
                    e.0 += 1;
                }
                e.2 = now;
            }
        });
        Ok(WolWatch {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// How many magic packets for `mac` came (copies within a second counted once).
    pub fn packets_for(&self, mac: &str) -> usize {
        self.seen
            .lock()
            .map(|s| s.get(&mac.to_lowercase()).map_or(0, |e| e.0))
            .unwrap_or(0)
    }

    /// Every MAC a magic packet came for.
    pub fn macs(&self) -> Vec<String> {
        let mut m: Vec<String> = self
            .seen
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        m.sort();
        m
    }
}

/// The lab room's power: presses a PC's power button when the head's magic packet for it
/// has come (once per packet), and switches a PC off when the head has sent it to its own
/// disk (a released PC would boot Windows; the lab's PC has no disk to boot, so its owner
/// switches it off). Used by the tests and the demo alike.
#[derive(Default)]
pub struct PowerButtons {
    /// Magic packets already acted on, by MAC.
    pressed: HashMap<String, usize>,
}

impl PowerButtons {
    /// Start from what has happened so far: only packets from now on count.
    pub fn new(lab: &crate::Lab, watch: &WolWatch) -> PowerButtons {
        let pressed = lab
            .pcs
            .iter()
            .map(|pc| (pc.mac.clone(), watch.packets_for(&pc.mac)))
            .collect();
        PowerButtons { pressed }
    }

    /// Power on each PC (but those in `ignore`, by index) whose magic packet has come since
    /// the last press; returns the indexes pressed.
    pub fn press(
        &mut self,
        lab: &mut crate::Lab,
        watch: &WolWatch,
        ignore: &[usize],
    ) -> Result<Vec<usize>, String> {
        let mut on = vec![];
        for i in 0..lab.pcs.len() {
            let mac = lab.pcs[i].mac.clone();
            let n = watch.packets_for(&mac);
            let seen = self.pressed.insert(mac, n).unwrap_or(0);
            if n > seen && !ignore.contains(&i) {
                lab.pcs[i].power_cycle()?;
                on.push(i);
            }
        }
        Ok(on)
    }

    /// Switch off each running PC the head has sent to its own disk since it was powered on;
    /// returns the indexes switched off.
    pub fn switch_off_sent_home(&mut self, lab: &mut crate::Lab) -> Vec<usize> {
        let mut off = vec![];
        for i in 0..lab.pcs.len() {
            if lab.pcs[i].running() && lab.sent_home(i) {
                lab.pcs[i].kill();
                off.push(i);
            }
        }
        off
    }
}

impl Drop for WolWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_magic_packet_names_its_mac_and_nothing_else_does() {
        let mac = [0x52, 0x54, 0x00, 0x77, 0x01, 0x0a];
        let mut frame = vec![0xffu8; 14]; // a broadcast Ethernet header's first bytes
        frame.extend([0u8; 28]); // IP and UDP headers, whatever they hold
        frame.extend([0xff; 6]);
        for _ in 0..16 {
            frame.extend(mac);
        }
        assert_eq!(magic_mac(&frame).as_deref(), Some("52:54:00:77:01:0a"));
        assert_eq!(magic_mac(&frame[..frame.len() - 1]), None, "cut short");
        assert_eq!(magic_mac(&[0xff; 200]), None, "all 0xff");
        assert_eq!(magic_mac(b"DHCPDISCOVER"), None);
    }

    #[test]
    fn only_a_wake_on_lan_frame_is_looked_into() {
        let mut magic = vec![0xff; 6];
        for _ in 0..16 {
            magic.extend([0x52, 0x54, 0x00, 0x77, 0x01, 0x0a]);
        }
        let frame = |ethertype: [u8; 2], proto: u8, port: u16| {
            let mut f = vec![0xff; 6];
            f.extend([0x52, 0x54, 0, 0, 0, 1]);
            f.extend(ethertype);
            if ethertype == [0x08, 0x00] {
                let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
                ip.extend([10, 77, 0, 1, 255, 255, 255, 255]);
                f.extend(ip);
                f.extend([0x80, 0x00]);
                f.extend(port.to_be_bytes());
                f.extend([0, 0, 0, 0]);
            }
            f.extend(&magic);
            f
        };
        let want = Some("52:54:00:77:01:0a".to_string());
        assert_eq!(wol_mac(&frame([0x08, 0x00], 17, 9)), want, "UDP port 9");
        assert_eq!(
            wol_mac(&frame([0x08, 0x42], 0, 0)),
            want,
            "EtherType 0x0842"
        );
        assert_eq!(wol_mac(&frame([0x08, 0x00], 17, 69)), None, "a TFTP block");
        assert_eq!(wol_mac(&frame([0x08, 0x00], 6, 9)), None, "TCP");
        assert_eq!(wol_mac(&frame([0x08, 0x06], 0, 0)), None, "ARP");
        assert_eq!(wol_mac(&[0xff; 10]), None, "short");
    }
}
