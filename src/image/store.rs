//! Published images: `<dir>/<name>/<version>/{vmlinuz,initrd,manifest.json}` plus
//! `<dir>/<name>/current`, a one-line file naming the version to boot.
//!
//! Publishing writes the new version's folder completely, then replaces `current` by rename,
//! which is atomic. Versions are never modified in place, and boot scripts name the version
//! explicitly, so a node that is half-way through downloading keeps getting the files it
//! started with while a new version is published.

use std::path::{Path, PathBuf};

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
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

pub use crate::bootpath::valid_component;

impl ImageStore {
    pub fn new(dir: impl Into<PathBuf>) -> ImageStore {
        ImageStore { dir: dir.into() }
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

    /// The kernel options a version boots with (`cmdline` in its manifest.json; empty for
    /// images built before manifests had one).
    pub fn cmdline(&self, name: &str, version: &str) -> Result<String, ImageStoreError> {
        #[derive(serde::Deserialize)]
        struct Manifest {
            #[serde(default)]
            cmdline: String,
        }
        let path = self.file(name, version, "manifest.json")?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(source) => return Err(ImageStoreError::Io { path, source }),
        };
        serde_json::from_str::<Manifest>(&text)
            .map(|m| m.cmdline)
            .map_err(|e| ImageStoreError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
    }

    /// The jobs' runtime bundle built beside a version, if it has one: its file name, sha256
    /// and size, from the manifest (`bundle`).
    pub fn bundle(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<(String, String, u64)>, ImageStoreError> {
        #[derive(serde::Deserialize)]
        struct Manifest {
            #[serde(default)]
            bundle: Option<Bundle>,
        }
        #[derive(serde::Deserialize)]
        struct Bundle {
            file: String,
            sha256: String,
            bytes: u64,
        }
        let path = self.file(name, version, "manifest.json")?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ImageStoreError::Io { path, source }),
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| ImageStoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Ok(m.bundle
            .filter(|b| valid_component(&b.file))
            .map(|b| (b.file, b.sha256, b.bytes)))
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
        let cur_tmp = base.join(".current.tmp");
        std::fs::write(&cur_tmp, format!("{version}\n")).map_err(io(&cur_tmp))?;
        std::fs::File::open(&cur_tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&cur_tmp))?;
        std::fs::rename(&cur_tmp, base.join("current")).map_err(io(&base))?;
        Ok(final_dir)
    }
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
    fn components_cannot_escape() {
        let s = ImageStore::new("/x");
        assert!(s.file("..", "v", "initrd").is_err());
        assert!(s.file("a", "v/../..", "initrd").is_err());
        assert!(s.file("a", "v", "").is_err());
    }
}
