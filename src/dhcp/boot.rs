//! Which file a network-booting client gets, from what it says it is.
//!
//! The chain is always the same: a PXE ROM gets iPXE by TFTP; iPXE gets the HTTP URL of its
//! node's boot script (or, on a card listed in `images.tftp_nics`, its TFTP name); the script
//! (see `crate::bootscript`) decides what that node boots, including "boot from the local disk"
//! for released nodes. Keeping every per-node decision in the script means DHCP, TFTP and the
//! floppy all lead to one place.

use crate::bootpath::{script_url, BootPath};
use crate::config::{BootFiles, PciId};

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

/// `tftp_nics`: `vendor:device` ids of cards that must not use TCP (`images.tftp_nics`); iPXE
/// on such a card gets its script by TFTP, as it gets everything else.
pub fn select(
    client: &ClientInfo,
    files: &BootFiles,
    http_base: &str,
    tftp_nics: &[PciId],
) -> BootTarget {
    if client.ipxe {
        let tftp_only = client.busid.is_some_and(|b| tftp_nics.contains(&b));
        return if tftp_only {
            BootTarget::Tftp(BootPath::Script(client.mac).to_string())
        } else {
            BootTarget::Http(script_url(http_base, client.mac))
        };
    }
    match client.firmware {
        Firmware::Bios => BootTarget::Tftp(files.bios.clone()),
        Firmware::EfiX64 => BootTarget::Tftp(files.efi_x64.clone()),
        Firmware::EfiHttp => BootTarget::Http(crate::bootpath::http_url(
            http_base,
            &BootPath::Ipxe(files.efi_x64.clone()),
        )),
        Firmware::Other(_) | Firmware::None => BootTarget::None,
    }
}
