//! The iPXE script a node gets: boot the node OS, boot the local disk (released), or not
//! enlisted. One place, served over HTTP (`/boot/<mac>.ipxe`) and over TFTP
//! (`boot/<mac>.ipxe`, for the cards in `images.tftp_nics`, which then use no TCP at all).

use std::net::Ipv4Addr;

use crate::dhcp::boot::script_url;
use crate::image::store::ImageStore;
use crate::registry::{BootDecision, Registry, RegistryError};

/// The script for node `mac` (any notation the registry accepts), asking from `ip`. `method`
/// (`pxe`, `floppy`, `usb`) goes on the kernel line for the agent to report. Blocking: the
/// boot decision may write to the database.
pub fn render(
    reg: &Registry,
    images: &ImageStore,
    mac: &str,
    ip: Option<Ipv4Addr>,
    method: &str,
) -> Result<String, RegistryError> {
    let cfg = reg.config();
    let base = cfg.http.public_url.trim_end_matches('/');
    let tftp = tftp_base(base);
    let busids: Vec<String> = cfg
        .images
        .tftp_nics
        .iter()
        .filter_map(|id| crate::config::pci_busid(id))
        .collect();
    let decision = reg.boot_decision(mac, ip)?;
    Ok(match decision {
        BootDecision::LocalDisk => local_disk_script(),
        BootDecision::NotEnlisted => not_enlisted_script(mac),
        BootDecision::Boot { name, image } => {
            let efi_image = cfg.images.efi_x64.clone().unwrap_or_else(|| image.clone());
            let with_cmdline = |name: &str| {
                let version = images.current(name)?;
                let cmdline = images.cmdline(name, &version)?;
                Ok::<_, crate::image::store::ImageStoreError>((version, cmdline))
            };
            match (with_cmdline(&image), with_cmdline(&efi_image)) {
                (Ok((bios_ver, bios_cmdline)), Ok((efi_ver, efi_cmdline))) => {
                    let p = ScriptParams {
                        base,
                        mac,
                        name: &name,
                        method,
                        cmdline: &cfg.images.cmdline,
                        tftp_base: &tftp,
                        tftp_busids: &busids,
                    };
                    node_script(
                        &p,
                        &ScriptImage {
                            name: &image,
                            version: &bios_ver,
                            cmdline: &bios_cmdline,
                        },
                        &ScriptImage {
                            name: &efi_image,
                            version: &efi_ver,
                            cmdline: &efi_cmdline,
                        },
                    )
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(%mac, "boot script: no image to boot: {e}");
                    retry_script(
                        &format!("no image published on the head ({e})"),
                        &rechain(base, &tftp, mac, &busids),
                    )
                }
            }
        }
    })
}

/// The TFTP name of a node's script (relative to the TFTP root).
pub fn tftp_path(mac: &str) -> String {
    format!("boot/{}.ipxe", mac.replace(':', "-"))
}

/// The MAC in a TFTP script name (`boot/52-54-00-77-01-01.ipxe`), if it is one.
pub fn mac_of_tftp_path(path: &str) -> Option<String> {
    let name = path.trim_start_matches('/').strip_prefix("boot/")?;
    let mac = name.strip_suffix(".ipxe").filter(|m| !m.contains('/'))?;
    enlist_api::normalize_mac(mac)
}

pub struct ScriptParams<'a> {
    pub base: &'a str,
    pub mac: &'a str,
    pub name: &'a str,
    /// `pxe`, `floppy` or `usb`: reported by the agent.
    pub method: &'a str,
    /// The head's `images.cmdline`, after the image's own options.
    pub cmdline: &'a str,
    /// `tftp://<head>`: where cards listed in `tftp_busids` fetch kernel and initrd.
    pub tftp_base: &'a str,
    /// iPXE `busid` values of cards that use TFTP (see `images.tftp_nics`).
    pub tftp_busids: &'a [String],
}

/// One published image version, as a script names it.
pub struct ScriptImage<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// The kernel options from the image's manifest.
    pub cmdline: &'a str,
}

/// The iPXE script that boots a node: the default image on BIOS, the `efi_x64` one on UEFI.
pub fn node_script(p: &ScriptParams, bios: &ScriptImage, efi: &ScriptImage) -> String {
    let mac_path = p.mac.replace(':', "-");
    let section = |label: &str, files: &str, img: &ScriptImage| {
        let cmdline = [img.cmdline, p.cmdline]
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            ":{label}\n\
             echo enlist: {name} boots {image} {version} from {files}\n\
             kernel {files}/images/{image}/{version}/vmlinuz initrd=initrd enlist.head={base} enlist.node={name} enlist.boot={method} BOOTIF=01-${{netX/mac:hexhyp}} {cmdline} || goto failed\n\
             initrd --name initrd {files}/boot/{mac_path}/{image}/{version}/initrd || goto failed\n\
             boot || goto failed\n",
            name = p.name,
            method = p.method,
            base = p.base,
            image = img.name,
            version = img.version,
        )
    };
    let tftp_checks = goto_if_tftp_card(p.tftp_busids, "bios_tftp");
    format!(
        "#!ipxe\n\
         echo enlist: network card ${{netX/busid}} (${{netX/chip}})\n\
         iseq ${{platform}} efi && goto efi ||\n\
         {tftp_checks}\
         goto bios\n\
         {}{}{}\
         :failed\n\
         echo enlist: boot failed; retrying in 10 s\n\
         sleep 10\n\
         {}",
        section("bios", p.base, bios),
        section("bios_tftp", p.tftp_base, bios),
        section("efi", p.base, efi),
        rechain(p.base, p.tftp_base, p.mac, p.tftp_busids),
    )
}

/// Fetch the node's script again, the way it came: by TFTP on the cards in `busids`, else
/// by HTTP. Ends the script; a failure goes to `:failed` if the script has one.
fn rechain(http_base: &str, tftp_base: &str, mac: &str, busids: &[String]) -> String {
    let checks = goto_if_tftp_card(busids, "rechain_tftp");
    format!(
        "{checks}chain --autofree {} || goto failed\n\
         :rechain_tftp\n\
         chain --autofree {tftp_base}/{} || goto failed\n",
        script_url(http_base, mac),
        tftp_path(mac),
    )
}

/// Script lines that jump to `label` when the booting card is one of `busids` (the cards in
/// `images.tftp_nics`, which must not use TCP).
fn goto_if_tftp_card(busids: &[String], label: &str) -> String {
    busids
        .iter()
        .map(|b| format!("iseq ${{netX/busid}} {b} && goto {label} ||\n"))
        .collect()
}

/// `http://10.77.0.1:8080` -> `tftp://10.77.0.1`.
fn tftp_base(http_base: &str) -> String {
    let host = http_base
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    format!("tftp://{host}")
}

fn local_disk_script() -> String {
    "#!ipxe\n\
     echo enlist: this PC is released; booting from its own disk\n\
     iseq ${platform} efi && exit ||\n\
     sanboot --no-describe --drive 0x80 || exit\n"
        .into()
}

fn not_enlisted_script(mac: &str) -> String {
    format!(
        "#!ipxe\n\
         echo enlist: {mac} is not enlisted here (enrollment policy); booting from its own disk\n\
         sleep 5\n\
         exit\n"
    )
}

/// Wait, then fetch the script again (`rechain`, which jumps to `:failed` on error: here
/// that is the same wait again).
fn retry_script(why: &str, rechain: &str) -> String {
    format!(
        "#!ipxe\n\
         :failed\n\
         echo enlist: {why}; retrying in 30 s\n\
         sleep 30\n\
         {rechain}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_kernel_initrd_and_cmdline() {
        let p = ScriptParams {
            base: "http://10.77.0.1:8080",
            mac: "52:54:00:77:00:10",
            name: "lab-pc-10",
            method: "pxe",
            cmdline: "console=ttyS0",
            tftp_base: "tftp://10.77.0.1",
            tftp_busids: &["01:80:86:12:29".to_string()],
        };
        let bios = ScriptImage {
            name: "i586",
            version: "v1",
            cmdline: "cryptomgr.notests",
        };
        let efi = ScriptImage {
            name: "x86_64",
            version: "v2",
            cmdline: "",
        };
        let s = node_script(&p, &bios, &efi);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.77.0.1:8080/images/i586/v1/vmlinuz initrd=initrd enlist.head=http://10.77.0.1:8080 enlist.node=lab-pc-10 enlist.boot=pxe BOOTIF=01-${netX/mac:hexhyp} cryptomgr.notests console=ttyS0 || goto failed"));
        assert!(
            s.contains("BOOTIF=01-${netX/mac:hexhyp} console=ttyS0 || goto failed"),
            "no stray space without image options: {s}"
        );
        assert!(s.contains(
            "initrd --name initrd http://10.77.0.1:8080/boot/52-54-00-77-00-10/i586/v1/initrd"
        ));
        assert!(s.contains("/images/x86_64/v2/vmlinuz"));
        assert!(s.contains(
            "chain --autofree http://10.77.0.1:8080/boot/52-54-00-77-00-10.ipxe || goto failed"
        ));
        assert!(
            s.contains("iseq ${netX/busid} 01:80:86:12:29 && goto rechain_tftp ||\n")
                && s.contains(
                    "chain --autofree tftp://10.77.0.1/boot/52-54-00-77-00-10.ipxe || goto failed"
                ),
            "a TFTP-only card fetches the script again by TFTP: {s}"
        );
        assert!(s.contains("iseq ${netX/busid} 01:80:86:12:29 && goto bios_tftp ||"));
        assert!(s.contains("kernel tftp://10.77.0.1/images/i586/v1/vmlinuz"));
        assert!(s.contains(
            "initrd --name initrd tftp://10.77.0.1/boot/52-54-00-77-00-10/i586/v1/initrd"
        ));
        assert_eq!(tftp_base("http://10.77.0.1:8080/"), "tftp://10.77.0.1");
    }

    #[test]
    fn tftp_script_names_round_trip() {
        assert_eq!(
            tftp_path("52:54:00:77:01:01"),
            "boot/52-54-00-77-01-01.ipxe"
        );
        assert_eq!(
            mac_of_tftp_path("boot/52-54-00-77-01-01.ipxe").as_deref(),
            Some("52:54:00:77:01:01")
        );
        assert_eq!(
            mac_of_tftp_path("/boot/52-54-00-77-01-01.ipxe").as_deref(),
            Some("52:54:00:77:01:01")
        );
        assert_eq!(mac_of_tftp_path("boot/x/52-54-00-77-01-01.ipxe"), None);
        assert_eq!(mac_of_tftp_path("boot/nonsense.ipxe"), None);
        assert_eq!(mac_of_tftp_path("images/i586/v1/vmlinuz"), None);
    }
}
