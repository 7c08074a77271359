//! Who jobs run as: the head's own accounts as its NSS sees them (`getent`: local files, and
//! LDAP or SSSD users where the site's NSS lists them), those with UIDs 1000-59999, with the
//! groups they are in. Read again every few seconds, so a user added on the head (or in the
//! site's directory) runs a job within a minute with no restart; every node takes the new
//! list at its next heartbeat. A user whose job waits in the queue is looked up by name too:
//! a directory that does not list its users (SSSD's default) still gives that one.
//! `jobs.users` in the config fixes the list instead.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use enlist_api::{GroupEntry, UserEntry};

use crate::config::JobUser;

/// Job users: UIDs in this range (the human accounts of Debian's defaults).
const UIDS: std::ops::Range<u32> = 1000..60000;

/// The accounts nodes know: users and the groups they are in (primary or supplementary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    pub users: Vec<UserEntry>,
    pub groups: Vec<GroupEntry>,
}

/// A user or group name a node's /etc/passwd and /etc/group take.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Users from `getent passwd` lines: name, uid, gid of those in [`UIDS`] with a usable name.
pub fn parse_passwd(text: &str) -> Vec<UserEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let (name, uid, gid) = (f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
            (UIDS.contains(&uid) && valid_name(name)).then(|| UserEntry {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .collect()
}

/// Groups from `getent group` lines: name, gid, members.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let (name, gid) = (f.first()?, f.get(2)?.parse().ok()?);
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            valid_name(name).then(|| GroupEntry {
                name: name.to_string(),
                gid,
                members,
            })
        })
        .collect()
}

/// The accounts of `users`: each user once (by name), and each group one of them is in, with
/// only those of them as its members (a node needs no one else). A user's primary group that
/// has no entry gets one named after the user.
pub fn select(mut users: Vec<UserEntry>, groups: &[GroupEntry]) -> Accounts {
    users.sort_by(|a, b| a.name.cmp(&b.name));
    users.dedup_by(|a, b| a.name == b.name);
    let names: BTreeSet<&str> = users.iter().map(|u| u.name.as_str()).collect();
    let primary: BTreeSet<u32> = users.iter().map(|u| u.gid).collect();
    let mut out: BTreeMap<u32, GroupEntry> = BTreeMap::new();
    for g in groups {
        let members: Vec<String> = g
            .members
            .iter()
            .filter(|m| names.contains(m.as_str()))
            .cloned()
            .collect();
        if (primary.contains(&g.gid) || !members.is_empty()) && !out.contains_key(&g.gid) {
            out.insert(
                g.gid,
                GroupEntry {
                    name: g.name.clone(),
                    gid: g.gid,
                    members,
                },
            );
        }
    }
    for u in &users {
        out.entry(u.gid).or_insert_with(|| GroupEntry {
            name: u.name.clone(),
            gid: u.gid,
            members: vec![],
        });
    }
    Accounts {
        users,
        groups: out.into_values().collect(),
    }
}

/// `getent <database> [keys]`'s output ("" when it fails: no such key, or no NSS).
fn getent(database: &str, keys: &[String]) -> String {
    Command::new("getent")
        .arg(database)
        .args(keys)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// The head's accounts now: every user NSS lists in [`UIDS`], and `also` (users of queued
/// jobs) looked up by name. Blocking (runs getent).
pub fn site(also: &[String]) -> Accounts {
    let mut users = parse_passwd(&getent("passwd", &[]));
    let missing: Vec<String> = also
        .iter()
        .filter(|n| valid_name(n) && !users.iter().any(|u| &u.name == *n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        users.extend(parse_passwd(&getent("passwd", &missing)));
    }
    select(users, &parse_group(&getent("group", &[])))
}

/// The accounts of a fixed `jobs.users` list (groups: their primary ones).
pub fn fixed(users: &[JobUser]) -> Accounts {
    let users = users
        .iter()
        .map(|u| UserEntry {
            name: u.name.clone(),
            uid: u.uid,
            gid: u.gid,
        })
        .collect();
    select(users, &[])
}

/// What changed from `old` to `new`, for the log: `+alice -bob`.
pub fn change(old: &Accounts, new: &Accounts) -> String {
    let names =
        |a: &Accounts| -> BTreeSet<String> { a.users.iter().map(|u| u.name.clone()).collect() };
    let (o, n) = (names(old), names(new));
    let mut said: Vec<String> = n.difference(&o).map(|u| format!("+{u}")).collect();
    said.extend(o.difference(&n).map(|u| format!("-{u}")));
    if said.is_empty() {
        "groups changed".into()
    } else {
        said.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          alice:x:1000:1000:Alice:/home/alice:/bin/bash\n\
                          bob:x:1001:100:Bob:/home/bob:/bin/sh\n\
                          nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n\
                          Bad Name:x:1002:1002::/:/bin/sh\nbroken\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:\nalice:x:1000:\n\
                         render:x:2000:alice,carol\nstaff:x:50:carol\n";

    #[test]
    fn the_human_accounts_and_the_groups_they_are_in() {
        let users = parse_passwd(PASSWD);
        assert_eq!(
            users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["alice", "bob"],
            "root, nobody and an unusable name are left out"
        );
        let a = select(users, &parse_group(GROUP));
        let g = |name: &str| a.groups.iter().find(|g| g.name == name).cloned();
        assert_eq!(
            g("alice").map(|g| g.gid),
            Some(1000),
            "alice's primary group"
        );
        assert_eq!(g("users").map(|g| g.gid), Some(100), "bob's primary group");
        assert_eq!(
            g("render").map(|g| g.members),
            Some(vec!["alice".to_string()]),
            "a supplementary group, with only job users as members"
        );
        assert_eq!(g("staff"), None, "no job user in it");
        assert_eq!(g("root"), None);
    }

    #[test]
    fn a_primary_group_without_an_entry_is_named_after_its_user() {
        let a = select(parse_passwd("dora:x:1500:1500::/:/bin/sh\n"), &[]);
        assert_eq!(
            a.groups,
            [GroupEntry {
                name: "dora".into(),
                gid: 1500,
                members: vec![]
            }]
        );
        let b = select(
            parse_passwd("dora:x:1500:1500::/:/bin/sh\nerin:x:1501:1501::/:/bin/sh\n"),
            &[],
        );
        assert_eq!(change(&a, &b), "+erin");
        assert_eq!(change(&b, &a), "-erin");
    }
}
