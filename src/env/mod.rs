//! Job environments: the Debian userland jobs run in, one per architecture, built by
//! `enlist env build` with mmdebstrap and published like images
//! (`<jobs.env_dir>/<arch>/<version>/{root/,manifest.json}` and `<arch>/current`). The head
//! exports the folder read-only over NFS; a node mounts its arch's current version and runs
//! munged, slurmd and so every job step in it (`initramfs/agent/src/jobs/root.rs`).
//!
//! Nothing secret may be in a version: every node reads it. The build removes the files a
//! Debian root keeps for root alone (shadow, the munge package's own key).

pub mod recipe;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::store::{ImageStore, ImageStoreError};
use recipe::EnvRecipe;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(transparent)]
    Recipe(#[from] recipe::RecipeError),
    #[error(transparent)]
    Store(#[from] ImageStoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mmdebstrap is not installed (apt-get install mmdebstrap): {0}")]
    NoMmdebstrap(std::io::Error),
    #[error("mmdebstrap failed for {arch} ({status}); its last lines:\n{tail}")]
    Mmdebstrap {
        arch: String,
        status: std::process::ExitStatus,
        tail: String,
    },
    #[error("the recipe builds no {0} (its architectures: {1})")]
    NotInRecipe(String, String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EnvError {
    let path = path.to_path_buf();
    move |source| EnvError::Io { path, source }
}

/// One published version.
#[derive(Debug)]
pub struct Built {
    pub arch: String,
    pub version: String,
    pub dir: PathBuf,
    pub packages: usize,
    /// slurmd's Debian version in it, and the head's slurmctld's (they must be one Slurm).
    pub slurmd: String,
    pub head_slurmctld: Option<String>,
}

/// What is written beside a version's root.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub arch: String,
    pub suite: String,
    pub mirror: String,
    /// The recipe's packages (what the admin asked for).
    pub asked: Vec<String>,
    /// Every package installed, `name version`.
    pub installed: Vec<String>,
}

/// Files a Debian root keeps for root alone: no node may read them, and none needs them
/// (a node's accounts come from the head; its munge key is sealed for it).
const SECRETS: [&str; 5] = [
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/munge/munge.key",
];

/// Build and publish the recipe's environments (or only `arch`'s).
pub fn build(
    recipe_path: &Path,
    store: &ImageStore,
    arch: Option<&str>,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Built>, EnvError> {
    let r = EnvRecipe::load(recipe_path)?;
    let arches: Vec<String> = match arch {
        Some(a) if r.architectures.iter().any(|x| x == a) => vec![a.to_string()],
        Some(a) => return Err(EnvError::NotInRecipe(a.into(), r.architectures.join(", "))),
        None => r.architectures.clone(),
    };
    readable_dir(store.dir())?;
    let mut out = Vec::new();
    for arch in arches {
        let version = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
        log(&format!(
            "env {arch}: mmdebstrap {} from {} with {}",
            r.suite,
            r.mirror,
            r.all_packages().join(" ")
        ));
        readable_dir(&store.dir().join(&arch))?;
        let mut installed = Vec::new();
        let dir = store.publish_dir(&arch, &version, |tmp| -> Result<(), EnvError> {
            readable_dir(tmp)?;
            let root = tmp.join("root");
            mmdebstrap(&r, &arch, &root, log)?;
            remove_secrets(&root)?;
            installed = installed_packages(&root);
            let m = Manifest {
                arch: arch.clone(),
                suite: r.suite.clone(),
                mirror: r.mirror.clone(),
                asked: r.packages.clone(),
                installed: installed.clone(),
            };
            let path = tmp.join("manifest.json");
            let text = serde_json::to_vec_pretty(&m).unwrap_or_default();
            std::fs::write(&path, text).map_err(io(&path))
        })?;
        let slurmd = installed
            .iter()
            .find_map(|l| l.strip_prefix("slurmd "))
            .unwrap_or("?")
            .to_string();
        out.push(Built {
            arch,
            version,
            dir,
            packages: installed.len(),
            slurmd,
            head_slurmctld: head_package_version("slurmctld"),
        });
    }
    Ok(out)
}

/// mmdebstrap's command line: the essential variant plus the recipe's packages, without
/// documentation (a node reads it over the network; nobody reads man pages in a job).
pub fn mmdebstrap_args(r: &EnvRecipe, arch: &str, root: &Path) -> Vec<String> {
    let mut a = vec![
        "--variant=essential".to_string(),
        format!("--architectures={arch}"),
        format!("--include={}", r.all_packages().join(",")),
        "--aptopt=Acquire::Retries \"3\"".into(),
    ];
    for p in [
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
    ] {
        a.push(format!("--dpkgopt={p}"));
    }
    a.push(r.suite.clone());
    a.push(root.display().to_string());
    a.push(r.mirror.clone());
    a
}

fn mmdebstrap(
    r: &EnvRecipe,
    arch: &str,
    root: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(), EnvError> {
    let out = Command::new("mmdebstrap")
        .args(mmdebstrap_args(r, arch, root))
        .output()
        .map_err(EnvError::NoMmdebstrap)?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let lines: Vec<&str> = err.lines().collect();
        return Err(EnvError::Mmdebstrap {
            arch: arch.into(),
            status: out.status,
            tail: lines[lines.len().saturating_sub(15)..].join("\n"),
        });
    }
    if let Some(last) = err.lines().last() {
        log(&format!("env {arch}: {last}"));
    }
    Ok(())
}

fn remove_secrets(root: &Path) -> Result<(), EnvError> {
    for f in SECRETS {
        let p = root.join(f);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Ok(())
}

/// `name version` of each package installed in a root (from its dpkg database).
fn installed_packages(root: &Path) -> Vec<String> {
    let out = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Package} ${Version}\\n"])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// A package's version on the head, if it is installed.
fn head_package_version(name: &str) -> Option<String> {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", name])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !v.is_empty()).then_some(v)
}

/// A folder nodes walk through as nobody (the export squashes root): made 0755.
fn readable_dir(dir: &Path) -> Result<(), EnvError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io(dir))
}

/// The root folder of the current version of `arch`'s environment, and that version.
pub fn current(store: &ImageStore, arch: &str) -> Option<(PathBuf, String)> {
    let version = store.current(arch).ok()?;
    let root = store.file(arch, &version, "root").ok()?;
    root.is_dir().then_some((root, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmdebstrap_gets_the_arch_the_packages_and_no_documentation() {
        let r: EnvRecipe =
            serde_norway::from_str("architectures: [i386]\npackages: [python3-minimal]\n").unwrap();
        let a = mmdebstrap_args(&r, "i386", Path::new("/e/i386/.v.tmp/root"));
        assert_eq!(a[0], "--variant=essential");
        assert_eq!(a[1], "--architectures=i386");
        assert_eq!(a[2], "--include=python3-minimal,slurmd,munge,iptables");
        assert!(a.contains(&"--dpkgopt=path-exclude=/usr/share/man/*".to_string()));
        assert_eq!(
            a[a.len() - 3..],
            [
                "bookworm",
                "/e/i386/.v.tmp/root",
                "http://deb.debian.org/debian"
            ]
        );
    }

    #[test]
    fn secrets_are_removed_and_the_rest_stays() {
        let d = std::env::temp_dir().join(format!("enlist-env-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("etc/munge")).unwrap();
        for f in ["etc/shadow", "etc/munge/munge.key", "etc/passwd"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        remove_secrets(&d).unwrap();
        assert!(!d.join("etc/shadow").exists());
        assert!(!d.join("etc/munge/munge.key").exists());
        assert!(d.join("etc/passwd").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
