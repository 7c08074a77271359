//! The boot file namespace shared by TFTP and HTTP, so both serve exactly the same files and
//! refuse exactly the same paths:
//!
//! | path                                     | content                                  |
//! |------------------------------------------|------------------------------------------|
//! | `<file>`                                 | an iPXE binary from `tftp.ipxe_dir`      |
//! | `images/<name>/<version>/<file>`         | a published image file                   |
//! | `boot/<mac>/<name>/<version>/initrd`     | that image's initrd + the node's overlay |
//!
//! Files are read once and kept in memory (images are a few MB and immutable once published),
//! so 40 PCs booting at once share one copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use crate::image::store::{valid_component, ImageStore};

/// Supplies the per-node part of the initrd (node name, head URL, credentials).
pub trait NodeOverlay: Send + Sync {
    fn overlay(&self, mac: &str) -> Result<Vec<u8>, String>;
}

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

/// File content as a list of shared chunks (an initrd plus a node overlay is two).
#[derive(Debug, Clone)]
pub struct Blob {
    parts: Vec<Bytes>,
    pub kind: Kind,
    /// The node a per-node file belongs to.
    pub mac: Option<String>,
}

impl Blob {
    /// A blob of one piece of memory (tests, tools).
    pub fn from_bytes(data: impl Into<Bytes>, kind: Kind) -> Blob {
        Blob {
            parts: vec![data.into()],
            kind,
            mac: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `[start, end)` as shared slices, without copying.
    pub fn slice(&self, mut start: u64, end: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut remaining = end.saturating_sub(start);
        for p in &self.parts {
            let plen = p.len() as u64;
            if start >= plen {
                start -= plen;
                continue;
            }
            let take = remaining.min(plen - start);
            out.push(p.slice(start as usize..(start + take) as usize));
            remaining -= take;
            start = 0;
            if remaining == 0 {
                break;
            }
        }
        out
    }

    /// Copy bytes starting at `offset` into `buf`; returns how many were copied.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for s in self.slice(offset, offset + buf.len() as u64) {
            buf[n..n + s.len()].copy_from_slice(&s);
            n += s.len();
        }
        n
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The path is not one we would ever serve (traversal, absolute, bad characters).
    #[error("refused path {path:?}: {reason}")]
    Refused { path: String, reason: &'static str },
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl ResolveError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::Refused { reason, .. } => reason,
            ResolveError::NotFound(_) => "not-found",
            ResolveError::Io { .. } => "io-error",
        }
    }
}

type CacheEntry = (SystemTime, u64, Bytes);

pub struct BootFiles {
    ipxe_dir: PathBuf,
    images: ImageStore,
    overlay: Arc<dyn NodeOverlay>,
    cache: Mutex<HashMap<PathBuf, CacheEntry>>,
}

fn refused(path: &str, reason: &'static str) -> ResolveError {
    ResolveError::Refused {
        path: path.into(),
        reason,
    }
}

impl BootFiles {
    pub fn new(ipxe_dir: PathBuf, images: ImageStore, overlay: Arc<dyn NodeOverlay>) -> BootFiles {
        BootFiles {
            ipxe_dir,
            images,
            overlay,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Resolve a request path. Blocking (reads files): call from a blocking context.
    pub fn resolve(&self, path: &str) -> Result<Blob, ResolveError> {
        if path.starts_with('/') {
            return Err(refused(path, "absolute-path"));
        }
        if path.contains('\\') || path.contains('\0') {
            return Err(refused(path, "bad-character"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts
            .iter()
            .any(|p| *p == ".." || *p == "." || p.is_empty())
        {
            return Err(refused(path, "path-traversal"));
        }
        match parts.as_slice() {
            [file] => {
                if !valid_component(file) {
                    return Err(refused(path, "bad-name"));
                }
                let data = self.read_inside(&self.ipxe_dir, &self.ipxe_dir.join(file), path)?;
                Ok(Blob {
                    parts: vec![data],
                    kind: Kind::Ipxe,
                    mac: None,
                })
            }
            ["images", name, version, file] => {
                let p = self
                    .images
                    .file(name, version, file)
                    .map_err(|_| refused(path, "bad-name"))?;
                let data = self.read_inside(self.images.dir(), &p, path)?;
                let kind = match *file {
                    "vmlinuz" => Kind::Kernel,
                    "initrd" => Kind::Initrd,
                    _ => Kind::Other,
                };
                Ok(Blob {
                    parts: vec![data],
                    kind,
                    mac: None,
                })
            }
            ["boot", mac, name, version, "initrd"] => {
                let mac = enlist_api::normalize_mac(mac).ok_or_else(|| refused(path, "bad-mac"))?;
                let p = self
                    .images
                    .file(name, version, "initrd")
                    .map_err(|_| refused(path, "bad-name"))?;
                let base = self.read_inside(self.images.dir(), &p, path)?;
                let overlay = self
                    .overlay
                    .overlay(&mac)
                    .map_err(|message| ResolveError::Io {
                        path: path.into(),
                        message,
                    })?;
                Ok(Blob {
                    parts: vec![base, Bytes::from(overlay)],
                    kind: Kind::Initrd,
                    mac: Some(mac),
                })
            }
            _ => Err(ResolveError::NotFound(path.into())),
        }
    }

    /// Read `file`, which must resolve (after symlinks) to a place inside `root`.
    fn read_inside(&self, root: &Path, file: &Path, shown: &str) -> Result<Bytes, ResolveError> {
        let io = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ResolveError::NotFound(shown.into())
            } else {
                ResolveError::Io {
                    path: shown.into(),
                    message: e.to_string(),
                }
            }
        };
        let root = root.canonicalize().map_err(io)?;
        let real = file.canonicalize().map_err(io)?;
        if !real.starts_with(&root) {
            return Err(refused(shown, "symlink-escapes-root"));
        }
        let meta = std::fs::metadata(&real).map_err(io)?;
        if !meta.is_file() {
            return Err(ResolveError::NotFound(shown.into()));
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, len, data)) = cache.get(&real) {
            if *t == mtime && *len == meta.len() {
                return Ok(data.clone());
            }
        }
        let data = Bytes::from(std::fs::read(&real).map_err(io)?);
        cache.insert(real, (mtime, meta.len(), data.clone()));
        Ok(data)
    }
}

/// Told about every boot file a client fetched (the registry follows boots with it).
pub trait FetchObserver: Send + Sync {
    /// `mac` is known for per-node paths; otherwise the observer maps `ip` to a node.
    fn fetched(&self, mac: Option<&str>, ip: std::net::IpAddr, kind: Kind, path: &str);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl NodeOverlay for Fixed {
        fn overlay(&self, mac: &str) -> Result<Vec<u8>, String> {
            Ok(format!("[{mac}]").into_bytes())
        }
    }

    fn setup() -> (tempfile::TempDir, BootFiles) {
        let d = tempfile::tempdir().unwrap();
        let ipxe = d.path().join("ipxe");
        std::fs::create_dir(&ipxe).unwrap();
        std::fs::write(ipxe.join("undionly.kpxe"), b"ROM").unwrap();
        std::fs::write(d.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), ipxe.join("link")).unwrap();
        let images = ImageStore::new(d.path().join("images"));
        images
            .publish("i586", "v1", &[("initrd", b"INITRD"), ("vmlinuz", b"K")])
            .unwrap();
        let files = BootFiles::new(ipxe, images, Arc::new(Fixed));
        (d, files)
    }

    #[test]
    fn serves_inside_roots() {
        let (_d, f) = setup();
        let b = f.resolve("undionly.kpxe").unwrap();
        assert_eq!(b.kind, Kind::Ipxe);
        assert_eq!(b.len(), 3);
        let k = f.resolve("images/i586/v1/vmlinuz").unwrap();
        assert_eq!(k.kind, Kind::Kernel);
    }

    #[test]
    fn node_initrd_is_image_plus_overlay() {
        let (_d, f) = setup();
        let b = f.resolve("boot/52-54-00-00-00-01/i586/v1/initrd").unwrap();
        let mut buf = vec![0u8; b.len() as usize];
        assert_eq!(b.read_at(0, &mut buf), buf.len());
        assert_eq!(buf, b"INITRD[52:54:00:00:00:01]");
        let mut mid = [0u8; 4];
        assert_eq!(b.read_at(4, &mut mid), 4);
        assert_eq!(&mid, b"RD[5", "reads span both parts");
    }

    #[test]
    fn refuses_paths_outside_roots() {
        let (_d, f) = setup();
        for (p, reason) in [
            ("../secret", "path-traversal"),
            ("/etc/passwd", "absolute-path"),
            ("images/../../secret", "path-traversal"),
            ("link", "symlink-escapes-root"),
            ("a\\b", "bad-character"),
            ("images/i586/v1/../x", "path-traversal"),
        ] {
            let e = f.resolve(p).unwrap_err();
            assert_eq!(e.reason(), reason, "{p}");
        }
        assert_eq!(f.resolve("missing.efi").unwrap_err().reason(), "not-found");
    }
}
