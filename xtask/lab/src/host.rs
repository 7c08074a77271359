//! A host on the lab network: its own namespace, joined to the lab's bridge by a veth pair with
//! a chosen MAC. What tests use as a DHCP client, a TFTP or HTTP client, or an attacker.

use std::process::Command;

use crate::{run, Lab};

pub struct Host {
    pub ns: String,
    /// The host's end of the veth pair.
    pub iface: String,
}

impl Host {
    /// A host `name` on `lab`'s `br0`.
    pub fn new(lab: &Lab, name: &str, mac: &str) -> Result<Host, String> {
        Host::on_bridge(lab, name, mac, "br0")
    }

    pub fn on_bridge(lab: &Lab, name: &str, mac: &str, bridge: &str) -> Result<Host, String> {
        let ns = format!("{}-{name}", lab.ns);
        Lab::cleanup(&ns);
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &ns])?;
        let (a, b) = (format!("v{name}h"), format!("v{name}c"));
        ip(&[
            "-n", &lab.ns, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &ns,
        ])?;
        ip(&["-n", &lab.ns, "link", "set", &a, "master", bridge, "up"])?;
        ip(&["-n", &ns, "link", "set", &b, "address", mac, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Host { ns, iface: b })
    }

    /// The host's port on the lab's bridge (the veth end in the lab's namespace).
    pub fn bridge_port(&self) -> String {
        let name = self
            .iface
            .strip_prefix('v')
            .and_then(|n| n.strip_suffix('c'))
            .unwrap_or("");
        format!("v{name}h")
    }

    /// Give the host a static address (and a route to the lab), without DHCP.
    pub fn address(&self, cidr: &str) -> Result<(), String> {
        run(Command::new("ip").args(["-n", &self.ns, "addr", "add", cidr, "dev", &self.iface]))
            .map(|_| ())
    }

    /// `ip netns exec <ns> <program>`.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Run `f` on a thread inside the host's namespace (sockets it opens live there).
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.ns, f)
    }

    /// Whether a TCP connection from this host to `addr` gets no answer at all within 2 s
    /// (dropped by a firewall; a closed port would answer with a reset).
    pub fn tcp_unanswered(&self, addr: &str) -> bool {
        matches!(self.tcp(addr), Err(std::io::ErrorKind::TimedOut))
    }

    /// Whether a TCP connection from this host to `addr` is accepted within 2 s.
    pub fn tcp_connects(&self, addr: &str) -> bool {
        self.tcp(addr).is_ok()
    }

    fn tcp(&self, addr: &str) -> Result<(), std::io::ErrorKind> {
        let addr: std::net::SocketAddr =
            addr.parse().map_err(|_| std::io::ErrorKind::InvalidInput)?;
        self.within(move || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| e.kind())
        })
    }

    /// busybox udhcpc: DISCOVER..ACK; returns the leased address. With `configure`, the
    /// address and route are put on the interface (by [`ADDRESS_SCRIPT`], which touches
    /// nothing else: Debian's script would rewrite the machine's own /etc/resolv.conf, which a
    /// network namespace shares).
    pub fn udhcpc(&self, configure: bool) -> Result<String, String> {
        let script = if configure {
            address_script()?
        } else {
            "/bin/true".into()
        };
        let out = self
            .exec("udhcpc")
            .args(["-i", &self.iface, "-n", "-q", "-f", "-t", "5", "-T", "2"])
            .args(["-s", &script])
            .output()
            .map_err(|e| format!("udhcpc: {e}"))?;
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                l.split("lease of ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
            })
            .map(str::to_string)
            .ok_or_else(|| format!("udhcpc got no lease:\n{text}"))
    }

    /// ISC dhclient; returns the bound address (not configured: `-sf /bin/true`).
    pub fn dhclient(&self, dir: &std::path::Path) -> Result<String, String> {
        let lf = dir.join(format!("{}.leases", self.ns));
        let _ = std::fs::remove_file(&lf);
        let out = self
            .exec("dhclient")
            .args(["-1", "-v", "-sf", "/bin/true", "-lf"])
            .arg(&lf)
            .arg("-pf")
            .arg(dir.join(format!("{}.pid", self.ns)))
            .arg(&self.iface)
            .output()
            .map_err(|e| format!("dhclient: {e}"))?;
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        text.lines()
            .find_map(|l| {
                l.split("bound to ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
            })
            .map(str::to_string)
            .ok_or_else(|| format!("dhclient got no lease:\n{text}"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        Lab::cleanup(&self.ns);
    }
}

/// A udhcpc script that sets the address and default route, and nothing else.
pub const ADDRESS_SCRIPT: &str = "#!/bin/sh\n\
case \"$1\" in\n\
  bound|renew)\n\
    ip addr flush dev \"$interface\"\n\
    ip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n\
    [ -n \"$router\" ] && ip route replace default via \"${router%% *}\" dev \"$interface\"\n\
    ;;\n\
esac\n\
exit 0\n";

fn address_script() -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join("enlist-lab-udhcpc-address.sh");
    std::fs::write(&path, ADDRESS_SCRIPT).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

/// Run `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    let joined = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join();
    match joined {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}
