//! The checked values a config holds: each is parsed once, here, and is valid wherever it goes.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A PCI device id, `vendor:device` (`8086:1229`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciId {
    pub vendor: u16,
    pub device: u16,
}

impl PciId {
    pub fn parse(s: &str) -> Option<PciId> {
        let (v, d) = s.split_once(':')?;
        let hex4 = |x: &str| {
            (x.len() == 4 && x.bytes().all(|c| c.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(x, 16).ok())
                .flatten()
        };
        Some(PciId {
            vendor: hex4(v)?,
            device: hex4(d)?,
        })
    }

    /// iPXE's `${netX/busid}` of this card on a PCI bus: `01:80:86:12:29`.
    pub fn ipxe_busid(&self) -> String {
        let [v0, v1] = self.vendor.to_be_bytes();
        let [d0, d1] = self.device.to_be_bytes();
        format!("01:{v0:02x}:{v1:02x}:{d0:02x}:{d1:02x}")
    }
}

impl PciId {
    /// Whether a driver's device pattern (`pci:v00008086d00001229sv*sd*bc*sc*i*`, from its
    /// modinfo) takes this network card: vendor and device as the pattern says, and a base
    /// class that is either open or network (02); the subsystem ids iPXE does not tell.
    pub fn driven_by(&self, pattern: &str) -> bool {
        let Some(rest) = pattern.strip_prefix("pci:v") else {
            return false;
        };
        let field = |s: &str, tag: &str| -> Option<String> {
            let i = s.find(tag)?;
            let tail = &s[i + tag.len()..];
            let end = tail
                .find(|c: char| c.is_ascii_lowercase())
                .unwrap_or(tail.len());
            Some(tail[..end].to_string())
        };
        let vendor = rest.split('d').next().unwrap_or("");
        let device = field(rest, "d").unwrap_or_default();
        let class = field(rest, "bc").unwrap_or_else(|| "*".into());
        let id_ok = |want: &str, have: u16| {
            want == "*" || u32::from_str_radix(want, 16).ok() == Some(u32::from(have))
        };
        id_ok(vendor, self.vendor)
            && id_ok(&device, self.device)
            && (class == "*" || class.eq_ignore_ascii_case("02"))
    }
}

impl fmt::Display for PciId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vendor, self.device)
    }
}

/// A name usable as an image (and a path component): see [`crate::bootpath::valid_component`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName(String);

impl ImageName {
    pub fn parse(s: &str) -> Option<ImageName> {
        crate::bootpath::valid_component(s).then(|| ImageName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use enlist_api::valid_host_label;

/// `nodes.name_pattern`: new nodes are named `lab101-01`, `lab101-02`, ... in join order
/// (`lab101-{index:02}`): text, one `{index}` or `{index:0N}` (zero-padded to N digits), text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    before: String,
    width: usize,
    after: String,
}

impl NamePattern {
    /// The name for `index` (from 1).
    pub fn name(&self, index: u32) -> String {
        format!("{}{index:0w$}{}", self.before, self.after, w = self.width)
    }
}

impl FromStr for NamePattern {
    type Err = String;

    fn from_str(s: &str) -> Result<NamePattern, String> {
        let bad = || {
            format!("{s:?}: write text, then {{index}} or {{index:02}}, then text (e.g. \"lab101-{{index:02}}\")")
        };
        let (before, rest) = s.split_once('{').ok_or_else(bad)?;
        let (field, after) = rest.split_once('}').ok_or_else(bad)?;
        let width = match field.strip_prefix("index") {
            Some("") => 1,
            Some(spec) => spec
                .strip_prefix(":0")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=9).contains(n))
                .ok_or_else(bad)?,
            None => return Err(bad()),
        };
        let p = NamePattern {
            before: before.to_string(),
            width,
            after: after.to_string(),
        };
        // The longest index a registry holds (nodes.max_nodes is far below) must still make
        // a host name, and the text around it may hold no second field.
        if after.contains(['{', '}']) || !valid_host_label(&p.name(99_999)) {
            return Err(format!(
                "{s:?} does not make host names: letters, digits and '-' around one {{index}}, up to 63 in all"
            ));
        }
        Ok(p)
    }
}

/// The head's base URL as nodes see it: `http://<host>[:<port>]`, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    base: String,
    host: String,
}

impl PublicUrl {
    /// Accepts `http://HOST[:PORT][/]` where HOST is an IPv4 address or a host name (nodes
    /// resolve no names while booting, so an address is what works; a name is allowed for
    /// sites whose DHCP hands out a resolver).
    pub fn parse(s: &str) -> Result<PublicUrl, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("{s:?} must start with http:// (nodes speak plain HTTP)"))?;
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        if hostport.contains('/') || hostport.contains('?') || hostport.contains('#') {
            return Err(format!(
                "{s:?} must be only http://HOST[:PORT], without a path"
            ));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        if let Some(p) = port {
            if p.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("{s:?}: port {p:?} is not a port number"));
            }
        }
        let host_ok = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4())
            || (host.split('.').all(valid_host_label) && !host.is_empty());
        if !host_ok {
            return Err(format!(
                "{s:?}: {host:?} is not an IPv4 address or host name"
            ));
        }
        Ok(PublicUrl {
            base: format!("http://{hostport}"),
            host: host.to_string(),
        })
    }

    /// `http://10.77.0.1:8080`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `10.77.0.1`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `tftp://10.77.0.1`: where TFTP-only cards fetch their files.
    pub fn tftp_base(&self) -> String {
        format!("tftp://{}", self.host)
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_pattern_numbers_names_zero_padded_or_not_and_refuses_what_makes_no_host_name() {
        let p: NamePattern = "lab101-{index:02}".parse().unwrap();
        assert_eq!(
            (p.name(1), p.name(40), p.name(123)),
            ("lab101-01".into(), "lab101-40".into(), "lab101-123".into())
        );
        let p: NamePattern = "pc{index}-r2".parse().unwrap();
        assert_eq!(p.name(7), "pc7-r2");
        for bad in [
            "lab101",
            "lab-{n}",
            "lab-{index:2}",
            "lab_{index}",
            "{index}-{index}",
            "-{index}",
            "lab-{index:0}",
        ] {
            assert!(bad.parse::<NamePattern>().is_err(), "{bad} accepted");
        }
    }

    use super::*;

    #[test]
    fn pci_ids() {
        let id = PciId::parse("8086:1229").unwrap();
        assert_eq!(id.to_string(), "8086:1229");
        assert_eq!(id.ipxe_busid(), "01:80:86:12:29");
        assert_eq!(PciId::parse("8086:12299"), None);
        assert_eq!(PciId::parse("80861229"), None);
        assert_eq!(PciId::parse("zz86:1229"), None);
        assert_eq!(PciId::parse("+086:1229"), None);
    }

    #[test]
    fn a_card_is_driven_by_the_patterns_of_its_vendor_and_device() {
        let tulip = PciId::parse("1011:0019").unwrap();
        assert!(tulip.driven_by("pci:v00001011d00000019sv*sd*bc*sc*i*"));
        assert!(
            tulip.driven_by("pci:v00001011d*sv*sd*bc02sc00i*"),
            "any device of the vendor"
        );
        assert!(
            !tulip.driven_by("pci:v00001011d00000009sv*sd*bc*sc*i*"),
            "another device"
        );
        assert!(
            !tulip.driven_by("pci:v00008086d00000019sv*sd*bc*sc*i*"),
            "another vendor"
        );
        assert!(
            !tulip.driven_by("pci:v*d*sv*sd*bc0Csc03i30*"),
            "a class driver for another class (USB xHCI)"
        );
        assert!(!tulip.driven_by("virtio:d00000001v*"));
        assert!(!tulip.driven_by("pci:"), "no panic on a stub");
    }

    #[test]
    fn public_urls() {
        let u = PublicUrl::parse("http://10.77.0.1:8080/").unwrap();
        assert_eq!(u.base(), "http://10.77.0.1:8080");
        assert_eq!(u.tftp_base(), "tftp://10.77.0.1");
        assert!(PublicUrl::parse("https://10.77.0.1").is_err());
        assert!(PublicUrl::parse("http://10.77.0.1:8080/x").is_err());
        assert!(PublicUrl::parse("http://10.77.0.1:99999").is_err());
        assert!(PublicUrl::parse("http://").is_err());
        assert!(PublicUrl::parse("http://head.lab:80").is_ok());
        assert!(PublicUrl::parse("http://a b").is_err());
    }

    #[test]
    fn host_labels() {
        assert!(valid_host_label("node-0a1b2c"));
        for bad in ["", "-a", "a-", "a.b", "a\n1.2.3.4", &"a".repeat(64)] {
            assert!(!valid_host_label(bad), "{bad:?}");
        }
    }
}
