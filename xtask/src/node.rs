//! Node OS artefacts: Debian packages, the cross-built agent, and the images.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use sha2::{Digest, Sha256};

use crate::{build_head, enlist_bin, root, sh};

#[derive(Subcommand, Clone, Copy)]
pub enum NodeTask {
    /// Download the kernel source (i386), kernel (amd64) and busybox packages; check their sha256.
    Fetch,
    /// Build a node kernel from the kernel source package and `images/kernel/<arch>.config`.
    Kernel {
        /// Which: i586 or x86_64 (each image's own; `all` builds both).
        #[arg(long, value_enum, default_value_t = KernelArch::I586)]
        arch: KernelArch,
    },
    /// Cross-build the agent for i586 (Pentium II, no SSE2) and x86_64.
    Agent,
    /// Build the i586 and x86_64 images with `enlist image build`.
    Images,
    /// All of the above.
    All,
    /// Show that the i586 agent has no SSE/SSE2 code outside glibc's run-time variants.
    CheckSse,
}

pub fn run(t: NodeTask) -> anyhow::Result<()> {
    match t {
        NodeTask::Fetch => fetch(),
        NodeTask::Kernel { arch } => kernel(arch.target()),
        NodeTask::Agent => agent(),
        NodeTask::Images => images(),
        NodeTask::CheckSse => check_sse(),
        NodeTask::All => {
            fetch()?;
            kernel(&I586)?;
            kernel(&X86_64)?;
            agent()?;
            images()
        }
    }
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let o = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

/// The concrete package a metapackage depends on (the kernel ABI changes with point releases).
fn resolve_kernel(meta: &str, suffix: &str) -> anyhow::Result<String> {
    let deps = output(Command::new("apt-cache").args(["depends", meta]))?;
    let dep = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-"))
        .with_context(|| format!("apt-cache depends {meta}: no linux-* dependency"))?;
    let name = dep.split(':').next().unwrap_or(dep);
    Ok(format!("{name}{suffix}"))
}

/// Version and SHA256 the (signed) apt index gives for `pkg` (name:arch).
fn index_record(pkg: &str) -> anyhow::Result<(String, String)> {
    let show = output(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))?;
    let field = |k: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .with_context(|| format!("apt-cache show {pkg}: no {k}"))
    };
    Ok((field("Version:")?, field("SHA256:")?))
}

/// Download `pkgs` (name, Debian architecture) into `dir` at the apt index's version.
fn fetch_into(dir: &Path, pkgs: &[(String, &str)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut lock = String::new();
    for (pkg, arch) in pkgs {
        let full = format!("{pkg}:{arch}");
        let (version, sha) = index_record(&full)?;
        let base = pkg.as_str();
        // Remove other versions so the recipe's pattern matches exactly one file.
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("{base}_")) && !name.contains(&version.replace(':', "%3a"))
            {
                std::fs::remove_file(e.path())?;
            }
        }
        let is_pkg = |n: &str| n.starts_with(&format!("{base}_"));
        let file = match file_in(dir, is_pkg)? {
            Some(f) => f,
            None => {
                sh(Command::new("apt-get")
                    .current_dir(dir)
                    .args(["download", &format!("{full}={version}")]))?;
                file_in(dir, is_pkg)?
                    .with_context(|| format!("apt-get download {full} left no file"))?
            }
        };
        let got = hex::encode(Sha256::digest(std::fs::read(&file)?));
        if got != sha {
            std::fs::remove_file(&file)?;
            bail!(
                "{}: sha256 {got} does not match the apt index ({sha}); deleted it, run again",
                file.display()
            );
        }
        eprintln!("xtask: {full} {version} sha256 ok");
        lock.push_str(&format!("{full}={version} sha256:{sha}\n"));
    }
    std::fs::write(dir.join("PINNED"), lock)?;
    Ok(())
}

fn fetch() -> anyhow::Result<()> {
    let cache = root().join("images/cache");
    // The i586 kernel is built from source (`kernel()`); Debian's linux-source follows the
    // same point releases, security fixes included, as its kernel packages.
    let source = resolve_kernel("linux-source", "")?;
    let mut i386 = vec![(source, "all"), ("busybox-static".into(), "i386")];
    i386.extend(jobs_packages("i586", "i386")?);
    fetch_into(&cache.join("i386"), &i386)?;
    let k64 = resolve_kernel("linux-image-amd64", "")?;
    let mut amd64 = vec![(k64, "amd64"), ("busybox-static".into(), "amd64")];
    amd64.extend(jobs_packages("x86_64", "amd64")?);
    fetch_into(&cache.join("amd64"), &amd64)?;
    Ok(())
}

/// The packages of an image's jobs runtime, named by its recipe's `jobs.packages` patterns
/// (`slurmd_*_i386.deb` is the package `slurmd`).
fn jobs_packages(image: &str, arch: &'static str) -> anyhow::Result<Vec<(String, &'static str)>> {
    let path = root().join(format!("images/{image}.yaml"));
    let (recipe, _) = enlist::image::recipe::Recipe::load(&path)?;
    let patterns = recipe.jobs.map(|j| j.packages).unwrap_or_default();
    patterns
        .iter()
        .map(|p| match enlist::image::build::package_name(p) {
            Some(name) => Ok((name.to_string(), arch)),
            None => bail!(
                "{}: jobs.packages: {p:?} should be <package>_*.deb",
                path.display()
            ),
        })
        .collect()
}

/// The node kernels `cargo xtask node kernel` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelArch {
    I586,
    #[value(name = "x86_64")]
    X86_64,
}

impl KernelArch {
    fn target(self) -> &'static KernelTarget {
        match self {
            KernelArch::I586 => &I586,
            KernelArch::X86_64 => &X86_64,
        }
    }
}

/// What one node kernel is built from and where it goes.
struct KernelTarget {
    /// `make ARCH=`.
    make_arch: &'static str,
    /// The options on top of `tinyconfig`.
    config: &'static str,
    /// Where the result goes, `vmlinuz-<release>` for a recipe's `kernel:` pattern, beside the
    /// packages of that arch.
    out_dir: &'static str,
    /// Where it is built (each kernel keeps its own tree, so both stay built).
    tree: &'static str,
}

const I586: KernelTarget = KernelTarget {
    make_arch: "i386",
    config: "images/kernel/i586.config",
    out_dir: "images/cache/i386",
    tree: "target/node-kernel/linux",
};

const X86_64: KernelTarget = KernelTarget {
    make_arch: "x86_64",
    config: "images/kernel/x86_64.config",
    out_dir: "images/cache/amd64",
    tree: "target/node-kernel/x86_64",
};

/// The kernel source package (arch all), fetched beside the i386 packages.
const KERNEL_SOURCE_DIR: &str = "images/cache/i386";

/// Build a node kernel: Debian's kernel source, `tinyconfig`, then the options in `t.config`,
/// drivers built in. Skipped when the source package, the options and the compiler are those
/// of the last build (the i586 one: about 8 minutes on two cores).
fn kernel(t: &KernelTarget) -> anyhow::Result<()> {
    let cache = root().join(t.out_dir);
    let deb = kernel_source_deb()?;
    let fragment_path = root().join(t.config);
    let fragment = std::fs::read_to_string(&fragment_path)
        .with_context(|| fragment_path.display().to_string())?;
    let gcc = output(Command::new("gcc").arg("--version"))?;
    let key = format!(
        "{} {} {}\n",
        deb.file_name().unwrap_or_default().to_string_lossy(),
        hex::encode(Sha256::digest(&fragment)),
        gcc.lines().next().unwrap_or_default()
    );
    let key_path = cache.join("vmlinuz.built-from");
    let built = file_in(&cache, |n| n.starts_with("vmlinuz-"))?;
    if let Some(built) = built
        .as_ref()
        .filter(|_| std::fs::read_to_string(&key_path).ok().as_deref() == Some(&key))
    {
        eprintln!(
            "xtask: {} node kernel up to date ({})",
            t.make_arch,
            key.trim()
        );
        return kernel_device_table(built, t);
    }

    let src = root().join(t.tree);
    unpack_source(&deb, &src)?;
    let make = || {
        let mut c = Command::new("make");
        c.current_dir(&src)
            .arg(format!("ARCH={}", t.make_arch))
            .arg("LOCALVERSION=-enlist")
            // Reproducible: the same inputs give the same bytes, so the same image version.
            .env("KBUILD_BUILD_USER", "enlist")
            .env("KBUILD_BUILD_HOST", "enlist")
            .env("KBUILD_BUILD_TIMESTAMP", "2004-01-01");
        c
    };
    sh(make().arg("tinyconfig"))?;
    sh(Command::new(src.join("scripts/kconfig/merge_config.sh"))
        .current_dir(&src)
        .env("ARCH", t.make_arch)
        .args(["-m", ".config"])
        .arg(&fragment_path))?;
    sh(make().arg("olddefconfig"))?;
    check_config(&src, &fragment, &fragment_path)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get() + 1);
    sh(make().arg(format!("-j{jobs}")).arg("bzImage"))?;
    let release = output(make().args(["-s", "kernelrelease"]))?;
    let release = release.trim();
    if let Some(old) = built {
        std::fs::remove_file(old)?;
    }
    while let Some(old) = file_in(&cache, |n| n.starts_with("modules."))? {
        std::fs::remove_file(old)?;
    }
    let out = cache.join(format!("vmlinuz-{release}"));
    std::fs::copy(src.join("arch/x86/boot/bzImage"), &out)?;
    std::fs::copy(
        src.join("modules.builtin"),
        cache.join(format!("modules.builtin-{release}")),
    )?;
    std::fs::write(&key_path, key)?;
    eprintln!(
        "xtask: {} ({} bytes)",
        out.display(),
        std::fs::metadata(&out)?.len()
    );
    kernel_device_table(&out, t)
}

/// Debian's linux-source package, as `cargo xtask node fetch` left it.
fn kernel_source_deb() -> anyhow::Result<PathBuf> {
    let sources = root().join(KERNEL_SOURCE_DIR);
    file_in(&sources, |n| {
        n.starts_with("linux-source-") && n.ends_with(".deb")
    })
    .with_context(|| format!("{}: run `cargo xtask node fetch`", sources.display()))?
    .with_context(|| {
        format!(
            "{}: no linux-source package (run `cargo xtask node fetch`)",
            sources.display()
        )
    })
}

/// Unpack the kernel source from its Debian package (which holds it as
/// /usr/src/linux-source-X.Y.tar.xz) into `src`, emptied first.
fn unpack_source(deb: &Path, src: &Path) -> anyhow::Result<()> {
    if src.exists() {
        std::fs::remove_dir_all(src)?;
    }
    std::fs::create_dir_all(src)?;
    sh(Command::new("bash").arg("-c").arg(format!(
        "set -o pipefail; dpkg-deb --fsys-tarfile '{}' \
           | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' \
           | tar -xJ -C '{}' --strip-components=1",
        deb.display(),
        src.display()
    )))?;
    Ok(())
}

/// Every line of the options file holds in the merged `.config`: one that olddefconfig
/// dropped (an option it depends on is off) is named with its file and line.
fn check_config(src: &Path, fragment: &str, fragment_path: &Path) -> anyhow::Result<()> {
    let config = std::fs::read_to_string(src.join(".config"))?;
    for (n, line) in fragment.lines().enumerate() {
        let want = line.trim();
        let Some(name) = want
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
            .or_else(|| want.split_once('=').map(|(k, _)| k))
        else {
            continue;
        };
        let ok = if want.starts_with('#') {
            !config.lines().any(|l| l.starts_with(&format!("{name}=")))
        } else {
            config.lines().any(|l| l == want)
        };
        if !ok {
            bail!(
                "{}:{}: `{want}` did not survive olddefconfig (an option it depends on is off)",
                fragment_path.display(),
                n + 1
            );
        }
    }
    Ok(())
}

/// Write the table of the PCI devices the kernel's built-in drivers take beside it (see
/// `enlist::image::alias_table`), from its `modules.builtin` and Debian's amd64 kernel package
/// of the same release (fetched for the x86_64 image). Redone when that package changes.
fn kernel_device_table(vmlinuz: &Path, t: &KernelTarget) -> anyhow::Result<()> {
    let cache = root().join(t.out_dir);
    let release = enlist::image::alias_table::kernel_release(vmlinuz)
        .with_context(|| format!("{}: not named vmlinuz-<release>", vmlinuz.display()))?;
    let amd64 = root().join("images/cache/amd64");
    let deb = file_in(&amd64, |n| {
        n.starts_with("linux-image-") && n.ends_with(".deb")
    })?
    .with_context(|| {
        format!(
            "{}: no linux-image package (run `cargo xtask node fetch`)",
            amd64.display()
        )
    })?;
    let deb_name = deb
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let table = enlist::image::alias_table::path_beside(vmlinuz, release);
    if std::fs::read_to_string(&table).is_ok_and(|t| t.contains(&deb_name)) {
        return Ok(());
    }
    // Kept beside the kernel since the build; a kernel built before that has it in the tree.
    let listed = [
        cache.join(format!("modules.builtin-{release}")),
        root().join(t.tree).join("modules.builtin"),
    ];
    let builtin = listed
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .with_context(|| {
            format!(
                "{}: missing; rebuild the kernel (remove {})",
                listed[0].display(),
                cache.join("vmlinuz.built-from").display()
            )
        })?;
    let (text, without) = enlist::image::build::builtin_alias_table(&deb, &builtin)?;
    let ethernet = without.iter().filter(|n| {
        builtin
            .lines()
            .any(|l| l.contains("/ethernet/") && l.replace('-', "_").ends_with(&format!("/{n}.ko")))
    });
    eprintln!(
        "xtask: {} ({} PCI patterns; Ethernet drivers without one: {})",
        table.display(),
        text.lines().filter(|l| l.starts_with("alias ")).count(),
        ethernet.cloned().collect::<Vec<_>>().join(" ")
    );
    std::fs::write(&table, text)?;
    Ok(())
}

/// A file in `dir` whose name satisfies `wanted`, if any.
fn file_in(dir: &Path, wanted: impl Fn(&str) -> bool) -> std::io::Result<Option<PathBuf>> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if wanted(&e.file_name().to_string_lossy()) {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}

pub fn agent_path(target: &str) -> PathBuf {
    root().join(format!("target/node/{target}/node/enlist-agent"))
}

/// `cargo build` of the agent for `target` with the size-tuned `node` profile, static so it
/// needs no libc on the node. The i586 build targets the Pentium II (MMX, no SSE/SSE2).
fn agent_build(target: &str, target_dir: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root())
        .args([
            "build",
            "--profile",
            "node",
            "--target",
            target,
            "-p",
            "enlist-agent",
        ])
        .args(["--target-dir", target_dir]);
    if target.starts_with("i586") {
        c.env("CARGO_TARGET_I586_UNKNOWN_LINUX_GNU_LINKER", "gcc")
            .env(
                "RUSTFLAGS",
                "-C target-cpu=pentium2 -C target-feature=+crt-static -C link-arg=-m32",
            );
    } else {
        c.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    c
}

fn agent() -> anyhow::Result<()> {
    sh(&mut agent_build("i586-unknown-linux-gnu", "target/node"))?;
    sh(&mut agent_build("x86_64-unknown-linux-gnu", "target/node"))?;
    let i586 = agent_path("i586-unknown-linux-gnu");
    let v = output(
        Command::new("qemu-i386")
            .args(["-cpu", "pentium2"])
            .arg(&i586)
            .arg("--version"),
    )?;
    eprintln!(
        "xtask: {} on qemu-i386 -cpu pentium2: {}",
        i586.display(),
        v.trim()
    );
    Ok(())
}

fn images() -> anyhow::Result<()> {
    build_head()?;
    for r in ["images/i586.yaml", "images/x86_64.yaml"] {
        sh(Command::new(enlist_bin())
            .current_dir(root())
            .args(["image", "build", r]))?;
    }
    Ok(())
}

/// Disassemble an unstripped i586 build of the agent and list every function that touches an
/// SSE register. glibc's string functions have SSE2 variants that it only selects at run time on
/// CPUs that have SSE2 (IFUNC); everything else, our code included, must have none.
pub fn check_sse() -> anyhow::Result<()> {
    let dir = "target/node-check";
    sh(agent_build("i586-unknown-linux-gnu", dir).env("CARGO_PROFILE_NODE_STRIP", "false"))?;
    let bin = root()
        .join(dir)
        .join("i586-unknown-linux-gnu/node/enlist-agent");
    let asm = output(
        Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&bin),
    )?;
    let mut func = String::new();
    let mut ours = std::collections::BTreeSet::new();
    let mut glibc_variants = std::collections::BTreeSet::new();
    for line in asm.lines() {
        if let Some(name) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .map(|(_, n)| n)
        {
            func = name.to_string();
        } else if line.contains("%xmm") {
            let variant = ["sse2", "ssse3", "sse4", "avx", "evex"]
                .iter()
                .any(|v| func.contains(v));
            if variant {
                glibc_variants.insert(func.clone());
            } else {
                ours.insert(func.clone());
            }
        }
    }
    println!("SSE register use in {}:", bin.display());
    println!(
        "  glibc run-time-selected variants (never run on a Pentium II): {}",
        glibc_variants.len()
    );
    println!("  other functions: {}", ours.len());
    for f in &ours {
        println!("    {f}");
    }
    if !ours.is_empty() {
        bail!(
            "{} functions outside glibc's SSE variants use SSE registers",
            ours.len()
        );
    }
    check_runtime_on_pentium2()
}

/// The i586 image's Slurm runtime (Debian's i386 slurmd and munged, with their libraries and
/// loader from the bundle) starts on an emulated Pentium II: no instruction it lacks on the
/// way in. The jobs tests run them for real on `-cpu pentium2` PCs.
fn check_runtime_on_pentium2() -> anyhow::Result<()> {
    let images = root().join("images/out/i586");
    let version = std::fs::read_to_string(images.join("current"))
        .context("no i586 image: run `cargo xtask node images`")?;
    let bundle = images.join(version.trim()).join("jobs-runtime.sqfs");
    let dir = root().join("target/node-check/runtime");
    let _ = std::fs::remove_dir_all(&dir);
    sh(Command::new("unsquashfs")
        .args(["-q", "-no-progress", "-d"])
        .arg(&dir)
        .arg(&bundle))?;
    let libs = [
        "lib/i386-linux-gnu",
        "usr/lib/i386-linux-gnu",
        "usr/lib/i386-linux-gnu/slurm-wlm",
    ]
    .map(|l| dir.join(l).display().to_string())
    .join(":");
    for (program, arg) in [("usr/sbin/slurmd", "-V"), ("usr/sbin/munged", "--version")] {
        let out = output(
            Command::new("qemu-i386")
                .args(["-cpu", "pentium2", "-L"])
                .arg(&dir)
                .args(["-E", &format!("LD_LIBRARY_PATH={libs}")])
                .arg(dir.join(program))
                .arg(arg),
        )?;
        println!(
            "  {program} {arg} on qemu-i386 -cpu pentium2: {}",
            out.trim()
        );
    }
    Ok(())
}
