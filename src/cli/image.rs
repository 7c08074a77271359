//! `enlist image build RECIPE`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build an image from a recipe (images/*.yaml) and publish it.
    Build { recipe: PathBuf },
    /// The published images and their versions (which is current, when each was built).
    List {
        /// Print it as JSON (for scripts), not as a table.
        #[arg(long)]
        json: bool,
    },
    /// Make the version built before the current one of image NAME current again (PCs boot it
    /// from their next boot on; downloads in flight finish with the files they started with).
    Rollback { name: String },
}

pub fn run(config: &std::path::Path, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::List { json } => list(config, json),
        ImageCmd::Rollback { name } => {
            let store = store(config)?;
            let (from, to) = store.rollback(&name)?;
            println!("{name}: current {from} -> {to}");
            Ok(())
        }
        ImageCmd::Build { recipe } => {
            let built = enlist::image::build::build(&recipe, &mut |l| eprintln!("{l}"))?;
            println!(
                "{}",
                enlist::image::build::size_report(&built.manifest, built.max_bytes)
            );
            println!("  published in     {}", built.dir.display());
            Ok(())
        }
    }
}

/// The image store the config names (`images.dir`).
fn store(config: &std::path::Path) -> anyhow::Result<enlist::image::store::ImageStore> {
    let cfg = enlist::config::Config::load(config)?;
    Ok(enlist::image::store::ImageStore::new(&cfg.images.dir))
}

/// One published version of an image, as `image list --json` gives it.
#[derive(serde::Serialize)]
struct ImageVersion {
    image: String,
    version: String,
    current: bool,
    /// Unix seconds.
    built: i64,
    /// Kernel and initrd.
    bytes: u64,
}

fn list(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let store = store(config)?;
    let mut all = vec![];
    for name in store.names()? {
        let current = store.current(&name).unwrap_or_default();
        for (version, built) in store.versions(&name)?.into_iter().rev() {
            let bytes: u64 = ["vmlinuz", "initrd"]
                .iter()
                .filter_map(|f| store.file(&name, &version, f).ok())
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            all.push(ImageVersion {
                image: name.clone(),
                current: version == current,
                version,
                built: built
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
                bytes,
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no image is published in {}", store.dir().display());
    }
    let mut last = "";
    for v in &all {
        if v.image != last {
            println!("{}", v.image);
            last = &v.image;
        }
        let built = jiff::Timestamp::from_second(v.built)
            .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        let mark = if v.current { "current" } else { "" };
        println!(
            "  {:<14} {mark:<8} built {built}  kernel+initrd {:.1} MiB",
            v.version,
            v.bytes as f64 / 1048576.0
        );
    }
    Ok(())
}
