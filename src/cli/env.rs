//! `enlist env build|list|rollback`: the job environments (Debian userlands jobs run in).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use enlist::image::store::ImageStore;

#[derive(Subcommand)]
pub enum EnvCmd {
    /// Build a job environment from a recipe (images/env.yaml) with mmdebstrap and publish it:
    /// nodes that join the scheduler from then on run their jobs in it.
    Build {
        recipe: PathBuf,
        /// Build only this architecture of the recipe's (i386, amd64).
        #[arg(long)]
        arch: Option<String>,
    },
    /// The published environments and their versions (which is current, the packages asked).
    List,
    /// Make the version built before the current one of ARCH current again (for nodes that
    /// join from then on).
    Rollback { arch: String },
}

pub fn run(config: &Path, cmd: EnvCmd) -> anyhow::Result<()> {
    let cfg = enlist::config::Config::load(config)?;
    let store = ImageStore::new(&cfg.jobs.env_dir);
    match cmd {
        EnvCmd::Build { recipe, arch } => {
            let built =
                enlist::env::build(&recipe, &store, arch.as_deref(), &mut |l| eprintln!("{l}"))?;
            for b in built {
                println!(
                    "env {} {}: {} packages, slurmd {}, published in {}",
                    b.arch,
                    b.version,
                    b.packages,
                    b.slurmd,
                    b.dir.display()
                );
                match b.head_slurmctld {
                    Some(h) if h != b.slurmd => println!(
                        "  warning: the head's slurmctld is {h}: nodes with slurmd {} may not join (build from the head's Debian release)",
                        b.slurmd
                    ),
                    _ => {}
                }
            }
            Ok(())
        }
        EnvCmd::List => list(&store),
        EnvCmd::Rollback { arch } => {
            let (from, to) = store.rollback(&arch)?;
            println!("env {arch}: current {from} -> {to} (for nodes that join from now on)");
            Ok(())
        }
    }
}

fn list(store: &ImageStore) -> anyhow::Result<()> {
    let arches = store.names()?;
    if arches.is_empty() {
        println!(
            "no job environment is built in {} (enlist env build images/env.yaml); jobs run in the node OS",
            store.dir().display()
        );
    }
    for arch in arches {
        let current = store.current(&arch).unwrap_or_default();
        println!("{arch}");
        for (version, _) in store.versions(&arch)?.into_iter().rev() {
            let asked = store
                .manifest::<enlist::env::Manifest>(&arch, &version)
                .ok()
                .flatten()
                .map(|m| {
                    format!(
                        "{} packages; asked: {}",
                        m.installed.len(),
                        m.asked.join(" ")
                    )
                })
                .unwrap_or_default();
            let mark = if version == current { "current" } else { "" };
            println!("  {version:<16} {mark:<8} {asked}");
        }
    }
    Ok(())
}
