//! Published images: `<dir>/<name>/<version>/{vmlinuz,initrd,manifest.json}` plus
//! `<dir>/<name>/current`, a one-line file naming the version to boot.
//!
//! Publishing writes the new version's folder completely, then replaces `current` by rename,
//! which is atomic. Versions are never modified in place, and boot scripts name the version
//! explicitly, so a node that is half-way through downloading keeps getting the files it
//! started with while a new version is published.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::manifest::{DriverAlias, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("image {name:?} is not published in {dir} (run `enlist image build`)")]
    NotPublished { name: String, dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a valid image name or version")]
    BadName(String),
    #[error("image {name:?}: no version older than the current one ({current}) to go back to")]
    NoOlder { name: String, current: String },
}

/// Image manifests read, by image name and version.
type ManifestCache = HashMap<(String, String), Arc<Manifest>>;

/// Manifests kept in memory at most (the cache is emptied when full).
const MAX_CACHED_MANIFESTS: usize = 64;

#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    /// Manifests read so far, by image and version; shared by the clones.
    manifests: Arc<Mutex<ManifestCache>>,
}

pub use crate::bootpath::valid_component;

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>) -> ImageStore {
        ImageStore {
            dir: dir.into(),
            manifests: Arc::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version `current` points at.
    pub fn current(&self, name: &str) -> Result<String, ImageStoreError> {
        if !valid_component(name) {
            return Err(ImageStoreError::BadName(name.into()));
        }
        let path = self.dir.join(name).join("current");
        match std::fs::read_to_string(&path) {
            Ok(v) if valid_component(v.trim()) => Ok(v.trim().to_string()),
            Ok(_) => Err(ImageStoreError::BadName(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ImageStoreError::NotPublished {
                    name: name.into(),
                    dir: self.dir.clone(),
                })
            }
            Err(source) => Err(ImageStoreError::Io { path, source }),
        }
    }

    /// A version's manifest.json read as `T` (`None`: a version built before it had one).
    pub fn manifest<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<T>, ImageStoreError> {
        let path = self.file(name, version, "manifest.json")?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ImageStoreError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ImageStoreError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
    }

    /// An image version's manifest (`None`: a version built before it had one). Versions
    /// never change once published, so each is read once and kept (a few dozen at most).
    pub fn image_manifest(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<Arc<Manifest>>, ImageStoreError> {
        let key = (name.to_string(), version.to_string());
        if let Some(m) = self.cache().get(&key) {
            return Ok(Some(m.clone()));
        }
        let Some(m) = self.manifest::<Manifest>(name, version)? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED_MANIFESTS {
            cache.clear();
        }
        cache.insert(key, m.clone());
        Ok(Some(m))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ManifestCache> {
        self.manifests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel options a version boots with (`cmdline` in its manifest.json; empty for
    /// images built before manifests had one).
    pub fn cmdline(&self, name: &str, version: &str) -> Result<String, ImageStoreError> {
        Ok(self
            .image_manifest(name, version)?
            .map(|m| m.cmdline.clone())
            .unwrap_or_default())
    }

    /// The Debian architecture of a version (`arch` in its manifest: `i386`, `amd64`).
    pub fn arch(&self, name: &str, version: &str) -> Result<Option<String>, ImageStoreError> {
        Ok(self
            .image_manifest(name, version)?
            .map(|m| m.arch.clone())
            .filter(|a| !a.is_empty()))
    }

    /// The jobs' runtime bundle built beside a version, if it has one: its file name, sha256
    /// and size, from the manifest (`bundle`).
    pub fn bundle(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<(String, String, u64)>, ImageStoreError> {
        Ok(self
            .image_manifest(name, version)?
            .and_then(|m| m.bundle.clone())
            .filter(|b| valid_component(&b.file))
            .map(|b| (b.file, b.sha256, b.bytes)))
    }

    /// The PCI patterns of a version's network driver modules (`drivers` in its manifest;
    /// empty when the image does not tell, as one with its drivers built in).
    pub fn drivers(&self, name: &str, version: &str) -> Result<Vec<DriverAlias>, ImageStoreError> {
        Ok(self
            .image_manifest(name, version)?
            .map(|m| m.drivers.clone())
            .unwrap_or_default())
    }

    /// Path of one file of one version. Components are validated, so the result is inside `dir`.
    pub fn file(&self, name: &str, version: &str, file: &str) -> Result<PathBuf, ImageStoreError> {
        for c in [name, version, file] {
            if !valid_component(c) {
                return Err(ImageStoreError::BadName(c.into()));
            }
        }
        Ok(self.dir.join(name).join(version).join(file))
    }

    /// Publish `files` as version `version` of `name` and make it current.
    pub fn publish(
        &self,
        name: &str,
        version: &str,
        files: &[(&str, &[u8])],
    ) -> Result<PathBuf, ImageStoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageStoreError::Io { path, source }
        };
        let base = self.dir.join(name);
        let final_dir = base.join(version);
        if !final_dir.exists() {
            let tmp = base.join(format!(".{version}.tmp"));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            for (file, data) in files {
                let p = tmp.join(file);
                std::fs::write(&p, data).map_err(io(&p))?;
                std::fs::File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&p))?;
            }
            std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        }
        self.set_current(name, version)?;
        Ok(final_dir)
    }

    /// Publish the folder `fill` makes as version `version` of `name`, and make it current:
    /// `fill` works in a hidden folder that is renamed into place only when it succeeded.
    pub fn publish_dir<E: From<ImageStoreError>>(
        &self,
        name: &str,
        version: &str,
        fill: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, E> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageStoreError::Io { path, source }
        };
        if !valid_component(name) || !valid_component(version) {
            return Err(ImageStoreError::BadName(format!("{name}/{version}")).into());
        }
        let base = self.dir.join(name);
        let final_dir = base.join(version);
        let tmp = base.join(format!(".{version}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        fill(&tmp)?;
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        self.set_current(name, version)?;
        Ok(final_dir)
    }

    /// Point `current` at `version` (by rename: a boot script sees the old or the new one).
    fn set_current(&self, name: &str, version: &str) -> Result<(), ImageStoreError> {
        let path = self.dir.join(name).join("current");
        crate::store::replace_file(&path, format!("{version}\n").as_bytes())
            .map_err(|source| ImageStoreError::Io { path, source })
    }

    /// The images published here, by name.
    pub fn names(&self) -> Result<Vec<String>, ImageStoreError> {
        let mut names: Vec<String> = read_dir(&self.dir)?
            .into_iter()
            .filter(|(n, _)| self.dir.join(n).join("current").exists())
            .map(|(n, _)| n)
            .collect();
        names.sort();
        Ok(names)
    }

    /// The versions of `name`, oldest first (by when each was built), with that time.
    pub fn versions(
        &self,
        name: &str,
    ) -> Result<Vec<(String, std::time::SystemTime)>, ImageStoreError> {
        if !valid_component(name) {
            return Err(ImageStoreError::BadName(name.into()));
        }
        let mut v: Vec<(String, std::time::SystemTime)> = read_dir(&self.dir.join(name))?
            .into_iter()
            .filter(|(n, _)| valid_component(n) && !n.starts_with('.'))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        Ok(v)
    }

    /// Make the version built before the current one current. Returns (from, to).
    pub fn rollback(&self, name: &str) -> Result<(String, String), ImageStoreError> {
        let current = self.current(name)?;
        let versions = self.versions(name)?;
        let at = versions.iter().position(|(v, _)| *v == current);
        let previous = match at {
            Some(i) if i > 0 => versions[i - 1].0.clone(),
            _ => {
                return Err(ImageStoreError::NoOlder {
                    name: name.into(),
                    current,
                })
            }
        };
        self.set_current(name, &previous)?;
        Ok((current, previous))
    }
}

/// The folders in `dir`, with their modification times.
fn read_dir(dir: &Path) -> Result<Vec<(String, std::time::SystemTime)>, ImageStoreError> {
    let io = |source| ImageStoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = vec![];
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let meta = e.metadata().map_err(io)?;
        if meta.is_dir() {
            let modified = meta.modified().map_err(io)?;
            out.push((e.file_name().to_string_lossy().to_string(), modified));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_switches_current_and_keeps_old_versions() {
        let d = tempfile::tempdir().unwrap();
        let s = ImageStore::new(d.path());
        assert!(matches!(
            s.current("i586"),
            Err(ImageStoreError::NotPublished { .. })
        ));
        s.publish("i586", "v1", &[("initrd", b"one")]).unwrap();
        let old = s.file("i586", "v1", "initrd").unwrap();
        s.publish("i586", "v2", &[("initrd", b"two")]).unwrap();
        assert_eq!(s.current("i586").unwrap(), "v2");
        assert_eq!(
            std::fs::read(old).unwrap(),
            b"one",
            "old version stays for downloads in flight"
        );
    }

    #[test]
    fn rollback_goes_back_one_version_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let s = ImageStore::new(d.path());
        for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
            s.publish("i586", v, &[("initrd", b"x")]).unwrap();
            // Built a minute apart (the order comes from the folders' times).
            let t =
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(60 * i as u64);
            std::fs::File::open(d.path().join("i586").join(v))
                .and_then(|f| f.set_modified(t))
                .unwrap();
        }
        assert_eq!(s.names().unwrap(), ["i586"]);
        let listed: Vec<String> = s
            .versions("i586")
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(listed, ["v1", "v2", "v3"]);
        assert_eq!(s.rollback("i586").unwrap(), ("v3".into(), "v2".into()));
        assert_eq!(s.current("i586").unwrap(), "v2");
        assert_eq!(s.rollback("i586").unwrap(), ("v2".into(), "v1".into()));
        assert!(matches!(
            s.rollback("i586"),
            Err(ImageStoreError::NoOlder { .. })
        ));
        assert_eq!(s.current("i586").unwrap(), "v1");
    }

    #[test]
    fn components_cannot_escape() {
        let s = ImageStore::new("/x");
        assert!(s.file("..", "v", "initrd").is_err());
        assert!(s.file("a", "v/../..", "initrd").is_err());
        assert!(s.file("a", "v", "").is_err());
    }
}
