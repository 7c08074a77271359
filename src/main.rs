//! The `enlist` command: the head service and the tools around it.

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "enlist",
    version,
    about = "Boot a room of ordinary PCs into a cluster over the network"
)]
struct Args {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = enlist::config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the head: DHCP, TFTP, HTTP, registry and dashboard.
    ///
    /// SIGHUP (systemctl reload enlist) reads the config file again: the reservations,
    /// nodes.enrollment and nodes.name_pattern take effect at once, with no lease or agent
    /// session dropped; other changed sections are named in the log and wait for a restart.
    /// SIGTERM or SIGINT stop the head.
    Serve,
    /// Validate a configuration file without serving (default: --config).
    CheckConfig { file: Option<PathBuf> },
    /// Build and publish node OS images.
    Image {
        #[command(subcommand)]
        cmd: cli::image::ImageCmd,
    },
    /// Build and publish the job environments (the Debian userland jobs run in).
    Env {
        #[command(subcommand)]
        cmd: cli::env::EnvCmd,
    },
    /// Write the 1.44 MB boot floppy image.
    Floppy(cli::floppy::FloppyArgs),
    /// Write the boot disk as a hybrid ISO for CD or USB stick.
    Usb(cli::floppy::FloppyArgs),
    /// List the nodes of a running head.
    Nodes {
        /// Print it as JSON (for scripts), not as a table.
        #[arg(long)]
        json: bool,
        /// Also what each PC and group lent: hours enlisted, hours running jobs, wakes.
        #[arg(long, short)]
        long: bool,
    },
    /// Act on one node of a running head.
    Node {
        #[command(subcommand)]
        cmd: cli::nodes::NodeCmd,
    },
    /// Wake a PC, or a group of PCs, by Wake-on-LAN.
    Wake {
        node: Option<String>,
        #[arg(long, conflicts_with = "node")]
        group: Option<String>,
    },
    /// Group schedules: list them (the default), skip a group's next change or run it now.
    Schedule {
        #[command(subcommand)]
        cmd: Option<cli::schedule::ScheduleCmd>,
    },
    /// Let new PCs join for a while, whatever the enrollment policy (`enlist enroll --for 15m`,
    /// then switch them on); without options, say whether a window is open.
    Enroll {
        /// How long the window stays open (at most a day): 15m, 1h.
        #[arg(long = "for", value_parser = humantime::parse_duration, conflicts_with = "close")]
        length: Option<std::time::Duration>,
        /// Close the window now.
        #[arg(long)]
        close: bool,
    },
    /// Run a shell command on many nodes at once (as clush): `enlist exec --all -b -- uname -m`.
    Exec(cli::exec::ExecArgs),
    /// Copy a file to many nodes at once (as pdcp): `enlist copy -w @lab101 motd /etc/motd`.
    /// Signed for each node, at most 1 MiB.
    Copy(cli::exec::CopyArgs),
    /// The jobs: `enlist jobs rotate-key` replaces the cluster's munge key.
    Jobs {
        #[command(subcommand)]
        cmd: cli::nodes::JobsCmd,
    },
    /// Administration of the head itself.
    Admin {
        #[command(subcommand)]
        cmd: cli::admin::AdminCmd,
    },
    /// Write the man page (enlist.1) and shell completions (bash, zsh, fish) into DIR; the
    /// packages are built with it.
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

fn main() -> std::process::ExitCode {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENLIST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Under systemd the journal stamps each line itself: no second time stamp.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }
    let args = Args::parse();
    if !matches!(args.cmd, Cmd::Serve) {
        // A command's output piped into `head` ends it quietly, as for any Unix tool (the
        // head itself keeps ignoring SIGPIPE: a socket closed under it is an error, not death).
        // SAFETY: set before any other thread exists; SIG_DFL installs no handler code.
        #[allow(unsafe_code)]
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enlist: {e:#}");
            // A configuration the head cannot run with: EX_CONFIG, which the systemd unit does
            // not restart on (RestartPreventExitStatus=78), so it is not a crash loop.
            let config = e.chain().any(|c| {
                c.is::<enlist::config::ConfigError>() || c.is::<enlist::jobs::JobsError>()
            });
            std::process::ExitCode::from(if config { 78 } else { 1 })
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Serve => cli::serve(&args.config),
        Cmd::GenerateDocs { dir } => generate_docs(&dir),
        Cmd::CheckConfig { file } => cli::check_config(&file.unwrap_or(args.config)),
        Cmd::Image { cmd } => cli::image::run(&args.config, cmd),
        Cmd::Env { cmd } => cli::env::run(&args.config, cmd),
        Cmd::Floppy(a) => cli::floppy::floppy(&args.config, a),
        Cmd::Usb(a) => cli::floppy::usb(&args.config, a),
        Cmd::Nodes { json, long } => cli::nodes::list(&args.config, json, long),
        Cmd::Node { cmd } => cli::nodes::act(&args.config, cmd),
        Cmd::Admin { cmd } => cli::admin::run(&args.config, cmd),
        Cmd::Wake { node, group } => cli::nodes::wake(&args.config, node, group),
        Cmd::Schedule { cmd } => cli::schedule::run(&args.config, cmd),
        Cmd::Enroll { length, close } => cli::nodes::enroll(&args.config, length, close),
        Cmd::Jobs { cmd } => cli::nodes::jobs(&args.config, cmd),
        Cmd::Exec(a) => exit_with(cli::exec::run(&args.config, a)?),
        Cmd::Copy(a) => exit_with(cli::exec::copy(&args.config, a)?),
    }
}

/// Exit with `rc` if it is not 0 (exec's and copy's codes).
fn exit_with(rc: i32) -> anyhow::Result<()> {
    if rc != 0 {
        std::process::exit(rc);
    }
    Ok(())
}

/// The EXIT STATUS section of a man page (roff), for subcommand `sub` (`""`: enlist itself).
fn exit_status(sub: &str) -> String {
    let item = |code: &str, what: &str| format!(".TP\n\\fB{code}\\fR\n{what}\n");
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    s += &item("0", "Success.");
    s += &item(
        "1",
        "An error; the message on standard error says what failed, and where.",
    );
    s += &item(
        "78",
        "A configuration the head cannot run with (EX_CONFIG): the message names the file, line \
         and column. The systemd unit does not restart on it.",
    );
    if sub == "exec" || sub.is_empty() {
        s += ".PP\n\\fBenlist exec\\fR exits 0 whatever the commands did, unless \\fB-S\\fR is given; \
              with \\fB-S\\fR it exits with the largest of the nodes' codes:\n";
        s += &item("N", "the largest exit code of a node's command;");
        s += &item("124", "a node's command timed out;");
        s += &item("128+N", "a node's command was killed by signal N;");
        s += &item("255", "a node was unreachable (down, or died meanwhile).");
    }
    if sub == "copy" || sub.is_empty() {
        s += ".PP
\\fBenlist copy\\fR exits with the largest of the nodes' codes:\n";
        s += &item("0", "every node wrote the file;");
        s += &item("1", "a node could not fetch or write it (its message says why), or the file could not be read here;");
        s += &item("255", "a node was unreachable.");
    }
    s
}

/// The man page and the shell completions, made from the clap definitions above (one source).
fn generate_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Args::command();
    let mut page = vec![];
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .context("man page")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut part = vec![];
        let name = format!("enlist-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone().name(name.clone()))
            .render(&mut part)
            .with_context(|| format!("man page of {name}"))?;
        part.extend(exit_status(sub.get_name()).as_bytes());
        std::fs::write(dir.join(format!("{name}.1")), part)?;
    }
    page.extend(exit_status("").as_bytes());
    std::fs::write(dir.join("enlist.1"), page)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "enlist.bash"),
        (clap_complete::Shell::Zsh, "_enlist"),
        (clap_complete::Shell::Fish, "enlist.fish"),
    ] {
        let mut out = vec![];
        clap_complete::generate(shell, &mut cmd.clone(), "enlist", &mut out);
        std::fs::write(dir.join(file), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_man_page_says_its_exit_status_and_exec_its_own_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::generate_docs(dir.path()).expect("docs");
        let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);
        for name in [
            "enlist.1",
            "enlist-serve.1",
            "enlist-check-config.1",
            "enlist-exec.1",
        ] {
            let p = page(name);
            assert!(
                p.contains(".SH \"EXIT STATUS\"") && p.contains("EX_CONFIG"),
                "{name}"
            );
        }
        let exec = page("enlist-exec.1");
        assert!(
            exec.contains("\\fB124\\fR") && exec.contains("\\fB255\\fR"),
            "{exec}"
        );
        assert!(!page("enlist-nodes.1").contains("\\fB124\\fR"));
    }
}
