//! `enlist admin ...`: the admin password.

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
}

pub fn run(config: &Path, cmd: AdminCmd) -> anyhow::Result<()> {
    let cfg = enlist::config::Config::load(config)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create {}", cfg.state_dir.display()))?;
    let store = enlist::store::Store::open(&cfg.database_path())?;
    match cmd {
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
