//! `enlist image build RECIPE`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build an image from a recipe (images/*.yaml) and publish it.
    Build { recipe: PathBuf },
    /// The published images and their versions (which is current, when each was built).
    List,
    /// Make the version built before the current one of image NAME current again (PCs boot it
    /// from their next boot on; downloads in flight finish with the files they started with).
    Rollback { name: String },
}

pub fn run(config: &std::path::Path, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::List => list(config),
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

fn list(config: &std::path::Path) -> anyhow::Result<()> {
    let store = store(config)?;
    let names = store.names()?;
    if names.is_empty() {
        println!("no image is published in {}", store.dir().display());
    }
    for name in names {
        let current = store.current(&name).unwrap_or_default();
        println!("{name}");
        for (version, built) in store.versions(&name)?.into_iter().rev() {
            let built = jiff::Timestamp::try_from(built)
                .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default();
            let size: u64 = ["vmlinuz", "initrd"]
                .iter()
                .filter_map(|f| store.file(&name, &version, f).ok())
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            let mark = if version == current { "current" } else { "" };
            println!(
                "  {version:<14} {mark:<8} built {built}  kernel+initrd {:.1} MiB",
                size as f64 / 1048576.0
            );
        }
    }
    Ok(())
}
