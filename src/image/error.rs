//! What can go wrong building an image (and its jobs runtime bundle).

use std::path::{Path, PathBuf};

use super::deb::DebError;
use super::recipe::RecipeError;
use super::store::ImageStoreError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Store(#[from] ImageStoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no package matching {pattern:?} in {dir} (run `cargo xtask node fetch`)")]
    NoPackage { pattern: String, dir: PathBuf },
    #[error("cannot download the package for {pattern:?}: {why}")]
    Download { pattern: String, why: String },
    #[error("{count} packages match {pattern:?} in {dir}; keep one")]
    ManyPackages {
        pattern: String,
        dir: PathBuf,
        count: usize,
    },
    #[error("{deb}: no {what} found")]
    Missing { deb: PathBuf, what: String },
    #[error("module {module:?} (needed by {needed_by}) is not in {deb}")]
    NoModule {
        module: String,
        needed_by: String,
        deb: PathBuf,
    },
    #[error("{kernel}: a kernel image with its drivers built in has no modules; the recipe lists {modules:?}")]
    ModulesWithoutPackage {
        kernel: PathBuf,
        modules: Vec<String>,
    },
    #[error("{path}: a kernel image's file name must be vmlinuz-<release>")]
    KernelName { path: PathBuf },
    #[error("{path}: the agent binary is missing (run `cargo xtask node agent`)")]
    NoAgent { path: PathBuf },
    #[error("image is {size} bytes, over the recipe's max_bytes {max}")]
    TooBig { size: u64, max: u64 },
    #[error("compressing the initrd: {0}")]
    Compress(std::io::Error),
    #[error("jobs runtime: no file in its packages matches {pattern:?} (jobs.files)")]
    BundleFile { pattern: String },
    #[error("jobs runtime: {needed_by} needs {library}, which none of jobs.packages has: add its package (and fetch it with `cargo xtask node fetch`)")]
    BundleLibrary { library: String, needed_by: String },
    #[error("jobs runtime: mksquashfs: {detail}")]
    Squashfs { detail: String },
    #[error("writing the manifest: {0}")]
    Manifest(serde_json::Error),
    #[error(transparent)]
    AliasTable(#[from] super::alias_table::AliasLineError),
}

/// An I/O error at `path`, as a [`BuildError`].
pub fn io_at(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}
