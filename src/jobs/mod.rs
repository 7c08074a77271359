//! Jobs on the enlisted nodes, through Slurm: the head writes the scheduler's files, runs and
//! supervises munged, slurmctld and the shared home's NFS server (or uses the site's own
//! slurmctld), tells each registered node how to join (its munge key sealed for it), follows
//! the nodes' scheduler state for the dashboard, and takes a node out of the scheduler before
//! it leaves: drained on release (its jobs finish, or are requeued at the deadline), deleted
//! when lost.
//!
//! | module      | what                                                                   |
//! |-------------|------------------------------------------------------------------------|
//! | `files`     | slurm.conf, cgroup.conf, job_container.conf, ganesha.conf (pure)       |
//! | `slurm`     | scontrol and squeue: state, drain, requeue, delete                     |
//! | `supervise` | the daemons as children, restarted when they die                       |
//! | `home`      | the shared home: which NFS server, each user's folder in it            |
//! | `accounts`  | who jobs run as: the head's NSS accounts and their groups, kept fresh  |
//! | `firewall`  | the cluster's ports on the head for enlisted nodes only (nftables)     |
//! | `munge`     | the munge key: made once, rotated (nodes first, then the head's munged) |

mod accounts;
pub mod files;
pub mod firewall;
mod home;
mod munge;
pub mod slurm;
pub mod supervise;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use enlist_api::{BundleRef, HomeMount, JobsDescriptor, JobsRequest, Mac};
use tokio::sync::watch;

use crate::config::{Config, Controller};
use crate::image::store::ImageStore;
use crate::lifecycle::NodeState;
use crate::registry::{Registry, RegistryError, Update};
use crate::workload::{self, ReleaseLimits, Workload};

pub use home::NfsServer;
pub use munge::Rotation;
use slurm::{Slurm, SlurmError};
use supervise::{Daemon, DaemonState};

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("jobs are on (jobs.enabled) but the head does not run as root, which starting munged, slurmctld and the shared home's NFS server needs: set jobs.enabled: false for a boot-only head, or run it as root (without the boot-only systemd drop-in)")]
    NotRoot,
    #[error("jobs are on (jobs.enabled) but {program} is not installed: apt install {package}")]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("the head's firewall for the cluster's ports: {0} (jobs.firewall: false turns it off, only where the site's own firewall lets nothing but the nodes reach slurmctld, the home and srun's ports)")]
    Firewall(String),
    /// Something that is the site's cluster's to do (`jobs.external`).
    #[error("{0}")]
    External(String),
    #[error("jobs task: {0}")]
    Task(String),
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> JobsError + '_ {
    move |source| JobsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How often the nodes' scheduler state is read.
const POLL: Duration = Duration::from_secs(5);
/// How often the head's accounts are read again (a new user runs a job within a minute).
const ACCOUNTS_EVERY: Duration = Duration::from_secs(10);
/// The munge key's length (munge's own `mungekey` makes 1024 bytes).
const MUNGE_KEY_BYTES: usize = 1024;

/// Where the jobs' files live: secrets and state in the state folder (root only); what users
/// on the head submit with (slurm.conf, munged's socket) in `jobs.run_dir`, readable by all.
#[derive(Debug, Clone)]
struct Paths {
    /// slurmctld's state, log and pid (state folder).
    slurm_dir: PathBuf,
    /// `jobs.run_dir`: slurm.conf, cgroup.conf and job_container.conf, and the munge socket's folder.
    run_dir: PathBuf,
    slurm_conf: PathBuf,
    munge_dir: PathBuf,
    munge_key: PathBuf,
    /// The socket's folder: readable by all (job users' tools on the head talk to munged).
    munge_run: PathBuf,
    munge_socket: PathBuf,
    ganesha_dir: PathBuf,
}

impl Paths {
    fn new(state_dir: &Path, run_dir: &Path) -> Paths {
        let slurm_dir = state_dir.join("slurm");
        let munge_dir = state_dir.join("munge");
        let munge_run = run_dir.join("munge");
        Paths {
            slurm_conf: run_dir.join("slurm.conf"),
            run_dir: run_dir.to_path_buf(),
            slurm_dir,
            munge_key: munge_dir.join("munge.key"),
            munge_dir,
            munge_socket: munge_run.join("munge.socket.2"),
            munge_run,
            ganesha_dir: state_dir.join("ganesha"),
        }
    }
}

/// Where programs are looked for: `PATH`, then the sbin folders a root shell has (a service's
/// PATH may lack them).
fn program_dirs() -> Vec<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(PathBuf::from)
        .collect()
}

/// A program the jobs need, and the Debian package that has it.
fn find_in(
    dirs: &[PathBuf],
    program: &'static str,
    package: &'static str,
) -> Result<PathBuf, JobsError> {
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(JobsError::Missing { program, package })
}

fn find(program: &'static str, package: &'static str) -> Result<PathBuf, JobsError> {
    find_in(&program_dirs(), program, package)
}

/// Problems that stop the jobs from starting (for `enlist check-config`), empty if none.
pub fn preflight(cfg: &Config) -> Vec<JobsError> {
    preflight_in(cfg, &program_dirs())
}

fn preflight_in(cfg: &Config, dirs: &[PathBuf]) -> Vec<JobsError> {
    if !cfg.jobs.enabled {
        return vec![];
    }
    let mut need = vec![("scontrol", "slurm-client"), ("squeue", "slurm-client")];
    if matches!(cfg.jobs.controller, Controller::Managed { .. }) {
        need.extend([("munged", "munge"), ("slurmctld", "slurmctld")]);
    }
    let mut problems: Vec<JobsError> = need
        .into_iter()
        .filter_map(|(p, pkg)| find_in(dirs, p, pkg).err())
        .collect();
    if let Err(e) = home::choose(cfg.jobs.home_server) {
        problems.push(e);
    }
    if cfg.jobs.firewall {
        if let Err(e) = find_in(dirs, "nft", "nftables") {
            problems.push(e);
        }
    }
    if matches!(cfg.jobs.controller, Controller::Managed { .. })
        && !nix::unistd::geteuid().is_root()
    {
        problems.push(JobsError::NotRoot);
    }
    if let Controller::External {
        munge_key,
        slurm_conf,
        ..
    } = &cfg.jobs.controller
    {
        for p in [munge_key, slurm_conf] {
            if let Err(source) = std::fs::metadata(p) {
                problems.push(JobsError::Io {
                    path: p.clone(),
                    source,
                });
            }
        }
    }
    problems
}

pub struct Jobs {
    cfg: Arc<Config>,
    registry: Arc<Registry>,
    images: ImageStore,
    slurm: Slurm,
    /// The cluster's munge key as nodes get it (replaced by a rotation).
    munge_key: std::sync::Mutex<Vec<u8>>,
    /// The key file the head's munged reads (managed controller).
    munge_key_file: PathBuf,
    /// Where munged listens, per slurm.conf: the nodes' munged listens there too.
    munge_socket: String,
    /// slurmd's port in a site's slurm.conf (`jobs.external`; 6818 when it does not say).
    site_slurmd_port: u16,
    /// Who jobs run as, and a version nodes follow (bumped when it changes).
    accounts: std::sync::Mutex<(u64, accounts::Accounts)>,
    nfs: Option<NfsServer>,
    daemons: Vec<(Daemon, Arc<DaemonState>)>,
    /// The cluster's ports for enlisted nodes only (None: `jobs.firewall: false`).
    firewall: Option<firewall::Firewall>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Lost nodes being (or already) deleted from the scheduler: one attempt loop per loss,
    /// however many updates say the node is lost; cleared when it is alive again.
    forgetting: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Nodes that asked to join, by name: an estimate of their memory per CPU, and since when.
    /// They lower the partition's default memory before their slurmd is listed
    /// ([`slurm::default_mem_per_cpu`]); dropped once listed, or after [`JOINING_FOR`].
    joining: std::sync::Mutex<std::collections::HashMap<String, (u64, std::time::Instant)>>,
    /// Wakes the scheduler poll at once (a node asked to join).
    poll_now: tokio::sync::Notify,
}

/// How long a node that asked to join counts as joining if its slurmd never shows up.
const JOINING_FOR: Duration = Duration::from_secs(120);

impl Jobs {
    /// Prepare the jobs of `cfg` (None when they are off): check the programs, make the munge
    /// key once, write the scheduler's and the file server's files.
    pub fn new(
        cfg: Arc<Config>,
        registry: Arc<Registry>,
        images: ImageStore,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Arc<Jobs>>, JobsError> {
        if !cfg.jobs.enabled {
            return Ok(None);
        }
        if let Some(e) = preflight(&cfg).into_iter().next() {
            return Err(e);
        }
        let paths = Paths::new(&cfg.state_dir, &cfg.jobs.run_dir);
        let accounts = match &cfg.jobs.users {
            Some(u) => accounts::fixed(u),
            None => accounts::site(&[]),
        };
        let nfs = home::choose(cfg.jobs.home_server)?;
        let (slurm_conf, munge_key, mut daemons) = match &cfg.jobs.controller {
            Controller::Managed { port, slurmd_port } => {
                let key = managed_files(&cfg, &paths, (*port, *slurmd_port))?;
                (paths.slurm_conf.clone(), key, managed_daemons(&paths)?)
            }
            Controller::External {
                slurm_conf,
                munge_key,
                ..
            } => (
                slurm_conf.clone(),
                std::fs::read(munge_key).map_err(io(munge_key))?,
                vec![],
            ),
        };
        // Closed to everyone but the head before any of them listens.
        let firewall = guard(&cfg, nfs.is_some())?;
        if let Some(server) = nfs {
            let bind = head_ipv4(&cfg);
            daemons.extend(home::serve(server, &cfg, &paths.ganesha_dir, bind)?);
            home::user_homes(&cfg.jobs.home, &accounts.users)?;
        }
        let (munge_socket, site_slurmd_port) = match &cfg.jobs.controller {
            Controller::Managed { .. } => (paths.munge_socket.display().to_string(), 0),
            Controller::External { slurm_conf, .. } => {
                let text = std::fs::read_to_string(slurm_conf).map_err(io(slurm_conf))?;
                (files::munge_socket_in(&text), files::slurmd_port_in(&text))
            }
        };
        Ok(Some(Arc::new(Jobs {
            munge_key: std::sync::Mutex::new(munge_key),
            munge_key_file: paths.munge_key.clone(),
            munge_socket,
            site_slurmd_port,
            slurm: Slurm { slurm_conf },
            cfg,
            registry,
            images,
            accounts: std::sync::Mutex::new((1, accounts)),
            nfs,
            daemons: daemons
                .into_iter()
                .map(|d| (d, Arc::new(DaemonState::default())))
                .collect(),
            firewall,
            metrics,
            forgetting: Default::default(),
            joining: Default::default(),
            poll_now: tokio::sync::Notify::new(),
        })))
    }

    /// Who jobs run as now, and its version.
    pub fn accounts(&self) -> (u64, accounts::Accounts) {
        self.accounts.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// The version of the accounts nodes should have (their heartbeats carry it).
    pub fn accounts_version(&self) -> u64 {
        self.accounts.lock().map(|a| a.0).unwrap_or(0)
    }

    /// Read the head's accounts again every few seconds (unless `jobs.users` fixes them):
    /// a change bumps their version, which nodes see in their next heartbeat; a new user's
    /// folder is made in the home.
    async fn keep_accounts(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ACCOUNTS_EVERY) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            let queued = self.slurm.queued_users().await.unwrap_or_default();
            let Ok(now) = tokio::task::spawn_blocking(move || accounts::site(&queued)).await else {
                continue;
            };
            let changed = {
                let Ok(mut a) = self.accounts.lock() else {
                    return;
                };
                (a.1 != now).then(|| {
                    let said = accounts::change(&a.1, &now);
                    *a = (a.0 + 1, now.clone());
                    said
                })
            };
            let Some(said) = changed else { continue };
            tracing::info!(
                "jobs: accounts changed ({said}); nodes take them at their next heartbeat"
            );
            if self.nfs.is_some() {
                let home = self.cfg.jobs.home.clone();
                let users = now.users;
                let made =
                    tokio::task::spawn_blocking(move || home::user_homes(&home, &users)).await;
                if let Ok(Err(e)) = made {
                    tracing::warn!("jobs: {e}");
                }
            }
        }
    }

    /// The munge key nodes get now.
    fn current_key(&self) -> Vec<u8> {
        self.munge_key.lock().map(|k| k.clone()).unwrap_or_default()
    }

    /// The slurm.conf the head's Slurm tools use (`SLURM_CONF`).
    pub fn slurm_conf(&self) -> &Path {
        &self.slurm.slurm_conf
    }

    /// Start the daemons, the scheduler polling and the follower of node changes.
    pub fn spawn(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) {
        for (d, state) in &self.daemons {
            tasks.spawn(supervise::supervise(
                d.clone(),
                state.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(self.clone().poll(shutdown.clone()));
        tasks.spawn(self.clone().follow(shutdown.clone()));
        if self.firewall.is_some() {
            tasks.spawn(self.clone().keep_guard(shutdown.clone()));
        }
        if self.cfg.jobs.users.is_none() {
            tasks.spawn(self.clone().keep_accounts(shutdown.clone()));
        }
    }

    /// Keep the firewall's set of nodes in step with the nodes that are up (checked every
    /// second, written only when it changed), and its drop counter in the metrics.
    async fn keep_guard(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut applied = None;
        let mut failing = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for round in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            let (version, members) = self.registry.members();
            let (jobs, count) = (self.clone(), round % 10 == 0);
            let r = tokio::task::spawn_blocking(move || {
                let Some(fw) = &jobs.firewall else {
                    return Ok(());
                };
                if applied != Some(version) {
                    fw.apply(&members)?;
                }
                if count {
                    if let Some(n) = fw.refused() {
                        jobs.metrics
                            .cluster_refused
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                }
                Ok::<(), JobsError>(())
            })
            .await;
            match r {
                Ok(Ok(())) => {
                    applied = Some(version);
                    failing = false;
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::error!("jobs: {e}; trying again every second");
                }
                _ => {}
            }
        }
    }

    /// How node `mac` of `group` (booted from `req`'s image) joins the scheduler. Its munge
    /// key is sealed with its own key.
    pub fn descriptor(&self, mac: Mac, group: &str, req: &JobsRequest) -> JobsDescriptor {
        let host = self.cfg.http.public_url.host();
        let controller = match &self.cfg.jobs.controller {
            Controller::Managed { port, .. } => format!("{host}:{port}"),
            Controller::External { host, port, .. } => format!("{host}:{port}"),
        };
        let mut nonce = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut nonce);
        let key = self.registry.reply_key(mac);
        let (accounts_version, accounts) = self.accounts();
        JobsDescriptor {
            enabled: true,
            controller,
            munge_socket: self.munge_socket.clone(),
            munge_key: Some(enlist_api::seal::seal(
                &key,
                "munge-key",
                nonce,
                &self.current_key(),
            )),
            bundle: self.bundle(req),
            env: self.env(req),
            home: self.nfs.map(|_| HomeMount {
                server: head_ipv4(&self.cfg).to_string(),
                path: self.cfg.jobs.home.display().to_string(),
            }),
            users: accounts.users,
            groups: accounts.groups,
            accounts_version,
            feature: self.feature_of(group),
            mem_reserve_mb: self.cfg.jobs.mem_reserve_mb,
            now_unix: crate::store::now(),
            slurmd_port: self.slurmd_port(),
            slurmd_allow: self.slurmd_allow(),
        }
    }

    /// The Slurm feature a node of `group` joins with: an on-demand group's nodes have their
    /// own (Slurm's power saving applies to them alone).
    fn feature_of(&self, group: &str) -> String {
        if self.cfg.on_demand(group) {
            files::on_demand_feature(&self.cfg.jobs.feature)
        } else {
            self.cfg.jobs.feature.clone()
        }
    }

    /// slurmd's port: the managed slurm.conf's (`jobs.slurmd_port`), or the site's.
    fn slurmd_port(&self) -> u16 {
        match &self.cfg.jobs.controller {
            Controller::Managed { slurmd_port, .. } => *slurmd_port,
            Controller::External { .. } => self.site_slurmd_port,
        }
    }

    /// Who may reach a node's slurmd besides the enlisted nodes: the head, and a site's
    /// slurmctld when it is another host (given by address).
    fn slurmd_allow(&self) -> Vec<String> {
        let mut allow = vec![head_ipv4(&self.cfg).to_string()];
        if let Controller::External { host, .. } = &self.cfg.jobs.controller {
            if host.parse::<Ipv4Addr>().is_ok() && !allow.contains(host) {
                allow.push(host.clone());
            }
        }
        allow
    }

    /// The runtime bundle built beside the node's image, if there is one.
    fn bundle(&self, req: &JobsRequest) -> Option<BundleRef> {
        let (name, version) = (req.image.as_str(), req.version.as_str());
        let (file, sha256, bytes) = self.images.bundle(name, version).ok()??;
        Some(BundleRef {
            url: crate::bootpath::http_url(
                self.cfg.http.public_url.base(),
                &crate::bootpath::BootPath::ImageFile {
                    image: name.into(),
                    version: version.into(),
                    file,
                },
            ),
            sha256,
            bytes,
        })
    }

    /// The current job environment for the node's image's arch, if one is built.
    fn env(&self, req: &JobsRequest) -> Option<enlist_api::EnvMount> {
        self.nfs?;
        let arch = self.images.arch(&req.image, &req.version).ok()??;
        let store = ImageStore::new(&self.cfg.jobs.env_dir);
        let (root, version) = crate::env::current(&store, &arch)?;
        Some(enlist_api::EnvMount {
            server: head_ipv4(&self.cfg).to_string(),
            path: root.display().to_string(),
            version,
        })
    }

    /// Read the scheduler's state of every node, every few seconds, for the dashboard.
    async fn poll(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut warned = false;
        let mut def_mem = DefMemFollower::default();
        loop {
            match self.slurm.nodes().await {
                Ok(nodes) => {
                    warned = false;
                    self.follow_def_mem(&mut def_mem, &nodes).await;
                    let reg = self.registry.clone();
                    // It may read the node table to publish changes: off the async threads.
                    let _ = tokio::task::spawn_blocking(move || reg.set_sched(nodes)).await;
                }
                // slurmctld starting or restarting: say so once, keep the last view.
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!("jobs: cannot read the scheduler's nodes: {e}");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.poll_now.notified() => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    }

    /// Node `row` asked to join: count it in the partition's default memory per CPU at once
    /// (an estimate from its inventory), before its slurmd can be listed and given jobs.
    pub fn note_joining(&self, row: &crate::store::NodeRow) {
        let Some((mem_total_kb, cores)) = row.memory_and_cores() else {
            return;
        };
        let estimate = slurm::joining_estimate(mem_total_kb, cores, self.cfg.jobs.mem_reserve_mb);
        if let Ok(mut j) = self.joining.lock() {
            j.insert(row.name.clone(), (estimate, std::time::Instant::now()));
        }
        self.poll_now.notify_one();
    }

    /// With `def_mem_per_cpu: auto` and our own slurmctld: keep the partition's default memory
    /// per CPU at what the smallest node up can give (again every minute: a restarted
    /// slurmctld reads slurm.conf's placeholder).
    async fn follow_def_mem(
        &self,
        f: &mut DefMemFollower,
        nodes: &std::collections::HashMap<String, slurm::SchedNode>,
    ) {
        if self.cfg.jobs.def_mem_per_cpu != crate::config::DefMem::Auto
            || !matches!(self.cfg.jobs.controller, Controller::Managed { .. })
        {
            return;
        }
        let joining: std::collections::HashMap<String, u64> = match self.joining.lock() {
            Ok(mut j) => {
                j.retain(|name, (_, since)| {
                    !nodes.contains_key(name) && since.elapsed() < JOINING_FOR
                });
                j.iter()
                    .map(|(name, (mb, _))| (name.clone(), *mb))
                    .collect()
            }
            Err(_) => Default::default(),
        };
        let Some(mb) = slurm::default_mem_per_cpu(nodes, &joining) else {
            return;
        };
        let stale =
            f.at.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60));
        if f.applied == Some(mb) && !stale {
            return;
        }
        match self
            .slurm
            .set_def_mem_per_cpu(&self.cfg.jobs.partition, mb)
            .await
        {
            Ok(()) => {
                if f.applied != Some(mb) {
                    tracing::info!(
                        partition = %self.cfg.jobs.partition,
                        "jobs: a job that does not ask (--mem) gets {mb} MB per CPU: what the smallest node up or joining has"
                    );
                }
                f.applied = Some(mb);
                f.at = Some(std::time::Instant::now());
            }
            Err(e) => tracing::warn!("jobs: cannot set the default memory per CPU: {e}"),
        }
    }

    /// Take lost nodes out of the scheduler (it has marked them down and requeued their jobs).
    async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut updates = self.registry.subscribe();
        loop {
            let update = tokio::select! {
                u = updates.recv() => u,
                _ = shutdown.wait_for(|v| *v) => return,
            };
            match update {
                Ok(Update::Node(v)) if v.state == NodeState::Lost => {
                    // Once per loss: a lost node is published again on every change.
                    let first = self
                        .forgetting
                        .lock()
                        .is_ok_and(|mut f| f.insert(v.name.clone()));
                    if first {
                        let (slurm, name) = (self.slurm.clone(), v.name.clone());
                        let limits = ReleaseLimits::of(&self.cfg);
                        // An on-demand node stays known, asleep: Slurm wakes it for work.
                        let keep = self.cfg.on_demand(&v.group);
                        tokio::spawn(
                            async move { workload::let_go(&slurm, &name, keep, limits).await },
                        );
                    }
                }
                Ok(Update::Node(v)) if v.state.is_alive() => {
                    if let Ok(mut f) = self.forgetting.lock() {
                        f.remove(&v.name);
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Slurm as the node lifecycle's [`Workload`].
    pub fn workload(&self) -> Arc<dyn Workload> {
        Arc::new(self.slurm.clone())
    }
}

/// The workload manager node releases go through: Slurm when jobs are on, else none.
pub fn workload_of(jobs: Option<&Arc<Jobs>>) -> Arc<dyn Workload> {
    match jobs {
        Some(j) => j.workload(),
        None => Arc::new(workload::NoWorkload),
    }
}

/// The head's firewall for the cluster's ports (slurmctld's and srun's with a managed
/// controller, the home's NFS), made and loaded with no node in it yet; None when
/// `jobs.firewall` is off.
fn guard(cfg: &Config, nfs: bool) -> Result<Option<firewall::Firewall>, JobsError> {
    if !cfg.jobs.firewall {
        tracing::warn!("jobs.firewall is off: slurmctld, the shared home and srun's ports answer every host that reaches this head; keep them for the enlisted nodes with the site's firewall");
        return Ok(None);
    }
    let mut ports = vec![];
    if let Controller::Managed { port, .. } = cfg.jobs.controller {
        ports.extend([(port, port), files::SRUN_PORTS]);
    }
    if nfs {
        ports.push((2049, 2049));
    }
    if ports.is_empty() {
        return Ok(None);
    }
    let fw = firewall::Firewall::new(find("nft", "nftables")?, ports, served_links(cfg));
    fw.apply(&[])?;
    tracing::info!(table = firewall::TABLE, "jobs: the cluster's ports on this head are for enlisted nodes only (nftables table inet {})", firewall::TABLE);
    Ok(Some(fw))
}

/// The networks of the interfaces the head serves (DHCP and boot): where a node's MAC is seen.
fn served_links(cfg: &Config) -> Vec<ipnet::Ipv4Net> {
    cfg.dhcp
        .interfaces
        .iter()
        .filter_map(|i| crate::netif::lookup(&i.name).ok())
        .map(|i| i.net.trunc())
        .collect()
}

/// What `follow_def_mem` last told slurmctld, and when.
#[derive(Debug, Default)]
struct DefMemFollower {
    applied: Option<u64>,
    at: Option<std::time::Instant>,
}

/// The head's IPv4 address on the lab network (the public URL's host).
fn head_ipv4(cfg: &Config) -> Ipv4Addr {
    cfg.http
        .public_url
        .host()
        .parse()
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// The munge key (made once, 0400) and slurm.conf/cgroup.conf/job_container.conf for the managed
/// controller.
fn managed_files(
    cfg: &Config,
    paths: &Paths,
    (port, slurmd_port): (u16, u16),
) -> Result<Vec<u8>, JobsError> {
    for (dir, mode) in [
        (&paths.munge_dir, 0o700),
        (&paths.run_dir, 0o755),
        (&paths.munge_run, 0o755),
        (&paths.slurm_dir, 0o700),
    ] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io(dir))?;
    }
    let state = paths.slurm_dir.join("state");
    std::fs::create_dir_all(&state).map_err(io(&state))?;
    let key = munge::load_or_make(&paths.munge_key)?;
    let host = hostname();
    let (resume, suspend) = (
        paths.slurm_dir.join("resume"),
        paths.slurm_dir.join("suspend"),
    );
    if cfg.any_on_demand() {
        power_programs(cfg, &resume, &suspend)?;
    }
    let conf = files::slurm_conf(&files::SlurmSettings {
        cluster: &cfg.jobs.cluster_name,
        host: &host,
        addr: head_ipv4(cfg),
        port,
        slurmd_port,
        munge_socket: &paths.munge_socket,
        state_dir: &paths.slurm_dir,
        feature: &cfg.jobs.feature,
        partition: &cfg.jobs.partition,
        def_mem_per_cpu_mb: cfg.jobs.def_mem_per_cpu.initial_mb(),
        node_timeout: cfg.jobs.node_timeout,
        max_nodes: cfg.nodes.max_nodes,
        default_time: cfg.jobs.default_time,
        power: cfg.any_on_demand().then(|| files::PowerSaving {
            resume_program: &resume,
            suspend_program: &suspend,
            idle_release: cfg.jobs.idle_release,
            wake_timeout: cfg.jobs.wake_timeout,
        }),
    });
    std::fs::write(&paths.slurm_conf, conf).map_err(io(&paths.slurm_conf))?;
    // Beside slurm.conf: slurmctld reads it from there.
    let cgroup = paths.run_dir.join("cgroup.conf");
    std::fs::write(&cgroup, files::cgroup_conf()).map_err(io(&cgroup))?;
    let container = paths.run_dir.join("job_container.conf");
    std::fs::write(&container, files::job_container_conf()).map_err(io(&container))?;
    Ok(key)
}

/// slurmctld's ResumeProgram and SuspendProgram: `enlist jobs resume|suspend HOSTLIST` with
/// this head's config (slurmctld runs them as root, on this host; they reach the head through
/// its admin socket).
fn power_programs(cfg: &Config, resume: &Path, suspend: &Path) -> Result<(), JobsError> {
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let config = std::fs::canonicalize(cfg.path()).unwrap_or_else(|_| cfg.path().to_path_buf());
    for (path, what) in [(resume, "resume"), (suspend, "suspend")] {
        let script = format!(
            "#!/bin/sh\n# Written by enlist at every start: slurmctld's {what} program.\nexec {} --config {} jobs {what} \"$1\"\n",
            shell_quote(&exe.display().to_string()),
            shell_quote(&config.display().to_string()),
        );
        std::fs::write(path, script).map_err(io(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(path))?;
    }
    Ok(())
}

/// A word for sh, in single quotes.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or("").to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// munged and slurmctld, in the foreground, with their files in the state folder.
fn managed_daemons(paths: &Paths) -> Result<Vec<Daemon>, JobsError> {
    let munged = find("munged", "munge")?;
    let slurmctld = find("slurmctld", "slurmctld")?;
    let p = |x: &Path| x.display().to_string();
    Ok(vec![
        Daemon {
            name: "munged",
            program: munged,
            args: vec![
                "--foreground".into(),
                // It runs as root here, which munged only does when told to.
                "--force".into(),
                format!("--socket={}", p(&paths.munge_socket)),
                format!("--key-file={}", p(&paths.munge_key)),
                format!("--pid-file={}", p(&paths.munge_dir.join("munged.pid"))),
                format!("--seed-file={}", p(&paths.munge_dir.join("munged.seed"))),
                format!("--log-file={}", p(&paths.munge_dir.join("munged.log"))),
            ],
            env: vec![],
            log: paths.munge_dir.join("munged.out"),
        },
        Daemon {
            name: "slurmctld",
            program: slurmctld,
            args: vec!["-D".into(), "-f".into(), p(&paths.slurm_conf)],
            env: vec![("SLURM_CONF".into(), p(&paths.slurm_conf))],
            log: paths.slurm_dir.join("slurmctld.out"),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jobs: &str) -> Config {
        let text = format!(
            "state_dir: /tmp/enlist-test\nhttp:\n  listen: 0.0.0.0:8080\n  public_url: http://10.77.0.1:8080\n\
             dhcp:\n  interfaces:\n    - name: br0\n      mode: proxy\nimages:\n  dir: /tmp\n  bios: i586\n{jobs}"
        );
        Config::parse(&text, Path::new("test.yaml")).expect("config")
    }

    #[test]
    fn a_head_without_slurm_is_told_which_packages_to_install() {
        let cfg = config("jobs:\n  enabled: true\n  home:\n    server: none\n");
        let empty = std::env::temp_dir().join(format!("enlist-nobin-{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("dir");
        let problems: Vec<String> = preflight_in(&cfg, std::slice::from_ref(&empty))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems.contains(
                &"jobs are on (jobs.enabled) but slurmctld is not installed: apt install slurmctld"
                    .to_string()
            ),
            "{problems:?}"
        );
        assert!(problems
            .iter()
            .any(|p| p.contains("munged") && p.contains("apt install munge")));
        assert!(problems
            .iter()
            .any(|p| p.contains("scontrol") && p.contains("apt install slurm-client")));

        // With the programs there, nothing is wrong; with jobs off, nothing is looked for.
        for p in ["scontrol", "squeue", "munged", "slurmctld", "nft"] {
            std::fs::write(empty.join(p), "").expect("file");
        }
        assert!(preflight_in(&cfg, std::slice::from_ref(&empty)).is_empty());
        assert!(preflight_in(&config(""), &[]).is_empty());
        let _ = std::fs::remove_dir_all(&empty);
    }
}
