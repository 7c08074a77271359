//! Who may create a new node: at most `burst` at once and `per_minute` after that from one
//! source (a token bucket per source address), and never more than `max_nodes` in all. A
//! stranger spoofing MAC addresses fills neither the database nor the dashboard; a real room
//! of PCs powering on together fits in the burst. Pure: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub per_minute: u32,
    pub burst: u32,
    pub max_nodes: usize,
}

/// Why a new node was not created (the metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionRefused {
    #[error("too many new nodes from this source; try again in a minute")]
    RateLimited,
    #[error("the registry is full (nodes.max_nodes)")]
    Full,
}

impl AdmissionRefused {
    pub fn reason(self) -> &'static str {
        match self {
            AdmissionRefused::RateLimited => "new-node-rate-limited",
            AdmissionRefused::Full => "registry-full",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Sources tracked at once; beyond this the fullest buckets are forgotten (they refill anyway).
const MAX_SOURCES: usize = 4096;

#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            buckets: HashMap::new(),
        }
    }

    /// May `source` create one more node now, with `nodes` existing? Takes a token if so.
    pub fn admit(
        &mut self,
        source: IpAddr,
        nodes: usize,
        now: Instant,
    ) -> Result<(), AdmissionRefused> {
        if nodes >= self.limits.max_nodes {
            return Err(AdmissionRefused::Full);
        }
        let (burst, rate) = (
            f64::from(self.limits.burst.max(1)),
            f64::from(self.limits.per_minute) / 60.0,
        );
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            self.forget_full(now, burst, rate);
        }
        let b = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + secs * rate).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(AdmissionRefused::RateLimited);
        }
        b.tokens -= 1.0;
        Ok(())
    }

    fn forget_full(&mut self, now: Instant, burst: f64, rate: f64) {
        self.buckets.retain(|_, b| {
            let secs = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + secs * rate < burst
        });
        if self.buckets.len() >= MAX_SOURCES {
            self.buckets.clear();
        }
    }
}

/// The longest an enrollment window may stay open.
pub const MAX_ENROLLMENT_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// An enrollment window: while it is open, a new PC becomes a node by booting, whatever the
/// enrollment policy (as `open`, within the limits above). An admin opens it for the minutes
/// the lab tech switches the new PCs on (`enlist enroll --for 15m`); a head restart closes it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EnrollmentWindow {
    until: Option<Instant>,
}

impl EnrollmentWindow {
    /// Open it from `now` for `length` (at most [`MAX_ENROLLMENT_WINDOW`]); zero closes it.
    pub fn open(&mut self, now: Instant, length: std::time::Duration) {
        self.until = (!length.is_zero()).then(|| now + length.min(MAX_ENROLLMENT_WINDOW));
    }

    /// How long it stays open from `now`; None when closed.
    pub fn left(&self, now: Instant) -> Option<std::time::Duration> {
        self.until
            .filter(|u| *u > now)
            .map(|u| u.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_window_is_open_for_its_length_at_most_a_day_and_closes() {
        let t0 = Instant::now();
        let mut w = EnrollmentWindow::default();
        assert_eq!(w.left(t0), None);
        w.open(t0, Duration::from_secs(900));
        assert_eq!(
            w.left(t0 + Duration::from_secs(100)),
            Some(Duration::from_secs(800))
        );
        assert_eq!(w.left(t0 + Duration::from_secs(900)), None, "over");
        w.open(t0, Duration::from_secs(1_000_000));
        assert_eq!(w.left(t0), Some(MAX_ENROLLMENT_WINDOW));
        w.open(t0, Duration::ZERO);
        assert_eq!(w.left(t0), None, "closed");
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_burst_then_the_rate_per_source() {
        let t0 = Instant::now();
        let mut a = Admission::new(AdmissionLimits {
            per_minute: 60,
            burst: 3,
            max_nodes: 1000,
        });
        for _ in 0..3 {
            assert_eq!(a.admit(ip(1), 0, t0), Ok(()));
        }
        assert_eq!(a.admit(ip(1), 0, t0), Err(AdmissionRefused::RateLimited));
        assert_eq!(a.admit(ip(2), 0, t0), Ok(()), "another source has its own");
        assert_eq!(
            a.admit(ip(1), 0, t0 + Duration::from_millis(1100)),
            Ok(()),
            "one a second at 60 a minute"
        );
        assert_eq!(
            a.admit(ip(1), 0, t0 + Duration::from_millis(1200)),
            Err(AdmissionRefused::RateLimited)
        );
    }

    #[test]
    fn the_total_is_capped() {
        let mut a = Admission::new(AdmissionLimits {
            per_minute: 60,
            burst: 10,
            max_nodes: 5,
        });
        assert_eq!(
            a.admit(ip(1), 5, Instant::now()),
            Err(AdmissionRefused::Full)
        );
        assert_eq!(a.admit(ip(1), 4, Instant::now()), Ok(()));
    }

    #[test]
    fn many_sources_do_not_grow_memory_without_bound() {
        let t0 = Instant::now();
        let mut a = Admission::new(AdmissionLimits {
            per_minute: 60,
            burst: 2,
            max_nodes: usize::MAX,
        });
        for i in 0..(MAX_SOURCES as u32 * 3) {
            let _ = a.admit(IpAddr::from(i.to_be_bytes()), 0, t0);
        }
        assert!(a.buckets.len() <= MAX_SOURCES);
    }
}
