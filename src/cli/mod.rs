//! Subcommands of the `enlist` binary (the edge: anyhow errors with context).

pub mod admin;
pub mod floppy;
pub mod image;
pub mod nodes;

use std::path::Path;

use anyhow::Context;

pub fn serve(config: &Path) -> anyhow::Result<()> {
    let cfg = enlist::config::Config::load(config)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let shutdown = enlist::head::shutdown_on_signals()?;
        enlist::head::Head::open(cfg)?.run(shutdown).await
    })
}
