//! `enlist serve`: start every service of the head on one runtime and stop them together.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::bootfiles::BootFiles;
use crate::config::Config;
use crate::dhcp;
use crate::http::{self, auth, AppState};
use crate::image::store::ImageStore;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;
use crate::tftp;

/// Run the head until `shutdown` turns true. `config_path` is only for messages.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state_dir {}", cfg.state_dir.display()))?;
    let store = Store::open(&cfg.database_path())?;
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(cfg.clone(), store.clone(), metrics.clone())?;
    let files = Arc::new(BootFiles::new(
        cfg.tftp.ipxe_dir.clone(),
        ImageStore::new(&cfg.images.dir),
        registry.clone(),
    ));
    let token = auth::load_or_create_token(&cfg.state_dir)?;
    if !auth::has_password(&store)? {
        tracing::warn!("no admin password is set: the dashboard is read-only until you run `enlist admin set-password`");
    }
    for image in [Some(&cfg.images.default), cfg.images.efi_x64.as_ref()]
        .into_iter()
        .flatten()
    {
        match ImageStore::new(&cfg.images.dir).current(image) {
            Ok(v) => tracing::info!(image, version = %v, "image ready"),
            Err(e) => tracing::warn!("{e}; nodes will wait and retry until it is built"),
        }
    }

    let mut tasks = tokio::task::JoinSet::new();

    let listeners = dhcp::server::bind(&cfg.dhcp.interfaces)?;
    let handler = Arc::new(dhcp::handler::Handler::new(
        cfg.clone(),
        store.clone(),
        registry.clone(),
    ));
    tasks.spawn(dhcp::server::run(
        listeners,
        handler,
        metrics.clone(),
        shutdown.clone(),
    ));
    for ifc in &cfg.dhcp.interfaces {
        tasks.spawn(crate::ndp::run(
            ifc.name.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    if cfg.tftp.enabled {
        let socket = tftp::server::bind(cfg.tftp.listen)
            .await
            .with_context(|| format!("tftp: cannot bind {}", cfg.tftp.listen))?;
        tracing::info!(addr = %cfg.tftp.listen, "tftp listening");
        let ctx = Arc::new(tftp::server::TftpContext {
            files: files.clone(),
            registry: registry.clone(),
            max_blksize: cfg.tftp.max_blksize,
            max_windowsize: cfg.tftp.max_windowsize,
            metrics: metrics.clone(),
            observer: registry.clone(),
        });
        tasks.spawn(tftp::server::run(socket, ctx, shutdown.clone()));
    }

    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("http: cannot bind {}", cfg.http.listen))?;
    tracing::info!(addr = %cfg.http.listen, public_url = %cfg.http.public_url, "http listening");
    let state = Arc::new(AppState {
        registry: registry.clone(),
        files,
        metrics,
        auth: auth::Auth::new(store.clone(), token, cfg.admin.public_read),
    });
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = http::run(listener, state, http_shutdown).await {
            tracing::error!("http server failed: {e}");
        }
    });

    let mut sweep_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = sweep_shutdown.wait_for(|v| *v) => return,
            }
            let reg = registry.clone();
            match tokio::task::spawn_blocking(move || reg.sweep()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("registry sweep: {e}"),
                Err(e) => tracing::error!("registry sweep task: {e}"),
            }
        }
    });

    tracing::info!("enlist head is up");
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// A watch channel that turns true on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    Ok(rx)
}
