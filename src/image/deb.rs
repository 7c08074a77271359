//! Reading Debian packages without dpkg: an `ar` archive whose `data.tar.{xz,zst,gz}` member
//! holds the files.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no data.tar member (not a Debian package?)")]
    NoData { path: PathBuf },
    #[error("{path}: unsupported data member {member}")]
    Compression { path: PathBuf, member: String },
}

/// Call `visit(path, size, reader)` for every regular file and symlink in the package's data.
/// Paths have their leading `./` removed. `visit` returns `false` to stop early.
pub fn for_each_file(
    deb: &Path,
    mut visit: impl FnMut(&str, Entry<'_>) -> std::io::Result<bool>,
) -> Result<(), DebError> {
    let io = |source| DebError::Io {
        path: deb.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(deb).map_err(io)?;
    let mut ar = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(member) = ar.next_entry() {
        let member = member.map_err(io)?;
        let name = String::from_utf8_lossy(member.header().identifier()).to_string();
        if !name.starts_with("data.tar") {
            continue;
        }
        let reader: Box<dyn Read + '_> = match name.as_str() {
            "data.tar.xz" => Box::new(liblzma::read::XzDecoder::new(member)),
            "data.tar.zst" => Box::new(zstd::stream::read::Decoder::new(member).map_err(io)?),
            "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(member)),
            "data.tar" => Box::new(member),
            _ => {
                return Err(DebError::Compression {
                    path: deb.to_path_buf(),
                    member: name,
                })
            }
        };
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            let path = entry.path().map_err(io)?.to_string_lossy().to_string();
            let path = path.trim_start_matches("./").to_string();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
            let e = if kind.is_file() {
                Entry::File {
                    data: &mut entry,
                    mode,
                }
            } else if kind.is_symlink() {
                let target = entry
                    .link_name()
                    .map_err(io)?
                    .map(|p| p.to_string_lossy().to_string())
                    .unwrap_or_default();
                Entry::Symlink(target)
            } else {
                continue;
            };
            if !visit(&path, e).map_err(io)? {
                return Ok(());
            }
        }
        return Ok(());
    }
    Err(DebError::NoData {
        path: deb.to_path_buf(),
    })
}

pub enum Entry<'a> {
    /// A regular file: its contents and permission bits.
    File {
        data: &'a mut dyn Read,
        mode: u32,
    },
    Symlink(String),
}
