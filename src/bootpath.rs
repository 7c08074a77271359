//! Every path a booting PC asks for, built and parsed in this one place, for TFTP and HTTP alike.
//!
//! | path                                         | what it is                                   |
//! |----------------------------------------------|----------------------------------------------|
//! | `<file>`                                     | an iPXE binary from `tftp.ipxe_dir`          |
//! | `images/<image>/<version>/<file>`            | a file of a published image                  |
//! | `boot/<mac>.ipxe`                            | the node's iPXE script                       |
//! | `boot/<mac>/<token>/<image>/<version>/initrd`| the image's initrd + the node's overlay      |
//! | `boot/<mac>/<token>/<image>/<version>/overlay`| the node's overlay alone (image via a mirror)|
//!
//! `<mac>` is hyphenated (`52-54-00-ab-cd-01`). `<token>` is the one-boot token the script
//! handed out (see `registry::tokens`): the overlay holds the node's key, so only the PC that
//! fetched the script gets it. This module is a leaf: it knows paths, not what is behind them.

use enlist_api::Mac;

/// How a boot step travelled (for the node's boot timeline and the metrics).
pub use enlist_api::admin::Proto;

/// What kind of file a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ipxe,
    Kernel,
    Initrd,
    /// A node's iPXE script (made by `bootscript`, not read from a file).
    Script,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ipxe => "ipxe",
            Kind::Kernel => "kernel",
            Kind::Initrd => "initrd",
            Kind::Script => "script",
            Kind::Other => "other",
        }
    }
}

/// A path in the boot namespace, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPath {
    /// An iPXE binary (one file name, no folders).
    Ipxe(String),
    ImageFile {
        image: String,
        version: String,
        file: String,
    },
    Script(Mac),
    NodeInitrd {
        mac: Mac,
        token: String,
        image: String,
        version: String,
        /// Only the node's part (`.../overlay`: its settings and key), for a PC that fetched
        /// the image's own initrd from a mirror (`images.mirrors`); else the whole initrd.
        overlay: bool,
    },
}

/// Why a path is refused; `reason` is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused path {path:?}: {reason}")]
pub struct PathRefused {
    pub path: String,
    pub reason: &'static str,
}

/// Longest path looked at (TFTP file names and HTTP paths of a boot ROM are short).
pub const MAX_PATH_LEN: usize = 256;

/// Whether `s` may be one component of a path we serve: letters, digits, `.`, `_`, `-`, not
/// starting with a dot, at most 128 bytes. Image and version names are the same.
pub fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl BootPath {
    pub fn kind(&self) -> Kind {
        match self {
            BootPath::Ipxe(_) => Kind::Ipxe,
            BootPath::Script(_) => Kind::Script,
            BootPath::NodeInitrd { .. } => Kind::Initrd,
            BootPath::ImageFile { file, .. } => match file.as_str() {
                "vmlinuz" => Kind::Kernel,
                "initrd" => Kind::Initrd,
                _ => Kind::Other,
            },
        }
    }

    /// The node a per-node path belongs to.
    pub fn mac(&self) -> Option<Mac> {
        match self {
            BootPath::Script(m) | BootPath::NodeInitrd { mac: m, .. } => Some(*m),
            _ => None,
        }
    }

    /// Parse a request path (relative; a leading `/` is refused, callers strip the URL's).
    pub fn parse(path: &str) -> Result<BootPath, PathRefused> {
        let refuse = |reason| PathRefused {
            path: path.chars().take(MAX_PATH_LEN).collect(),
            reason,
        };
        if path.len() > MAX_PATH_LEN {
            return Err(refuse("too-long"));
        }
        if path.starts_with('/') {
            return Err(refuse("absolute-path"));
        }
        if path.contains('\\') || path.contains('\0') || path.contains('%') {
            return Err(refuse("bad-character"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts
            .iter()
            .any(|p| *p == ".." || *p == "." || p.is_empty())
        {
            return Err(refuse("path-traversal"));
        }
        if !parts.iter().all(|p| valid_component(p)) {
            return Err(refuse("bad-name"));
        }
        let mac = |s: &str| Mac::parse(s).ok_or_else(|| refuse("bad-mac"));
        Ok(match parts.as_slice() {
            ["boot", script] => match script.strip_suffix(".ipxe") {
                Some(m) => BootPath::Script(mac(m)?),
                None => return Err(refuse("not-found")),
            },
            ["boot", m, token, image, version, file @ ("initrd" | "overlay")] => {
                BootPath::NodeInitrd {
                    mac: mac(m)?,
                    token: token.to_string(),
                    image: image.to_string(),
                    version: version.to_string(),
                    overlay: *file == "overlay",
                }
            }
            ["images", image, version, file] => BootPath::ImageFile {
                image: image.to_string(),
                version: version.to_string(),
                file: file.to_string(),
            },
            [file] => BootPath::Ipxe(file.to_string()),
            _ => return Err(refuse("not-found")),
        })
    }
}

impl std::fmt::Display for BootPath {
    /// The relative path (TFTP file name; HTTP path without its leading `/`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootPath::Ipxe(file) => f.write_str(file),
            BootPath::ImageFile {
                image,
                version,
                file,
            } => write!(f, "images/{image}/{version}/{file}"),
            BootPath::Script(mac) => write!(f, "boot/{}.ipxe", mac.hyphenated()),
            BootPath::NodeInitrd {
                mac,
                token,
                image,
                version,
                overlay,
            } => write!(
                f,
                "boot/{}/{token}/{image}/{version}/{}",
                mac.hyphenated(),
                if *overlay { "overlay" } else { "initrd" }
            ),
        }
    }
}

impl BootPath {
    /// A boot path from an HTTP request's path (`/boot/...`, `/images/...`, `/ipxe/<file>`):
    /// the one place the HTTP routes are told apart. iPXE binaries are under `ipxe/` over
    /// HTTP (TFTP serves them at its root); anything else is not a boot path.
    pub fn from_http(path: &str) -> Result<BootPath, PathRefused> {
        let rel = path.strip_prefix('/').unwrap_or(path);
        let not_found = || PathRefused {
            path: rel.chars().take(MAX_PATH_LEN).collect(),
            reason: "not-found",
        };
        match rel.split_once('/') {
            Some(("ipxe", file)) => match BootPath::parse(file)? {
                p @ BootPath::Ipxe(_) => Ok(p),
                _ => Err(not_found()),
            },
            Some(("boot" | "images", _)) => BootPath::parse(rel),
            _ => Err(not_found()),
        }
    }
}

/// A served path as admins see it in a boot's trace: a node initrd's one-boot token left out
/// (`boot/<mac>/-/<image>/<version>/initrd`), since the trace is shown to whoever may read
/// the node list.
pub fn without_token(path: &str) -> String {
    match BootPath::parse(path) {
        Ok(BootPath::NodeInitrd {
            mac,
            image,
            version,
            overlay,
            ..
        }) => format!(
            "boot/{}/-/{image}/{version}/{}",
            mac.hyphenated(),
            if overlay { "overlay" } else { "initrd" }
        ),
        _ => path.to_string(),
    }
}

/// `http://10.77.0.1:8080` + a boot path (iPXE binaries are under `ipxe/` over HTTP; TFTP
/// serves them at its root).
pub fn http_url(http_base: &str, path: &BootPath) -> String {
    let base = http_base.trim_end_matches('/');
    match path {
        BootPath::Ipxe(file) => format!("{base}/ipxe/{file}"),
        _ => format!("{base}/{path}"),
    }
}

/// A node's script URL with an iPXE expression in place of its MAC (`${net0/mac:hexhyp}`),
/// for a boot disk that serves every PC, and how it came (`?via=floppy`).
pub fn script_url_template(http_base: &str, mac_expr: &str, via: &str) -> String {
    format!(
        "{}/boot/{mac_expr}.ipxe?via={via}",
        http_base.trim_end_matches('/')
    )
}

/// The URL of a node's script over HTTP (DHCP hands it to iPXE; the script chains to it again).
pub fn script_url(http_base: &str, mac: Mac) -> String {
    http_url(http_base, &BootPath::Script(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0, 0x77, 1, 1]);

    #[test]
    fn every_path_round_trips() {
        let paths = [
            BootPath::Ipxe("undionly.kpxe".into()),
            BootPath::ImageFile {
                image: "i586".into(),
                version: "20261127-1".into(),
                file: "vmlinuz".into(),
            },
            BootPath::Script(MAC),
            BootPath::NodeInitrd {
                mac: MAC,
                token: "0123abcd".into(),
                image: "i586".into(),
                version: "v1".into(),
                overlay: false,
            },
            BootPath::NodeInitrd {
                mac: MAC,
                token: "0123abcd".into(),
                image: "i586".into(),
                version: "v1".into(),
                overlay: true,
            },
        ];
        for p in paths {
            assert_eq!(BootPath::parse(&p.to_string()), Ok(p.clone()), "{p}");
        }
        assert_eq!(
            BootPath::Script(MAC).to_string(),
            "boot/52-54-00-77-01-01.ipxe"
        );
        assert_eq!(
            script_url("http://10.77.0.1:8080/", MAC),
            "http://10.77.0.1:8080/boot/52-54-00-77-01-01.ipxe"
        );
        assert_eq!(
            http_url("http://10.77.0.1:8080", &BootPath::Ipxe("ipxe.efi".into())),
            "http://10.77.0.1:8080/ipxe/ipxe.efi",
            "iPXE binaries are under ipxe/ over HTTP"
        );
        // What http_url builds, from_http reads back; nothing else is a boot path over HTTP.
        for p in [
            BootPath::Ipxe("ipxe.efi".into()),
            BootPath::Script(MAC),
            BootPath::ImageFile {
                image: "i586".into(),
                version: "v1".into(),
                file: "vmlinuz".into(),
            },
        ] {
            let url = http_url("http://h", &p);
            assert_eq!(BootPath::from_http(&url["http://h".len()..]), Ok(p));
        }
        for bad in [
            "/ipxe/boot/x.ipxe",
            "/undionly.kpxe",
            "/ipxe/../x",
            "/other/x",
        ] {
            assert!(BootPath::from_http(bad).is_err(), "{bad}");
        }
        assert_eq!(
            script_url_template("http://h:8080/", "${net0/mac:hexhyp}", "floppy"),
            "http://h:8080/boot/${net0/mac:hexhyp}.ipxe?via=floppy"
        );
    }

    #[test]
    fn a_trace_shows_no_boot_token() {
        assert_eq!(
            without_token("boot/52-54-00-77-01-01/0123abcd/i586/v1/initrd"),
            "boot/52-54-00-77-01-01/-/i586/v1/initrd"
        );
        assert_eq!(
            without_token("images/i586/v1/vmlinuz"),
            "images/i586/v1/vmlinuz"
        );
    }

    #[test]
    fn hostile_paths_are_refused_with_a_reason() {
        for (p, reason) in [
            ("../secret", "path-traversal"),
            ("/etc/passwd", "absolute-path"),
            ("images/../../secret", "path-traversal"),
            ("images/i586/v1/../x", "path-traversal"),
            ("a\\b", "bad-character"),
            ("a\0b", "bad-character"),
            ("%2e%2e/secret", "bad-character"),
            ("images/i586/.tmp-v2/initrd", "bad-name"),
            ("boot/nonsense.ipxe", "bad-mac"),
            ("boot/52-54-00-77-01-01/i586/v1/initrd", "not-found"),
            ("boot/x/52-54-00-77-01-01.ipxe", "not-found"),
            ("a//b", "path-traversal"),
        ] {
            assert_eq!(
                BootPath::parse(p).map_err(|e| e.reason),
                Err(reason),
                "{p:?}"
            );
        }
        assert_eq!(
            BootPath::parse(&"a".repeat(MAX_PATH_LEN + 1)).map_err(|e| e.reason),
            Err("too-long")
        );
    }
}
