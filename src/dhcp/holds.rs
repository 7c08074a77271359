//! Offer holds: the address offered to a client is kept for it, in memory, until its REQUEST
//! or `hold` passes, so clients booting together are offered different addresses. Offers are
//! not leases and are not written to disk (a DISCOVER costs no fsync), and at most `cap`
//! addresses are held: a flood of DISCOVERs from made-up MACs cannot take the pool (DHCP
//! starvation), it only stops holding, and real clients are still offered an address, which
//! their REQUEST binds. Pure: the caller passes the time.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use enlist_api::Mac;

#[derive(Debug)]
pub struct OfferHolds {
    by_ip: HashMap<Ipv4Addr, (Mac, i64)>,
    by_mac: HashMap<Mac, Ipv4Addr>,
    cap: usize,
}

impl OfferHolds {
    pub fn new(cap: usize) -> OfferHolds {
        OfferHolds {
            by_ip: HashMap::new(),
            by_mac: HashMap::new(),
            cap,
        }
    }

    /// Whether `ip` is held for a client other than `mac` at `now`.
    pub fn held_for_other(&self, ip: Ipv4Addr, mac: Mac, now: i64) -> bool {
        matches!(self.by_ip.get(&ip), Some((m, until)) if *m != mac && *until > now)
    }

    /// The address held for `mac`, if its hold is still on.
    pub fn held_for(&self, mac: Mac, now: i64) -> Option<Ipv4Addr> {
        let ip = *self.by_mac.get(&mac)?;
        matches!(self.by_ip.get(&ip), Some((m, until)) if *m == mac && *until > now).then_some(ip)
    }

    /// Hold `ip` for `mac` until `until`. `false` when the cap is reached (nothing held).
    pub fn hold(&mut self, mac: Mac, ip: Ipv4Addr, until: i64, now: i64) -> bool {
        self.release(mac);
        if self.by_ip.len() >= self.cap {
            self.prune(now);
            if self.by_ip.len() >= self.cap {
                return false;
            }
        }
        if let Some((other, _)) = self.by_ip.insert(ip, (mac, until)) {
            self.by_mac.remove(&other);
        }
        self.by_mac.insert(mac, ip);
        true
    }

    /// `mac` took its address (REQUEST), went elsewhere, or gave it back: its hold ends.
    pub fn release(&mut self, mac: Mac) {
        if let Some(ip) = self.by_mac.remove(&mac) {
            if matches!(self.by_ip.get(&ip), Some((m, _)) if *m == mac) {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// `ip` was bound by someone: nobody else holds it any more.
    pub fn taken(&mut self, ip: Ipv4Addr) {
        if let Some((m, _)) = self.by_ip.remove(&ip) {
            self.by_mac.remove(&m);
        }
    }

    pub fn prune(&mut self, now: i64) {
        let by_mac = &mut self.by_mac;
        self.by_ip.retain(|_, (m, until)| {
            let keep = *until > now;
            if !keep {
                by_mac.remove(m);
            }
            keep
        });
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    #[test]
    fn a_hold_keeps_an_address_for_its_client_until_it_ends() {
        let mut h = OfferHolds::new(10);
        assert!(h.hold(mac(1), ip(1), 160, 100));
        assert!(h.held_for_other(ip(1), mac(2), 150));
        assert!(!h.held_for_other(ip(1), mac(1), 150), "not for itself");
        assert_eq!(h.held_for(mac(1), 150), Some(ip(1)));
        assert!(!h.held_for_other(ip(1), mac(2), 160), "expired");
        h.release(mac(1));
        assert!(h.is_empty());
    }

    #[test]
    fn a_client_holds_one_address_and_a_binding_ends_others_holds() {
        let mut h = OfferHolds::new(10);
        h.hold(mac(1), ip(1), 200, 100);
        h.hold(mac(1), ip(2), 200, 100);
        assert_eq!((h.len(), h.held_for(mac(1), 100)), (1, Some(ip(2))));
        h.taken(ip(2));
        assert_eq!(h.held_for(mac(1), 100), None);
    }

    #[test]
    fn a_flood_stops_at_the_cap_and_expired_holds_make_room() {
        let mut h = OfferHolds::new(3);
        for n in 1..=3 {
            assert!(h.hold(mac(n), ip(n), 200, 100));
        }
        assert!(!h.hold(mac(9), ip(9), 200, 100), "cap reached: no hold");
        assert_eq!(h.len(), 3);
        assert!(h.hold(mac(9), ip(9), 400, 300), "the old holds expired");
        assert_eq!(h.len(), 1);
    }
}
