//! Sending one file by TFTP, as a pure state machine: the I/O loop (`server::send_blob`) tells it
//! what arrived and when, and it says what to send and how long to wait. No clock, no socket,
//! so every retransmission rule is tested exactly.
//!
//! Retransmission follows TCP's (RFC 6298): the timeout is fitted to the round trips measured
//! (SRTT + 4 x RTTVAR, with a floor of 10 ms for a LAN and the client's negotiated timeout as the
//! ceiling), samples come only from blocks sent once (Karn), and a timeout doubles it. On a lossy
//! cable a lost block then costs a few round trips, not a fixed second. A client that repeats
//! its last ACK is missing the next block: it gets it again at once, but only once per window
//! (more would be the Sorcerer's Apprentice syndrome, RFC 1123 4.2.3.1).

use std::time::{Duration, Instant};

/// The retransmission timeout estimator (RFC 6298).
#[derive(Debug, Clone)]
pub struct Rto {
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    floor: Duration,
    ceiling: Duration,
}

/// The least the timeout is on a LAN, where a PXE ROM answers a block within a millisecond or
/// two: a lost block costs about this. A PC that stalls longer (an emulated one starved of
/// CPU) gets a block twice, which costs one packet: the timeout doubles, the next clean round
/// trip brings it back, and the echoed ACK is not answered (see `on_ack`).
pub const RTO_FLOOR: Duration = Duration::from_millis(10);

impl Rto {
    /// Before any sample: `initial` (RFC 6298 says 1 s), at most `ceiling`.
    pub fn new(initial: Duration, ceiling: Duration) -> Rto {
        Rto {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: initial.min(ceiling),
            floor: RTO_FLOOR.min(ceiling),
            ceiling,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.rto
    }

    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar * 3 / 4 + diff / 4;
                self.srtt = Some(srtt * 7 / 8 + rtt / 8);
            }
        }
        self.refit(self.srtt.unwrap_or(rtt));
    }

    /// The timeout from the estimate: SRTT + 4 x RTTVAR, between the floor and the ceiling.
    fn refit(&mut self, srtt: Duration) {
        self.rto = (srtt + (self.rttvar * 4).max(Duration::from_millis(1)))
            .clamp(self.floor, self.ceiling);
    }

    /// A timeout fired: wait twice as long next time.
    pub fn back_off(&mut self) {
        self.rto = (self.rto * 2).min(self.ceiling);
    }

    /// The round trip measured so far (smoothed, and its variation), if any was.
    pub fn estimate(&self) -> Option<Estimate> {
        self.srtt.map(|srtt| Estimate {
            srtt,
            rttvar: self.rttvar,
        })
    }

    /// Start from what an earlier transfer to the same client measured, not from a second.
    pub fn resume(from: Estimate, ceiling: Duration) -> Rto {
        let mut rto = Rto::new(ceiling, ceiling);
        rto.srtt = Some(from.srtt);
        rto.rttvar = from.rttvar;
        rto.refit(from.srtt);
        rto
    }
}

/// A client's measured round trip, kept between its transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub srtt: Duration,
    pub rttvar: Duration,
}

/// The round trips measured to recent clients: a PC's kernel transfer starts from what its
/// boot script's measured, so its first lost blocks cost tens of ms rather than the initial
/// second. Bounded (oldest forgotten first) and short-lived, since anyone can be a client.
#[derive(Default)]
pub struct RoundTrips {
    by_client: std::collections::HashMap<std::net::IpAddr, (Estimate, Instant)>,
}

impl RoundTrips {
    const CLIENTS: usize = 1024;
    const KEPT_FOR: Duration = Duration::from_secs(600);

    pub fn remember(&mut self, client: std::net::IpAddr, e: Estimate, now: Instant) {
        if !self.by_client.contains_key(&client) && self.by_client.len() >= Self::CLIENTS {
            self.by_client
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < Self::KEPT_FOR);
            if self.by_client.len() >= Self::CLIENTS {
                let oldest = self
                    .by_client
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(ip, _)| *ip);
                if let Some(ip) = oldest {
                    self.by_client.remove(&ip);
                }
            }
        }
        self.by_client.insert(client, (e, now));
    }

    pub fn recall(&self, client: std::net::IpAddr, now: Instant) -> Option<Estimate> {
        self.by_client
            .get(&client)
            .filter(|(_, at)| now.saturating_duration_since(*at) < Self::KEPT_FOR)
            .map(|(e, _)| *e)
    }
}

/// What the I/O loop should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send blocks `first..=last` (block numbers from 1, before 16-bit wrapping).
    Send { first: u64, last: u64 },
    /// Nothing to send: wait for the client until the deadline.
    Wait,
    /// Every block is acknowledged.
    Done,
    /// The client has been silent too long.
    GiveUp,
}

pub struct Sender {
    /// Blocks in all (the last one shorter than the block size, possibly empty).
    last: u64,
    window: u64,
    /// The first block not yet acknowledged.
    base: u64,
    /// When each block of the current window was first sent (`None`: sent more than once,
    /// so its ACK is no sample: Karn's rule).
    sent_at: Vec<(u64, Option<Instant>)>,
    rto: Rto,
    deadline: Option<Instant>,
    /// A repeated ACK already brought a retransmission of this window.
    fast_done: bool,
    /// The last time the client moved the transfer forward.
    progress: Instant,
    /// How long a client may be silent before the transfer is abandoned.
    give_up: Duration,
}

impl Sender {
    pub fn new(
        len: u64,
        blksize: u64,
        window: u16,
        rto: Rto,
        give_up: Duration,
        now: Instant,
    ) -> Sender {
        Sender {
            last: len / blksize.max(1) + 1,
            window: u64::from(window.max(1)),
            base: 1,
            sent_at: vec![],
            rto,
            deadline: None,
            fast_done: false,
            progress: now,
            give_up,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn rto(&self) -> Duration {
        self.rto.timeout()
    }

    /// The round trip measured in this transfer (with what it started from).
    pub fn estimate(&self) -> Option<Estimate> {
        self.rto.estimate()
    }

    fn window_end(&self) -> u64 {
        (self.base + self.window - 1).min(self.last)
    }

    /// The window to send now (at the start, after progress, after a timeout).
    fn send_window(&mut self, now: Instant, retransmission: bool) -> Step {
        if self.base > self.last {
            self.deadline = None;
            return Step::Done;
        }
        let (first, last) = (self.base, self.window_end());
        for k in first..=last {
            match self.sent_at.iter_mut().find(|(b, _)| *b == k) {
                Some(entry) => entry.1 = None,
                None => self.sent_at.push((k, (!retransmission).then_some(now))),
            }
        }
        self.deadline = Some(now + self.rto.timeout());
        Step::Send { first, last }
    }

    pub fn start(&mut self, now: Instant) -> Step {
        self.send_window(now, false)
    }

    /// The client acknowledged 16-bit block number `a`.
    pub fn on_ack(&mut self, a: u16, now: Instant) -> Step {
        // Map the wrapping number into [base - 1, window end].
        let end = self.window_end();
        let Some(k) = (self.base - 1..=end).rev().find(|k| *k as u16 == a) else {
            return Step::Wait;
        };
        if k >= self.base {
            let sent_twice = match self.sent_at.iter().find(|(b, _)| *b == k) {
                Some((_, Some(t))) => {
                    self.rto.sample(now.saturating_duration_since(*t));
                    false
                }
                Some((_, None)) => true,
                None => false,
            };
            self.sent_at.retain(|(b, _)| *b > k);
            self.base = k + 1;
            // A block sent twice may be acknowledged twice: that second ACK is an echo, not a
            // client missing the next block, and answering it would send every later block
            // twice (the Sorcerer's Apprentice): this window gets no fast retransmission.
            self.fast_done = sent_twice;
            self.progress = now;
            return self.send_window(now, false);
        }
        // A repeated ACK of the block before the window: the client lacks `base`. Once per
        // window, at once; after that only the timeout retransmits.
        if !self.fast_done {
            self.fast_done = true;
            return self.send_window(now, true);
        }
        Step::Wait
    }

    /// The deadline passed with no progress.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if now.saturating_duration_since(self.progress) >= self.give_up {
            self.deadline = None;
            return Step::GiveUp;
        }
        self.rto.back_off();
        self.send_window(now, true)
    }

    /// The client sent its request again (it did not hear us): answer at once, like a
    /// repeated ACK.
    pub fn on_repeated_request(&mut self, now: Instant) -> Step {
        if self.fast_done {
            return Step::Wait;
        }
        self.fast_done = true;
        self.send_window(now, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sender(len: u64, window: u16, t0: Instant) -> Sender {
        Sender::new(
            len,
            512,
            window,
            Rto::new(Duration::from_secs(1), Duration::from_secs(1)),
            Duration::from_secs(10),
            t0,
        )
    }

    #[test]
    fn the_timeout_follows_the_measured_round_trip() {
        let mut r = Rto::new(Duration::from_secs(1), Duration::from_secs(1));
        for _ in 0..20 {
            r.sample(ms(2));
        }
        assert_eq!(r.timeout(), RTO_FLOOR, "a LAN's 2 ms round trip: the floor");
        for _ in 0..20 {
            r.sample(ms(100));
        }
        assert!(
            r.timeout() >= ms(100) && r.timeout() < ms(300),
            "{:?}",
            r.timeout()
        );
        r.back_off();
        r.back_off();
        r.back_off();
        assert_eq!(
            r.timeout(),
            Duration::from_secs(1),
            "backoff stops at the ceiling"
        );
    }

    #[test]
    fn lockstep_sends_each_block_after_the_previous_ack() {
        let t0 = Instant::now();
        let mut s = sender(1024, 1, t0);
        assert_eq!(s.start(t0), Step::Send { first: 1, last: 1 });
        assert_eq!(s.on_ack(1, t0 + ms(3)), Step::Send { first: 2, last: 2 });
        assert_eq!(
            s.on_ack(2, t0 + ms(6)),
            Step::Send { first: 3, last: 3 },
            "the empty last block"
        );
        assert_eq!(s.on_ack(3, t0 + ms(9)), Step::Done);
        assert_eq!(s.rto(), RTO_FLOOR, "fitted to the 3 ms round trips");
    }

    #[test]
    fn a_lost_block_costs_a_short_timeout_and_karn_keeps_the_estimate_clean() {
        let t0 = Instant::now();
        let mut s = sender(512 * 10, 1, t0);
        s.start(t0);
        let mut t = t0;
        for k in 1..=5u16 {
            t += ms(2);
            s.on_ack(k, t);
        }
        // Block 6 is lost: the deadline is tens of ms away, not a second.
        let d = s.deadline().expect("deadline") - t;
        assert!(d <= ms(50), "{d:?}");
        t += d;
        assert_eq!(s.on_timeout(t), Step::Send { first: 6, last: 6 });
        // Its ACK comes late; it is not a sample (it was retransmitted).
        let before = s.rto();
        t += ms(500);
        s.on_ack(6, t);
        assert!(
            s.rto() <= before,
            "{:?} after a retransmitted block",
            s.rto()
        );
    }

    #[test]
    fn a_repeated_ack_brings_the_window_again_once() {
        let t0 = Instant::now();
        let mut s = sender(512 * 20, 4, t0);
        assert_eq!(s.start(t0), Step::Send { first: 1, last: 4 });
        // Block 1 lost: the client repeats ACK 0 (its ACK of the OACK) three times.
        assert_eq!(s.on_ack(0, t0 + ms(5)), Step::Send { first: 1, last: 4 });
        assert_eq!(s.on_ack(0, t0 + ms(6)), Step::Wait, "once per window");
        assert_eq!(s.on_ack(0, t0 + ms(7)), Step::Wait);
        assert_eq!(s.on_ack(4, t0 + ms(9)), Step::Send { first: 5, last: 8 });
    }

    /// A second transfer to a client starts from the first one's round trip; strangers fill a
    /// bounded table and are forgotten.
    #[test]
    fn round_trips_carry_over_between_a_clients_transfers_and_stay_bounded() {
        let t0 = Instant::now();
        let mut first = Rto::new(Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(first.estimate(), None);
        for _ in 0..10 {
            first.sample(ms(2));
        }
        let e = first.estimate().expect("measured");
        let mut trips = RoundTrips::default();
        let pc: std::net::IpAddr = "10.77.0.100".parse().expect("ip");
        trips.remember(pc, e, t0);
        let again = Rto::resume(
            trips.recall(pc, t0 + ms(500)).expect("kept"),
            Duration::from_secs(3),
        );
        assert_eq!(again.timeout(), RTO_FLOOR, "not the initial second");
        assert_eq!(
            trips.recall(pc, t0 + Duration::from_secs(601)),
            None,
            "forgotten"
        );
        for n in 0..2000u32 {
            let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            trips.remember(ip, e, t0 + ms(u64::from(n)));
        }
        assert!(trips.by_client.len() <= RoundTrips::CLIENTS);
        assert_eq!(
            trips.recall(pc, t0 + ms(2000)),
            None,
            "the oldest went first"
        );
    }

    /// A client that stalled past the timeout gets its block twice and acknowledges both
    /// copies: the second ACK is not answered, so later blocks go once each.
    #[test]
    fn a_block_sent_twice_is_acknowledged_twice_without_an_apprentice() {
        let t0 = Instant::now();
        let mut s = sender(512 * 10, 1, t0);
        s.start(t0);
        let mut t = t0;
        for k in 1..=3u16 {
            t += ms(1);
            s.on_ack(k, t);
        }
        // Block 4 goes out; the client stalls past the timeout: block 4 again.
        t = s.deadline().expect("deadline");
        assert_eq!(s.on_timeout(t), Step::Send { first: 4, last: 4 });
        // Both copies are acknowledged, one after the other.
        assert_eq!(s.on_ack(4, t + ms(1)), Step::Send { first: 5, last: 5 });
        assert_eq!(s.on_ack(4, t + ms(2)), Step::Wait, "the echo is not news");
        // Block 5 was sent once: its ACK moves on, and a real repeat is answered at once.
        assert_eq!(s.on_ack(5, t + ms(3)), Step::Send { first: 6, last: 6 });
        assert_eq!(s.on_ack(5, t + ms(300)), Step::Send { first: 6, last: 6 });
    }

    #[test]
    fn a_repeated_request_is_answered_not_restarted() {
        let t0 = Instant::now();
        let mut s = sender(512 * 3, 1, t0);
        s.start(t0);
        assert_eq!(
            s.on_repeated_request(t0 + ms(900)),
            Step::Send { first: 1, last: 1 }
        );
        assert_eq!(s.on_repeated_request(t0 + ms(901)), Step::Wait);
    }

    #[test]
    fn a_silent_client_is_given_up_after_the_limit_not_after_a_few_tries() {
        let t0 = Instant::now();
        let mut s = sender(512 * 3, 1, t0);
        s.start(t0);
        let mut tries = 0;
        let t = loop {
            let t = s.deadline().expect("deadline");
            match s.on_timeout(t) {
                Step::GiveUp => break t,
                Step::Send { .. } => tries += 1,
                other => panic!("{other:?}"),
            }
        };
        assert!(
            t - t0 >= Duration::from_secs(10),
            "gave up after {:?}",
            t - t0
        );
        assert!(tries >= 6, "{tries} retransmissions");
    }

    #[test]
    fn acks_wrap_at_65536_blocks() {
        let t0 = Instant::now();
        let mut s = sender(512 * 70_000, 16, t0);
        s.start(t0);
        s.base = 65_530;
        s.sent_at.clear();
        assert_eq!(
            s.on_ack(2, t0),
            Step::Send {
                first: 65_539,
                last: 65_554
            },
            "block 65538 is ACK 2"
        );
    }
}
