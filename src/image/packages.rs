//! The Debian packages a recipe names, found in its package folder by file pattern.

use std::path::{Path, PathBuf};

use super::error::{io_at, BuildError};
use super::recipe::matches;

pub fn find_package(dir: &Path, pattern: &str) -> Result<PathBuf, BuildError> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let e = e.map_err(io_at(dir))?;
        if let Some(name) = e.file_name().to_str() {
            if matches(pattern, name) {
                found.push(e.path());
            }
        }
    }
    match found.len() {
        0 => Err(BuildError::NoPackage {
            pattern: pattern.into(),
            dir: dir.into(),
        }),
        1 => Ok(found.remove(0)),
        count => Err(BuildError::ManyPackages {
            pattern: pattern.into(),
            dir: dir.into(),
            count,
        }),
    }
}
