//! `enlist image build`: assemble a node OS image from Debian packages, the agent and the files
//! under `initramfs/`, then publish it atomically.
//!
//! The initramfs is a newc cpio compressed with gzip or xz (CRC32 check, which is what the
//! kernel's decompressor accepts). Its length is padded to a multiple of 4 so the per-node cpio
//! the head appends starts aligned, as the kernel's unpacker expects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::alias_table::module_name;
use super::cpio::Archive;
use super::deb::{self, Entry};
use super::error::{io_at, BuildError};
use super::manifest::{
    BundleRecord, DriverAlias, FileRecord, Manifest, PackageRecord, BUNDLE_FILE,
};
use super::packages::find_package;
use super::recipe::{Compression, Recipe};
use super::store::ImageStore;

pub struct Built {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// The recipe's size budget for vmlinuz + initrd, if it has one.
    pub max_bytes: Option<u64>,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The Debian package a file pattern names (`busybox-static_*_i386.deb` is
/// `busybox-static:i386`), for `apt-get download`; `None` if the pattern leaves the name open.
pub(super) fn package_of(pattern: &str) -> Option<String> {
    let name = package_name(pattern)?;
    let (_, rest) = pattern.strip_suffix(".deb")?.split_once('_')?;
    let arch = rest
        .rsplit('_')
        .next()
        .filter(|a| !a.contains('*') && *a != "all");
    Some(match arch {
        Some(a) => format!("{name}:{a}"),
        None => name.to_string(),
    })
}

/// The Debian package a .deb file name or pattern names (`busybox-static_*_i386.deb` and
/// `busybox-static_1%3a1.35.0_i386.deb` are `busybox-static`); `None` if it leaves the name
/// open (`linux-image-*-amd64_*.deb`).
pub fn package_name(pattern: &str) -> Option<&str> {
    let (name, _) = pattern.strip_suffix(".deb")?.split_once('_')?;
    (!name.is_empty() && !name.contains('*')).then_some(name)
}

/// Download every package of the recipe that `dir` does not hold yet (`download: true`).
fn download_missing(dir: &Path, r: &Recipe, log: &mut dyn FnMut(&str)) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let mut patterns = vec![&r.kernel, &r.busybox];
    if let Some(j) = &r.jobs {
        patterns.extend(j.packages.iter());
    }
    for pattern in patterns.into_iter().filter(|p| p.ends_with(".deb")) {
        if find_package(dir, pattern).is_ok() {
            continue;
        }
        let Some(pkg) = package_of(pattern) else {
            return Err(BuildError::Download {
                pattern: pattern.clone(),
                why: "the pattern does not name one package".into(),
            });
        };
        log(&format!("downloading     {pkg} (apt-get download)"));
        let out = std::process::Command::new("apt-get")
            .current_dir(dir)
            .args(["download", "-q", &pkg])
            .output()
            .map_err(io_at(dir))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(BuildError::Download {
                pattern: pattern.clone(),
                why: format!(
                    "{why} (for i386 packages: dpkg --add-architecture i386 && apt-get update)"
                ),
            });
        }
    }
    Ok(())
}

/// Module directories whose contents we keep in memory while reading the kernel package: NIC
/// drivers and the library code they depend on. Dependencies outside these are reported.
const MODULE_DIRS: [&str; 20] = [
    // The jobs: the runtime bundle (a squashfs on a loop device) and the NFSv4 home.
    "kernel/fs/",
    // USB host controllers and their core, for PCs whose only card is a USB Ethernet adapter.
    "kernel/drivers/usb/",
    "kernel/drivers/block/",
    "kernel/security/",
    "kernel/drivers/i2c/",
    "kernel/drivers/hwmon/",
    "kernel/drivers/net/",
    "kernel/net/",
    "kernel/lib/",
    "kernel/crypto/",
    "kernel/drivers/virtio/",
    "kernel/drivers/ptp/",
    "kernel/drivers/pps/",
    "kernel/drivers/dca/",
    "kernel/drivers/pcmcia/",
    "kernel/drivers/mtd/",
    "kernel/drivers/pci/controller/",
    "kernel/drivers/uio/",
    "kernel/drivers/ssb/",
    "kernel/drivers/mmc/core/",
];

struct ModuleFile {
    /// Path below /lib/modules/<kver>/.
    rel: String,
    depends: Vec<String>,
    /// Device patterns the module drives (`alias=` in `.modinfo`, e.g. `pci:v00008086d00001229sv*sd*bc*sc*i*`).
    aliases: Vec<String>,
    data: Option<Vec<u8>>,
}

fn decompress_module(path: &str, raw: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if path.ends_with(".xz") {
        liblzma::read::XzDecoder::new(&raw[..]).read_to_end(&mut out)?;
    } else if path.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&raw[..])?.read_to_end(&mut out)?;
    } else {
        return Ok(raw);
    }
    Ok(out)
}

/// The values of `key=` entries in a module's `.modinfo` section.
fn modinfo(elf: &[u8], key: &str) -> Vec<String> {
    use object::{Object, ObjectSection};
    let Ok(file) = object::File::parse(elf) else {
        return vec![];
    };
    let Some(data) = file.section_by_name(".modinfo").and_then(|s| s.data().ok()) else {
        return vec![];
    };
    let prefix = format!("{key}=");
    data.split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// The `depends=` list from a module's `.modinfo` section.
fn module_depends(elf: &[u8]) -> Vec<String> {
    modinfo(elf, "depends")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().replace('-', "_"))
        .filter(|s| !s.is_empty())
        .collect()
}

struct Kernel {
    version: String,
    vmlinuz: Vec<u8>,
    modules: HashMap<String, ModuleFile>,
    builtin: BTreeSet<String>,
    /// The devices of the drivers built into a kernel image, from the table beside it.
    builtin_drivers: Vec<DriverAlias>,
}

fn read_kernel(deb_path: &Path) -> Result<Kernel, BuildError> {
    let mut vmlinuz = None;
    let mut version = None;
    let mut modules = HashMap::new();
    let mut builtin = BTreeSet::new();
    deb::for_each_file(deb_path, |path, entry| {
        let Entry::File { data: r, .. } = entry else {
            return Ok(true);
        };
        if let Some(v) = path.strip_prefix("boot/vmlinuz-") {
            let mut b = Vec::new();
            r.read_to_end(&mut b)?;
            vmlinuz = Some(b);
            version = Some(v.to_string());
            return Ok(true);
        }
        let Some(rest) = path
            .strip_prefix("lib/modules/")
            .or_else(|| path.strip_prefix("usr/lib/modules/"))
        else {
            return Ok(true);
        };
        let Some((_kver, rel)) = rest.split_once('/') else {
            return Ok(true);
        };
        if rel == "modules.builtin" {
            let mut s = String::new();
            r.read_to_string(&mut s)?;
            builtin.extend(s.lines().filter_map(module_name));
            return Ok(true);
        }
        let Some(name) = module_name(rel) else {
            return Ok(true);
        };
        let mut raw = Vec::new();
        r.read_to_end(&mut raw)?;
        let elf = decompress_module(rel, raw)?;
        let depends = module_depends(&elf);
        let aliases = modinfo(&elf, "alias");
        let keep = MODULE_DIRS.iter().any(|d| rel.starts_with(d));
        let rel_plain = rel
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        modules.insert(
            name,
            ModuleFile {
                rel: rel_plain,
                depends,
                aliases,
                data: keep.then_some(elf),
            },
        );
        Ok(true)
    })?;
    let missing = |what: &str| BuildError::Missing {
        deb: deb_path.into(),
        what: what.into(),
    };
    Ok(Kernel {
        version: version.ok_or_else(|| missing("boot/vmlinuz-*"))?,
        vmlinuz: vmlinuz.ok_or_else(|| missing("boot/vmlinuz-*"))?,
        modules,
        builtin,
        builtin_drivers: Vec::new(),
    })
}

/// A kernel image on its own (`vmlinuz-<release>`, from `cargo xtask node kernel`): its
/// drivers are built in, so it comes with no modules, and with the table of their devices
/// when one lies beside it.
fn read_bare_kernel(path: &Path) -> Result<Kernel, BuildError> {
    let version = super::alias_table::kernel_release(path)
        .ok_or_else(|| BuildError::KernelName { path: path.into() })?;
    let table = super::alias_table::path_beside(path, version);
    let builtin_drivers = match std::fs::read_to_string(&table) {
        Ok(text) => super::alias_table::parse(&text, &table)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_at(&table)(e)),
    };
    Ok(Kernel {
        version: version.to_string(),
        vmlinuz: std::fs::read(path).map_err(io_at(path))?,
        modules: HashMap::new(),
        builtin: BTreeSet::new(),
        builtin_drivers,
    })
}

/// The device table for a kernel image whose drivers are those `modules_builtin` (its
/// build's `modules.builtin`) lists, from the same drivers' patterns as modules in the
/// Debian kernel package `kernel_deb` of the same release. Returns the text for
/// [`super::alias_table::path_beside`] and the built-in drivers without a PCI pattern.
pub fn builtin_alias_table(
    kernel_deb: &Path,
    modules_builtin: &str,
) -> Result<(String, Vec<String>), BuildError> {
    let k = read_kernel(kernel_deb)?;
    let source = kernel_deb.file_name().map_or_else(
        || kernel_deb.display().to_string(),
        |f| f.to_string_lossy().to_string(),
    );
    Ok(super::alias_table::render(
        modules_builtin,
        |name| k.modules.get(name).map(|m| m.aliases.clone()),
        &source,
    ))
}

/// The recipe's module list with each folder entry (ending in `/`, e.g.
/// `kernel/drivers/net/ethernet/`) replaced by every module under it, by name.
fn listed_modules(k: &Kernel, entries: &[String], deb: &Path) -> Result<Vec<String>, BuildError> {
    let mut out = Vec::new();
    for e in entries {
        if !e.ends_with('/') {
            out.push(e.clone());
            continue;
        }
        let mut under: Vec<String> = k
            .modules
            .iter()
            .filter(|(_, m)| m.rel.starts_with(e.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        if under.is_empty() {
            return Err(BuildError::NoModule {
                module: format!("any module under {e}"),
                needed_by: "the recipe".into(),
                deb: deb.into(),
            });
        }
        under.sort();
        out.extend(under);
    }
    Ok(out)
}

/// The wanted modules and their dependencies, dependencies first.
fn module_closure(k: &Kernel, wanted: &[String], deb: &Path) -> Result<Vec<String>, BuildError> {
    fn visit(
        k: &Kernel,
        name: &str,
        needed_by: &str,
        deb: &Path,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), BuildError> {
        let name = name.replace('-', "_");
        if seen.contains(&name) || k.builtin.contains(&name) {
            return Ok(());
        }
        seen.insert(name.clone());
        let m = k.modules.get(&name).ok_or_else(|| BuildError::NoModule {
            module: name.clone(),
            needed_by: needed_by.into(),
            deb: deb.into(),
        })?;
        for d in &m.depends {
            visit(k, d, &name, deb, seen, order)?;
        }
        order.push(name);
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for w in wanted {
        visit(k, w, "the recipe", deb, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// The buses whose device patterns go into `enlist.aliases`: init matches a PC's devices on
/// them (PCI cards and USB host controllers, virtio cards, USB Ethernet adapters).
const ALIAS_BUSES: [&str; 3] = ["pci:", "virtio:", "usb:"];

/// The `enlist.aliases` table: the listed drivers' patterns on [`ALIAS_BUSES`], in load order.
fn driver_aliases(k: &Kernel, order: &[String], listed: &[String]) -> String {
    let listed: BTreeSet<String> = listed.iter().map(|m| m.replace('-', "_")).collect();
    let mut out = String::new();
    for name in order.iter().filter(|n| listed.contains(*n)) {
        let m = &k.modules[name];
        for a in m
            .aliases
            .iter()
            .filter(|a| ALIAS_BUSES.iter().any(|bus| a.starts_with(bus)))
        {
            out.push_str(&format!("{a} {}\n", m.rel));
        }
    }
    out
}

fn read_busybox(deb_path: &Path) -> Result<Vec<u8>, BuildError> {
    let mut found = None;
    deb::for_each_file(deb_path, |path, entry| {
        if let (true, Entry::File { data: r, .. }) =
            (path == "bin/busybox" || path == "usr/bin/busybox", entry)
        {
            let mut b = Vec::new();
            r.read_to_end(&mut b)?;
            found = Some(b);
            return Ok(false);
        }
        Ok(true)
    })?;
    found.ok_or_else(|| BuildError::Missing {
        deb: deb_path.into(),
        what: "bin/busybox".into(),
    })
}

/// Add every file under `dir` to the archive at the same relative path, keeping the mode.
fn add_tree(a: &mut Archive, dir: &Path, prefix: &str) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_at(dir))?
        .collect::<Result<_, _>>()
        .map_err(io_at(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
        if meta.is_dir() {
            a.dir(&rel).map_err(io_at(&path))?;
            add_tree(a, &path, &rel)?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_at(&path))?;
            a.symlink(&rel, &target.to_string_lossy())
                .map_err(io_at(&path))?;
        } else {
            let data = std::fs::read(&path).map_err(io_at(&path))?;
            a.file(&rel, meta.permissions().mode() & 0o7777, &data)
                .map_err(io_at(&path))?;
        }
    }
    Ok(())
}

fn compress(data: &[u8], how: Compression) -> Result<Vec<u8>, BuildError> {
    let mut out = match how {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(data).map_err(BuildError::Compress)?;
            e.finish().map_err(BuildError::Compress)?
        }
        Compression::Xz => {
            // The kernel's xz decoder supports CRC32 (not the default CRC64) and needs a
            // dictionary no larger than it can allocate early in boot; 1 MiB is safe.
            let mut opts = liblzma::stream::LzmaOptions::new_preset(9)
                .map_err(|e| BuildError::Compress(e.into()))?;
            opts.dict_size(1 << 20);
            let mut filters = liblzma::stream::Filters::new();
            filters.x86();
            filters.lzma2(&opts);
            let stream = liblzma::stream::Stream::new_stream_encoder(
                &filters,
                liblzma::stream::Check::Crc32,
            )
            .map_err(|e| BuildError::Compress(e.into()))?;
            let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
            e.write_all(data).map_err(BuildError::Compress)?;
            e.finish().map_err(BuildError::Compress)?
        }
        Compression::Zstd => {
            // One frame with the input size in its header, so the window (and the kernel's
            // decoding workspace) is no larger than the initrd itself.
            zstd::bulk::compress(data, 19).map_err(BuildError::Compress)?
        }
    };
    while out.len() % 4 != 0 {
        out.push(0);
    }
    Ok(out)
}

/// The modules in `order` under /lib/modules/<release>/, with the tables init reads:
/// `modules.dep`, `enlist.load-order` and `enlist.aliases`.
fn add_modules(
    a: &mut Archive,
    kernel: &Kernel,
    order: &[String],
    listed: &[String],
    kernel_deb: &Path,
    recipe_path: &Path,
) -> Result<(), BuildError> {
    let moddir = format!("lib/modules/{}", kernel.version);
    let mut dep_lines = String::new();
    let mut load_order = String::new();
    for name in order {
        let m = &kernel.modules[name];
        let data = m.data.as_ref().ok_or_else(|| BuildError::NoModule {
            module: format!("{name} (outside the folders the builder reads: {})", m.rel),
            needed_by: "a listed module".into(),
            deb: kernel_deb.to_path_buf(),
        })?;
        a.file(&format!("{moddir}/{}", m.rel), 0o644, data)
            .map_err(io_at(kernel_deb))?;
        let deps: Vec<&str> = m
            .depends
            .iter()
            .filter_map(|d| kernel.modules.get(d).map(|f| f.rel.as_str()))
            .collect();
        dep_lines.push_str(&format!("{}: {}\n", m.rel, deps.join(" ")));
        load_order.push_str(&format!("{}\n", m.rel));
    }
    a.file(
        &format!("{moddir}/modules.dep"),
        0o644,
        dep_lines.as_bytes(),
    )
    .map_err(io_at(recipe_path))?;
    // Dependencies first: init loads them in this order with insmod when it cannot tell
    // which drivers the PC needs.
    a.file(
        &format!("{moddir}/enlist.load-order"),
        0o644,
        load_order.as_bytes(),
    )
    .map_err(io_at(recipe_path))?;
    // "<device pattern> <module>" for the drivers the recipe lists, in load order: init
    // matches the PC's PCI and virtio devices against it and loads only what it needs (a
    // dozen needless insmods cost a Pentium II about 2 s).
    let aliases = driver_aliases(kernel, order, listed);
    a.file(
        &format!("{moddir}/enlist.aliases"),
        0o644,
        aliases.as_bytes(),
    )
    .map_err(io_at(recipe_path))?;
    Ok(())
}

/// What a recipe names, read from the packages and files it points at.
struct Inputs {
    recipe: Recipe,
    /// The recipe's folder: its paths are relative to it.
    base: PathBuf,
    recipe_path: PathBuf,
    kernel_file: PathBuf,
    kernel: Kernel,
    /// The recipe's modules, a folder entry replaced by the modules under it.
    listed: Vec<String>,
    /// Modules to put in, dependencies first.
    order: Vec<String>,
    busybox_deb: PathBuf,
    busybox: Vec<u8>,
    agent_path: PathBuf,
    agent: Vec<u8>,
    /// The jobs' runtime, when the recipe has a `jobs:` section.
    bundle: Option<super::bundle::Bundle>,
}

/// The initrd, before and after compression.
struct Assembled {
    cpio: Vec<u8>,
    initrd: Vec<u8>,
}

/// Build the image described by the recipe at `recipe_path` and publish it.
pub fn build(recipe_path: &Path, log: &mut dyn FnMut(&str)) -> Result<Built, BuildError> {
    let inputs = read_inputs(recipe_path, log)?;
    let assembled = assemble(&inputs)?;
    let total = (inputs.kernel.vmlinuz.len() + assembled.initrd.len()) as u64;
    if let Some(max) = inputs.recipe.max_bytes {
        if total > max {
            return Err(BuildError::TooBig { size: total, max });
        }
    }
    let manifest = describe(&inputs, &assembled)?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(BuildError::Manifest)?;
    let r = &inputs.recipe;
    let store = ImageStore::new(inputs.base.join(&r.output));
    let mut files: Vec<(&str, &[u8])> = vec![
        ("vmlinuz", &inputs.kernel.vmlinuz),
        ("initrd", &assembled.initrd),
        ("manifest.json", &json),
    ];
    if let Some(b) = &inputs.bundle {
        files.push((BUNDLE_FILE, &b.squashfs));
    }
    let dir = store.publish(&r.name, &manifest.version, &files)?;
    Ok(Built {
        manifest,
        dir,
        max_bytes: r.max_bytes,
    })
}

/// Load the recipe and read its kernel (with the modules it lists), busybox and agent.
fn read_inputs(recipe_path: &Path, log: &mut dyn FnMut(&str)) -> Result<Inputs, BuildError> {
    let (recipe, base) = Recipe::load(recipe_path)?;
    let pkg_dir = base.join(&recipe.packages);
    if recipe.download {
        download_missing(&pkg_dir, &recipe, log)?;
    }
    let kernel_file = find_package(&pkg_dir, &recipe.kernel)?;
    let busybox_deb = find_package(&pkg_dir, &recipe.busybox)?;
    log(&format!("kernel          {}", kernel_file.display()));
    log(&format!("busybox package {}", busybox_deb.display()));
    let kernel = if kernel_file.extension().is_some_and(|e| e == "deb") {
        read_kernel(&kernel_file)?
    } else if recipe.modules.is_empty() {
        read_bare_kernel(&kernel_file)?
    } else {
        return Err(BuildError::ModulesWithoutPackage {
            kernel: kernel_file,
            modules: recipe.modules.clone(),
        });
    };
    let listed = listed_modules(&kernel, &recipe.modules, &kernel_file)?;
    let order = module_closure(&kernel, &listed, &kernel_file)?;
    let busybox = read_busybox(&busybox_deb)?;
    let agent_path = base.join(&recipe.agent);
    let agent = std::fs::read(&agent_path).map_err(|_| BuildError::NoAgent {
        path: agent_path.clone(),
    })?;
    let bundle = match &recipe.jobs {
        Some(spec) => Some(super::bundle::build(&pkg_dir, spec, log)?),
        None => None,
    };
    Ok(Inputs {
        recipe,
        base,
        recipe_path: recipe_path.to_path_buf(),
        kernel_file,
        kernel,
        listed,
        order,
        busybox_deb,
        busybox,
        agent_path,
        agent,
        bundle,
    })
}

/// The initrd: the folders init expects, busybox, the agent, the modules and the rootfs trees.
fn assemble(i: &Inputs) -> Result<Assembled, BuildError> {
    // Fixed timestamps make the build reproducible: same inputs, same bytes, same version.
    let mut a = Archive::new(0);
    for d in [
        "dev", "proc", "sys", "tmp", "run", "root", "etc", "bin", "sbin", "usr/bin", "usr/sbin",
        "var/log",
    ] {
        a.dir(d).map_err(io_at(&i.recipe_path))?;
    }
    a.file("bin/busybox", 0o755, &i.busybox)
        .map_err(io_at(&i.busybox_deb))?;
    a.file("sbin/enlist-agent", 0o755, &i.agent)
        .map_err(io_at(&i.agent_path))?;
    if !i.order.is_empty() {
        add_modules(
            &mut a,
            &i.kernel,
            &i.order,
            &i.listed,
            &i.kernel_file,
            &i.recipe_path,
        )?;
    }
    for dir in &i.recipe.rootfs {
        add_tree(&mut a, &i.base.join(dir), "")?;
    }
    let cpio = a.finish().map_err(io_at(&i.recipe_path))?;
    let initrd = compress(&cpio, i.recipe.compression)?;
    Ok(Assembled { cpio, initrd })
}

fn file_record(name: &str, data: &[u8]) -> FileRecord {
    FileRecord {
        name: name.into(),
        bytes: data.len() as u64,
        sha256: sha256_hex(data),
    }
}

/// The manifest: what went in (packages by hash, modules) and what came out. The version is
/// the hash of what the head serves (kernel, initrd, bundle) and of the driver table it
/// checks cards against, so the same inputs give the same version.
fn describe(i: &Inputs, a: &Assembled) -> Result<Manifest, BuildError> {
    let drivers = drivers(&i.kernel, &i.order);
    let mut h = Sha256::new();
    h.update(&i.kernel.vmlinuz);
    h.update(&a.initrd);
    if let Some(b) = &i.bundle {
        h.update(&b.squashfs);
    }
    for d in &drivers {
        h.update(format!("{} {}\n", d.pattern, d.driver));
    }
    let version = hex::encode(&h.finalize()[..6]);
    let packages = package_records(&[&i.kernel_file, &i.busybox_deb])?;
    let bundle = match &i.bundle {
        Some(b) => Some(BundleRecord {
            file: BUNDLE_FILE.into(),
            bytes: b.squashfs.len() as u64,
            sha256: sha256_hex(&b.squashfs),
            packages: package_records(&b.packages.iter().collect::<Vec<_>>())?,
            contents: b.files.clone(),
        }),
        None => None,
    };
    let r = &i.recipe;
    Ok(Manifest {
        name: r.name.clone(),
        version,
        arch: r.arch.clone(),
        kernel_version: i.kernel.version.clone(),
        cmdline: r.cmdline.clone(),
        packages,
        modules: i.order.clone(),
        files: vec![
            file_record("vmlinuz", &i.kernel.vmlinuz),
            file_record("initrd", &a.initrd),
            file_record("agent", &i.agent),
            file_record("initrd (uncompressed cpio)", &a.cpio),
        ],
        drivers,
        bundle,
    })
}

/// The PCI patterns of the drivers the image carries: its modules', then the built-in ones'.
fn drivers(k: &Kernel, order: &[String]) -> Vec<DriverAlias> {
    let modules = order
        .iter()
        .filter_map(|n| k.modules.get(n).map(|m| (n, m)))
        .flat_map(|(name, m)| {
            m.aliases
                .iter()
                .filter(|a| a.starts_with("pci:"))
                .map(move |a| DriverAlias {
                    pattern: a.clone(),
                    driver: name.clone(),
                })
        });
    modules.chain(k.builtin_drivers.iter().cloned()).collect()
}

/// The packages that went in, by file name and hash.
fn package_records(paths: &[&PathBuf]) -> Result<Vec<PackageRecord>, BuildError> {
    paths
        .iter()
        .map(|p| {
            let data = std::fs::read(p).map_err(io_at(p))?;
            Ok(PackageRecord {
                file: p
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default(),
                sha256: sha256_hex(&data),
            })
        })
        .collect()
}

/// Sizes as a table, next to the recipe's budget (8 MB for the original cluster's PCs).
pub fn size_report(m: &Manifest, budget: Option<u64>) -> String {
    let get = |n: &str| {
        m.files
            .iter()
            .find(|f| f.name == n)
            .map(|f| f.bytes)
            .unwrap_or(0)
    };
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let (k, i) = (get("vmlinuz"), get("initrd"));
    let mut out = BTreeMap::new();
    out.insert(
        0,
        format!(
            "image {} {} (kernel {})",
            m.name, m.version, m.kernel_version
        ),
    );
    out.insert(
        1,
        format!("  vmlinuz          {:>10} bytes  {:>6.2} MiB", k, mb(k)),
    );
    out.insert(
        2,
        format!("  initrd           {:>10} bytes  {:>6.2} MiB", i, mb(i)),
    );
    let verdict = match budget {
        Some(b) if k + i <= b => format!("  (budget {:.2} MiB: within)", mb(b)),
        Some(b) => format!("  (budget {:.2} MiB: OVER)", mb(b)),
        None => String::new(),
    };
    out.insert(
        3,
        format!(
            "  total            {:>10} bytes  {:>6.2} MiB{verdict}",
            k + i,
            mb(k + i)
        ),
    );
    out.insert(4, format!("  agent            {:>10} bytes", get("agent")));
    let modules = if m.modules.is_empty() {
        "none (drivers built into the kernel)".to_string()
    } else {
        m.modules.join(" ")
    };
    out.insert(5, format!("  modules          {modules}"));
    // What the head checks a booting PC's card against; none means it cannot tell.
    let drivers: BTreeSet<&str> = m.drivers.iter().map(|d| d.driver.as_str()).collect();
    let cards = if drivers.is_empty() {
        "unknown: no driver table (a kernel image needs modules.alias-<release> beside it)"
            .to_string()
    } else {
        format!(
            "{} PCI patterns of {} drivers",
            m.drivers.len(),
            drivers.len()
        )
    };
    out.insert(6, format!("  cards            {cards}"));
    if let Some(b) = &m.bundle {
        out.insert(
            7,
            format!(
                "  jobs runtime     {:>10} bytes  {:>6.2} MiB (downloaded when a node joins the scheduler)",
                b.bytes,
                mb(b.bytes)
            ),
        );
    }
    out.into_values().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_names_the_package_apt_downloads() {
        assert_eq!(
            package_of("busybox-static_*_i386.deb").as_deref(),
            Some("busybox-static:i386")
        );
        assert_eq!(
            package_of("linux-image-6.1.0-41-amd64_*.deb").as_deref(),
            Some("linux-image-6.1.0-41-amd64")
        );
        assert_eq!(
            package_of("linux-source-6.1_*_all.deb").as_deref(),
            Some("linux-source-6.1")
        );
        assert_eq!(
            package_of("linux-image-*-amd64_*.deb"),
            None,
            "the name is left open"
        );
        assert_eq!(package_of("vmlinuz-*-enlist"), None, "not a package");
    }

    /// A recipe in a fresh folder whose package folder holds `files` (contents irrelevant).
    fn recipe_with(kernel: &str, modules: &str, files: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("pkgs")).expect("mkdir");
        for f in files {
            std::fs::write(dir.path().join("pkgs").join(f), b"MZ kernel").expect("write");
        }
        let recipe = dir.path().join("r.yaml");
        std::fs::write(
            &recipe,
            format!(
                "name: t\narch: i386\npackages: pkgs\nkernel: {kernel:?}\n\
                 busybox: \"busybox-static_*.deb\"\nmodules: {modules}\nagent: agent\noutput: out\n"
            ),
        )
        .expect("write recipe");
        (dir, recipe)
    }

    #[test]
    fn a_kernel_image_gives_its_release_from_the_file_name_and_no_modules() {
        let (dir, _) = recipe_with("x", "[]", &["vmlinuz-6.1.176-enlist", "vmlinuz-"]);
        let k = read_bare_kernel(&dir.path().join("pkgs/vmlinuz-6.1.176-enlist")).expect("read");
        assert_eq!(k.version, "6.1.176-enlist");
        assert_eq!(k.vmlinuz, b"MZ kernel");
        assert!(k.modules.is_empty());
        let err = read_bare_kernel(&dir.path().join("pkgs/vmlinuz-")).err();
        assert!(
            matches!(err, Some(BuildError::KernelName { .. })),
            "{err:?}"
        );
        assert!(k.builtin_drivers.is_empty(), "no table beside it");
    }

    #[test]
    fn a_kernel_image_brings_the_device_table_beside_it_into_the_manifest() {
        let (dir, _) = recipe_with("x", "[]", &["vmlinuz-6.1.176-enlist"]);
        let table = dir.path().join("pkgs/modules.alias-6.1.176-enlist");
        std::fs::write(
            &table,
            "# made by xtask\nalias pci:v00001011d00000019sv*sd*bc*sc*i* tulip\n\
             alias isa:3c509 3c509\n",
        )
        .expect("write table");
        let k = read_bare_kernel(&dir.path().join("pkgs/vmlinuz-6.1.176-enlist")).expect("read");
        assert_eq!(
            drivers(&k, &[]),
            [DriverAlias {
                pattern: "pci:v00001011d00000019sv*sd*bc*sc*i*".into(),
                driver: "tulip".into(),
            }]
        );
        std::fs::write(&table, "alias pci:v00001011d00000019sv*sd*bc*sc*i*\n").expect("write");
        let err = read_bare_kernel(&dir.path().join("pkgs/vmlinuz-6.1.176-enlist"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err,
            Some(format!(
                "{}:1: expected `alias <pattern> <driver>`, found \"alias pci:v00001011d00000019sv*sd*bc*sc*i*\"",
                table.display()
            ))
        );
    }

    #[test]
    fn modules_listed_for_a_kernel_image_are_refused_naming_the_kernel() {
        let (_dir, recipe) = recipe_with(
            "vmlinuz-*-enlist",
            "[e100]",
            &["vmlinuz-6.1.176-enlist", "busybox-static_1_i386.deb"],
        );
        let err = build(&recipe, &mut |_| {}).err().expect("must fail");
        let text = err.to_string();
        assert!(
            matches!(err, BuildError::ModulesWithoutPackage { .. })
                && text.contains("vmlinuz-6.1.176-enlist")
                && text.contains("e100"),
            "{text}"
        );
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/drivers/net/ethernet/8390/ne2k-pci.ko").as_deref(),
            Some("ne2k_pci")
        );
        assert_eq!(
            module_name("kernel/drivers/net/ethernet/intel/e100.ko.xz").as_deref(),
            Some("e100")
        );
        assert_eq!(module_name("modules.dep"), None);
    }

    #[test]
    fn xz_output_has_crc32_check_and_is_aligned() {
        let data = vec![7u8; 10_000];
        let out = compress(&data, Compression::Xz).unwrap();
        assert_eq!(out.len() % 4, 0);
        // Stream flags (bytes 6-7 of the header): check type 0x01 = CRC32.
        assert_eq!(&out[..6], b"\xfd7zXZ\0");
        assert_eq!(out[7], 0x01);
        let mut back = Vec::new();
        liblzma::read::XzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn alias_table_lists_pci_virtio_and_usb_patterns_of_listed_drivers_only() {
        let module = |rel: &str, depends: &[&str], aliases: &[&str]| ModuleFile {
            rel: rel.into(),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            data: None,
        };
        let k = Kernel {
            version: "6.1".into(),
            vmlinuz: vec![],
            modules: HashMap::from([
                (
                    "mii".to_string(),
                    module("kernel/mii.ko", &[], &["pci:v0000FFFFd*sv*sd*bc*sc*i*"]),
                ),
                (
                    "e100".to_string(),
                    module(
                        "kernel/e100.ko",
                        &["mii"],
                        &["pci:v00008086d00001229sv*sd*bc*sc*i*", "of:N*T*Cfoo"],
                    ),
                ),
                (
                    "cdc_ether".to_string(),
                    module(
                        "kernel/cdc_ether.ko",
                        &["mii"],
                        &["usb:v*p*d*dc*dsc*dp*ic02isc06ip00in*", "acpi*:FOO:*"],
                    ),
                ),
            ]),
            builtin: BTreeSet::new(),
            builtin_drivers: Vec::new(),
        };
        let order = vec![
            "mii".to_string(),
            "e100".to_string(),
            "cdc_ether".to_string(),
        ];
        assert_eq!(
            driver_aliases(&k, &order, &["e100".to_string(), "cdc_ether".to_string()]),
            "pci:v00008086d00001229sv*sd*bc*sc*i* kernel/e100.ko\n\
             usb:v*p*d*dc*dsc*dp*ic02isc06ip00in* kernel/cdc_ether.ko\n",
            "dependencies are loaded through modules.dep, not matched themselves"
        );
    }

    #[test]
    fn zstd_output_declares_its_size_and_round_trips() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 97) as u8).collect();
        let out = compress(&data, Compression::Zstd).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&out).ok(),
            Some(Some(data.len() as u64)),
            "the kernel sizes its window from the frame header"
        );
        // The padding after the frame is zeros, which the kernel skips between archives.
        let frame = zstd::zstd_safe::find_frame_compressed_size(&out).unwrap();
        assert!(out[frame..].iter().all(|&b| b == 0));
        assert_eq!(
            zstd::bulk::decompress(&out[..frame], data.len()).unwrap(),
            data
        );
    }
}
