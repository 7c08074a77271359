//! Where a group's schedule stands at an instant: enlisted or released since when, and the
//! next change. Pure: the schedule, the admin's overrides (skip the next change, run it now)
//! and the clock in; a [`Status`] out.
//!
//! The phase at `t` is that of the last event at or before `t` (the later of the two
//! expressions' last times; a release wins a tie), not counting a skipped one, unless an
//! admin ran a change by hand after it. So a head that was down at 20:00 still knows at
//! 20:30 that the room is enlisted, and acts on it when it starts.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::config::ScheduleConfig;

pub use enlist_api::admin::Phase;

/// An admin's changes to a group's schedule (kept in the state folder).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    /// The scheduled change at this instant does not happen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<Timestamp>,
    /// A change run by hand at an instant: it holds until the next scheduled one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran: Option<Ran>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ran {
    pub phase: Phase,
    pub at: Timestamp,
}

/// Where a schedule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub phase: Phase,
    /// When it took this phase (`None`: no event in the last year).
    pub since: Option<Timestamp>,
    /// The next scheduled change of phase.
    pub next: Option<Next>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub phase: Phase,
    pub at: Timestamp,
    /// An admin skipped it: the phase stays as it is past `at`.
    pub skipped: bool,
}

/// Events are searched this many times back or ahead before giving up (a skipped event, an
/// event that changes nothing).
const STEPS: usize = 8;

/// The status of `s` at `now`.
pub fn status(s: &ScheduleConfig, o: &Overrides, now: Timestamp, tz: &TimeZone) -> Status {
    let scheduled = last_event(s, o.skip, now, tz);
    let (phase, since) = match (o.ran, scheduled) {
        (Some(r), last) if r.at <= now && last.is_none_or(|(_, at)| r.at > at) => {
            (r.phase, Some(r.at))
        }
        (_, Some((phase, at))) => (phase, Some(at)),
        (_, None) => (Phase::Released, None),
    };
    let next = next_change(s, phase, now, tz).map(|(p, at)| Next {
        phase: p,
        at,
        skipped: o.skip == Some(at),
    });
    Status { phase, since, next }
}

/// The group's next closed time at `now`: from when (now, if it is closed) until when it
/// opens again (None: no window ahead within a few changes). What the workload manager is
/// told to keep free of work, so no job runs past the window's end.
pub fn closed_period(
    s: &ScheduleConfig,
    o: &Overrides,
    now: Timestamp,
    tz: &TimeZone,
) -> (Timestamp, Option<Timestamp>) {
    let first = status(s, o, now, tz);
    let mut from = (first.phase == Phase::Released).then_some(now);
    let mut next = first.next;
    for _ in 0..STEPS {
        let Some(n) = next else { break };
        let then = status(s, o, n.at, tz);
        match (from, then.phase) {
            (None, Phase::Released) => from = Some(n.at),
            (Some(_), Phase::Enlisted) => return (from.unwrap_or(now), Some(n.at)),
            _ => {}
        }
        next = then.next;
    }
    (from.unwrap_or(now), None)
}

/// The last scheduled event at or before `t` that was not skipped.
fn last_event(
    s: &ScheduleConfig,
    skip: Option<Timestamp>,
    mut t: Timestamp,
    tz: &TimeZone,
) -> Option<(Phase, Timestamp)> {
    for _ in 0..STEPS {
        let enlist = s.enlist.last_at_or_before(t, tz);
        let release = s.release.last_at_or_before(t, tz);
        let event = match (enlist, release) {
            (Some(e), Some(r)) if e > r => (Phase::Enlisted, e),
            (_, Some(r)) => (Phase::Released, r),
            (Some(e), None) => (Phase::Enlisted, e),
            (None, None) => return None,
        };
        if skip != Some(event.1) {
            return Some(event);
        }
        t = event.1.checked_sub(SignedDuration::from_secs(1)).ok()?;
    }
    None
}

/// The next scheduled event after `t` that changes `phase`.
fn next_change(
    s: &ScheduleConfig,
    phase: Phase,
    mut t: Timestamp,
    tz: &TimeZone,
) -> Option<(Phase, Timestamp)> {
    for _ in 0..STEPS {
        let enlist = s.enlist.next_after(t, tz);
        let release = s.release.next_after(t, tz);
        let event = match (enlist, release) {
            (Some(e), Some(r)) if e < r => (Phase::Enlisted, e),
            (_, Some(r)) => (Phase::Released, r),
            (Some(e), None) => (Phase::Enlisted, e),
            (None, None) => return None,
        };
        if event.0 != phase {
            return Some(event);
        }
        t = event.1;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn schedule(enlist: &str, release: &str) -> ScheduleConfig {
        ScheduleConfig {
            group: "room-101".into(),
            enlist: enlist.parse().expect("enlist"),
            release: release.parse().expect("release"),
            wake: crate::config::Wake::OnDemand,
        }
    }

    #[test]
    fn the_closed_time_runs_from_the_next_release_to_the_window_after_it() {
        let s = nights_and_weekends();
        let o = Overrides::default();
        let tz = TimeZone::UTC;
        // Friday night: closed from Monday 07:00 to Monday 20:00 (the weekend is open).
        let (from, until) = closed_period(&s, &o, at("2026-11-27T22:00"), &tz);
        assert_eq!(
            (from, until),
            (at("2026-11-30T07:00"), Some(at("2026-11-30T20:00")))
        );
        // Closed now (Monday noon): from now until 20:00.
        let now = at("2026-11-30T12:00");
        assert_eq!(
            closed_period(&s, &o, now, &tz),
            (now, Some(at("2026-11-30T20:00")))
        );
        // The next window skipped: closed until Tuesday's.
        let skipped = Overrides {
            skip: Some(at("2026-11-30T20:00")),
            ran: None,
        };
        assert_eq!(
            closed_period(&s, &skipped, now, &tz),
            (now, Some(at("2026-12-01T20:00")))
        );
        // Opened by hand at noon: closed from Tuesday 07:00.
        let ran = Overrides {
            skip: None,
            ran: Some(Ran {
                phase: Phase::Enlisted,
                at: now,
            }),
        };
        assert_eq!(
            closed_period(&s, &ran, now, &tz),
            (at("2026-12-01T07:00"), Some(at("2026-12-01T20:00")))
        );
    }

    /// An instant from a UTC wall-clock time (`2026-11-30T20:00`).
    pub(crate) fn at(s: &str) -> Timestamp {
        let dt: jiff::civil::DateTime = s.parse().expect("datetime");
        TimeZone::UTC
            .to_ambiguous_timestamp(dt)
            .compatible()
            .expect("instant")
    }

    fn phase_at(s: &ScheduleConfig, o: &Overrides, t: &str) -> Phase {
        status(s, o, at(t), &TimeZone::UTC).phase
    }

    /// Weekday nights, and the whole weekend: enlisted from 20:00 Monday to Friday, released
    /// at 07:00 Monday to Friday only.
    fn nights_and_weekends() -> ScheduleConfig {
        schedule("0 20 * * mon-fri", "0 7 * * mon-fri")
    }

    #[test]
    fn nights_and_weekends_are_enlisted_weekdays_are_not() {
        let s = nights_and_weekends();
        let o = Overrides::default();
        // 2026-11-27 is a Friday.
        assert_eq!(phase_at(&s, &o, "2026-11-27T12:00"), Phase::Released);
        assert_eq!(phase_at(&s, &o, "2026-11-27T19:59"), Phase::Released);
        assert_eq!(phase_at(&s, &o, "2026-11-27T20:00"), Phase::Enlisted);
        assert_eq!(
            phase_at(&s, &o, "2026-11-28T12:00"),
            Phase::Enlisted,
            "Saturday"
        );
        assert_eq!(
            phase_at(&s, &o, "2026-11-29T12:00"),
            Phase::Enlisted,
            "Sunday"
        );
        assert_eq!(phase_at(&s, &o, "2026-11-30T06:59"), Phase::Enlisted);
        assert_eq!(
            phase_at(&s, &o, "2026-11-30T07:00"),
            Phase::Released,
            "Monday"
        );
        let st = status(&s, &o, at("2026-11-28T12:00"), &TimeZone::UTC);
        assert_eq!(st.since, Some(at("2026-11-27T20:00")));
        assert_eq!(
            st.next,
            Some(Next {
                phase: Phase::Released,
                at: at("2026-11-30T07:00"),
                skipped: false
            })
        );
    }

    #[test]
    fn a_skipped_change_does_not_happen_and_the_next_one_does() {
        let s = nights_and_weekends();
        let o = Overrides {
            skip: Some(at("2026-11-30T20:00")),
            ran: None,
        };
        let st = status(&s, &o, at("2026-11-30T12:00"), &TimeZone::UTC);
        assert_eq!(st.phase, Phase::Released);
        assert!(st
            .next
            .is_some_and(|n| n.skipped && n.phase == Phase::Enlisted));
        assert_eq!(phase_at(&s, &o, "2026-11-30T21:00"), Phase::Released);
        assert_eq!(phase_at(&s, &o, "2026-12-01T12:00"), Phase::Released);
        assert_eq!(phase_at(&s, &o, "2026-12-01T20:00"), Phase::Enlisted);
    }

    #[test]
    fn a_change_run_by_hand_holds_until_the_next_scheduled_one() {
        let s = nights_and_weekends();
        let o = Overrides {
            skip: None,
            ran: Some(Ran {
                phase: Phase::Enlisted,
                at: at("2026-11-30T15:00"),
            }),
        };
        assert_eq!(phase_at(&s, &o, "2026-11-30T14:59"), Phase::Released);
        let st = status(&s, &o, at("2026-11-30T16:00"), &TimeZone::UTC);
        assert_eq!(st.phase, Phase::Enlisted);
        assert_eq!(st.since, Some(at("2026-11-30T15:00")));
        // 20:00 changes nothing; the next change is the release at 07:00.
        assert_eq!(st.next.map(|n| n.at), Some(at("2026-12-01T07:00")));
        assert_eq!(phase_at(&s, &o, "2026-12-01T07:00"), Phase::Released);
    }

    #[test]
    fn a_release_wins_a_tie_and_no_event_at_all_is_released() {
        let s = schedule("0 20 * * *", "0 20 * * *");
        assert_eq!(
            phase_at(&s, &Overrides::default(), "2026-11-30T21:00"),
            Phase::Released
        );
        let never = schedule("0 0 31 feb *", "0 0 30 feb *");
        let st = status(
            &never,
            &Overrides::default(),
            at("2026-11-30T21:00"),
            &TimeZone::UTC,
        );
        assert_eq!((st.phase, st.since, st.next), (Phase::Released, None, None));
    }
}
