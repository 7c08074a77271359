//! The head: every part wired together once, by [`Head::new`], for `enlist serve` and for the
//! tests alike; [`Head::run`] binds the sockets and serves until shutdown.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::bootfiles::BootFiles;
use crate::bootscript::NodeBoot;
use crate::config::Config;
use crate::dhcp;
use crate::http::{self, auth, listener, AppState, Shared};
use crate::image::store::ImageStore;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;
use crate::tftp;
use crate::timetable::Timetable;

/// The parts of a running head.
pub struct Head {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub files: Arc<BootFiles>,
    /// What the HTTP handlers share.
    pub state: Shared,
    /// Jobs through Slurm, when on.
    pub jobs: Option<Arc<Jobs>>,
    /// Enlist and release groups on their schedules, when the config has any.
    pub schedules: Option<Arc<Timetable>>,
    /// The state folder's lock, held while the head runs (one head per state folder; restore
    /// waits for it).
    lock: Option<StateLock>,
}

/// The state folder's lock (flock), released when dropped.
pub type StateLock = nix::fcntl::Flock<std::fs::File>;

/// The file whose lock says a head runs on a state folder.
pub const LOCK_FILE: &str = "head.lock";

/// Take the state folder's lock, or say that another head (or a restore) has it.
pub fn lock_state_dir(state_dir: &std::path::Path) -> anyhow::Result<StateLock> {
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => anyhow::bail!(
            "{} is in use: an enlist head runs on this state folder (stop it first)",
            path.display()
        ),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

impl Head {
    /// Open the state folder and database of `cfg` and wire the head up.
    pub fn open(cfg: Config) -> anyhow::Result<Head> {
        crate::store::private_dir(&cfg.state_dir)
            .with_context(|| format!("cannot create state_dir {}", cfg.state_dir.display()))?;
        let lock = lock_state_dir(&cfg.state_dir)?;
        let store = Store::open(&cfg.database_path())?;
        let token = auth::load_or_create_token(&cfg.state_dir)?;
        if !cfg.jobs.enabled || !cfg.jobs.firewall {
            // Jobs were on before: their table would keep dropping what others now serve.
            if let Some(nft) = ["/usr/sbin/nft", "/sbin/nft"]
                .iter()
                .map(std::path::Path::new)
                .find(|p| p.is_file())
            {
                crate::jobs::firewall::remove(nft);
            }
        }
        let mut head = Head::new(cfg, store, token)?;
        head.lock = Some(lock);
        Ok(head)
    }

    /// Wire a head up on `store`, with `api_token` as the CLI's bearer token.
    pub fn new(cfg: Config, store: Store, api_token: String) -> anyhow::Result<Head> {
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(cfg.clone(), store.clone(), metrics.clone())?;
        let images = ImageStore::new(&cfg.images.dir);
        let nodes = Arc::new(NodeBoot {
            registry: registry.clone(),
            images: images.clone(),
        });
        let files = Arc::new(BootFiles::new(
            cfg.tftp.ipxe_dir.clone(),
            images.clone(),
            nodes,
        ));
        let jobs = Jobs::new(cfg.clone(), registry.clone(), images, metrics.clone())?;
        let schedules = Timetable::new(
            cfg.clone(),
            registry.clone(),
            jobs.clone(),
            jiff::tz::TimeZone::system(),
        )?;
        let secure = cfg.admin.listen.is_some();
        let state = Arc::new(AppState {
            registry: registry.clone(),
            files: files.clone(),
            metrics: metrics.clone(),
            auth: auth::Auth::new(store.clone(), api_token, cfg.admin.public_read, secure),
            max_streams: cfg.http.max_streams,
            streams: AtomicUsize::new(0),
            workload: crate::jobs::workload_of(jobs.as_ref()),
            jobs: jobs.clone(),
            schedules: schedules.clone(),
            execs: Default::default(),
            logs: Arc::new(crate::nodelogs::NodeLogs::new(&cfg.state_dir)),
        });
        Ok(Head {
            cfg,
            store,
            metrics,
            registry,
            files,
            state,
            jobs,
            schedules,
            lock: None,
        })
    }

    /// Every route on one router (what `http.listen` serves without `admin.listen`).
    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    /// Bind every socket, then serve until `shutdown` turns true. Fails naming the socket or
    /// interface that could not be had.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        self.warn_about_setup();
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(jobs) = &self.jobs {
            jobs.spawn(&mut tasks, &shutdown);
            tracing::info!(slurm_conf = %jobs.slurm_conf().display(), "jobs on: Slurm tools on this head use SLURM_CONF={}", jobs.slurm_conf().display());
        }
        self.spawn_dhcp(&mut tasks, &shutdown)?;
        self.spawn_tftp(&mut tasks, &shutdown).await?;
        self.spawn_http(&mut tasks, &shutdown).await?;
        self.spawn_sweeper(&mut tasks, &shutdown);
        self.spawn_reloader(&mut tasks, &shutdown)?;
        if let Some(s) = &self.schedules {
            s.spawn(&mut tasks, &shutdown);
        }
        tracing::info!("enlist head is up");
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    fn warn_about_setup(&self) {
        match auth::has_password(&self.store) {
            Ok(false) => tracing::warn!("no admin password is set: the dashboard is read-only until you run `enlist admin set-password`"),
            Ok(true) => {}
            Err(e) => tracing::warn!("cannot read the admin password: {e}"),
        }
        for old in self.cfg.deprecations() {
            tracing::warn!("{old}");
        }
        for (key, image) in self.cfg.image_names() {
            match self.files.images().current(image.as_str()) {
                Ok(v) => tracing::info!(image = %image, version = %v, "image ready"),
                Err(e) => tracing::warn!("{key}: {e}; nodes will wait and retry until it is built"),
            }
        }
        if self.cfg.admin.listen.is_none() {
            tracing::warn!("the dashboard and admin API share http.listen with the nodes, in clear; set admin.listen to give them their own TLS listener");
        }
    }

    fn spawn_dhcp(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let listeners = dhcp::server::bind(&self.cfg.dhcp.interfaces)?;
        for (i, why) in dhcp::unreachable_here(&self.cfg) {
            tracing::warn!("dhcp.subnets[{i}]: {why}");
        }
        let handler = Arc::new(dhcp::handler::Handler::new(
            self.registry.current(),
            self.store.clone(),
            self.registry.clone(),
        ));
        tasks.spawn(dhcp::server::run(
            listeners,
            handler,
            self.metrics.clone(),
            shutdown.clone(),
        ));
        for ifc in &self.cfg.dhcp.interfaces {
            tasks.spawn(crate::ndp::run(
                ifc.name.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            ));
        }
        Ok(())
    }

    async fn spawn_tftp(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if !self.cfg.tftp.enabled {
            return Ok(());
        }
        let socket = tftp::server::bind(self.cfg.tftp.listen)
            .await
            .with_context(|| format!("tftp: cannot bind {}", self.cfg.tftp.listen))?;
        tracing::info!(addr = %self.cfg.tftp.listen, "tftp listening");
        let ctx = Arc::new(tftp::server::TftpContext::new(
            self.files.clone(),
            self.cfg.tftp.clone(),
            self.metrics.clone(),
            self.registry.clone(),
        ));
        tasks.spawn(tftp::server::run(socket, ctx, shutdown.clone()));
        Ok(())
    }

    async fn spawn_http(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let h = &self.cfg.http;
        let limits = listener::Limits {
            max_connections: h.max_connections,
            max_connections_per_client: h.max_connections_per_client,
            header_timeout: h.header_timeout,
        };
        let nodes = tokio::net::TcpListener::bind(h.listen)
            .await
            .with_context(|| format!("http: cannot bind {}", h.listen))?;
        tracing::info!(addr = %h.listen, public_url = %h.public_url, "http listening");
        let node_app = match self.cfg.admin.listen {
            Some(_) => http::node_router(self.state.clone()),
            None => http::router(self.state.clone()),
        };
        let edge = listener::Edge {
            limits,
            tls: None,
            shape: true,
        };
        tasks.spawn(serve_logged(
            nodes,
            node_app,
            edge,
            self.metrics.clone(),
            shutdown.clone(),
        ));
        self.spawn_admin_socket(tasks, shutdown, limits)?;
        if let Some(addr) = self.cfg.admin.listen {
            let (cert, key) =
                http::tls::cert_files(self.cfg.admin.tls.as_ref(), &self.cfg.state_dir, addr.ip())?;
            let tls = http::tls::acceptor(&cert, &key)?;
            let admin = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin.listen: cannot bind {addr}"))?;
            tracing::info!(%addr, cert = %cert.display(), "admin https listening");
            let edge = listener::Edge {
                limits,
                tls: Some(tls),
                shape: false,
            };
            let app = http::admin_router(self.state.clone());
            tasks.spawn(serve_logged(
                admin,
                app,
                edge,
                self.metrics.clone(),
                shutdown.clone(),
            ));
        }
        Ok(())
    }

    /// The admin socket (`<state_dir>/admin.sock`, 0600): the CLI's way in, whatever
    /// `http.listen` and `admin.listen` serve.
    fn spawn_admin_socket(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
        limits: listener::Limits,
    ) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.cfg.state_dir.join(auth::ADMIN_SOCKET);
        // Left by a head that died: this head holds the state folder's lock, so it is stale.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => {}
        }
        let socket = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("admin socket: cannot bind {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        tracing::info!(path = %path.display(), "admin socket listening (the CLI)");
        tasks.spawn(listener::serve_local(
            socket,
            http::admin_router(self.state.clone()),
            limits,
            self.metrics.clone(),
            shutdown.clone(),
        ));
        Ok(())
    }

    /// Let the clock act on the registry once a second (lost, gone, stuck).
    fn spawn_sweeper(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let registry = self.registry.clone();
        let mut shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|v| *v) => break,
                }
                let reg = registry.clone();
                match tokio::task::spawn_blocking(move || reg.sweep(Instant::now())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("registry sweep: {e}"),
                    Err(e) => tracing::error!("registry sweep task: {e}"),
                }
            }
            // What the nodes lent since the last flush goes into their rows.
            let flushed =
                tokio::task::spawn_blocking(move || registry.count_lent(Instant::now(), true))
                    .await;
            if let Ok(Err(e)) = flushed {
                tracing::error!("writing the time lent at shutdown: {e}");
            }
        });
    }
}

impl Head {
    /// On SIGHUP (`systemctl reload enlist`), read the config file again and take what can
    /// change while running (see [`crate::config::Current`]); a file with an error is
    /// refused whole, named at its line, and the head goes on as it was.
    fn spawn_reloader(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
        let registry = self.registry.clone();
        let path = self.cfg.path().to_path_buf();
        let mut shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = hup.recv() => {}
                    _ = shutdown.wait_for(|v| *v) => break,
                }
                let (reg, path) = (registry.clone(), path.clone());
                if let Err(e) = tokio::task::spawn_blocking(move || reload(&reg, &path)).await {
                    tracing::error!("config reload task: {e}");
                }
            }
        });
        Ok(())
    }
}

/// One reload of `path` into `registry` (see [`Head::spawn_reloader`]).
fn reload(registry: &Registry, path: &std::path::Path) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("config reload refused, nothing changed: {e}");
            return;
        }
    };
    let done = registry.reload(&new);
    let applied = if done.applied.is_empty() {
        "nothing new".to_string()
    } else {
        done.applied.join(", ")
    };
    tracing::info!(config = %path.display(), "config reloaded: {applied}");
    if !done.restart.is_empty() {
        tracing::warn!(
            config = %path.display(),
            "config reload: changes in {} wait for a restart (systemctl restart enlist); the head goes on with the values it started with",
            done.restart.join(", ")
        );
    }
}

async fn serve_logged(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    edge: listener::Edge,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = listener::serve(listener, app, edge, metrics, shutdown).await {
        tracing::error!("http server failed: {e}");
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn one_head_per_state_folder() {
        let dir = std::env::temp_dir().join(format!("enlist-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let first = super::lock_state_dir(&dir).expect("first");
        match super::lock_state_dir(&dir) {
            Ok(_) => panic!("a second lock on the same state folder"),
            Err(e) => assert!(e
                .to_string()
                .contains("an enlist head runs on this state folder")),
        }
        drop(first);
        assert!(
            super::lock_state_dir(&dir).is_ok(),
            "free again once released"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
