//! `enlist floppy` and `enlist usb`: boot disks for PCs without (usable) PXE.

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Args)]
pub struct FloppyArgs {
    /// Head URL to chain to (written on the disk). Without it, the head is found by DHCP.
    #[arg(long)]
    pub head: Option<String>,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn floppy(_config: &Path, _a: FloppyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}

pub fn usb(_config: &Path, _a: FloppyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
