//! One-boot tokens: the boot script names the node's initrd with a token, and the initrd (which
//! carries the node's key) is served only with that token and only to the address that fetched
//! the script. A token ends when the node registers, or after its time to live; within that, a
//! retried download works. Pure: the caller passes the time and a fresh random value.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use enlist_api::Mac;

/// A live token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    /// Only this address may use it.
    pub ip: IpAddr,
    pub issued: Instant,
    /// The key epoch the overlay carries, fixed at the first download so that a retried or
    /// ranged download gets the same bytes.
    pub epoch: Option<i64>,
}

/// Why a token was not accepted (the metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("no boot token for this node (fetch its boot script first)")]
    Unknown,
    #[error("boot token does not match")]
    Mismatch,
    #[error("boot token expired")]
    Expired,
    #[error("boot token belongs to another address")]
    WrongAddress,
}

impl TokenRefused {
    pub fn reason(self) -> &'static str {
        match self {
            TokenRefused::Unknown => "token-unknown",
            TokenRefused::Mismatch => "token-mismatch",
            TokenRefused::Expired => "token-expired",
            TokenRefused::WrongAddress => "token-wrong-address",
        }
    }
}

/// The live tokens, at most one per node, at most `cap` in all.
#[derive(Debug)]
pub struct BootTokens {
    by_mac: HashMap<Mac, Token>,
    ttl: Duration,
    cap: usize,
}

impl BootTokens {
    pub fn new(ttl: Duration, cap: usize) -> BootTokens {
        BootTokens {
            by_mac: HashMap::new(),
            ttl,
            cap: cap.max(1),
        }
    }

    /// A token for `mac` at `ip`, replacing the node's earlier one. At the cap, expired tokens
    /// go first, then the oldest.
    pub fn issue(&mut self, mac: Mac, ip: IpAddr, value: String, now: Instant) -> &Token {
        if !self.by_mac.contains_key(&mac) && self.by_mac.len() >= self.cap {
            self.prune(now);
            if self.by_mac.len() >= self.cap {
                if let Some(oldest) = self
                    .by_mac
                    .iter()
                    .min_by_key(|(_, t)| t.issued)
                    .map(|(m, _)| *m)
                {
                    self.by_mac.remove(&oldest);
                }
            }
        }
        self.by_mac.insert(
            mac,
            Token {
                value,
                ip,
                issued: now,
                epoch: None,
            },
        );
        &self.by_mac[&mac]
    }

    /// The node's live token, if `value` is it and `ip` may use it.
    pub fn check(
        &mut self,
        mac: Mac,
        value: &str,
        ip: IpAddr,
        now: Instant,
    ) -> Result<&mut Token, TokenRefused> {
        let ttl = self.ttl;
        let t = self.by_mac.get_mut(&mac).ok_or(TokenRefused::Unknown)?;
        if !constant_time_eq(t.value.as_bytes(), value.as_bytes()) {
            return Err(TokenRefused::Mismatch);
        }
        if now.saturating_duration_since(t.issued) > ttl {
            return Err(TokenRefused::Expired);
        }
        if t.ip != ip {
            return Err(TokenRefused::WrongAddress);
        }
        Ok(t)
    }

    /// The node registered (or was released): its token is spent.
    pub fn end(&mut self, mac: Mac) {
        self.by_mac.remove(&mac);
    }

    /// Which node the address of a live token belongs to (to follow a boot's file fetches).
    pub fn mac_at(&self, ip: IpAddr) -> Option<Mac> {
        self.by_mac
            .iter()
            .filter(|(_, t)| t.ip == ip)
            .max_by_key(|(_, t)| t.issued)
            .map(|(m, _)| *m)
    }

    pub fn prune(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.by_mac
            .retain(|_, t| now.saturating_duration_since(t.issued) <= ttl);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([2, 0, 0, 0, 0, 1]);
    const B: Mac = Mac([2, 0, 0, 0, 0, 2]);

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 77, 0, n])
    }

    #[test]
    fn a_token_works_from_its_address_until_it_ends_or_expires() {
        let t0 = Instant::now();
        let mut t = BootTokens::new(Duration::from_secs(300), 10);
        t.issue(A, ip(100), "tok".into(), t0);
        assert!(t.check(A, "tok", ip(100), t0).is_ok());
        assert!(
            t.check(A, "tok", ip(100), t0 + Duration::from_secs(60))
                .is_ok(),
            "a retried download within the boot works"
        );
        assert_eq!(
            t.check(A, "tok", ip(99), t0).unwrap_err(),
            TokenRefused::WrongAddress
        );
        assert_eq!(
            t.check(A, "other", ip(100), t0).unwrap_err(),
            TokenRefused::Mismatch
        );
        assert_eq!(
            t.check(B, "tok", ip(100), t0).unwrap_err(),
            TokenRefused::Unknown
        );
        assert_eq!(
            t.check(A, "tok", ip(100), t0 + Duration::from_secs(301))
                .unwrap_err(),
            TokenRefused::Expired
        );
        assert_eq!(t.mac_at(ip(100)), Some(A));
        t.end(A);
        assert_eq!(
            t.check(A, "tok", ip(100), t0).unwrap_err(),
            TokenRefused::Unknown
        );
    }

    #[test]
    fn a_new_script_replaces_the_old_token_and_the_cap_holds() {
        let t0 = Instant::now();
        let mut t = BootTokens::new(Duration::from_secs(300), 2);
        t.issue(A, ip(1), "one".into(), t0);
        t.issue(A, ip(1), "two".into(), t0);
        assert!(t.check(A, "one", ip(1), t0).is_err());
        assert!(t.check(A, "two", ip(1), t0).is_ok());
        t.issue(B, ip(2), "b".into(), t0 + Duration::from_secs(1));
        t.issue(
            Mac([2, 0, 0, 0, 0, 3]),
            ip(3),
            "c".into(),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(t.len(), 2);
        assert!(t.check(A, "two", ip(1), t0).is_err(), "the oldest went");
    }
}
