//! The boot file namespace, served the same by TFTP and HTTP (see [`crate::bootpath`] for the
//! paths): one [`BootFiles::resolve`] for both, so they serve exactly the same files and refuse
//! exactly the same requests.
//!
//! Files are read once and kept in memory (images are a few MB and immutable once published),
//! so 40 PCs booting at once share one copy. Per-node content (the script, the initrd overlay
//! with the node's key) comes from [`NodeFiles`], which the registry's side provides.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use enlist_api::Mac;

use crate::bootpath::{BootPath, Kind, PathRefused, Proto};
use crate::image::store::ImageStore;

/// One request for a boot file.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Relative path (TFTP file name; HTTP path without its leading `/`).
    pub path: &'a str,
    pub from: IpAddr,
    pub proto: Proto,
    /// How the PC came to iPXE (`pxe`, `floppy`, `usb`): put on the kernel line by the script.
    pub method: &'a str,
}

/// The per-node files: a node's script and its initrd overlay.
pub trait NodeFiles: Send + Sync {
    fn script(&self, mac: Mac, req: &Request) -> Result<String, ResolveError>;
    /// The overlay of `mac`'s initrd of image `image` version `version`.
    fn overlay(
        &self,
        mac: Mac,
        token: &str,
        image: (&str, &str),
        req: &Request,
    ) -> Result<Vec<u8>, ResolveError>;
}

/// File content as a list of shared chunks (an initrd plus a node overlay is two).
#[derive(Debug, Clone)]
pub struct Blob {
    parts: Vec<Bytes>,
    pub kind: Kind,
    /// The node a per-node file belongs to.
    pub mac: Option<Mac>,
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The path is not one we would ever serve (traversal, absolute, bad characters).
    #[error(transparent)]
    Refused(#[from] PathRefused),
    /// A real path this requester may not have (another node's initrd, a stale token).
    #[error("{path}: {reason}")]
    Forbidden { path: String, reason: &'static str },
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl ResolveError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::Refused(r) => r.reason,
            ResolveError::Forbidden { reason, .. } => reason,
            ResolveError::NotFound(_) => "not-found",
            ResolveError::Io { .. } => "io-error",
        }
    }
}

type CacheEntry = (SystemTime, u64, Bytes);

pub struct BootFiles {
    ipxe_dir: PathBuf,
    images: ImageStore,
    nodes: Arc<dyn NodeFiles>,
    cache: Mutex<HashMap<PathBuf, CacheEntry>>,
}

impl BootFiles {
    pub fn new(ipxe_dir: PathBuf, images: ImageStore, nodes: Arc<dyn NodeFiles>) -> BootFiles {
        BootFiles {
            ipxe_dir,
            images,
            nodes,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Resolve a request. Blocking (reads files, may write the registry): call from a
    /// blocking context.
    pub fn resolve(&self, req: &Request) -> Result<Blob, ResolveError> {
        self.resolve_path(&BootPath::parse(req.path)?, req)
    }

    /// [`BootFiles::resolve`] for a path already parsed (`req.path` is how it is shown).
    pub fn resolve_path(&self, path: &BootPath, req: &Request) -> Result<Blob, ResolveError> {
        let kind = path.kind();
        let one = |data: Bytes| Blob {
            parts: vec![data],
            kind,
            mac: path.mac(),
        };
        match path {
            BootPath::Ipxe(file) => {
                let data = self.read_inside(&self.ipxe_dir, &self.ipxe_dir.join(file), req.path)?;
                Ok(one(data))
            }
            BootPath::ImageFile {
                image,
                version,
                file,
            } => {
                let data = self.image_file(image, version, file, req.path)?;
                Ok(one(data))
            }
            BootPath::Script(mac) => {
                let text = self.nodes.script(*mac, req)?;
                Ok(one(Bytes::from(text)))
            }
            BootPath::NodeInitrd {
                mac,
                token,
                image,
                version,
                overlay: only,
            } => {
                // The token first: a stranger learns nothing, not even whether the image exists.
                let overlay = self.nodes.overlay(*mac, token, (image, version), req)?;
                let base = self.image_file(image, version, "initrd", req.path)?;
                // A PC that took the image's initrd from a mirror asks for its own part only.
                let parts = if *only {
                    vec![Bytes::from(overlay)]
                } else {
                    vec![base, Bytes::from(overlay)]
                };
                Ok(Blob {
                    parts,
                    kind,
                    mac: Some(*mac),
                })
            }
        }
    }

    fn image_file(
        &self,
        image: &str,
        version: &str,
        file: &str,
        shown: &str,
    ) -> Result<Bytes, ResolveError> {
        let p = self.images.file(image, version, file).map_err(|_| {
            ResolveError::Refused(PathRefused {
                path: shown.into(),
                reason: "bad-name",
            })
        })?;
        self.read_inside(self.images.dir(), &p, shown)
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
            return Err(ResolveError::Refused(PathRefused {
                path: shown.into(),
                reason: "symlink-escapes-root",
            }));
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
    fn fetched(&self, mac: Option<Mac>, ip: IpAddr, kind: Kind, path: &str, via: Proto);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);

    /// Per-node files of a fake registry: the script names the MAC; the overlay needs token "t".
    struct Fixed;
    impl NodeFiles for Fixed {
        fn script(&self, mac: Mac, _: &Request) -> Result<String, ResolveError> {
            Ok(format!("#!ipxe {mac}"))
        }
        fn overlay(
            &self,
            mac: Mac,
            token: &str,
            _: (&str, &str),
            req: &Request,
        ) -> Result<Vec<u8>, ResolveError> {
            if token != "t" {
                return Err(ResolveError::Forbidden {
                    path: req.path.into(),
                    reason: "token-mismatch",
                });
            }
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

    fn get(f: &BootFiles, path: &str) -> Result<Blob, ResolveError> {
        f.resolve(&Request {
            path,
            from: IpAddr::from([10, 77, 0, 100]),
            proto: Proto::Tftp,
            method: "pxe",
        })
    }

    fn text(b: &Blob) -> String {
        let mut buf = vec![0u8; b.len() as usize];
        b.read_at(0, &mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn serves_inside_roots() {
        let (_d, f) = setup();
        let b = get(&f, "undionly.kpxe").unwrap();
        assert_eq!(b.kind, Kind::Ipxe);
        assert_eq!(b.len(), 3);
        let k = get(&f, "images/i586/v1/vmlinuz").unwrap();
        assert_eq!(k.kind, Kind::Kernel);
        let s = get(&f, "boot/52-54-00-00-00-01.ipxe").unwrap();
        assert_eq!(
            (s.kind, text(&s)),
            (Kind::Script, "#!ipxe 52:54:00:00:00:01".into())
        );
    }

    #[test]
    fn node_initrd_is_image_plus_overlay_with_its_token_only() {
        let (_d, f) = setup();
        let b = get(&f, "boot/52-54-00-00-00-01/t/i586/v1/initrd").unwrap();
        assert_eq!(text(&b), "INITRD[52:54:00:00:00:01]");
        assert_eq!(b.mac, Some(MAC));
        let mut mid = [0u8; 4];
        assert_eq!(b.read_at(4, &mut mid), 4);
        assert_eq!(&mid, b"RD[5", "reads span both parts");
        let e = get(&f, "boot/52-54-00-00-00-01/x/i586/v1/initrd").unwrap_err();
        assert_eq!(e.reason(), "token-mismatch");
    }

    #[test]
    fn refuses_paths_outside_roots() {
        let (_d, f) = setup();
        for (p, reason) in [
            ("../secret", "path-traversal"),
            ("/etc/passwd", "absolute-path"),
            ("link", "symlink-escapes-root"),
            ("images/i586/.v1/initrd", "bad-name"),
        ] {
            let e = get(&f, p).unwrap_err();
            assert_eq!(e.reason(), reason, "{p}");
        }
        assert_eq!(get(&f, "missing.efi").unwrap_err().reason(), "not-found");
    }
}
