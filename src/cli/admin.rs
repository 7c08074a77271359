//! `enlist admin ...`: the admin password, backups of the database.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Set the dashboard password (read from stdin; with --random, generate and print one).
    SetPassword {
        #[arg(long)]
        random: bool,
    },
    /// Copy the database (leases, nodes, events, the head's secret, the password hash) to FILE,
    /// consistently, while the head runs. Keep it as secret as the state folder.
    Backup { file: std::path::PathBuf },
    /// Put a backup in place of the database. Stop the head first.
    Restore { file: std::path::PathBuf },
}

pub fn run(config: &Path, cmd: AdminCmd) -> anyhow::Result<()> {
    let cfg = enlist::config::Config::load(config)?;
    enlist::store::private_dir(&cfg.state_dir)
        .with_context(|| format!("cannot create {}", cfg.state_dir.display()))?;
    if let AdminCmd::Restore { file } = &cmd {
        let _lock = enlist::head::lock_state_dir(&cfg.state_dir)?;
        enlist::store::Store::restore(file, &cfg.database_path())?;
        eprintln!(
            "restored {} from {}",
            cfg.database_path().display(),
            file.display()
        );
        return Ok(());
    }
    let store = enlist::store::Store::open(&cfg.database_path())?;
    match cmd {
        AdminCmd::Backup { file } => {
            anyhow::ensure!(!file.exists(), "{} exists; name a new file", file.display());
            // Made 0600 before the first byte: it holds the head's secret and the password hash.
            store.backup(&file)?;
            eprintln!(
                "backup of {} in {}",
                cfg.database_path().display(),
                file.display()
            );
            Ok(())
        }
        AdminCmd::Restore { .. } => Ok(()),
        AdminCmd::SetPassword { random } => {
            let password = if random {
                let p = enlist::registry::random_token()[..16].to_string();
                println!("{p}");
                p
            } else {
                eprintln!("new admin password (one line on stdin):");
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password")?;
                let p = line.trim_end_matches(['\r', '\n']).to_string();
                anyhow::ensure!(p.len() >= 8, "the password must have at least 8 characters");
                p
            };
            enlist::http::auth::set_password(&store, &password)?;
            eprintln!("admin password set in {}", cfg.database_path().display());
            Ok(())
        }
    }
}
