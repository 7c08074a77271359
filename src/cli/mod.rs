//! Subcommands of the `enlist` binary (the edge: anyhow errors with context).

pub mod admin;
pub mod client;
pub mod env;
pub mod exec;
pub mod floppy;
pub mod image;
pub mod nodes;
pub mod schedule;

use std::path::Path;

use anyhow::Context;

/// `enlist check-config`: the file, the images it names (published?), and what its jobs need
/// installed. Every problem is printed; the first is the error.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let cfg = enlist::config::Config::load(path)?;
    let images = enlist::image::store::ImageStore::new(&cfg.images.dir);
    let mut problems: Vec<anyhow::Error> = vec![];
    for (key, image) in cfg.image_names() {
        if let Err(e) = images.current(image.as_str()) {
            problems.push(
                cfg.error_at(enlist::config::Invalid::new(key, e.to_string()))
                    .into(),
            );
        }
    }
    problems.extend(
        enlist::jobs::preflight(&cfg)
            .into_iter()
            .map(anyhow::Error::from),
    );
    for old in cfg.deprecations() {
        eprintln!("enlist: warning: {old}");
    }
    // Warnings: the file is valid, but part of it cannot work on this machine as it is.
    for (i, why) in enlist::dhcp::unreachable_here(&cfg) {
        let at = cfg.error_at(enlist::config::Invalid::new(
            format!("dhcp.subnets[{i}]"),
            why,
        ));
        eprintln!("enlist: warning: {at}");
    }
    let mut problems = problems.into_iter();
    let Some(first) = problems.next() else {
        println!("{}: ok", path.display());
        return Ok(());
    };
    for p in problems {
        eprintln!("enlist: {p}");
    }
    Err(first)
}

pub fn serve(config: &Path) -> anyhow::Result<()> {
    let cfg = enlist::config::Config::load(config)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let shutdown = enlist::head::shutdown_on_signals()?;
        enlist::head::Head::open(cfg)?.run(shutdown).await
    })
}
