//! Boot disks for PCs without (usable) PXE: a 1.44 MB floppy and a hybrid ISO for CD/USB.
//!
//! Both hold SYSLINUX and Debian's all-drivers `ipxe.lkrn`. iPXE runs its kernel command line
//! as commands, so the disk's whole program is one `APPEND` line (see `boot-floppy/README.md`):
//! get an address, chain to the head's script for this MAC, and on failure say what failed and
//! try again; after a while, reboot (the BIOS boots the floppy again, so it never gives up).
//!
//! The FAT12 file system and boot sector come from Debian's `mkfs.fat`, `syslinux` and `mtools`
//! rather than hand-written code: they are what the original floppies were made with.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const FLOPPY_BYTES: u64 = 1_474_560;
/// Tries before rebooting (each waits 10 s after a failure).
const TRIES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BootDiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{tool}` failed: {detail} (Debian packages: syslinux syslinux-common isolinux mtools dosfstools xorriso)")]
    Tool { tool: String, detail: String },
    #[error("--head {0:?} must be an http:// URL without spaces")]
    BadHead(String),
    #[error("{0} is missing (Debian package `ipxe`)")]
    NoIpxe(PathBuf),
}

/// The iPXE commands the disk runs. With `head`, the head's URL is on the disk; without it,
/// iPXE's `autoboot` takes the boot script URL from DHCP or proxyDHCP.
pub fn ipxe_commands(head: Option<&str>) -> Result<String, BootDiskError> {
    let attempt = match head {
        Some(h) => {
            if !h.starts_with("http://") || h.contains(char::is_whitespace) {
                return Err(BootDiskError::BadHead(h.into()));
            }
            let url = crate::bootpath::script_url_template(h, "${net0/mac:hexhyp}", "floppy");
            format!(
                "dhcp net0 && chain --autofree {url} || echo enlist: no DHCP answer on net0, or head not reachable at {} - retrying in 10 s && sleep 10",
                h.trim_end_matches('/')
            )
        }
        None => "autoboot net0 || echo enlist: no DHCP answer on net0, or no head answered - retrying in 10 s && sleep 10".into(),
    };
    let mut line = String::from(
        "echo enlist boot disk: starting the network && isset ${net0/mac} || echo enlist: no network card found - check the card and cable && ",
    );
    for _ in 0..TRIES {
        line.push_str(&attempt);
        line.push_str(" && ");
    }
    line.push_str("echo enlist: still no luck - restarting && reboot");
    Ok(line)
}

pub fn syslinux_cfg(head: Option<&str>) -> Result<String, BootDiskError> {
    Ok(format!(
        "# enlist boot disk: SYSLINUX starts iPXE; iPXE runs the APPEND line as commands.\n\
         DEFAULT enlist\nPROMPT 0\nTIMEOUT 0\n\
         SAY enlist boot disk: loading iPXE...\n\
         LABEL enlist\n  KERNEL ipxe.lkrn\n  APPEND {}\n",
        ipxe_commands(head)?
    ))
}

fn tool(cmd: &mut Command) -> Result<(), BootDiskError> {
    let name = cmd.get_program().to_string_lossy().to_string();
    let out = cmd.output().map_err(|e| BootDiskError::Tool {
        tool: name.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(BootDiskError::Tool {
            tool: name,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BootDiskError + '_ {
    move |source| BootDiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a 1.44 MB FAT12 floppy image to `out`.
pub fn write_floppy(out: &Path, ipxe_dir: &Path, head: Option<&str>) -> Result<(), BootDiskError> {
    let lkrn = ipxe_dir.join("ipxe.lkrn");
    if !lkrn.exists() {
        return Err(BootDiskError::NoIpxe(lkrn));
    }
    let cfg = syslinux_cfg(head)?;
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    tool(
        Command::new("mkfs.fat")
            .args(["-C", "-n", "ENLIST"])
            .arg(&tmp)
            .arg("1440"),
    )?;
    tool(Command::new("syslinux").arg("--install").arg(&tmp))?;
    let cfg_path = tmp.with_extension("cfg");
    std::fs::write(&cfg_path, cfg).map_err(io(&cfg_path))?;
    let img = format!("{}", tmp.display());
    tool(
        Command::new("mcopy")
            .args(["-i", &img])
            .arg(&lkrn)
            .arg("::ipxe.lkrn"),
    )?;
    tool(
        Command::new("mcopy")
            .args(["-i", &img])
            .arg(&cfg_path)
            .arg("::syslinux.cfg"),
    )?;
    let _ = std::fs::remove_file(&cfg_path);
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(())
}

/// Write a hybrid ISO (CD, or `dd` to a USB stick) with the same content.
pub fn write_iso(out: &Path, ipxe_dir: &Path, head: Option<&str>) -> Result<(), BootDiskError> {
    let lkrn = ipxe_dir.join("ipxe.lkrn");
    if !lkrn.exists() {
        return Err(BootDiskError::NoIpxe(lkrn));
    }
    let dir = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&dir);
    let boot = dir.join("isolinux");
    std::fs::create_dir_all(&boot).map_err(io(&boot))?;
    let copy = |from: &str, to: &str| {
        std::fs::copy(from, boot.join(to))
            .map(|_| ())
            .map_err(io(Path::new(from)))
    };
    copy("/usr/lib/ISOLINUX/isolinux.bin", "isolinux.bin")?;
    copy("/usr/lib/syslinux/modules/bios/ldlinux.c32", "ldlinux.c32")?;
    std::fs::copy(&lkrn, boot.join("ipxe.lkrn")).map_err(io(&lkrn))?;
    let cfg = boot.join("isolinux.cfg");
    std::fs::write(&cfg, syslinux_cfg(head)?).map_err(io(&cfg))?;
    tool(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(out)
            .args([
                "-isohybrid-mbr",
                "/usr/lib/ISOLINUX/isohdpfx.bin",
                "-c",
                "isolinux/boot.cat",
                "-b",
                "isolinux/isolinux.bin",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "-V",
                "ENLIST",
            ])
            .arg(&dir),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floppy_commands_chain_to_the_heads_script_and_retry() {
        let c = ipxe_commands(Some("http://10.77.0.1:8080/")).unwrap();
        assert!(c.contains(
            "chain --autofree http://10.77.0.1:8080/boot/${net0/mac:hexhyp}.ipxe?via=floppy"
        ));
        assert_eq!(c.matches("dhcp net0").count(), TRIES);
        assert!(c.contains("no network card found"));
        assert!(c.ends_with("reboot"));
        assert!(ipxe_commands(Some("ftp://x")).is_err());
        assert!(ipxe_commands(None).unwrap().contains("autoboot net0"));
        // SYSLINUX reads one line per directive: the command line must not break.
        assert!(!syslinux_cfg(None)
            .unwrap()
            .lines()
            .any(|l| l.contains("APPEND") && l.len() > 4000));
    }
}
