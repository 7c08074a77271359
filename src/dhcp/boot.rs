//! Which file a network-booting client gets, from what it says it is.
//!
//! The chain is always the same: a PXE ROM gets iPXE by TFTP; iPXE gets the HTTP URL of its
//! node's boot script (or, on a card listed in `images.tftp_nics`, its TFTP name); the script
//! (see `crate::bootscript`) decides what that node boots, including "boot from the local disk"
//! for released nodes. Keeping every per-node decision in the script means DHCP, TFTP and the
//! floppy all lead to one place.

use crate::config::BootFiles;

use super::client::{ClientInfo, Firmware};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTarget {
    /// A file name for the TFTP server (siaddr = this head).
    Tftp(String),
    /// A URL: for iPXE and for UEFI HTTP boot.
    Http(String),
    /// Not a boot client, or an architecture we have nothing for.
    None,
}

/// URL of a node's iPXE script, keyed by MAC so one head serves every node.
pub fn script_url(http_base: &str, mac: &str) -> String {
    format!(
        "{}/boot/{}.ipxe",
        http_base.trim_end_matches('/'),
        mac.replace(':', "-")
    )
}

/// `tftp_nics`: `vendor:device` ids of cards that must not use TCP (`images.tftp_nics`); iPXE
/// on such a card gets its script by TFTP, as it gets everything else.
pub fn select(
    client: &ClientInfo,
    files: &BootFiles,
    http_base: &str,
    tftp_nics: &[String],
) -> BootTarget {
    if client.ipxe {
        let tftp_only = client
            .busid
            .as_deref()
            .is_some_and(|b| tftp_nics.iter().any(|n| n.eq_ignore_ascii_case(b)));
        return if tftp_only {
            BootTarget::Tftp(crate::bootscript::tftp_path(&client.mac))
        } else {
            BootTarget::Http(script_url(http_base, &client.mac))
        };
    }
    match client.firmware {
        Firmware::Bios => BootTarget::Tftp(files.bios.clone()),
        Firmware::EfiX64 => BootTarget::Tftp(files.efi_x64.clone()),
        Firmware::EfiHttp => BootTarget::Http(format!(
            "{}/ipxe/{}",
            http_base.trim_end_matches('/'),
            files.efi_x64
        )),
        Firmware::Other(_) | Firmware::None => BootTarget::None,
    }
}
