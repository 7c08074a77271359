//! The iPXE script a node gets: boot the node OS, boot the local disk (released), wait (for
//! approval, or a minute), or not enlisted. One place, served by HTTP and TFTP through
//! [`crate::bootfiles::BootFiles`] (TFTP for the cards in `images.tftp_nics`, which then use no
//! TCP at all). [`NodeBoot`] is what gives `BootFiles` its per-node files.

use std::sync::Arc;

use enlist_api::Mac;

use crate::bootfiles::{NodeFiles, Request, ResolveError};
use crate::bootpath::{script_url, BootPath};
use crate::image::store::ImageStore;
use crate::registry::{BootDecision, OverlayError, Registry, RegistryError};

/// The registry's per-node files for [`crate::bootfiles::BootFiles`]: scripts and overlays.
pub struct NodeBoot {
    pub registry: Arc<Registry>,
    pub images: ImageStore,
}

impl NodeFiles for NodeBoot {
    fn script(&self, mac: Mac, req: &Request) -> Result<String, ResolveError> {
        render(&self.registry, &self.images, mac, req).map_err(|e| {
            tracing::error!(%mac, "boot script: {e}");
            ResolveError::Io {
                path: req.path.into(),
                message: "boot script unavailable".into(),
            }
        })
    }

    fn overlay(
        &self,
        mac: Mac,
        token: &str,
        image: (&str, &str),
        req: &Request,
    ) -> Result<Vec<u8>, ResolveError> {
        self.registry
            .overlay(mac, token, req.from, image)
            .map_err(|e| match e {
                OverlayError::Token(_) | OverlayError::UnknownNode(_) => ResolveError::Forbidden {
                    path: req.path.into(),
                    reason: e.reason(),
                },
                OverlayError::Build(_) | OverlayError::Store(_) => {
                    tracing::error!(%mac, "initrd overlay: {e}");
                    ResolveError::Io {
                        path: req.path.into(),
                        message: "node settings unavailable".into(),
                    }
                }
            })
    }
}

/// The script for node `mac` asking with `req`. Blocking: the boot decision may write to
/// the database.
pub fn render(
    reg: &Registry,
    images: &ImageStore,
    mac: Mac,
    req: &Request,
) -> Result<String, RegistryError> {
    let cfg = reg.config();
    let base = cfg.http.public_url.base();
    let tftp = cfg.http.public_url.tftp_base();
    let busids: Vec<String> = cfg
        .images
        .tftp_nics
        .iter()
        .map(|id| id.ipxe_busid())
        .collect();
    let again = rechain(base, &tftp, mac, &busids);
    Ok(match reg.boot_decision(mac, req.from, req.proto)? {
        BootDecision::LocalDisk => local_disk_script(),
        BootDecision::NotEnlisted => not_enlisted_script(mac),
        BootDecision::AwaitingApproval { name } => retry_script(
            &format!("{mac} waits for an admin to approve it (as {name})"),
            &again,
        ),
        BootDecision::Retry(why) => retry_script(&why, &again),
        BootDecision::Refused(reason) => retry_script(
            &format!("this head will not boot {mac} from {} ({reason})", req.from),
            &again,
        ),
        BootDecision::Boot {
            name,
            image,
            image64,
            token,
        } => {
            let (group, kernel_args) = reg
                .node(mac)
                .map(|n| (n.group, n.kernel_args))
                .unwrap_or_default();
            // What the head found this PC needs (an ISA card's IRQ fix), after the site's.
            let cmdline = format!("{} {kernel_args}", cfg.images.cmdline);
            let p = ScriptParams {
                base,
                mac,
                name: &name,
                token: &token,
                method: req.method,
                cmdline: cmdline.trim(),
                tftp_base: &tftp,
                tftp_busids: &busids,
                mirror: cfg.images.mirrors.get(&group).map(|u| u.base()),
            };
            let names = [
                image.as_str(),
                image64.as_str(),
                cfg.images.efi_x64.as_str(),
            ];
            match boot_script(images, &p, names) {
                Ok(script) => script,
                Err(e) => {
                    tracing::warn!(%mac, "boot script: no image to boot: {e}");
                    retry_script(&format!("no image published on the head ({e})"), &again)
                }
            }
        }
    })
}

/// The node script for the current versions of its BIOS, 64-bit BIOS and UEFI images.
fn boot_script(
    images: &ImageStore,
    p: &ScriptParams,
    [bios, bios64, efi]: [&str; 3],
) -> Result<String, crate::image::store::ImageStoreError> {
    let published = |name| -> Result<(String, String), crate::image::store::ImageStoreError> {
        let version = images.current(name)?;
        let cmdline = images.cmdline(name, &version)?;
        Ok((version, cmdline))
    };
    let ((v, c), (v64, c64), (ve, ce)) = (published(bios)?, published(bios64)?, published(efi)?);
    let image = |name, version, cmdline| ScriptImage {
        name,
        version,
        cmdline,
    };
    Ok(node_script(
        p,
        &image(bios, &v, &c),
        &image(bios64, &v64, &c64),
        &image(efi, &ve, &ce),
    ))
}

pub struct ScriptParams<'a> {
    pub base: &'a str,
    pub mac: Mac,
    pub name: &'a str,
    /// This boot's token: the initrd (with the node key) is served only with it.
    pub token: &'a str,
    /// `pxe`, `floppy` or `usb`: reported by the agent.
    pub method: &'a str,
    /// The head's `images.cmdline`, after the image's own options.
    pub cmdline: &'a str,
    /// `tftp://<head>`: where cards listed in `tftp_busids` fetch kernel and initrd.
    pub tftp_base: &'a str,
    /// iPXE `busid` values of cards that use TFTP (see `images.tftp_nics`).
    pub tftp_busids: &'a [String],
    /// The node's group's HTTP cache for image files (`images.mirrors`), if it has one.
    pub mirror: Option<&'a str>,
}

/// One published image version, as a script names it.
pub struct ScriptImage<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// The kernel options from the image's manifest.
    pub cmdline: &'a str,
}

/// A fetch from the head that makes no progress for this long fails, and the script starts
/// over (`:failed`): a stalled connection must not hold a PC at its boot screen for ever.
/// iPXE's `--timeout` is a progress timeout (since iPXE 2014; Debian 12's has it).
const HEAD_STALL_MS: u32 = 60_000;

/// A fetch from a room's mirror that makes no progress for this long falls back to the head.
/// Shorter than the head's: the fallback is always there.
const MIRROR_STALL_MS: u32 = 15_000;

/// Before a script tries again, iPXE closes and reopens its network card. A card with a
/// native iPXE driver (Intel, Realtek, virtio, ...) is reset by that, so a card wedged in a
/// state its driver cannot leave gets a fresh start; iPXE's legacy drivers (NE2000, 3c509,
/// ...) do nothing on close and open, so for those it costs nothing and cures nothing.
/// The IP settings stay; the wait after it lets the link come up.
const RESET_CARD: &str = "ifclose ||\nifopen ||\n";

/// One section of a node's script: `label`, booting `img` from `files` (the head's HTTP or
/// TFTP base), through the group's mirror first where it has one.
fn section(p: &ScriptParams, label: &str, files: &str, img: &ScriptImage) -> String {
    let cmdline = [img.cmdline, p.cmdline]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let kernel = BootPath::ImageFile {
        image: img.name.into(),
        version: img.version.into(),
        file: "vmlinuz".into(),
    };
    let initrd = |overlay| BootPath::NodeInitrd {
        mac: p.mac,
        token: p.token.into(),
        image: img.name.into(),
        version: img.version.into(),
        overlay,
    };
    let args = format!(
        "enlist.head={base} enlist.node={name} enlist.boot={method} BOOTIF=01-${{netX/mac:hexhyp}} {cmdline}",
        name = p.name,
        method = p.method,
        base = p.base,
    );
    let from_head = format!(
        "echo enlist: {name} boots {image} {version} from {files}\n\
         kernel --timeout {HEAD_STALL_MS} {files}/{kernel} initrd=initrd {args} || goto failed\n\
         initrd --name initrd --timeout {HEAD_STALL_MS} {files}/{initrd} || goto failed\n\
         boot || goto failed\n",
        name = p.name,
        image = img.name,
        version = img.version,
        initrd = initrd(false),
    );
    // Through the room's mirror (HTTP sections only): the image's kernel and initrd from
    // the cache, the node's own part from the head; the head's whole initrd if the
    // mirror fails or stalls.
    let Some(mirror) = p.mirror.filter(|_| files == p.base) else {
        return format!(":{label}\n{from_head}");
    };
    let image_initrd = BootPath::ImageFile {
        image: img.name.into(),
        version: img.version.into(),
        file: "initrd".into(),
    };
    format!(
        ":{label}\n\
         echo enlist: {name} boots {image} {version} through the mirror {mirror}\n\
         kernel --timeout {MIRROR_STALL_MS} {mirror}/{kernel} initrd=initrd initrd=overlay {args} || goto {label}_head\n\
         initrd --name initrd --timeout {MIRROR_STALL_MS} {mirror}/{image_initrd} || goto {label}_head\n\
         initrd --name overlay --timeout {HEAD_STALL_MS} {files}/{overlay} || goto failed\n\
         boot || goto failed\n\
         :{label}_head\n\
         imgfree\n\
         {from_head}",
        name = p.name,
        image = img.name,
        version = img.version,
        overlay = initrd(true),
    )
}

/// The iPXE script that boots a node: on BIOS `bios`, or `bios64` when iPXE finds a 64-bit
/// CPU (`cpuid --ext 29`: long mode; Debian's iPXE builds have the command, and where it is
/// missing the test fails and `bios` boots); the `efi_x64` image on UEFI.
pub fn node_script(
    p: &ScriptParams,
    bios: &ScriptImage,
    bios64: &ScriptImage,
    efi: &ScriptImage,
) -> String {
    let tftp_checks = goto_if_tftp_card(p.tftp_busids, "bios_tftp");
    let cpu64 = if bios64.name == bios.name && bios64.version == bios.version {
        String::new()
    } else {
        format!(
            "cpuid --ext 29 && goto cpu64 ||\n\
             goto cpu32\n\
             :cpu64\n\
             {}\
             goto bios64\n\
             {}{}\
             :cpu32\n",
            goto_if_tftp_card(p.tftp_busids, "bios64_tftp"),
            section(p, "bios64", p.base, bios64),
            section(p, "bios64_tftp", p.tftp_base, bios64),
        )
    };
    format!(
        "#!ipxe\n\
         echo enlist: network card ${{netX/busid}} (${{netX/chip}})\n\
         iseq ${{platform}} efi && goto efi ||\n\
         {cpu64}\
         {tftp_checks}\
         goto bios\n\
         {}{}{}\
         :failed\n\
         echo enlist: boot failed; retrying in 10 s\n\
         {RESET_CARD}\
         sleep 10\n\
         {}",
        section(p, "bios", p.base, bios),
        section(p, "bios_tftp", p.tftp_base, bios),
        section(p, "efi", p.base, efi),
        rechain(p.base, p.tftp_base, p.mac, p.tftp_busids),
    )
}

/// Fetch the node's script again, the way it came: by TFTP on the cards in `busids`, else
/// by HTTP. Ends the script; a failure goes to `:failed` if the script has one.
fn rechain(http_base: &str, tftp_base: &str, mac: Mac, busids: &[String]) -> String {
    let checks = goto_if_tftp_card(busids, "rechain_tftp");
    format!(
        "{checks}chain --autofree {} || goto failed\n\
         :rechain_tftp\n\
         chain --autofree {tftp_base}/{} || goto failed\n",
        script_url(http_base, mac),
        BootPath::Script(mac),
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

fn local_disk_script() -> String {
    "#!ipxe\n\
     echo enlist: this PC is released; booting from its own disk\n\
     iseq ${platform} efi && exit ||\n\
     sanboot --no-describe --drive 0x80 || exit\n"
        .into()
}

fn not_enlisted_script(mac: Mac) -> String {
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
    // The reason goes on the PC's screen: one line, no iPXE expansions.
    let why: String = why
        .chars()
        .map(|c| if c.is_control() || c == '$' { ' ' } else { c })
        .collect();
    format!(
        "#!ipxe\n\
         :failed\n\
         echo enlist: {why}; retrying in 30 s\n\
         {RESET_CARD}\
         sleep 30\n\
         {rechain}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_mirror_serves_the_image_files_and_the_head_the_nodes_part_or_all_if_it_fails() {
        let p = ScriptParams {
            base: "http://10.77.0.1:8080",
            mac: Mac::parse("52:54:00:77:00:10").unwrap(),
            name: "pc",
            token: "t0k",
            method: "pxe",
            cmdline: "",
            tftp_base: "tftp://10.77.0.1",
            tftp_busids: &["01:80:86:12:29".to_string()],
            mirror: Some("http://10.77.0.2:8081"),
        };
        let img = ScriptImage {
            name: "i586",
            version: "v1",
            cmdline: "",
        };
        let s = node_script(&p, &img, &img, &img);
        let bios = s.split(":bios\n").nth(1).unwrap();
        assert!(
            bios.starts_with("echo enlist: pc boots i586 v1 through the mirror http://10.77.0.2:8081\n\
                 kernel --timeout 15000 http://10.77.0.2:8081/images/i586/v1/vmlinuz initrd=initrd initrd=overlay enlist.head=http://10.77.0.1:8080 ")
                && bios.contains("|| goto bios_head\ninitrd --name initrd --timeout 15000 http://10.77.0.2:8081/images/i586/v1/initrd || goto bios_head\n\
                     initrd --name overlay --timeout 60000 http://10.77.0.1:8080/boot/52-54-00-77-00-10/t0k/i586/v1/overlay || goto failed\n")
                && bios.contains(":bios_head\nimgfree\necho enlist: pc boots i586 v1 from http://10.77.0.1:8080\n"),
            "{s}"
        );
        let tftp = s.split(":bios_tftp\n").nth(1).unwrap();
        assert!(
            !tftp.split(":efi").next().unwrap().contains("10.77.0.2"),
            "a TFTP-only card never uses the HTTP mirror: {s}"
        );
    }

    #[test]
    fn script_names_kernel_initrd_with_its_token_and_cmdline() {
        let mac = Mac::parse("52:54:00:77:00:10").unwrap();
        let p = ScriptParams {
            base: "http://10.77.0.1:8080",
            mac,
            name: "lab-pc-10",
            token: "t0k",
            method: "pxe",
            cmdline: "console=ttyS0",
            tftp_base: "tftp://10.77.0.1",
            tftp_busids: &["01:80:86:12:29".to_string()],
            mirror: None,
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
        let s = node_script(&p, &bios, &efi, &efi);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(
            s.contains("cpuid --ext 29 && goto cpu64 ||\ngoto cpu32\n:cpu64\n")
                && s.contains(":bios64\n")
                && s.contains("kernel --timeout 60000 http://10.77.0.1:8080/images/x86_64/v2/vmlinuz")
                && s.contains("iseq ${netX/busid} 01:80:86:12:29 && goto bios64_tftp ||")
                && s.contains("initrd --name initrd --timeout 60000 tftp://10.77.0.1/boot/52-54-00-77-00-10/t0k/x86_64/v2/initrd"),
            "a 64-bit CPU boots the 64-bit image, by TFTP on a TFTP-only card: {s}"
        );
        let same = node_script(&p, &bios, &bios, &efi);
        assert!(
            !same.contains("cpuid"),
            "no test when both are the same image (a reservation): {same}"
        );
        assert!(s.contains("kernel --timeout 60000 http://10.77.0.1:8080/images/i586/v1/vmlinuz initrd=initrd enlist.head=http://10.77.0.1:8080 enlist.node=lab-pc-10 enlist.boot=pxe BOOTIF=01-${netX/mac:hexhyp} cryptomgr.notests console=ttyS0 || goto failed"));
        assert!(
            s.contains("BOOTIF=01-${netX/mac:hexhyp} console=ttyS0 || goto failed"),
            "no stray space without image options: {s}"
        );
        assert!(s.contains(
            "initrd --name initrd --timeout 60000 http://10.77.0.1:8080/boot/52-54-00-77-00-10/t0k/i586/v1/initrd"
        ));
        assert!(s.contains("/images/x86_64/v2/vmlinuz"));
        assert!(s.contains(
            "chain --autofree http://10.77.0.1:8080/boot/52-54-00-77-00-10.ipxe || goto failed"
        ));
        assert!(
            s.contains(
                ":failed\necho enlist: boot failed; retrying in 10 s\nifclose ||\nifopen ||\nsleep 10\n"
            ),
            "the card is reset before the script is fetched again: {s}"
        );
        assert!(
            s.contains("iseq ${netX/busid} 01:80:86:12:29 && goto rechain_tftp ||\n")
                && s.contains(
                    "chain --autofree tftp://10.77.0.1/boot/52-54-00-77-00-10.ipxe || goto failed"
                ),
            "a TFTP-only card fetches the script again by TFTP: {s}"
        );
        assert!(s.contains("iseq ${netX/busid} 01:80:86:12:29 && goto bios_tftp ||"));
        assert!(s.contains("kernel --timeout 60000 tftp://10.77.0.1/images/i586/v1/vmlinuz"));
        assert!(s.contains(
            "initrd --name initrd --timeout 60000 tftp://10.77.0.1/boot/52-54-00-77-00-10/t0k/i586/v1/initrd"
        ));
    }

    #[test]
    fn a_reason_shown_on_screen_cannot_inject_script_lines() {
        let s = retry_script("bad\nchain http://evil/${x}", "chain x\n");
        assert_eq!(
            s.lines().filter(|l| l.starts_with("chain")).count(),
            1,
            "{s}"
        );
        assert!(!s.contains("${x}"), "{s}");
        assert!(
            s.contains("ifclose ||\nifopen ||\nsleep 30\nchain x\n"),
            "{s}"
        );
    }
}
