//! `enlist floppy` and `enlist usb`: boot disks for PCs without (usable) PXE.

use std::path::{Path, PathBuf};

use clap::Args;
use enlist::bootdisk;

#[derive(Args)]
pub struct FloppyArgs {
    /// Head URL to chain to, written on the disk (e.g. http://10.77.0.1:8080). Without it, the
    /// head is found by DHCP / proxyDHCP.
    #[arg(long)]
    pub head: Option<String>,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// iPXE binaries: from the config if there is one, else Debian's folder.
fn ipxe_dir(config: &Path) -> PathBuf {
    enlist::config::Config::load(config)
        .map(|c| c.tftp.ipxe_dir)
        .unwrap_or_else(|_| PathBuf::from("/usr/lib/ipxe"))
}

pub fn floppy(config: &Path, a: FloppyArgs) -> anyhow::Result<()> {
    bootdisk::write_floppy(&a.output, &ipxe_dir(config), a.head.as_deref())?;
    println!(
        "{}: {} bytes; write it with: dd if={} of=/dev/fd0",
        a.output.display(),
        bootdisk::FLOPPY_BYTES,
        a.output.display()
    );
    Ok(())
}

pub fn usb(config: &Path, a: FloppyArgs) -> anyhow::Result<()> {
    bootdisk::write_iso(&a.output, &ipxe_dir(config), a.head.as_deref())?;
    println!(
        "{}: hybrid ISO; burn it, or write it with: dd if={} of=/dev/sdX bs=1M",
        a.output.display(),
        a.output.display()
    );
    Ok(())
}
