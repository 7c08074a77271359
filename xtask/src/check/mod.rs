//! `cargo xtask check`: the structure the project keeps, checked on every test run.
//!
//! - [`cycles`]: no import cycle at any depth of any crate (among a crate's top-level modules,
//!   and among the children of every module).
//! - [`length`]: no function in the head, the API crate, the agent or xtask longer than
//!   [`length::MAX_FN_LINES`] lines unless a `// Long:` comment above it says why.
//! - [`blocking`]: no call from async code in the head to a registry method that reaches the
//!   database, except inside the blocking boundary (`spawn_blocking`, `http::admin::blocking`).
//! - [`config_keys`]: every key of the head's config is in `config.example.yaml`.

mod blocking;
mod config_keys;
mod cycles;
mod length;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::root;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(rust_files(&p)?);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// `#[cfg(test)]` on a module.
fn is_test_mod(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

/// The source folders of the workspace's crates, as the checks see them.
const CRATES: [&str; 5] = [
    "src",
    "api/src",
    "initramfs/agent/src",
    "xtask/src",
    "xtask/lab/src",
];

pub fn run() -> anyhow::Result<()> {
    let mut problems = vec![];
    let mut modules = 0;
    for dir in CRATES {
        let src = root().join(dir);
        let (cycles, n) = cycles::cycles(&src)?;
        modules += n;
        problems.extend(cycles);
        for f in rust_files(&src)? {
            if f.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let rel = f.strip_prefix(root()).unwrap_or(&f).display().to_string();
            for (name, line, len) in length::long_functions(&f)? {
                problems.push(format!(
                    "{rel}:{line}: fn {name} is {len} lines (over {}): split it, or say why above it with `// Long: ...`",
                    length::MAX_FN_LINES
                ));
            }
        }
    }
    problems.extend(blocking::violations(&root().join("src"))?);
    problems.extend(config_keys::missing(
        &root().join("src/config/wire.rs"),
        &root().join("config.example.yaml"),
    )?);
    if !problems.is_empty() {
        bail!("structure check:\n  {}", problems.join("\n  "));
    }
    eprintln!(
        "xtask: structure ok: {modules} modules in {} crates, no import cycle at any depth, no function over {} lines without a reason, no database call on an async worker, every config key in the example",
        CRATES.len(),
        length::MAX_FN_LINES
    );
    Ok(())
}
