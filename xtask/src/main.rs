//! `cargo xtask <task>`: build automation in Rust (matklad's cargo-xtask convention).
//!
//! | task          | what it does                                                        |
//! |---------------|---------------------------------------------------------------------|
//! | `setup`       | install the apt packages and rustup target the project needs        |
//! | `node ...`    | fetch pinned Debian packages, cross-build the agent, build images   |
//! | `floppy`      | write the boot floppy and USB image into images/out                 |
//! | `lab ...`     | a QEMU lab: head in a namespace, emulated PCs on taps                |
//! | `demo`        | everything above, three PCs booting, dashboard on 127.0.0.1          |
//! | `test`        | the whole test suite, e2e included (the README's test command)       |
//! | `check`       | the structure: no import cycle in src/, no long function without reason |
//! | `fuzz`        | the fuzz targets in fuzz/ for a while each (nightly + cargo-fuzz)     |
//! | `package`     | the Debian packages; `--install-test` into a clean Debian 12 root      |

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bench;
mod check;
mod demo;
mod fuzz;
mod node;
mod package;
mod proxy;
mod setup;
mod unit_sandbox;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (apt packages, rustup target).
    Setup,
    /// Node OS artefacts.
    Node {
        #[command(subcommand)]
        what: node::NodeTask,
    },
    /// Build the head (release) and write the boot floppy and USB image into images/out.
    Floppy,
    /// The QEMU lab.
    Lab {
        #[command(subcommand)]
        what: demo::LabTask,
    },
    /// Set up, build, start the head and three PCs; dashboard on 127.0.0.1:8080. Ctrl-C ends it.
    Demo {
        /// Local port for the dashboard.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Benchmarks against reference servers (ratios measured in the same run).
    Bench {
        #[command(subcommand)]
        what: bench::BenchTask,
    },
    /// Check the structure: no import cycle among src/ modules, no overlong function.
    Check,
    /// Run the fuzz targets (installs nightly and cargo-fuzz when missing).
    Fuzz(fuzz::FuzzArgs),
    /// Build the Debian packages (enlist, enlist-node-images) into target/debian.
    Package(package::PackageArgs),
    /// Run every test: unit, integration and end-to-end (QEMU) tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        args: Vec<String>,
    },
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub fn enlist_bin() -> PathBuf {
    root().join("target/release/enlist")
}

pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {}", format!("{cmd:?}").replace('"', ""));
    let st = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

pub fn build_head() -> anyhow::Result<()> {
    sh(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release", "--bin", "enlist"]))
}

pub fn build_floppy() -> anyhow::Result<()> {
    build_head()?;
    let out = root().join("images/out");
    std::fs::create_dir_all(&out)?;
    // The lab's head URL is written on the disk (so the node reports it booted from floppy).
    let head = ["--head", enlist_lab::HEAD_URL];
    sh(Command::new(enlist_bin())
        .arg("floppy")
        .args(head)
        .arg("-o")
        .arg(out.join("enlist-floppy.img")))?;
    sh(Command::new(enlist_bin())
        .arg("usb")
        .args(head)
        .arg("-o")
        .arg(out.join("enlist-usb.iso")))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let r = match args.task {
        Task::Setup => setup::setup(),
        Task::Node { what } => node::run(what),
        Task::Floppy => build_floppy(),
        Task::Lab { what } => demo::lab(what),
        Task::Demo { port } => demo::demo(port),
        Task::Bench { what } => bench::run(what),
        Task::Check => check::run(),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Package(a) => package::run(a),
        Task::Test { args } => test(args),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SMOKE_SECS: u64 = 12;

/// The README's test command: set up, build the node artefacts, then every test including the
/// ignored-by-default e2e tests (they need root, QEMU and the built images).
fn test(args: Vec<String>) -> anyhow::Result<()> {
    check::run()?;
    setup::setup()?;
    node::run(node::NodeTask::All)?;
    // The Pentium II agent has no SSE code outside glibc's run-time-selected variants.
    node::check_sse()?;
    build_floppy()?;
    // The Debian packages, their contents and their systemd unit (the clean-root install of
    // them is `cargo xtask package --install-test`, run and reported, not in every test run).
    package::run(package::PackageArgs {
        install_test: false,
    })?;
    // The browser test's driver (playwright-core; the browser is Debian's chromium).
    sh(Command::new("npm")
        .current_dir(root().join("tests/browser"))
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"]))?;
    // Every fuzz target for a short while (the long runs: `cargo xtask fuzz`, SECURITY.md).
    fuzz::run(fuzz::FuzzArgs {
        seconds: FUZZ_SMOKE_SECS,
        targets: vec![],
    })?;
    // Unit and in-process tests.
    sh(Command::new("cargo")
        .current_dir(root())
        .args(["test", "--workspace", "--release"]))?;
    // Tests that need root, namespaces and QEMU: one at a time (each emulated PC needs a core).
    // `--workspace` as above: the same features, so the test binaries built there are reused
    // (without it cargo builds the head's crate again, a minute and a half on CI).
    sh(Command::new("cargo")
        .current_dir(root())
        .args([
            "test",
            "--workspace",
            "--release",
            "--test",
            "services",
            "--test",
            "hostile",
            "--test",
            "e2e",
            "--test",
            "jobs",
            "--test",
            "exec",
            "--",
            "--ignored",
            "--test-threads=1",
        ])
        .args(&args))
}
