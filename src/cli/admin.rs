//! `enlist admin ...`: the admin password, backups of the database.

use std::io::{BufRead, IsTerminal};
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
                let p = read_secret("new admin password: ")?;
                anyhow::ensure!(p.len() >= 8, "the password must have at least 8 characters");
                if std::io::stdin().is_terminal() {
                    let again = read_secret("again: ")?;
                    anyhow::ensure!(again == p, "the two passwords differ; nothing changed");
                }
                p
            };
            enlist::http::auth::set_password(&store, &password)?;
            eprintln!("admin password set in {}", cfg.database_path().display());
            Ok(())
        }
    }
}

/// One line from stdin; from a terminal, typed without echo (as passwd(1) reads it).
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = if stdin.is_terminal() {
        eprint!("{prompt}");
        let t = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning echo off")?;
        Some(t)
    } else {
        eprintln!("{prompt}(one line on stdin)");
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
        eprintln!();
    }
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
