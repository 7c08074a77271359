//! Prometheus metrics of the head, served at `/metrics`.
//!
//! One [`Metrics`] value is shared by all services. Every dropped packet or refused request is
//! counted here under a `reason` label (and logged once at debug level where it happens).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub type Labels = Vec<(&'static str, String)>;

/// A budget for debug lines about dropped packets and refused requests: each is logged, up to
/// `per_sec` a second; past that they are only counted, and one line a second says how many
/// were not logged. Under a flood the log (and the CPU that writes it) stays bounded, while
/// the metrics count everything.
pub struct LogBudget {
    per_sec: u64,
    /// The current second (since `start`) and lines logged in it, packed: second << 32 | n.
    window: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    start: std::time::Instant,
}

impl LogBudget {
    pub fn new(per_sec: u64) -> LogBudget {
        LogBudget {
            per_sec,
            window: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            start: std::time::Instant::now(),
        }
    }

    /// Whether to log this one. Says how many went unlogged in the previous second, if any.
    pub fn allow(&self, what: &str) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let second = self.start.elapsed().as_secs();
        let w = self.window.load(Relaxed);
        let (wsec, n) = (w >> 32, w & 0xffff_ffff);
        if wsec != second {
            if self
                .window
                .compare_exchange(w, (second << 32) | 1, Relaxed, Relaxed)
                .is_ok()
            {
                let missed = self.suppressed.swap(0, Relaxed);
                if missed > 0 {
                    tracing::debug!(
                        "{what}: {missed} more not logged in the last second (see the metrics)"
                    );
                }
                return true;
            }
            return self.allow(what);
        }
        if n < self.per_sec {
            self.window.fetch_add(1, Relaxed);
            return true;
        }
        self.suppressed.fetch_add(1, Relaxed);
        false
    }
}

pub struct Metrics {
    registry: Registry,
    /// Debug lines about drops and refusals, per second at most (see [`LogBudget`]).
    pub drop_log: LogBudget,
    /// DHCP packets by message type and outcome (`reply`, `drop`, ...).
    pub dhcp_packets: Family<Labels, Counter>,
    pub dhcp_dropped: Family<Labels, Counter>,
    pub tftp_transfers: Family<Labels, Counter>,
    pub tftp_bytes: Counter,
    pub tftp_refused: Family<Labels, Counter>,
    pub http_transfers: Family<Labels, Counter>,
    pub http_bytes: Counter,
    pub http_refused: Family<Labels, Counter>,
    pub agent_refused: Family<Labels, Counter>,
    /// Boot requests the registry would not answer with a boot (new-node limits, a node up at
    /// another address, a stale token), by reason.
    pub registry_refused: Family<Labels, Counter>,
    pub nodes: Family<Labels, Gauge>,
    /// Wake-on-LAN for work (Slurm, schedules), by group and outcome: `sent`, `woke`,
    /// `did-not-wake`, `in-use` (not sent: the PC is up on its own OS), `closed` (not sent:
    /// outside its window). The rate of `woke` to `sent` tells which rooms' BIOSes to fix.
    pub wakes: Family<Labels, Counter>,
    /// Seconds the PCs were lent to the cluster, by group and what: `enlisted` (node OS up)
    /// and `jobs` (of that, running jobs). Their ratio is how much of the lent time was used.
    pub lent_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    /// Packets to the cluster's ports on the head (slurmctld, the home, srun) from hosts that
    /// are no enlisted node, dropped by its firewall (read from nftables every few seconds).
    pub cluster_refused: Gauge,
    /// Seconds from a node's first DHCP packet to its agent's registration.
    pub boot_duration: Histogram,
    /// DHCP packets handled per lease commit (group commit: what queued during the last one).
    pub dhcp_batch_packets: Histogram,
    /// Time to handle and commit one batch of DHCP packets (the disk's flush is most of it).
    pub dhcp_batch_seconds: Histogram,
}

/// Register `metric` under `name` and hand it back (a clone shares the same value).
fn add<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// Debug lines about drops and refusals logged per second at most.
const DROP_LOG_PER_SEC: u64 = 200;

pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // Long: one registration per metric, each with its help text, in the order /metrics
    // lists them; splitting it would only scatter the list.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("enlist");
        let boot_buckets = [
            5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0,
        ];
        // Fields are filled in order, each registered as it is made; `registry` moves last.
        Metrics {
            drop_log: LogBudget::new(DROP_LOG_PER_SEC),
            dhcp_packets: add(
                &mut r,
                "dhcp_packets",
                "DHCP packets received, by message type and outcome",
                Family::default(),
            ),
            dhcp_dropped: add(
                &mut r,
                "dhcp_dropped",
                "DHCP packets dropped, by reason",
                Family::default(),
            ),
            tftp_transfers: add(
                &mut r,
                "tftp_transfers",
                "TFTP transfers, by outcome",
                Family::default(),
            ),
            tftp_bytes: add(
                &mut r,
                "tftp_sent_bytes",
                "Bytes sent by TFTP",
                Counter::default(),
            ),
            tftp_refused: add(
                &mut r,
                "tftp_refused",
                "TFTP requests refused, by reason",
                Family::default(),
            ),
            http_transfers: add(
                &mut r,
                "http_transfers",
                "Boot files served over HTTP, by kind",
                Family::default(),
            ),
            http_bytes: add(
                &mut r,
                "http_sent_bytes",
                "Boot file bytes sent over HTTP",
                Counter::default(),
            ),
            http_refused: add(
                &mut r,
                "http_refused",
                "HTTP requests refused, by reason",
                Family::default(),
            ),
            agent_refused: add(
                &mut r,
                "agent_refused",
                "Agent API requests refused, by reason",
                Family::default(),
            ),
            registry_refused: add(
                &mut r,
                "registry_refused",
                "Boot requests refused by the registry, by reason",
                Family::default(),
            ),
            nodes: add(&mut r, "nodes", "Nodes by state", Family::default()),
            wakes: add(
                &mut r,
                "wakes",
                "Wake-on-LAN for work, by group and outcome (sent, woke, did-not-wake, in-use, closed)",
                Family::default(),
            ),
            lent_seconds: add(
                &mut r,
                "lent_seconds",
                "Seconds the PCs were lent to the cluster, by group and what (enlisted, jobs)",
                Family::default(),
            ),
            cluster_refused: add(
                &mut r,
                "cluster_refused_packets",
                "Packets to slurmctld, the shared home or srun's ports from hosts that are no enlisted node, dropped by the head's firewall",
                Gauge::default(),
            ),
            boot_duration: add(
                &mut r,
                "boot_duration_seconds",
                "Time from first DHCP packet to agent registered",
                Histogram::new(boot_buckets.into_iter()),
            ),
            dhcp_batch_packets: add(
                &mut r,
                "dhcp_batch_packets",
                "DHCP packets handled per lease commit",
                Histogram::new([1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 2048.0].into_iter()),
            ),
            dhcp_batch_seconds: add(
                &mut r,
                "dhcp_batch_seconds",
                "Time to handle and commit one batch of DHCP packets",
                Histogram::new(
                    [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0].into_iter(),
                ),
            ),
            registry: r,
        }
    }

    /// Count one refusal in `family` under `reason` (the caller logs it at debug).
    pub fn refused(&self, family: &Family<Labels, Counter>, reason: &str) {
        family.get_or_create(&labels(&[("reason", reason)])).inc();
    }

    pub fn dhcp_drop(&self, reason: &str) {
        self.dhcp_dropped
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// The classic Prometheus text format (0.0.4), which `promtool check metrics` and older
    /// scrapers read: counter families are named with their `_total` suffix and there is no
    /// `# EOF` line. Derived from the OpenMetrics text so both always agree.
    pub fn render_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.render())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn openmetrics_to_prometheus(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_in_the_readmes_table() {
        let readme = include_str!("../README.md");
        let text = Metrics::new().render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() >= 15, "{names:?}");
        for name in names {
            assert!(
                readme.contains(&format!("`{name}")),
                "{name} is not in README.md's metrics table (Observing)"
            );
        }
    }

    #[test]
    fn the_log_budget_lets_through_its_share_a_second() {
        let b = LogBudget::new(3);
        let allowed = (0..100).filter(|_| b.allow("test")).count();
        assert_eq!(allowed, 3);
        assert_eq!(b.suppressed.load(std::sync::atomic::Ordering::Relaxed), 97);
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let m = Metrics::new();
        m.dhcp_drop("malformed");
        m.boot_duration.observe(12.0);
        let text = m.render_prometheus();
        assert!(
            text.contains("# HELP enlist_dhcp_dropped_total DHCP packets dropped"),
            "{text}"
        );
        assert!(text.contains("# TYPE enlist_dhcp_dropped_total counter"));
        assert!(text.contains("enlist_dhcp_dropped_total{reason=\"malformed\"} 1"));
        assert!(text.contains("# TYPE enlist_boot_duration_seconds histogram"));
        assert!(text.contains("# TYPE enlist_dhcp_batch_seconds histogram"));
        assert!(text.contains("# TYPE enlist_dhcp_batch_packets histogram"));
        assert!(!text.contains("# EOF"));
    }
}
