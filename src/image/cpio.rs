//! A newc cpio archive in memory, as the kernel unpacks into its initramfs.
//! Entries use the `cpio` crate's newc writer; this adds parent directories on demand and
//! stable inode numbers.

use std::collections::BTreeSet;
use std::io::Write;

use ::cpio::newc::Builder;

pub struct Archive {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    next_ino: u32,
    mtime: u32,
}

impl Archive {
    /// `mtime` is stamped on every entry, so equal inputs give equal archives.
    pub fn new(mtime: u32) -> Archive {
        Archive {
            out: Vec::new(),
            dirs: BTreeSet::new(),
            next_ino: 1,
            mtime,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name}: too large for cpio")))?;
        let mut w = Builder::new(name)
            .ino(ino)
            .mode(mode)
            .nlink(if mode & 0o170000 == 0o040000 { 2 } else { 1 })
            .mtime(self.mtime)
            .write(&mut self.out, size);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                let p = prefix.clone();
                self.entry(&p, 0o040755, &[])?;
            }
        }
        Ok(())
    }

    /// Paths are relative (`bin/busybox`), as in the kernel's initramfs format.
    pub fn dir(&mut self, path: &str) -> std::io::Result<()> {
        let path = path.trim_matches('/');
        self.parents(path)?;
        if self.dirs.insert(path.to_string()) {
            self.entry(path, 0o040755, &[])?;
        }
        Ok(())
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let path = path.trim_matches('/');
        self.parents(path)?;
        self.entry(path, 0o100000 | (mode & 0o7777), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        let path = path.trim_matches('/');
        self.parents(path)?;
        self.entry(path, 0o120777, target.as_bytes())
    }

    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        ::cpio::newc::trailer(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_lists_parents_then_files_and_reads_back() {
        let mut a = Archive::new(0);
        a.file("etc/enlist/node.env", 0o600, b"NAME=x\n").unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        let bytes = a.finish().unwrap();
        let mut names = Vec::new();
        let mut r = std::io::Cursor::new(bytes);
        loop {
            let entry = cpio::NewcReader::new(r).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            names.push((entry.entry().name().to_string(), entry.entry().mode()));
            r = entry.finish().unwrap();
        }
        assert_eq!(
            names,
            vec![
                ("etc".to_string(), 0o040755),
                ("etc/enlist".to_string(), 0o040755),
                ("etc/enlist/node.env".to_string(), 0o100600),
                ("bin".to_string(), 0o040755),
                ("bin/sh".to_string(), 0o120777),
            ]
        );
    }
}
