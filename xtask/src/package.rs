//! `cargo xtask package`: the Debian packages a sysadmin installs with apt, made with
//! dpkg-deb from what the build already has (no debhelper, no source package):
//!
//! - `enlist_<version>_amd64.deb`: the head binary, its man pages and shell completions (made
//!   by the binary from its clap definitions), `/etc/enlist/config.yaml` (a conffile: the
//!   commented example), the hardened systemd unit, and a postinst that makes the state folder
//!   and says what to do next.
//! - `enlist-node-images_<version>_all.deb`: the current i586 and x86_64 node images (kernel,
//!   initrd, jobs runtime) in the default config's `images.dir`, and the kit to build them
//!   (and x86_64-debian) again with `enlist image build`.
//!
//! `--install-test` then proves them on a clean Debian 12 root (debootstrap into a folder):
//! `apt install ./enlist_*.deb ./enlist-node-images_*.deb`, the installed head started as its
//! unit starts it (`enlist serve --config /etc/enlist/config.yaml`, in the root, inside a lab
//! namespace), and an emulated Pentium II booted by PXE until it is `registered`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{build_head, enlist_bin, root, sh};

/// Where the installed head finds its node images: the example config's `images.dir`.
const IMAGES_DIR: &str = "var/lib/enlist/images";
/// The images the package carries.
const IMAGES: [&str; 2] = ["i586", "x86_64"];
/// Recipes the package carries without their image, each with the packaged image whose agent
/// it uses: x86_64 on Debian's kernel, for a card enlist's kernel has no driver for.
const RECIPES_ONLY: [(&str, &str); 1] = [("x86_64-debian", "x86_64")];

#[derive(clap::Args)]
pub struct PackageArgs {
    /// Then install both packages into a clean Debian 12 root and boot a PC from it in the lab.
    #[arg(long)]
    pub install_test: bool,
}

pub fn run(args: PackageArgs) -> anyhow::Result<()> {
    build_head()?;
    for image in IMAGES {
        if !root()
            .join("images/out")
            .join(image)
            .join("current")
            .exists()
        {
            crate::node::run(crate::node::NodeTask::All)?;
            break;
        }
    }
    let out = root().join("target/debian");
    std::fs::create_dir_all(&out)?;
    let version = version()?;
    let head = head_package(&out, &version)?;
    let images = images_package(&out, &version)?;
    check_contents(&head, HEAD_FILES)?;
    check_contents(
        &images,
        &[
            "./usr/share/enlist/images/i586.version",
            "./usr/share/enlist/images/x86_64.version",
            "./usr/share/enlist/kit/x86_64-debian.yaml",
        ],
    )?;
    check_unit(&out.join("enlist"))?;
    println!("{}\n{}", head.display(), images.display());
    if args.install_test {
        install_test(&head, &images)?;
    }
    Ok(())
}

/// The version the binary says it is (`enlist 0.1.0`): one source, Cargo.toml.
fn version() -> anyhow::Result<String> {
    let out = Command::new(enlist_bin()).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .context("enlist --version printed no version")
}

fn write(path: &Path, text: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("{}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("{}", from.display()))?;
    write(to, &bytes, mode)
}

/// A fresh staging folder for a package.
fn stage(out: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("DEBIAN"))?;
    Ok(dir)
}

/// `Installed-Size` (KiB) of a staging folder, DEBIAN/ excluded.
fn installed_kib(dir: &Path) -> anyhow::Result<u64> {
    fn walk(p: &Path, total: &mut u64) -> std::io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                if e.file_name() != "DEBIAN" {
                    walk(&e.path(), total)?;
                }
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(dir, &mut total)?;
    Ok(total)
}

fn build_deb(dir: &Path, out: &Path, file: &str) -> anyhow::Result<PathBuf> {
    let deb = out.join(file);
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(dir)
        .arg(&deb))?;
    Ok(deb)
}

/// Where the images package says which version of each image it brings.
const PACKAGED: &str = "usr/share/enlist/images";

/// Makes each packaged image current where no local choice was made: where there is no
/// `current`, or it still names the version the package put there before (kept in
/// `.packaged`). An image built or rolled back by the admin stays current across upgrades.
const IMAGES_POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    for image in i586 x86_64; do
        dir=/var/lib/enlist/images/$image
        new=$(cat /usr/share/enlist/images/$image.version)
        if [ ! -e "$dir/current" ] || [ "$(cat "$dir/current")" = "$(cat "$dir/.packaged" 2>/dev/null)" ]; then
            echo "$new" > "$dir/current.new"
            mv "$dir/current.new" "$dir/current"
        fi
        echo "$new" > "$dir/.packaged"
    done
fi
"#;

/// On purge, what the images postinst wrote (a built image and its `current` stay: the
/// admin's).
const IMAGES_POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    for image in i586 x86_64; do
        dir=/var/lib/enlist/images/$image
        if [ -e "$dir/.packaged" ] && [ "$(cat "$dir/current" 2>/dev/null)" = "$(cat "$dir/.packaged")" ]; then
            rm -f "$dir/current"
        fi
        rm -f "$dir/.packaged"
    done
fi
"#;

/// Removes what the postinst and the head made outside the package's files: the slurm.conf
/// link, if it is still ours, and the kernel NFS export file.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = /run/enlist/slurm.conf ]; then
        rm -f /etc/slurm/slurm.conf
    fi
    # The kernel NFS server's export of the shared home (jobs.home.server: kernel).
    if [ -e /etc/exports.d/enlist.exports ]; then
        rm -f /etc/exports.d/enlist.exports
        if command -v exportfs >/dev/null; then exportfs -ra || true; fi
    fi
fi
"#;

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The user a boot-only head runs as (the drop-in in /usr/share/doc/enlist/examples).
    if ! getent passwd enlist >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/enlist --no-create-home \
            --shell /usr/sbin/nologin --comment "enlist head" enlist
    fi
    mkdir -p /var/lib/enlist
    chmod 0700 /var/lib/enlist
    # The jobs' shared home (jobs.home.path): users on the head reach their part of it.
    mkdir -p /srv/enlist/home
    # Users submit with Slurm's own tools and no SLURM_CONF: where they look by default is the
    # head's slurm.conf (jobs.run_dir), unless the site has one of its own.
    if [ ! -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
        mkdir -p /etc/slurm
        ln -s /run/enlist/slurm.conf /etc/slurm/slurm.conf
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    if [ -z "$2" ]; then
        cat <<EOF
enlist is installed. Next:
  1. edit /etc/enlist/config.yaml: dhcp.interfaces (the interface of the cluster network),
     http.public_url and the subnet (the head's address there); its comments say how
  2. enlist check-config
  3. enlist admin set-password
  4. systemctl enable --now enlist
EOF
    elif [ -d /run/systemd/system ] && systemctl is-active --quiet enlist; then
        systemctl restart enlist || true
    fi
fi
"#;

/// The systemd drop-in for a head without jobs: its own user, three capabilities.
const BOOT_ONLY: &str = "# A head without jobs (jobs.enabled: false) needs no root: install as\n\
# /etc/systemd/system/enlist.service.d/boot-only.conf, then systemctl daemon-reload.\n\
[Service]\n\
User=enlist\n\
Group=enlist\n\
# DHCP and TFTP ports, SO_BINDTODEVICE and raw ICMPv6, ARP entries for unicast DHCP replies.\n\
AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_NET_ADMIN\n\
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_NET_ADMIN\n\
UMask=0077\n";

/// The head's helpers (slurmctld, munged, NFS-Ganesha) write their own log files in the state
/// folder (the head's own log is the journal's, nodes' logs are capped by the head): rotated
/// weekly, four kept, truncated in place (the daemons keep them open).
const LOGROTATE: &str = "/var/lib/enlist/slurmctld.log /var/lib/enlist/munge/munged.log /var/lib/enlist/ganesha/ganesha.log {
    weekly
    rotate 4
    compress
    delaycompress
    missingok
    notifempty
    copytruncate
}
";

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop enlist || true
fi
"#;

fn head_package(out: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let dir = stage(out, "enlist")?;
    copy(&enlist_bin(), &dir.join("usr/bin/enlist"), 0o755)?;
    stage_docs(out, &dir)?;
    // Readable by the boot-only head's user (it holds no secret: those are in the state folder).
    copy(
        &root().join("config.example.yaml"),
        &dir.join("etc/enlist/config.yaml"),
        0o644,
    )?;
    let unit = std::fs::read_to_string(root().join("debian/enlist.service"))?
        .replace("/usr/local/bin/enlist", "/usr/bin/enlist");
    write(
        &dir.join("lib/systemd/system/enlist.service"),
        unit.as_bytes(),
        0o644,
    )?;
    for doc in [
        "README.md",
        "SECURITY.md",
        "ARCHITECTURE.md",
        "BENCHMARKS.md",
    ] {
        copy(
            &root().join(doc),
            &dir.join("usr/share/doc/enlist").join(doc),
            0o644,
        )?;
    }
    write(
        &dir.join("usr/share/doc/enlist/examples/boot-only.conf"),
        BOOT_ONLY.as_bytes(),
        0o644,
    )?;
    // The job environment's recipe: `enlist env build /usr/share/doc/enlist/examples/env.yaml`.
    copy(
        &root().join("images/env.yaml"),
        &dir.join("usr/share/doc/enlist/examples/env.yaml"),
        0o644,
    )?;
    write(
        &dir.join("etc/logrotate.d/enlist"),
        LOGROTATE.as_bytes(),
        0o644,
    )?;
    write(
        &dir.join("DEBIAN/conffiles"),
        b"/etc/enlist/config.yaml\n/etc/logrotate.d/enlist\n",
        0o644,
    )?;
    write(&dir.join("DEBIAN/postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&dir.join("DEBIAN/postrm"), POSTRM.as_bytes(), 0o755)?;
    write(&dir.join("DEBIAN/prerm"), PRERM.as_bytes(), 0o755)?;
    let control = format!(
        "Package: enlist\nVersion: {version}\nArchitecture: amd64\nSection: net\nPriority: optional\n\
         Maintainer: enlist developers <enlist@localhost>\nInstalled-Size: {size}\n\
         Depends: libc6 (>= 2.36), libgcc-s1, ipxe, squashfs-tools\n\
         Recommends: enlist-node-images (= {version}), slurmctld, slurm-client, munge, nfs-ganesha, nfs-ganesha-vfs, nftables, mmdebstrap, arch-test\n\
         Description: network boot for a room of PCs, as a cluster\n \
         One head service (DHCP, TFTP, HTTP, dashboard, API) boots ordinary PCs over the\n \
         network into a small RAM-resident node OS, runs jobs on them through Slurm and\n \
         hands them back to their own disks with a reboot.\n",
        size = installed_kib(&dir)?
    );
    write(&dir.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    build_deb(&dir, out, &format!("enlist_{version}_amd64.deb"))
}

/// The man pages and shell completions `enlist generate-docs` writes, staged in `dir`.
fn stage_docs(out: &Path, dir: &Path) -> anyhow::Result<()> {
    let docs = out.join("docs");
    let _ = std::fs::remove_dir_all(&docs);
    sh(Command::new(enlist_bin()).arg("generate-docs").arg(&docs))?;
    for e in std::fs::read_dir(&docs)? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "1") {
            let name = path
                .file_name()
                .context("man page name")?
                .to_string_lossy()
                .to_string();
            let page = dir.join("usr/share/man/man1").join(format!("{name}.gz"));
            gzip(&path, &page)?;
        }
    }
    copy(
        &docs.join("enlist.bash"),
        &dir.join("usr/share/bash-completion/completions/enlist"),
        0o644,
    )?;
    copy(
        &docs.join("_enlist"),
        &dir.join("usr/share/zsh/vendor-completions/_enlist"),
        0o644,
    )?;
    copy(
        &docs.join("enlist.fish"),
        &dir.join("usr/share/fish/vendor_completions.d/enlist.fish"),
        0o644,
    )?;
    Ok(())
}

/// What the head package must hold.
const HEAD_FILES: &[&str] = &[
    "./usr/bin/enlist",
    "./usr/share/man/man1/enlist.1.gz",
    "./usr/share/man/man1/enlist-schedule.1.gz",
    "./usr/share/bash-completion/completions/enlist",
    "./usr/share/zsh/vendor-completions/_enlist",
    "./usr/share/fish/vendor_completions.d/enlist.fish",
    "./etc/enlist/config.yaml",
    "./etc/logrotate.d/enlist",
    "./lib/systemd/system/enlist.service",
];

fn check_contents(deb: &Path, wanted: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(deb)
        .output()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for w in wanted {
        if !names.contains(w) {
            bail!("{} does not hold {w}", deb.display());
        }
    }
    Ok(())
}

/// `systemd-analyze verify` on the packaged unit (its ExecStart pointed at the staged binary,
/// which verify wants to find), and its exposure score (SECURITY.md records it).
fn check_unit(staged: &Path) -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(staged.join("lib/systemd/system/enlist.service"))?;
    let dir = root().join("target/debian/unit-check");
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("enlist.service");
    let binary = staged.join("usr/bin/enlist");
    write(
        &path,
        unit.replace("/usr/bin/enlist", &binary.display().to_string())
            .as_bytes(),
        0o644,
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()?;
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "systemd-analyze verify {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("xtask: systemd-analyze verify: ok");
    // The boot-only drop-in merged into a copy of the unit, for its score too.
    let boot_only = dir.join("boot-only/enlist.service");
    let merged = std::fs::read_to_string(&path)?.replace(
        "[Install]",
        &format!("{}\n[Install]", BOOT_ONLY.replace("[Service]\n", "")),
    );
    write(&boot_only, merged.as_bytes(), 0o644)?;
    for (what, unit) in [("as root (jobs)", &path), ("boot-only drop-in", &boot_only)] {
        println!(
            "xtask: systemd-analyze security, {what}: {}",
            exposure(unit)?
        );
    }
    Ok(())
}

/// The overall exposure line of `systemd-analyze security` for a unit file.
fn exposure(unit: &Path) -> anyhow::Result<String> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .rfind(|l| l.contains("Overall exposure level"))
        .unwrap_or("no exposure score");
    Ok(score.trim_start_matches('→').trim().to_string())
}

fn gzip(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("gzip")
        .args(["-9n", "-c"])
        .arg(from)
        .output()?;
    if !out.status.success() {
        bail!(
            "gzip {}: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    write(to, &out.stdout, 0o644)
}

/// The current version of each image, as published in images/out.
fn images_package(out: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let dir = stage(out, "enlist-node-images")?;
    for image in IMAGES {
        let from = root().join("images/out").join(image);
        let current = std::fs::read_to_string(from.join("current")).with_context(|| {
            format!(
                "{}: no current image (cargo xtask node all)",
                from.display()
            )
        })?;
        let current = current.trim();
        let to = dir.join(IMAGES_DIR).join(image);
        for e in std::fs::read_dir(from.join(current))? {
            let e = e?;
            copy(&e.path(), &to.join(current).join(e.file_name()), 0o644)?;
        }
        // Which version is current is the admin's (image build, rollback): the package says
        // which it brings, and its postinst moves `current` only where it was the package's.
        write(
            &dir.join(PACKAGED).join(format!("{image}.version")),
            format!("{current}\n").as_bytes(),
            0o644,
        )?;
        kit(&dir, image, image)?;
    }
    for (recipe, agent_of) in RECIPES_ONLY {
        kit(&dir, recipe, agent_of)?;
    }
    sh(Command::new("cp")
        .arg("-a")
        .arg(root().join("initramfs/rootfs"))
        .arg(dir.join(KIT).join("rootfs")))?;
    let control = format!(
        "Package: enlist-node-images\nVersion: {version}\nArchitecture: all\nSection: net\nPriority: optional\n\
         Maintainer: enlist developers <enlist@localhost>\nInstalled-Size: {size}\n\
         Description: node OS images for the enlist head\n \
         The i586 image (Pentium and up, no SSE2 needed, i586 kernel built for period PCs)\n \
         and the x86_64 image (64-bit kernel with desktop, server and USB cards built in),\n \
         with their jobs runtimes, published where enlist's default configuration looks\n \
         for them; and the recipe of an x86_64 image on Debian's kernel and modules.\n",
        size = installed_kib(&dir)?
    );
    write(&dir.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(
        &dir.join("DEBIAN/postinst"),
        IMAGES_POSTINST.as_bytes(),
        0o755,
    )?;
    write(&dir.join("DEBIAN/postrm"), IMAGES_POSTRM.as_bytes(), 0o755)?;
    build_deb(&dir, out, &format!("enlist-node-images_{version}_all.deb"))
}

/// Where the images package puts what `enlist image build` needs besides Debian's packages:
/// the recipes, the agents, the node OS's own files.
const KIT: &str = "usr/share/enlist/kit";

/// An image's recipe for a head installed from packages, its agent (in `agent_of`'s folder of
/// the kit), and its kernel when it is built from source and so is not a Debian package to
/// download.
fn kit(dir: &Path, image: &str, agent_of: &str) -> anyhow::Result<()> {
    let recipe_path = root().join("images").join(format!("{image}.yaml"));
    let text = std::fs::read_to_string(&recipe_path)?;
    let (recipe, base) = enlist::image::recipe::Recipe::load(&recipe_path)?;
    let packages = base.join(&recipe.packages);
    let kernel_path = enlist::image::packages::find_package(&packages, &recipe.kernel)?;
    let kernel_file = kernel_path
        .file_name()
        .context("kernel file name")?
        .to_string_lossy()
        .to_string();
    let arch = &recipe.arch;
    let cache = format!("var/cache/enlist/{arch}");
    // A Debian kernel is downloaded by its exact package name; a kernel built here is shipped.
    let kernel = match enlist::image::build::package_name(&kernel_file) {
        Some(name) => format!("{name}_*.deb"),
        None => {
            copy(&kernel_path, &dir.join(&cache).join(&kernel_file), 0o644)?;
            // Its built-in drivers' device table goes with it (the head's "no driver" warning).
            use enlist::image::alias_table::{kernel_release, path_beside};
            let table = kernel_release(&kernel_path).map(|r| path_beside(&kernel_path, r));
            if let Some(t) = table.filter(|t| t.exists()) {
                let name = t.file_name().context("device table file name")?;
                copy(&t, &dir.join(&cache).join(name), 0o644)?;
            }
            recipe.kernel.clone()
        }
    };
    copy(
        &base.join(&recipe.agent),
        &dir.join(KIT).join(agent_of).join("enlist-agent"),
        0o755,
    )?;
    let recipe = kit_recipe(
        &text,
        &format!("/{cache}"),
        &kernel,
        &format!("/{KIT}/{agent_of}/enlist-agent"),
        &format!("/{KIT}/rootfs"),
    );
    write(
        &dir.join(KIT).join(format!("{image}.yaml")),
        recipe.as_bytes(),
        0o644,
    )
}

/// The recipe with its top-level paths pointed at the installed kit, and downloads on.
fn kit_recipe(text: &str, packages: &str, kernel: &str, agent: &str, rootfs: &str) -> String {
    let mut out = String::from(
        "# Installed by enlist-node-images: `enlist image build` this file (see man enlist-image).\n",
    );
    for line in text.lines() {
        let key = line.split(':').next().unwrap_or("");
        let new = match key {
            "packages" => format!("packages: {packages}"),
            "kernel" => format!("kernel: \"{kernel}\""),
            "agent" => format!("agent: {agent}"),
            "rootfs" => format!("rootfs: [{rootfs}]"),
            "output" => format!("output: /{IMAGES_DIR}"),
            _ => line.to_string(),
        };
        out.push_str(&new);
        out.push('\n');
    }
    out.push_str("download: true\n");
    out
}

/// The lab's head config, written into the installed root: the example as installed (it
/// already names the lab's network, br0 and 10.77.0.0/24), without jobs (the clean root has no
/// Slurm: the packages were installed without their Recommends).
fn lab_config(installed: &str) -> String {
    // Jobs off: the first `enabled: true` of the `jobs:` section (tftp has one too).
    let Some(jobs) = installed.find("\njobs:") else {
        return installed.to_string();
    };
    let (head, tail) = installed.split_at(jobs);
    format!(
        "{head}{}",
        tail.replacen("  enabled: true", "  enabled: false", 1)
    )
}

/// Install both packages into a clean Debian 12 root and boot a Pentium II from it.
fn install_test(head: &Path, images: &Path) -> anyhow::Result<()> {
    let chroot = root().join("target/debian/root");
    if !chroot.join("usr/bin/apt-get").exists() {
        let _ = std::fs::remove_dir_all(&chroot);
        sh(Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&chroot)
            .arg("http://deb.debian.org/debian"))?;
    }
    // A root that already has the packages (an earlier run): purge them first, so this run
    // installs them as a sysadmin would on a clean machine.
    let _ = Command::new("chroot")
        .arg(&chroot)
        .args(["dpkg", "--purge", "enlist", "enlist-node-images"])
        .status();
    let _ = std::fs::remove_dir_all(chroot.join("var/lib/enlist"));
    for deb in [head, images] {
        std::fs::copy(
            deb,
            chroot.join("tmp").join(deb.file_name().context("deb")?),
        )?;
    }
    std::fs::copy("/etc/resolv.conf", chroot.join("etc/resolv.conf"))?;
    // The i586 image's packages are i386 ones.
    sh(Command::new("chroot")
        .arg(&chroot)
        .args(["dpkg", "--add-architecture", "i386"]))?;
    update_with_a_mirror_away(&chroot)?;
    let debs: Vec<String> = [head, images]
        .iter()
        .map(|d| {
            format!(
                "/tmp/{}",
                d.file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default()
            )
        })
        .collect();
    sh(Command::new("chroot")
        .arg(&chroot)
        .args(["apt-get", "install", "-y", "-q", "--no-install-recommends"])
        .args(&debs)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let installed = std::fs::read_to_string(chroot.join("etc/enlist/config.yaml"))?;
    std::fs::write(
        chroot.join("etc/enlist/config.yaml"),
        lab_config(&installed),
    )?;
    sh(Command::new("chroot")
        .arg(&chroot)
        .args(["enlist", "check-config"]))?;
    // An admin's own build of each image, from the kit (with the kernels built from source)
    // and Debian's packages.
    for image in IMAGES {
        sh(Command::new("chroot").arg(&chroot).args([
            "enlist",
            "image",
            "build",
            &format!("/{KIT}/{image}.yaml"),
        ]))?;
    }
    sh(Command::new("chroot")
        .arg(&chroot)
        .args(["enlist", "image", "list"]))?;
    reinstall_keeps_a_local_choice(&chroot, images)?;
    let proc_dir = chroot.join("proc");
    sh(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(&proc_dir))?;
    let r = boot_from_installed(&chroot);
    let _ = Command::new("umount").arg(&proc_dir).status();
    r?;
    jobs_under_the_unit(&chroot)
}

/// The images package reinstalled (as an upgrade does) leaves an admin's choice of current
/// version alone: a version of the admin's own made current stays current.
fn reinstall_keeps_a_local_choice(chroot: &Path, images: &Path) -> anyhow::Result<()> {
    let dir = chroot.join(IMAGES_DIR).join("i586");
    let packaged = std::fs::read_to_string(dir.join("current"))?;
    sh(Command::new("cp")
        .arg("-a")
        .arg(dir.join(packaged.trim()))
        .arg(dir.join("local-test")))?;
    std::fs::write(dir.join("current"), "local-test\n")?;
    let deb = format!(
        "/tmp/{}",
        images
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    sh(Command::new("chroot")
        .arg(chroot)
        .args(["dpkg", "-i", &deb]))?;
    let after = std::fs::read_to_string(dir.join("current"))?;
    anyhow::ensure!(
        after.trim() == "local-test",
        "reinstalling the images package made {} current over the admin's choice",
        after.trim()
    );
    std::fs::write(dir.join("current"), packaged)?;
    std::fs::remove_dir_all(dir.join("local-test"))?;
    println!("xtask: the images package, reinstalled, kept the admin's current i586 version");
    Ok(())
}

/// Set-up's apt-get update, with one index that cannot be had (a mirror that is away): it
/// says which it skipped and the install goes on from the others.
fn update_with_a_mirror_away(chroot: &Path) -> anyhow::Result<()> {
    let broken = chroot.join("etc/apt/sources.list.d/away.list");
    std::fs::write(
        &broken,
        "deb http://mirror-away.invalid/debian bookworm main\n",
    )?;
    let skipped = crate::setup::apt_update_in(Some(chroot));
    std::fs::remove_file(&broken)?;
    if !skipped.iter().any(|s| s.contains("mirror-away.invalid")) {
        bail!("apt-get update with an unreachable index: expected it named as skipped, got {skipped:?}");
    }
    Ok(())
}

/// The installed head, started as its unit starts it, in a lab namespace; a Pentium II boots
/// by PXE until it registers.
fn boot_from_installed(chroot: &Path) -> anyhow::Result<()> {
    let ns = "pkg-install";
    // As the boot-only drop-in runs it: user enlist, three capabilities and no others (the
    // state folder is the user's, as systemd's StateDirectory= makes it).
    sh(Command::new("chroot")
        .arg(chroot)
        .args(["chown", "enlist:enlist", "/var/lib/enlist"]))?;
    let caps = "-all,+net_bind_service,+net_raw,+net_admin";
    let lab = installed_head(chroot, ns, Duration::from_secs(30), |lab| {
        let mut head = lab.exec("chroot");
        head.arg(chroot)
            .args([
                "setpriv",
                "--reuid=enlist",
                "--regid=enlist",
                "--init-groups",
            ])
            .args([
                format!("--inh-caps={caps}"),
                format!("--ambient-caps={caps}"),
                format!("--bounding-set={caps}"),
            ])
            .args([
                "/usr/bin/enlist",
                "serve",
                "--config",
                "/etc/enlist/config.yaml",
            ]);
        head
    })?;
    let uid = head_uid(ns);
    let (lab, mac) = pentium_ii_healthy(lab)?;
    match uid {
        Some(0) | None => bail!("the installed head did not run as user enlist (uid {uid:?})"),
        Some(uid) => println!(
            "xtask: the installed head (Debian 12 root {}, uid {uid}, three capabilities) booted a Pentium II by PXE: {mac} is {}",
            chroot.display(),
            lab.node_state(&mac).unwrap_or_default()
        ),
    }
    Ok(())
}

/// A lab namespace `ns` whose head is the installed one, started by `head` (its output goes
/// to the lab's head.log); the lab once the head's HTTP answers within `limit`. The lab
/// talks to it through <dir>/state/admin.sock: the installed head's state folder.
fn installed_head(
    chroot: &Path,
    ns: &str,
    limit: Duration,
    head: impl FnOnce(&enlist_lab::Lab) -> Command,
) -> anyhow::Result<enlist_lab::Lab> {
    let dir = root().join("lab").join(ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = enlist_lab::Lab::new(ns, &dir).map_err(anyhow::Error::msg)?;
    std::os::unix::fs::symlink(chroot.join("var/lib/enlist"), dir.join("state"))?;
    let log = std::fs::File::create(dir.join("head.log"))?;
    let mut cmd = head(&lab);
    cmd.stdout(log.try_clone()?).stderr(log);
    lab.spawn(cmd).map_err(anyhow::Error::msg)?;
    let up = lab.wait_for(limit, "installed head's HTTP", || {
        lab.curl("/api/v1/session").is_ok()
    });
    if let Err(e) = up {
        bail!("{e}\n{}", lab.head_log());
    }
    Ok(lab)
}

/// A Pentium II booted by PXE until it is healthy (registered, then a heartbeat: the state
/// the API shows from then on); the lab and its MAC.
fn pentium_ii_healthy(mut lab: enlist_lab::Lab) -> anyhow::Result<(enlist_lab::Lab, String)> {
    let i = lab
        .boot(enlist_lab::Profile::P2Pxe, None)
        .map_err(anyhow::Error::msg)?;
    let mac = lab.pcs[i].mac.clone();
    if let Err(e) = lab.wait_state(&mac, "healthy", Duration::from_secs(300)) {
        bail!("{e}\n{}", lab.report());
    }
    Ok((lab, mac))
}

/// What a boot-only install lacks for jobs: the head's Recommends that run them.
const JOBS_PACKAGES: [&str; 6] = [
    "slurmctld",
    "slurm-client",
    "munge",
    "nfs-ganesha",
    "nfs-ganesha-vfs",
    "nftables",
];

/// The user who submits in the install test: made in the root as a sysadmin would, after
/// the head started.
const SUBMITTER: &str = "student";

/// Jobs on, as a sysadmin adds them to the boot-only install: the Recommends installed, the
/// example config as packaged (jobs on), the head run as root inside the installed unit's
/// sandbox ([`Sandbox`]). A Pentium II boots into Slurm and a user made on the head runs a
/// job with Slurm's own tools and no environment variable.
fn jobs_under_the_unit(chroot: &Path) -> anyhow::Result<()> {
    add_jobs(chroot)?;
    let lab = head_under_the_unit(chroot)?;
    sh(Command::new("chroot")
        .arg(chroot)
        .args(["useradd", "--create-home", SUBMITTER]))?;
    job_as_the_user(chroot, lab)
}

/// The Recommends for jobs installed in the root, the example config (jobs on) in place, the
/// root made as a booted Debian with the unit's StateDirectory is.
fn add_jobs(chroot: &Path) -> anyhow::Result<()> {
    // No service of a package starts inside the root (invoke-rc.d asks this).
    write(
        &chroot.join("usr/sbin/policy-rc.d"),
        b"#!/bin/sh\nexit 101\n",
        0o755,
    )?;
    sh(Command::new("chroot")
        .arg(chroot)
        .args(["apt-get", "install", "-y", "-q", "--no-install-recommends"])
        .args(JOBS_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    std::fs::copy(
        root().join("config.example.yaml"),
        chroot.join("etc/enlist/config.yaml"),
    )?;
    sh(Command::new("chroot")
        .arg(chroot)
        .args(["enlist", "check-config"]))?;
    // A booted Debian has /etc/mtab (systemd-tmpfiles links it at boot): Ganesha's VFS
    // reads it to find the exported folder's filesystem. A debootstrapped root has none.
    if std::fs::symlink_metadata(chroot.join("etc/mtab")).is_err() {
        std::os::unix::fs::symlink("../proc/self/mounts", chroot.join("etc/mtab"))?;
    }
    // systemd gives a root service's StateDirectory to root.
    sh(Command::new("chroot")
        .arg(chroot)
        .args(["chown", "-R", "root:root", "/var/lib/enlist"]))?;
    // The user is made after the head starts (an earlier run's is removed first).
    let _ = Command::new("chroot")
        .arg(chroot)
        .args(["userdel", "--remove", SUBMITTER])
        .status();
    Ok(())
}

/// The installed head started as the installed unit starts it (its sandbox emulated), in a
/// lab namespace; the lab, once its HTTP answers.
fn head_under_the_unit(chroot: &Path) -> anyhow::Result<enlist_lab::Lab> {
    let unit = std::fs::read_to_string(chroot.join("lib/systemd/system/enlist.service"))?;
    let sandbox = crate::unit_sandbox::Sandbox::from_unit(&unit)?;
    println!(
        "xtask: the unit's sandbox, emulated; not emulated (system-call filters): {}",
        sandbox.not_emulated.join(" ")
    );
    installed_head(chroot, "pkg-jobs", Duration::from_secs(60), |lab| {
        let mut head = lab.exec("unshare");
        head.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(sandbox.script(&chroot.display().to_string()));
        head
    })
}

/// A Pentium II boots into Slurm; the user runs a job on it from the root with Slurm's own
/// tools and no environment variable.
fn job_as_the_user(chroot: &Path, lab: enlist_lab::Lab) -> anyhow::Result<()> {
    let (lab, mac) = pentium_ii_healthy(lab)?;
    let name = lab.node_name(&mac);
    let srun = |args: &[&str]| {
        lab.exec("chroot")
            .arg(chroot)
            .args(["runuser", "-u", SUBMITTER, "--", "srun"])
            .args(args)
            .env_remove("SLURM_CONF")
            .output()
    };
    // The node joins Slurm a little after it is healthy, and the user's account reaches
    // it within a minute: srun is tried until it answers.
    let mut last = String::new();
    let answered = lab.wait_for(
        Duration::from_secs(180),
        "a job as the user",
        || match srun(&[
            "-N1",
            "-t",
            "1",
            "--immediate=20",
            "sh",
            "-c",
            "echo $(hostname) $(id -un)",
        ]) {
            Ok(o) => {
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                o.status.success() && last.trim() == format!("{name} {SUBMITTER}")
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        },
    );
    if let Err(e) = answered {
        bail!(
            "{e}: srun said {last:?}\n{}\n{}",
            lab.head_log(),
            lab.report()
        );
    }
    println!(
        "xtask: under the installed unit's sandbox, as root with jobs on, the head booted a Pentium II into Slurm and {SUBMITTER} ran a job on it with no SLURM_CONF: {}",
        last.trim()
    );
    Ok(())
}

/// The real uid of the `enlist serve` process in namespace `ns`.
fn head_uid(ns: &str) -> Option<u32> {
    std::thread::sleep(Duration::from_secs(1));
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .ok()?;
    String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("serve"))
        })
        .find_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    /// The install test's head: the example config with jobs off and everything else as it
    /// is (TFTP on: the Pentium II's PXE needs it).
    #[test]
    fn the_install_tests_config_is_the_example_without_jobs() {
        let example = include_str!("../../config.example.yaml");
        let text = super::lab_config(example);
        let cfg =
            enlist::config::Config::parse(&text, std::path::Path::new("t.yaml")).expect("config");
        assert!(!cfg.jobs.enabled && cfg.tftp.enabled);
        assert_eq!(text.lines().count(), example.lines().count());
    }
}
