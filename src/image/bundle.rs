//! The jobs' runtime bundle built beside a node image: slurmd, slurmstepd, munged, the Slurm
//! plugins the recipe names, and exactly the libraries and loader they need, taken from Debian
//! packages of the image's architecture and packed as a squashfs. A node that joins the
//! scheduler downloads it, checks its sha256 and mounts it read-only through a loop device, so
//! it stays compressed in RAM and costs the node nothing when jobs are off.
//!
//! Choosing the files is pure ([`select`]); packing runs `mksquashfs` (squashfs-tools).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::deb::{self, Entry};
use super::error::{io_at, BuildError};
use super::packages::find_package;
use super::recipe::{matches, JobsRuntime};

/// One file of the packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// The packages' files by path (no leading `/`).
pub type Tree = BTreeMap<String, Node>;

/// The packed bundle and what is in it.
pub struct Bundle {
    pub squashfs: Vec<u8>,
    pub files: Vec<String>,
    pub packages: Vec<PathBuf>,
}

/// Documentation, manuals and translations: never needed by a daemon, and most of the bytes.
fn skipped(path: &str) -> bool {
    path.starts_with("usr/share/") || path.starts_with("etc/")
}

/// Read the packages the recipe names into one tree.
fn read_packages(dir: &Path, spec: &JobsRuntime) -> Result<(Tree, Vec<PathBuf>), BuildError> {
    let mut tree = Tree::new();
    let mut debs = Vec::new();
    for pattern in &spec.packages {
        let deb_path = find_package(dir, pattern)?;
        deb::for_each_file(&deb_path, |path, entry| {
            if skipped(path) {
                return Ok(true);
            }
            let node = match entry {
                Entry::File { data, mode } => {
                    let mut b = Vec::new();
                    data.read_to_end(&mut b)?;
                    Node::File { data: b, mode }
                }
                Entry::Symlink(target) => Node::Symlink(target),
            };
            tree.insert(path.to_string(), node);
            Ok(true)
        })?;
        debs.push(deb_path);
    }
    for (path, target) in &spec.links {
        tree.insert(
            path.trim_start_matches('/').to_string(),
            Node::Symlink(target.clone()),
        );
    }
    Ok((tree, debs))
}

/// `target` of a symlink at `link`, as a path in the tree; None if it leaves the tree.
fn resolve_link(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        vec![]
    } else {
        link.split('/').collect::<Vec<_>>()[..link.matches('/').count()].to_vec()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Folders the loader searches, best first (Debian's multiarch ones before the plain ones).
fn library_rank(path: &str) -> Option<usize> {
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    let depth = dir.matches('/').count();
    if dir.starts_with("lib/") || dir == "lib" {
        Some(depth)
    } else if dir.starts_with("usr/lib/") || dir == "usr/lib" {
        Some(depth + 1)
    } else {
        None
    }
}

/// Where a library by this soname is in the tree: the match in the loader's own folders, the
/// shallowest first (a plugin folder's copy only when there is no other).
fn find_library<'a>(by_name: &HashMap<&str, Vec<&'a str>>, soname: &str) -> Option<&'a str> {
    by_name
        .get(soname)?
        .iter()
        .filter_map(|p| library_rank(p).map(|r| (r, *p)))
        .min()
        .map(|(_, p)| p)
}

/// The files to pack: those the patterns name, what their symlinks point to, and the loader and
/// libraries every ELF file among them needs, transitively.
pub fn select(tree: &Tree, patterns: &[String]) -> Result<BTreeSet<String>, BuildError> {
    let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in tree.keys() {
        let base = p.rsplit('/').next().unwrap_or(p);
        by_name.entry(base).or_default().push(p);
    }
    let mut work: Vec<(String, String)> = Vec::new();
    for pattern in patterns {
        let found: Vec<&String> = tree.keys().filter(|p| matches(pattern, p)).collect();
        if found.is_empty() {
            return Err(BuildError::BundleFile {
                pattern: pattern.clone(),
            });
        }
        work.extend(
            found
                .into_iter()
                .map(|p| (p.clone(), "the recipe".to_string())),
        );
    }
    let mut chosen = BTreeSet::new();
    while let Some((path, wanted_by)) = work.pop() {
        if chosen.contains(&path) {
            continue;
        }
        let node = tree.get(&path).ok_or_else(|| BuildError::BundleLibrary {
            library: path.clone(),
            needed_by: wanted_by.clone(),
        })?;
        chosen.insert(path.clone());
        match node {
            Node::Symlink(target) => {
                if let Some(t) = resolve_link(&path, target) {
                    work.push((t, path.clone()));
                }
            }
            Node::File { data, .. } => {
                let n = super::elf::needs(data);
                if let Some(interp) = n.interp {
                    work.push((interp.trim_start_matches('/').to_string(), path.clone()));
                }
                for lib in n.libraries {
                    let found =
                        find_library(&by_name, &lib).ok_or_else(|| BuildError::BundleLibrary {
                            library: lib.clone(),
                            needed_by: path.clone(),
                        })?;
                    work.push((found.to_string(), path.clone()));
                }
            }
        }
    }
    Ok(chosen)
}

/// Build the bundle of `spec` from the packages in `dir`.
pub fn build(
    dir: &Path,
    spec: &JobsRuntime,
    log: &mut dyn FnMut(&str),
) -> Result<Bundle, BuildError> {
    let (tree, packages) = read_packages(dir, spec)?;
    let chosen = select(&tree, &spec.files)?;
    let bytes: usize = chosen
        .iter()
        .filter_map(|p| match tree.get(p) {
            Some(Node::File { data, .. }) => Some(data.len()),
            _ => None,
        })
        .sum();
    log(&format!(
        "jobs runtime    {} files from {} packages, {:.1} MiB before compression",
        chosen.len(),
        packages.len(),
        bytes as f64 / 1048576.0
    ));
    let squashfs = pack(&tree, &chosen)?;
    Ok(Bundle {
        squashfs,
        files: chosen.into_iter().collect(),
        packages,
    })
}

/// Write the chosen files to a folder and pack it: xz with the x86 filter (smallest for
/// programs), owned by root, fixed times (the same inputs give the same bytes).
fn pack(tree: &Tree, chosen: &BTreeSet<String>) -> Result<Vec<u8>, BuildError> {
    let tmp = tempdir()?;
    let root = tmp.path().join("root");
    for path in chosen {
        let dest = root.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        match &tree[path] {
            Node::File { data, mode } => {
                std::fs::write(&dest, data).map_err(io_at(&dest))?;
                let perm = std::os::unix::fs::PermissionsExt::from_mode(*mode);
                std::fs::set_permissions(&dest, perm).map_err(io_at(&dest))?;
            }
            Node::Symlink(target) => {
                std::os::unix::fs::symlink(target, &dest).map_err(io_at(&dest))?;
            }
        }
    }
    let out = tmp.path().join("bundle.sqfs");
    let result = Command::new("mksquashfs")
        .arg(&root)
        .arg(&out)
        .args([
            "-comp",
            "xz",
            "-Xbcj",
            "x86",
            "-noappend",
            "-all-root",
            "-no-xattrs",
        ])
        .args([
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
            "-quiet",
            "-no-progress",
        ])
        .output();
    let failed = |detail: String| BuildError::Squashfs { detail };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(failed(
                "mksquashfs is not installed: apt install squashfs-tools".into(),
            ))
        }
        Err(e) => return Err(failed(e.to_string())),
        Ok(o) if !o.status.success() => {
            return Err(failed(
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ))
        }
        Ok(_) => {}
    }
    std::fs::read(&out).map_err(io_at(&out))
}

/// A scratch folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir, BuildError> {
    let mut name = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut name);
    let dir = std::env::temp_dir().join(format!("enlist-bundle-{}", hex::encode(name)));
    std::fs::create_dir(&dir).map_err(io_at(&dir))?;
    Ok(TempDir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> Node {
        Node::File {
            data: data.to_vec(),
            mode: 0o755,
        }
    }

    #[test]
    fn links_resolve_inside_the_tree_only() {
        assert_eq!(
            resolve_link("usr/lib/x/libz.so.1", "libz.so.1.2.13").as_deref(),
            Some("usr/lib/x/libz.so.1.2.13")
        );
        assert_eq!(
            resolve_link("lib64/ld.so", "/lib/x/ld.so").as_deref(),
            Some("lib/x/ld.so")
        );
        assert_eq!(resolve_link("a/b", "../c").as_deref(), Some("c"));
        assert_eq!(resolve_link("a/b", "../../../etc/passwd"), None);
    }

    #[test]
    fn the_loaders_folders_win_over_a_plugin_folder() {
        let mut by_name = HashMap::new();
        by_name.insert(
            "libx.so.1",
            vec![
                "usr/lib/i386-linux-gnu/slurm-wlm/libx.so.1",
                "usr/lib/i386-linux-gnu/libx.so.1",
            ],
        );
        by_name.insert("libp.so", vec!["usr/lib/i386-linux-gnu/slurm-wlm/libp.so"]);
        by_name.insert("libq.so", vec!["usr/share/doc/libq.so"]);
        assert_eq!(
            find_library(&by_name, "libx.so.1"),
            Some("usr/lib/i386-linux-gnu/libx.so.1")
        );
        assert_eq!(
            find_library(&by_name, "libp.so"),
            Some("usr/lib/i386-linux-gnu/slurm-wlm/libp.so")
        );
        assert_eq!(
            find_library(&by_name, "libq.so"),
            None,
            "not a library folder"
        );
    }

    #[test]
    fn a_missing_pattern_is_named() {
        let mut tree = Tree::new();
        tree.insert("usr/sbin/slurmd".into(), file(b"not elf"));
        let err = select(&tree, &["usr/sbin/munged".into()]).unwrap_err();
        assert!(err.to_string().contains("usr/sbin/munged"), "{err}");
        let ok = select(&tree, &["usr/sbin/slurm*".into()]).unwrap();
        assert_eq!(ok.into_iter().collect::<Vec<_>>(), ["usr/sbin/slurmd"]);
    }

    #[test]
    fn a_real_program_brings_its_libraries_and_loader_and_a_missing_one_is_named() {
        // This test's executable, as if it were a package's program, with the host's libraries.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let needs = super::super::elf::needs(&exe);
        let mut tree = Tree::new();
        tree.insert("usr/sbin/prog".into(), file(&exe));
        let missing = select(&tree, &["usr/sbin/prog".into()]).unwrap_err();
        assert!(missing.to_string().contains("usr/sbin/prog"), "{missing}");
        for lib in &needs.libraries {
            tree.insert(format!("lib/x86_64-linux-gnu/{lib}"), file(b"plain"));
        }
        let interp = needs.interp.clone().unwrap();
        tree.insert("lib/x86_64-linux-gnu/ld.so".into(), file(b"plain"));
        tree.insert(
            interp.trim_start_matches('/').into(),
            Node::Symlink("/lib/x86_64-linux-gnu/ld.so".into()),
        );
        tree.insert("usr/sbin/unrelated".into(), file(b"x"));
        let chosen = select(&tree, &["usr/sbin/prog".into()]).unwrap();
        assert!(
            chosen.contains("lib/x86_64-linux-gnu/ld.so"),
            "the link's target comes along"
        );
        assert!(
            chosen.iter().any(|p| p.ends_with("/libc.so.6")),
            "{chosen:?}"
        );
        assert!(!chosen.contains("usr/sbin/unrelated"));
        assert_eq!(chosen.len(), needs.libraries.len() + 3);
    }
}
