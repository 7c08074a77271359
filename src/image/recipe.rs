//! Image recipes (`images/*.yaml`): what goes into a node OS image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Image name, as used in the head's config (`images.bios`).
    pub name: String,
    /// Debian architecture of the packages (`i386`, `amd64`).
    pub arch: String,
    /// Folder holding the downloaded .deb files (relative to the recipe).
    pub packages: PathBuf,
    /// The kernel, as a file-name pattern with `*`: a Debian kernel package (`*.deb`; the
    /// listed modules come from it) or a kernel image with its drivers built in
    /// (`vmlinuz-<release>`, as `cargo xtask node kernel` makes; then list no modules).
    pub kernel: String,
    /// Busybox package pattern.
    pub busybox: String,
    /// Kernel modules to include, by name, or every module under a folder of the kernel
    /// package's module tree (an entry ending in `/`: `kernel/drivers/net/ethernet/`); their
    /// dependencies come along.
    pub modules: Vec<String>,
    /// The cross-built agent binary (relative to the recipe).
    pub agent: PathBuf,
    /// Folders whose files are copied into the image as they are (relative to the recipe).
    #[serde(default)]
    pub rootfs: Vec<PathBuf>,
    #[serde(default)]
    pub compression: Compression,
    /// Kernel options this node OS boots with (before the head's `images.cmdline`).
    #[serde(default)]
    pub cmdline: String,
    /// Where to publish (relative to the recipe); the head's `images.dir` should point here.
    pub output: PathBuf,
    /// Fail the build if vmlinuz + initrd exceed this many bytes.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// The jobs' runtime (slurmd, munged, plugins, libraries), built beside the image for
    /// the nodes to download when they join the scheduler; no `jobs:`, no jobs on this image.
    #[serde(default)]
    pub jobs: Option<JobsRuntime>,
    /// Download the packages that are not in `packages` yet with `apt-get download` (apt
    /// checks each against the signed index of the head's sources): for a head installed
    /// from packages, which has no `cargo xtask node fetch`. Each pattern must then name its
    /// package exactly (`busybox-static_*_i386.deb`).
    #[serde(default)]
    pub download: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    /// Smallest; slowest to unpack (about 2 s for the i586 initrd on an emulated Pentium II).
    Xz,
    /// Nearly as small as xz and several times faster to unpack (Linux 5.9+).
    Zstd,
}

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A YAML recipe file read as `T`; an error names the file (and the line and column).
pub fn load_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_norway::from_str(&text).map_err(|e| {
        let (line, column) = crate::config::yaml_position(&e);
        RecipeError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.to_string(),
        }
    })
}

impl Recipe {
    pub fn load(path: &Path) -> Result<(Recipe, PathBuf), RecipeError> {
        let r: Recipe = load_yaml(path)?;
        if !crate::image::store::valid_component(&r.name) {
            return Err(RecipeError::Invalid {
                path: path.to_path_buf(),
                message: format!("name {:?}: use letters, digits, '-', '_', '.'", r.name),
            });
        }
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((r, base))
    }
}

/// Match a file name against a pattern where `*` stands for any run of characters.
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first)
        || !name[first.len()..].ends_with(last)
        || name.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The recipe's `jobs:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsRuntime {
    /// Package file patterns, in the recipe's `packages` folder.
    pub packages: Vec<String>,
    /// Files to take from them (patterns, `*` stands for any run of characters). The libraries
    /// they need and the loader come along by themselves.
    pub files: Vec<String>,
    /// Symlinks a package's install script would make (`update-alternatives`): path, target.
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches(
            "linux-image-*-686-unsigned_*.deb",
            "linux-image-6.1.0-50-686-unsigned_6.1.158-1_i386.deb"
        ));
        assert!(!matches(
            "linux-image-*-686-unsigned_*.deb",
            "linux-image-6.1.0-50-686-pae-unsigned_6.1.158-1_i386.deb"
        ));
        assert!(matches(
            "busybox-static_*_i386.deb",
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_i386.deb"
        ));
        assert!(!matches("a*b", "ab-c"));
        assert!(matches("exact", "exact"));
    }

    #[test]
    fn recipes_in_repo_parse() {
        for r in [
            "../../images/i586.yaml",
            "../../images/x86_64.yaml",
            "../../images/x86_64-debian.yaml",
        ] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/image")
                .join(r);
            Recipe::load(&p).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
