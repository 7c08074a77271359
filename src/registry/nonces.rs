//! Registration nonces: handed to anyone who asks (unauthenticated), taken once by a
//! registration signed over one. Every nonce lives the same time, so issue order is expiry
//! order: a queue gives the oldest in O(1), and a flood of requests costs one insert and at most
//! one eviction each, never a scan of the table (nor the registry's lock: this has its own).

use std::collections::{HashSet, VecDeque};

/// Nonces outstanding, issue order, with their expiry (unix seconds); and the set to look
/// them up. A taken nonce leaves the set at once and its queue entry when it reaches the front.
#[derive(Debug)]
pub struct Nonces {
    ttl_secs: i64,
    cap: usize,
    queue: VecDeque<(i64, String)>,
    live: HashSet<String>,
}

impl Nonces {
    pub fn new(ttl_secs: i64, cap: usize) -> Nonces {
        Nonces {
            ttl_secs,
            cap: cap.max(1),
            queue: VecDeque::new(),
            live: HashSet::new(),
        }
    }

    /// Remember `nonce`, issued at `now`; the oldest is forgotten when `cap` are outstanding.
    pub fn issue(&mut self, nonce: String, now: i64) {
        self.expire(now);
        while self.queue.len() >= self.cap {
            if let Some((_, old)) = self.queue.pop_front() {
                self.live.remove(&old);
            }
        }
        self.live.insert(nonce.clone());
        self.queue.push_back((now + self.ttl_secs, nonce));
    }

    /// Take `nonce` if it was issued and has not expired or been taken: true once.
    pub fn take(&mut self, nonce: &str, now: i64) -> bool {
        self.expire(now);
        self.live.remove(nonce)
    }

    /// Forget the expired ones (from the front: they are in expiry order).
    pub fn expire(&mut self, now: i64) {
        while let Some((exp, _)) = self.queue.front() {
            if *exp > now {
                break;
            }
            if let Some((_, old)) = self.queue.pop_front() {
                self.live.remove(&old);
            }
        }
    }

    /// Outstanding nonces (not taken, not expired as of the last call).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Nonces;

    #[test]
    fn a_nonce_is_good_once_and_until_it_expires() {
        let mut n = Nonces::new(60, 10);
        n.issue("a".into(), 100);
        assert!(n.take("a", 120));
        assert!(!n.take("a", 121), "taken once");
        n.issue("b".into(), 100);
        assert!(!n.take("b", 160), "expired at 160");
        assert!(!n.take("never", 100));
    }

    #[test]
    fn a_flood_keeps_the_cap_and_the_newest() {
        let mut n = Nonces::new(60, 1000);
        for i in 0..100_000 {
            n.issue(format!("n{i}"), 100);
        }
        assert_eq!(n.len(), 1000);
        assert!(n.queue.len() <= 1000);
        assert!(!n.take("n0", 100), "the oldest went first");
        assert!(n.take("n99999", 100), "the newest is good");
        // Taken ones leave no trace once their turn comes.
        for i in 0..2000 {
            n.issue(format!("m{i}"), 101);
        }
        assert_eq!(n.len(), 1000);
        assert_eq!(n.live.len(), n.queue.len());
    }
}
