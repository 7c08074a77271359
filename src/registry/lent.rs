//! What each PC was lent to the cluster: time enlisted (its node OS up and serving) and, of
//! that, time running jobs. Counted by sampling every registry sweep (a second apart), kept
//! here until written to the nodes' rows once a minute (a crash loses at most that minute).
//! Pure: the sweep says which nodes are enlisted and busy; the store does the writing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use enlist_api::Mac;

/// How often time counted is written to the nodes' rows.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// A gap between two samples longer than this (the head stopped, the machine suspended) is
/// not counted: nobody saw what the nodes did meanwhile.
const MAX_STEP: Duration = Duration::from_secs(30);

/// Time counted and not yet written, for one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lent {
    pub enlisted_ms: u64,
    pub jobs_ms: u64,
}

/// Time added by a sample, by group name.
pub type ByGroup = HashMap<String, Lent>;

/// Whole seconds to add to a node's row: its MAC, seconds enlisted, seconds running jobs.
pub type Due = (Mac, u64, u64);

/// One node as a sample sees it.
pub struct Sample<'a> {
    pub mac: Mac,
    pub group: &'a str,
    /// Its node OS is up and serving (registered, healthy, draining).
    pub enlisted: bool,
    /// The scheduler has jobs on it.
    pub busy: bool,
}

#[derive(Debug, Default)]
pub struct Ledger {
    last: Option<Instant>,
    flushed: Option<Instant>,
    pending: HashMap<Mac, Lent>,
}

impl Ledger {
    /// Count the time since the last sample for each node of `nodes` that is enlisted (and
    /// busy). Returns what was added, by group (for the metrics).
    pub fn sample<'a>(
        &mut self,
        now: Instant,
        nodes: impl IntoIterator<Item = Sample<'a>>,
    ) -> ByGroup {
        let step = self
            .last
            .map(|l| now.saturating_duration_since(l))
            .filter(|s| *s <= MAX_STEP)
            .unwrap_or_default();
        self.last = Some(now);
        self.flushed.get_or_insert(now);
        let ms = step.as_millis() as u64;
        let mut by_group = ByGroup::new();
        if ms == 0 {
            return by_group;
        }
        for n in nodes.into_iter().filter(|n| n.enlisted) {
            let add = Lent {
                enlisted_ms: ms,
                jobs_ms: if n.busy { ms } else { 0 },
            };
            self.pending.entry(n.mac).or_default().add(add);
            by_group.entry(n.group.to_string()).or_default().add(add);
        }
        by_group
    }

    /// Counted and not yet written, for `mac`.
    pub fn pending(&self, mac: Mac) -> Lent {
        self.pending.get(&mac).copied().unwrap_or_default()
    }

    /// If a flush is due (or `force`), the whole seconds to add to each node's row; the
    /// fractions stay pending.
    pub fn take_due(&mut self, now: Instant, force: bool) -> Vec<Due> {
        let due = self
            .flushed
            .is_some_and(|f| now.saturating_duration_since(f) >= FLUSH_EVERY);
        if !due && !force {
            return vec![];
        }
        self.flushed = Some(now);
        let mut out = vec![];
        for (mac, l) in self.pending.iter_mut() {
            let (e, j) = (l.enlisted_ms / 1000, l.jobs_ms / 1000);
            if e == 0 && j == 0 {
                continue;
            }
            l.enlisted_ms -= e * 1000;
            l.jobs_ms -= j * 1000;
            out.push((*mac, e, j));
        }
        self.pending.retain(|_, l| *l != Lent::default());
        out.sort();
        out
    }

    /// Put back what a failed write took.
    pub fn restore(&mut self, taken: &[Due]) {
        for (mac, e, j) in taken {
            self.pending.entry(*mac).or_default().add(Lent {
                enlisted_ms: e * 1000,
                jobs_ms: j * 1000,
            });
        }
    }
}

impl Lent {
    fn add(&mut self, o: Lent) {
        self.enlisted_ms += o.enlisted_ms;
        self.jobs_ms += o.jobs_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    fn lent(enlisted_ms: u64, jobs_ms: u64) -> Lent {
        Lent {
            enlisted_ms,
            jobs_ms,
        }
    }

    fn node(last: u8, enlisted: bool, busy: bool) -> Sample<'static> {
        Sample {
            mac: mac(last),
            group: if last < 3 { "lab1" } else { "lab2" },
            enlisted,
            busy,
        }
    }

    #[test]
    fn enlisted_time_counts_per_node_and_group_and_jobs_time_only_while_busy() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        let first = l.sample(t0, [node(1, true, true)]);
        assert!(first.is_empty(), "nothing before the first sample");
        for s in 1..=90 {
            let t = t0 + Duration::from_secs(s);
            // Node 1 busy the first 30 s; node 2 enlisted from 60 s; node 3 never.
            l.sample(
                t,
                [
                    node(1, true, s <= 30),
                    node(2, s > 60, false),
                    node(3, false, true),
                ],
            );
        }
        assert_eq!(l.pending(mac(1)), lent(90_000, 30_000));
        assert_eq!(l.pending(mac(2)), lent(30_000, 0));
        assert_eq!(l.pending(mac(3)), Lent::default());
        let by_group = l.sample(
            t0 + Duration::from_millis(90_500),
            [node(1, true, true), node(4, true, false)],
        );
        assert_eq!(by_group["lab1"], lent(500, 500));
        assert_eq!(by_group["lab2"], lent(500, 0));

        // Flushed once a minute has passed since the first sample, whole seconds only.
        let flushed = l.take_due(t0 + Duration::from_secs(91), false);
        assert_eq!(flushed, vec![(mac(1), 90, 30), (mac(2), 30, 0)]);
        assert_eq!(l.pending(mac(1)), lent(500, 500));
        assert_eq!(l.pending(mac(4)), lent(500, 0));
        assert!(
            l.take_due(t0 + Duration::from_secs(92), false).is_empty(),
            "not due"
        );
        // A failed write puts it back.
        l.restore(&flushed);
        assert_eq!(l.pending(mac(2)), lent(30_000, 0));
    }

    #[test]
    fn a_gap_nobody_saw_is_not_counted() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        l.sample(t0, [node(1, true, true)]);
        l.sample(t0 + Duration::from_secs(3600), [node(1, true, true)]);
        assert_eq!(l.pending(mac(1)), Lent::default());
        l.sample(t0 + Duration::from_secs(3601), [node(1, true, true)]);
        assert_eq!(l.pending(mac(1)).enlisted_ms, 1000);
        // A forced flush (shutdown) writes what there is.
        assert_eq!(
            l.take_due(t0 + Duration::from_secs(3601), true),
            vec![(mac(1), 1, 1)]
        );
    }
}
