//! The scheduler with an injected clock, on a real registry: a room is answered with its own
//! disk in the daytime, woken and enlisted at night, released in the morning; skip and run
//! now; overrides that outlive the head.

use std::path::PathBuf;
use std::sync::Arc;

use enlist_api::{Mac, Order};
use jiff::tz::TimeZone;

use super::window::tests::at;
use super::*;
use crate::bootpath::Proto;
use crate::dhcp::client::{ClientInfo, Firmware};
use crate::dhcp::handler::BootObserver;
use crate::registry::tests::{boot, ip, pxe, registry_from, A, B};
use crate::registry::BootDecision;

fn state_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("enlist-sched-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("state dir");
    dir
}

/// A head whose nodes join group `night`, enlisted 20:00-07:00 every day (UTC).
fn head(dir: &std::path::Path) -> (Arc<Registry>, Arc<Timetable>) {
    let extra = format!(
        "state_dir: {}\nschedules:\n  - {{ group: night, enlist: \"0 20 * * *\", release: \"0 7 * * *\" }}\n",
        dir.display()
    );
    let reg = registry_from("proxy", ", group: night", &extra);
    let cfg = reg.config();
    let s = Timetable::new(cfg, reg.clone(), None, TimeZone::UTC)
        .expect("scheduler")
        .expect("schedules are configured");
    (reg, s)
}

fn decision(r: &Registry, mac: Mac) -> BootDecision {
    match r
        .boot_decision(mac, ip(100), Proto::Http)
        .expect("decision")
    {
        BootDecision::Boot { .. } => BootDecision::Retry("boot".into()),
        other => other,
    }
}

fn events(r: &Registry, mac: Mac, kind: &str) -> Vec<String> {
    r.store()
        .events_of(mac, 100)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.detail)
        .collect()
}

#[tokio::test]
async fn a_room_is_local_by_day_woken_and_enlisted_at_night_and_released_in_the_morning() {
    let dir = state_dir("night");
    let (reg, s) = head(&dir);

    // Monday noon: released. A PC switched on now boots its own disk.
    s.tick(at("2026-11-30T12:00")).await;
    assert_eq!(decision(&reg, A), BootDecision::LocalDisk);
    assert_eq!(reg.node(A).expect("A").group, "night");

    // 20:00: the room is woken and enlisted; the same PC now boots the node OS.
    s.tick(at("2026-11-30T20:00")).await;
    let woken = events(&reg, A, "wake");
    assert_eq!(woken.len(), 1, "one magic packet for A: {woken:?}");
    assert_eq!(decision(&reg, A), BootDecision::Retry("boot".into()));
    boot(&reg, A, ip(100));
    s.tick(at("2026-11-30T23:00")).await;
    assert_eq!(
        events(&reg, A, "wake").len(),
        1,
        "nothing new to do at 23:00"
    );

    // 07:00: released; its agent is told to hand the PC back, and a PC booting now (B) is not
    // enlisted.
    s.tick(at("2026-12-01T07:00")).await;
    let (commands, _) = reg.take_commands(A);
    assert!(
        commands.iter().any(|c| c.order == Order::Release),
        "{commands:?}"
    );
    assert!(reg.node(A).expect("A").released);
    assert_eq!(decision(&reg, B), BootDecision::LocalDisk);

    // The next night enlists A again (and wakes it, since it is not up).
    s.tick(at("2026-12-01T20:00")).await;
    assert!(!reg.node(A).expect("A").released);
    assert_eq!(events(&reg, B, "wake").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn skip_and_run_now_change_the_night_and_outlive_the_head() {
    let dir = state_dir("skip");
    let (reg, s) = head(&dir);
    s.tick(at("2026-11-30T12:00")).await;
    let _ = decision(&reg, A);

    let v = s.skip("night", true, at("2026-11-30T12:00")).expect("skip");
    let next = v.next.clone().expect("next");
    assert!(next.skipped && next.phase == Phase::Enlisted, "{v:?}");
    assert_eq!(next.at, "2026-11-30T20:00:00+00:00");
    s.tick(at("2026-11-30T20:00")).await;
    assert_eq!(
        decision(&reg, A),
        BootDecision::LocalDisk,
        "skipped: still local"
    );
    assert!(events(&reg, A, "wake").is_empty());

    // A head started again keeps the skip.
    let (_, again) = head_on_same_dir(&reg, &dir);
    let v = again.list(at("2026-11-30T21:00"));
    assert_eq!(v[0].phase, Phase::Released);
    assert_eq!(
        v[0].next.as_ref().map(|n| n.at.as_str()),
        Some("2026-12-01T20:00:00+00:00")
    );

    // Run now: enlisted at 21:00 until the 07:00 release.
    let v = s.run_now("night", at("2026-11-30T21:00")).expect("run now");
    assert_eq!(v.phase, Phase::Enlisted);
    s.tick(at("2026-11-30T21:00")).await;
    assert_eq!(decision(&reg, A), BootDecision::Retry("boot".into()));
    assert_eq!(events(&reg, A, "wake").len(), 1);
    assert_eq!(s.list(at("2026-12-01T07:00"))[0].phase, Phase::Released);

    assert!(matches!(
        s.skip("day", true, at("2026-11-30T21:00")),
        Err(TimetableError::NoSchedule(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second scheduler on the same config and state folder (a restarted head).
fn head_on_same_dir(
    reg: &Arc<Registry>,
    _dir: &std::path::Path,
) -> (Arc<Registry>, Arc<Timetable>) {
    let cfg = reg.config();
    let s = Timetable::new(cfg, reg.clone(), None, TimeZone::UTC)
        .expect("scheduler")
        .expect("schedules");
    (reg.clone(), s)
}

#[test]
fn a_damaged_overrides_file_is_named() {
    let dir = state_dir("damaged");
    std::fs::write(dir.join(OVERRIDES_FILE), "{ not json").expect("write");
    let extra = format!(
        "state_dir: {}\nschedules:\n  - {{ group: night, enlist: \"0 20 * * *\", release: \"0 7 * * *\" }}\n",
        dir.display()
    );
    let reg = registry_from("proxy", "", &extra);
    let cfg = reg.config();
    match Timetable::new(cfg, reg, None, TimeZone::UTC) {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("schedules.json") && e.contains("line 1"), "{e}");
        }
        Ok(_) => panic!("a damaged overrides file was accepted"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An on-demand room (jobs on, so `wake` defaults to on-demand) with no workload manager
/// behind it: Slurm's resume wakes a PC inside its window only (counted, and "did not wake"
/// once overdue, said once); unknown nodes and bad host lists are answered; suspend hands
/// the PC back.
#[tokio::test(flavor = "multi_thread")]
async fn an_on_demand_room_is_woken_for_work_inside_its_window_only_and_counts_its_wakes() {
    let dir = state_dir("demand");
    let extra = format!(
        "state_dir: {}\njobs: {{ enabled: true }}\nschedules:\n  - {{ group: night, enlist: \"0 20 * * *\", release: \"0 7 * * *\" }}\n",
        dir.display()
    );
    let reg = registry_from("proxy", ", group: night, enrollment: open", &extra);
    assert!(reg.config().on_demand("night"));
    let cfg = reg.config();
    let s = Timetable::new(cfg, reg.clone(), None, TimeZone::UTC)
        .expect("scheduler")
        .expect("schedules are configured");
    s.tick(at("2026-11-30T20:00")).await;
    boot(&reg, A, ip(100));
    let name = reg.node(A).expect("A").name;

    // Closed (the next day at noon): Slurm's resume wakes nothing and says why.
    let a = s
        .resume_at(&name, at("2026-12-01T12:00"))
        .await
        .expect("resume");
    assert!(a.done.is_empty(), "{a:?}");
    assert!(
        a.skipped[0].why.contains("outside group night's window"),
        "{a:?}"
    );
    assert!(events(&reg, A, "wake")
        .iter()
        .all(|e| !e.contains("magic packet")));

    // Slurm needs it: one magic packet, counted; never registered, so it did not wake.
    let a = s
        .resume_at(&name, at("2026-11-30T21:00"))
        .await
        .expect("resume");
    assert_eq!(a.done, std::slice::from_ref(&name), "{a:?}");
    let row = reg.node(A).expect("A");
    assert_eq!((row.wakes_tried, row.wakes_woke), (1, 0));
    let late = reg.overdue_wakes(Duration::ZERO).expect("overdue");
    assert_eq!(late.len(), 1);
    assert!(late[0].1.contains("did not wake"), "{}", late[0].1);
    assert!(
        reg.overdue_wakes(Duration::ZERO)
            .expect("overdue")
            .is_empty(),
        "once"
    );

    // A host list naming a node the head does not know, and a bad one.
    let a = s
        .resume_at("node-nope", at("2026-11-30T21:00"))
        .await
        .expect("resume");
    assert_eq!(a.skipped[0].why, "no such node on this head");
    assert!(matches!(
        s.resume_at("node-[1-", at("2026-11-30T21:00")).await,
        Err(TimetableError::BadRequest(_))
    ));

    // Idle: Slurm's suspend hands the PC back (its agent is told to).
    let a = s.suspend(&name).await.expect("suspend");
    assert_eq!(a.done, std::slice::from_ref(&name), "{a:?}");
    let (commands, _) = reg.take_commands(A);
    assert!(
        commands.iter().any(|c| c.order == Order::Release),
        "{commands:?}"
    );

    // Gone to its own disk, whose OS asks DHCP for an address (no PXE class): it is up for
    // its owner, and Slurm's resume sends it no packet.
    reg.leaving(A, "release").expect("the agent says it leaves");
    reg.sweep(std::time::Instant::now() + Duration::from_secs(60))
        .expect("sweep");
    let own_os = ClientInfo {
        vendor_class: Some("MSFT 5.0".into()),
        firmware: Firmware::None,
        requested_ip: Some(std::net::Ipv4Addr::new(10, 77, 0, 100)),
        ..pxe(A)
    };
    reg.dhcp_seen(&own_os, None, std::net::Ipv4Addr::new(10, 77, 0, 1));
    let a = s
        .resume_at(&name, at("2026-11-30T21:00"))
        .await
        .expect("resume");
    assert!(a.done.is_empty(), "{a:?}");
    let why = &a.skipped[0].why;
    assert!(
        why.contains("its own OS asked DHCP") && why.contains("10.77.0.100"),
        "{why}"
    );
    assert_eq!(reg.node(A).expect("A").wakes_tried, 1, "no packet sent");
    let _ = std::fs::remove_dir_all(&dir);
}
