//! DHCP lease storage. Address policy (which subnet, reservations) lives in `dhcp::`; this
//! module only guarantees that one address belongs to at most one client at a time.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use enlist_api::Mac;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{mac_sql, Store, StoreError, Text};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered and held briefly until the client's REQUEST.
    Offered,
    Bound,
    /// A client said the address is in use by someone else: quarantined until `expires`.
    Declined,
}

impl LeaseState {
    fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Declined => "declined",
        }
    }
    fn parse(s: &str) -> LeaseState {
        match s {
            "bound" => LeaseState::Bound,
            "declined" => LeaseState::Declined,
            _ => LeaseState::Offered,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub state: LeaseState,
    pub expires: i64,
    pub hostname: Option<String>,
}

/// An inclusive range of addresses to allocate from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl PoolRange {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }
}

fn row_for_ip(tx: &Connection, ip: Ipv4Addr) -> rusqlite::Result<Option<Lease>> {
    tx.query_row(
        "SELECT ip, mac, state, expires, hostname FROM leases WHERE ip = ?1",
        [u32::from(ip)],
        lease_from_row,
    )
    .optional()
}

fn lease_from_row(r: &rusqlite::Row) -> rusqlite::Result<Lease> {
    let state: String = r.get(2)?;
    Ok(Lease {
        ip: Ipv4Addr::from(r.get::<_, u32>(0)?),
        mac: r.get::<_, Text<Mac>>(1)?.0,
        state: LeaseState::parse(&state),
        expires: r.get(3)?,
        hostname: r.get(4)?,
    })
}

/// Whether `mac` may take `ip` given the row that holds it now.
fn usable_by(row: &Option<Lease>, mac: Mac, now: i64) -> bool {
    match row {
        None => true,
        Some(l) if l.expires <= now => true,
        Some(l) => l.mac == mac && l.state != LeaseState::Declined,
    }
}

fn put(
    tx: &Connection,
    ip: Ipv4Addr,
    mac: Mac,
    state: LeaseState,
    expires: i64,
    hostname: Option<&str>,
) -> rusqlite::Result<()> {
    // A client holds one address: drop its other non-declined rows.
    tx.execute(
        "DELETE FROM leases WHERE mac = ?1 AND ip != ?2 AND state != 'declined'",
        params![mac_sql(&mac), u32::from(ip)],
    )?;
    tx.execute(
        "INSERT INTO leases(ip, mac, state, expires, hostname) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, state = excluded.state,
           expires = excluded.expires, hostname = COALESCE(excluded.hostname, leases.hostname)",
        params![
            u32::from(ip),
            mac_sql(&mac),
            state.as_str(),
            expires,
            hostname
        ],
    )?;
    Ok(())
}

/// What a client asks for when it is offered an address.
pub struct OfferRequest<'a> {
    pub mac: Mac,
    pub range: PoolRange,
    /// The client's reservation, if it has one: always offered.
    pub reserved: Option<Ipv4Addr>,
    /// Addresses this client may not be offered besides leased ones: other clients'
    /// reservations, and offers held for other clients (which live in memory, not here).
    pub unavailable: &'a dyn Fn(Ipv4Addr) -> bool,
    /// Option 50, if the client asked for an address.
    pub requested: Option<Ipv4Addr>,
    pub now: i64,
}

/// Lease changes made together in one database transaction: the DHCP server handles a burst of
/// packets as one batch and sends the replies only after the batch is committed, so one fsync
/// covers many leases (group commit) and still no reply promises an address that is not on disk.
///
/// Each operation runs in its own savepoint: an error rolls back that operation alone.
pub struct LeaseBatch<'c> {
    tx: Transaction<'c>,
}

impl LeaseBatch<'_> {
    fn op<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let sp = self.tx.savepoint()?;
        let v = f(&sp)?;
        sp.commit()?;
        Ok(v)
    }

    /// Choose an address to offer for a DISCOVER. Reads only: an offer is not a lease (the
    /// caller holds it in memory), so a DISCOVER costs no write. `None`: pool exhausted.
    pub fn choose_offer(&mut self, req: &OfferRequest) -> Result<Option<Ipv4Addr>, StoreError> {
        Ok(choose(&self.tx, req)?)
    }

    /// Bind `ip` to `mac` (REQUEST). Returns false if the address belongs to someone else.
    pub fn bind(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        expires: i64,
        hostname: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.op(|tx| {
            let row = row_for_ip(tx, ip)?;
            if !usable_by(&row, mac, now) {
                return Ok(false);
            }
            put(tx, ip, mac, LeaseState::Bound, expires, hostname)?;
            Ok(true)
        })
    }

    /// The client gives its address back (RELEASE).
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr) -> Result<bool, StoreError> {
        self.op(|tx| {
            let n = tx.execute(
                "DELETE FROM leases WHERE ip = ?1 AND mac = ?2 AND state != 'declined'",
                params![u32::from(ip), mac_sql(&mac)],
            )?;
            Ok(n > 0)
        })
    }

    /// The client found the address in use (DECLINE): quarantine it until `until`, but only if
    /// it is this client's own: its unexpired lease, or (`offered`, which the caller checked
    /// against its offer holds) the address it was just offered. Anything else is a forgery: a
    /// stranger declining another client's address would take it away. Returns whether it was
    /// quarantined.
    pub fn decline(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        offered: bool,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.op(|tx| {
            let n = if offered {
                tx.execute(
                    "INSERT INTO leases(ip, mac, state, expires) VALUES (?1, ?2, 'declined', ?3)
                     ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, state = 'declined', expires = excluded.expires
                     WHERE leases.expires <= ?4 OR leases.mac = excluded.mac",
                    params![u32::from(ip), mac_sql(&mac), until, now],
                )?
            } else {
                tx.execute(
                    "UPDATE leases SET state = 'declined', expires = ?3
                     WHERE ip = ?1 AND mac = ?2 AND state IN ('offered', 'bound') AND expires > ?4",
                    params![u32::from(ip), mac_sql(&mac), until, now],
                )?
            };
            Ok(n > 0)
        })
    }

    /// Forget quarantines that have ended (they are never reused as leases otherwise).
    pub fn prune_declined(&mut self, now: i64) -> Result<usize, StoreError> {
        self.op(|tx| {
            tx.execute(
                "DELETE FROM leases WHERE state = 'declined' AND expires <= ?1",
                [now],
            )
        })
    }
}

impl Store {
    /// Run `f` with a lease batch and commit it. If the commit fails nothing `f` did is
    /// durable, and the error says so: the caller must not send the replies.
    pub fn lease_batch<T>(&self, f: impl FnOnce(&mut LeaseBatch) -> T) -> Result<T, StoreError> {
        self.with(|c| {
            let mut batch = LeaseBatch {
                tx: c.transaction()?,
            };
            let out = f(&mut batch);
            batch.tx.commit()?;
            Ok(out)
        })
    }

    /// One-operation conveniences (tests, tools): each is its own transaction.
    pub fn choose_offer(&self, req: &OfferRequest) -> Result<Option<Ipv4Addr>, StoreError> {
        self.lease_batch(|b| b.choose_offer(req))?
    }

    pub fn bind(
        &self,
        mac: Mac,
        ip: Ipv4Addr,
        expires: i64,
        hostname: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.lease_batch(|b| b.bind(mac, ip, expires, hostname, now))?
    }

    pub fn release(&self, mac: Mac, ip: Ipv4Addr) -> Result<bool, StoreError> {
        self.lease_batch(|b| b.release(mac, ip))?
    }

    pub fn decline(
        &self,
        mac: Mac,
        ip: Ipv4Addr,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.lease_batch(|b| b.decline(mac, ip, false, until, now))?
    }

    /// The unexpired bound lease of `mac`, if any.
    pub fn lease_of(&self, mac: Mac, now: i64) -> Result<Option<Lease>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT ip, mac, state, expires, hostname FROM leases
                 WHERE mac = ?1 AND state = 'bound' AND expires > ?2",
                params![mac_sql(&mac), now],
                lease_from_row,
            )
            .optional()
        })
    }
}

/// The address to offer, in order of preference: the client's reservation, the address it
/// has, the one it asked for, a never-used one, a free one left in the pool.
fn choose(tx: &Connection, req: &OfferRequest) -> rusqlite::Result<Option<Ipv4Addr>> {
    if let Some(ip) = req.reserved {
        let row = row_for_ip(tx, ip)?;
        // A reservation wins over a stale lease of another client, but not over a quarantine.
        let quarantined =
            matches!(&row, Some(l) if l.state == LeaseState::Declined && l.expires > req.now);
        return Ok(if quarantined { None } else { Some(ip) });
    }
    if let Some(ip) = current_address(tx, req)? {
        return Ok(Some(ip));
    }
    if let Some(ip) = req.requested {
        if req.range.contains(ip) && !(req.unavailable)(ip) {
            let row = row_for_ip(tx, ip)?;
            if usable_by(&row, req.mac, req.now) {
                return Ok(Some(ip));
            }
        }
    }
    if let Some(ip) = never_used(tx, req)? {
        return Ok(Some(ip));
    }
    free_in_pool(tx, req)
}

/// The address this client already has in the range.
fn current_address(tx: &Connection, req: &OfferRequest) -> rusqlite::Result<Option<Ipv4Addr>> {
    let ip: Option<u32> = tx
        .query_row(
            "SELECT ip FROM leases WHERE mac = ?1 AND state != 'declined' AND ip BETWEEN ?2 AND ?3
             ORDER BY expires DESC LIMIT 1",
            params![
                mac_sql(&req.mac),
                u32::from(req.range.first),
                u32::from(req.range.last)
            ],
            |r| r.get(0),
        )
        .optional()?;
    Ok(ip.map(Ipv4Addr::from))
}

/// A never-used address above the highest one in the table: one index lookup, so a large pool
/// that is filling up costs the same per client as an empty one.
fn never_used(tx: &Connection, req: &OfferRequest) -> rusqlite::Result<Option<Ipv4Addr>> {
    let highest: Option<u32> = tx.query_row(
        "SELECT MAX(ip) FROM leases WHERE ip BETWEEN ?1 AND ?2",
        params![u32::from(req.range.first), u32::from(req.range.last)],
        |r| r.get(0),
    )?;
    let above = highest.map_or(Some(u32::from(req.range.first)), |h| h.checked_add(1));
    Ok(above.and_then(|start| {
        (start..=u32::from(req.range.last))
            .map(Ipv4Addr::from)
            .find(|ip| !(req.unavailable)(*ip))
    }))
}

/// The pool is used up to its top: any free address below, never used (a gap left by a
/// release), else the one expired longest ago.
fn free_in_pool(tx: &Connection, req: &OfferRequest) -> rusqlite::Result<Option<Ipv4Addr>> {
    let mut taken = HashSet::new();
    {
        let mut st =
            tx.prepare("SELECT ip FROM leases WHERE ip BETWEEN ?1 AND ?2 AND expires > ?3")?;
        let rows = st.query_map(
            params![
                u32::from(req.range.first),
                u32::from(req.range.last),
                req.now
            ],
            |r| r.get::<_, u32>(0),
        )?;
        for ip in rows {
            taken.insert(ip?);
        }
    }
    let mut expired_candidate = None;
    for n in u32::from(req.range.first)..=u32::from(req.range.last) {
        let ip = Ipv4Addr::from(n);
        if taken.contains(&n) || (req.unavailable)(ip) {
            continue;
        }
        match row_for_ip(tx, ip)? {
            None => return Ok(Some(ip)),
            Some(l) => {
                if expired_candidate.is_none_or(|(_, e)| l.expires < e) {
                    expired_candidate = Some((ip, l.expires));
                }
            }
        }
    }
    Ok(expired_candidate.map(|(ip, _)| ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> PoolRange {
        PoolRange {
            first: Ipv4Addr::new(10, 0, 0, 10),
            last: Ipv4Addr::new(10, 0, 0, 12),
        }
    }

    fn m(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    fn req(mac: Mac, unavailable: &dyn Fn(Ipv4Addr) -> bool) -> OfferRequest<'_> {
        OfferRequest {
            mac,
            range: range(),
            reserved: None,
            unavailable,
            requested: None,
            now: 1000,
        }
    }

    /// Offer and bind at once (what a client's DISCOVER and REQUEST come to).
    fn lease(s: &Store, mac: Mac, ex: &dyn Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        let ip = s.choose_offer(&req(mac, ex)).unwrap()?;
        assert!(s.bind(mac, ip, 5000, None, 1000).unwrap());
        Some(ip)
    }

    #[test]
    fn distinct_clients_get_distinct_addresses_until_exhausted() {
        let s = Store::memory().unwrap();
        let ex: HashSet<Ipv4Addr> = HashSet::new();
        let ex = |ip: Ipv4Addr| ex.contains(&ip);
        let a = lease(&s, m(1), &ex).unwrap();
        let b = lease(&s, m(2), &ex).unwrap();
        let c = lease(&s, m(3), &ex).unwrap();
        assert_eq!(
            HashSet::from([a, b, c]).len(),
            3,
            "three clients, three addresses"
        );
        assert_eq!(
            s.choose_offer(&req(m(4), &ex)).unwrap(),
            None,
            "pool exhausted"
        );
        // The same client asking again gets the same address.
        assert_eq!(s.choose_offer(&req(m(1), &ex)).unwrap(), Some(a));
    }

    #[test]
    fn one_batch_hands_out_distinct_addresses_and_a_released_gap_is_reused() {
        let s = Store::memory().unwrap();
        let ex: HashSet<Ipv4Addr> = HashSet::new();
        let ex = |ip: Ipv4Addr| ex.contains(&ip);
        let (a, b, c) = s
            .lease_batch(|batch| {
                let mut one = |mac| {
                    let ip = batch.choose_offer(&req(mac, &ex)).unwrap().unwrap();
                    assert!(batch.bind(mac, ip, 5000, None, 1000).unwrap());
                    ip
                };
                (one(m(1)), one(m(2)), one(m(3)))
            })
            .unwrap();
        assert_eq!(
            (a, b, c),
            (
                Ipv4Addr::new(10, 0, 0, 10),
                Ipv4Addr::new(10, 0, 0, 11),
                Ipv4Addr::new(10, 0, 0, 12)
            )
        );
        // The middle one goes back; the pool is used to its top, so the gap is found.
        assert!(s.release(m(2), b).unwrap());
        assert_eq!(s.choose_offer(&req(m(4), &ex)).unwrap(), Some(b));
    }

    #[test]
    fn bind_refuses_an_address_held_by_another_client() {
        let s = Store::memory().unwrap();
        let ip = Ipv4Addr::new(10, 0, 0, 10);
        assert!(s.bind(m(1), ip, 5000, None, 1000).unwrap());
        assert!(!s.bind(m(2), ip, 5000, None, 1000).unwrap());
        // After expiry it is free again.
        assert!(s.bind(m(2), ip, 9000, None, 6000).unwrap());
    }

    #[test]
    fn declined_address_is_quarantined() {
        let s = Store::memory().unwrap();
        let ex: HashSet<Ipv4Addr> = HashSet::new();
        let ex = |ip: Ipv4Addr| ex.contains(&ip);
        let a = lease(&s, m(1), &ex).unwrap();
        assert!(s.decline(m(1), a, 2000, 1000).unwrap());
        let again = s.choose_offer(&req(m(1), &ex)).unwrap().unwrap();
        assert_ne!(again, a, "a declined address is not offered again");
        assert!(!s.bind(m(2), a, 5000, None, 1000).unwrap());
        // Once the quarantine is over, pruning removes the row and the address is free.
        assert_eq!(
            s.lease_batch(|b| b.prune_declined(2000)).unwrap().unwrap(),
            1
        );
        assert!(s.bind(m(2), a, 5000, None, 2000).unwrap());
    }

    #[test]
    fn only_the_holder_may_decline_an_address() {
        let s = Store::memory().unwrap();
        let ip = Ipv4Addr::new(10, 0, 0, 10);
        assert!(s.bind(m(1), ip, 5000, None, 1000).unwrap());
        assert!(
            !s.decline(m(2), ip, 9000, 1000).unwrap(),
            "another client's lease"
        );
        assert!(
            !s.decline(m(2), Ipv4Addr::new(10, 0, 0, 11), 9000, 1000)
                .unwrap(),
            "a free address"
        );
        assert_eq!(
            s.lease_of(m(1), 1000).unwrap().map(|l| l.ip),
            Some(ip),
            "still bound"
        );
    }

    #[test]
    fn reserved_addresses_are_not_pooled() {
        let s = Store::memory().unwrap();
        let ex = HashSet::from([Ipv4Addr::new(10, 0, 0, 10)]);
        let ex = |ip: Ipv4Addr| ex.contains(&ip);
        let a = s.choose_offer(&req(m(1), &ex)).unwrap().unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 11));
    }

    #[test]
    fn an_offer_writes_nothing() {
        let s = Store::memory().unwrap();
        let ex: HashSet<Ipv4Addr> = HashSet::new();
        let ex = |ip: Ipv4Addr| ex.contains(&ip);
        let a = s.choose_offer(&req(m(1), &ex)).unwrap().unwrap();
        assert_eq!(
            s.choose_offer(&req(m(2), &ex)).unwrap(),
            Some(a),
            "not held by the store"
        );
        assert_eq!(s.lease_of(m(1), 1000).unwrap(), None);
    }

    #[test]
    fn leases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let ip = Ipv4Addr::new(10, 0, 0, 11);
        {
            let s = Store::open(&path).unwrap();
            assert!(s.bind(m(1), ip, i64::MAX, Some("pc"), 1000).unwrap());
        }
        let s = Store::open(&path).unwrap();
        let l = s.lease_of(m(1), 1000).unwrap().unwrap();
        assert_eq!(l.ip, ip);
        assert_eq!(l.hostname.as_deref(), Some("pc"));
    }
}
