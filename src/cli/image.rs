//! `enlist image build RECIPE`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build an image from a recipe (images/*.yaml) and publish it.
    Build { recipe: PathBuf },
}

pub fn run(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
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
