//! A lossy cable (bad cabling, an old hub): the PC's QEMU talks to a UDP socket instead of a
//! tap (`-netdev socket,udp=...`), and a forwarder in the lab's namespace passes its frames to
//! and from a tap on the bridge, dropping a share of them each way. (`netem` does not exist on
//! this kernel; `tc tbf` shapes but never drops at random.)

use std::fs::File;
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Frames passed and dropped, both ways together.
#[derive(Default)]
pub struct CableCounts {
    pub passed: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct LossyCable {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counts: Arc<CableCounts>,
    /// Where QEMU sends its frames (the forwarder's socket).
    pub cable_port: u16,
    /// Where QEMU listens (the forwarder sends there).
    pub pc_port: u16,
}

/// The QEMU `-netdev` for a PC on this cable.
pub fn netdev(cable_port: u16, pc_port: u16) -> String {
    format!("socket,id=n0,udp=127.0.0.1:{cable_port},localaddr=127.0.0.1:{pc_port}")
}

impl LossyCable {
    /// Attach to `tap` (already on the bridge) in namespace `ns`, dropping `loss_percent` of
    /// the frames each way, chosen by a generator seeded with `seed` (runs are repeatable).
    pub fn start(ns: &str, tap: &str, loss_percent: u32, seed: u64) -> Result<LossyCable, String> {
        let tap_name = tap.to_string();
        let (tap_fd, socket) = crate::host::in_netns(ns, move || -> Result<_, String> {
            let fd = open_tap(&tap_name)?;
            let socket =
                UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cable socket: {e}"))?;
            Ok((fd, socket))
        })?;
        let cable_port = socket.local_addr().map_err(|e| e.to_string())?.port();
        let pc_port = free_port(ns)?;
        socket
            .connect(("127.0.0.1", pc_port))
            .map_err(|e| format!("cable socket: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(CableCounts::default());
        let tap_fd = Arc::new(tap_fd);
        let socket = Arc::new(socket);
        let threshold = u64::from(loss_percent.min(100)) * (u64::MAX / 100);
        let mut threads = Vec::new();
        // PC -> bridge.
        {
            let (stop, counts, tap_fd, socket) =
                (stop.clone(), counts.clone(), tap_fd.clone(), socket.clone());
            let mut rng = Rng(seed | 1);
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = socket.recv(&mut buf) else {
                        continue;
                    };
                    if rng.next() < threshold {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    counts.passed.fetch_add(1, Ordering::Relaxed);
                    let _ = (&*tap_fd).write(&buf[..n]);
                }
            }));
        }
        // Bridge -> PC.
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            let mut rng = Rng(seed.rotate_left(17) | 1);
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Some(n) = read_tap(&tap_fd, &mut buf) else {
                        continue;
                    };
                    if rng.next() < threshold {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    counts.passed.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send(&buf[..n]);
                }
            }));
        }
        Ok(LossyCable {
            stop,
            threads,
            counts,
            cable_port,
            pc_port,
        })
    }
}

impl Drop for LossyCable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A frame from the tap, waiting at most 200 ms.
fn read_tap(tap: &File, buf: &mut [u8]) -> Option<usize> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(200u8)).ok()? == 0 {
        return None;
    }
    let mut tap = tap;
    tap.read(buf).ok().filter(|n| *n > 0)
}

/// Attach to the persistent tap `name` (`IFF_TAP | IFF_NO_PI`) in the calling thread's
/// namespace.
#[allow(unsafe_code)] // TUNSETIFF has no safe wrapper; the one unsafe call of the lab.
fn open_tap(name: &str) -> Result<File, String> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    let mut ifr = [0u8; 40];
    let bytes = name.as_bytes();
    if bytes.len() >= 16 {
        return Err(format!("tap name {name:?} too long"));
    }
    ifr[..bytes.len()].copy_from_slice(bytes);
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: ifr is a 40-byte struct ifreq as TUNSETIFF reads it.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } < 0 {
        return Err(format!(
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// A UDP port free on the namespace's loopback (bound, read, released).
fn free_port(ns: &str) -> Result<u16, String> {
    crate::host::in_netns(ns, || {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("free port: {e}"))
    })
}

/// xorshift64: enough to choose frames to drop, repeatably.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
