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
    List {
        /// Print it as JSON (for scripts), not as a table.
        #[arg(long)]
        json: bool,
    },
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
        EnvCmd::List { json } => list(&store, json),
        EnvCmd::Rollback { arch } => {
            let (from, to) = store.rollback(&arch)?;
            println!("env {arch}: current {from} -> {to} (for nodes that join from now on)");
            Ok(())
        }
    }
}

/// One built version of a job environment, as `env list --json` gives it.
#[derive(serde::Serialize)]
struct EnvVersion {
    arch: String,
    version: String,
    current: bool,
    /// Packages installed, and those the recipe asked for.
    installed: usize,
    asked: Vec<String>,
}

fn list(store: &ImageStore, json: bool) -> anyhow::Result<()> {
    let mut all = vec![];
    for arch in store.names()? {
        let current = store.current(&arch).unwrap_or_default();
        for (version, _) in store.versions(&arch)?.into_iter().rev() {
            let m = store
                .manifest::<enlist::env::Manifest>(&arch, &version)
                .ok()
                .flatten();
            all.push(EnvVersion {
                arch: arch.clone(),
                current: version == current,
                version,
                installed: m.as_ref().map_or(0, |m| m.installed.len()),
                asked: m.map(|m| m.asked).unwrap_or_default(),
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!(
            "no job environment is built in {} (enlist env build images/env.yaml); jobs run in the node OS",
            store.dir().display()
        );
    }
    let mut last = "";
    for v in &all {
        if v.arch != last {
            println!("{}", v.arch);
            last = &v.arch;
        }
        let mark = if v.current { "current" } else { "" };
        println!(
            "  {:<16} {mark:<8} {} packages; asked: {}",
            v.version,
            v.installed,
            v.asked.join(" ")
        );
    }
    Ok(())
}
