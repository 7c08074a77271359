//! Cron expressions, as in crontab(5): five fields, `minute hour day-of-month month
//! day-of-week`, each `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of
//! those; months and weekdays also by their English three-letter names (`mon-fri`), Sunday 0
//! or 7. As in Vixie cron, when both day fields are restricted a day matches either.
//!
//! Pure: the times an expression names, before or after an instant, in a given time zone (the
//! head's local time; a wall-clock time skipped by a DST change happens at the first instant
//! after the gap, one repeated by it happens once, at its first occurrence).

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A checked cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// The day-of-month field is `*` (then only the weekday field restricts days).
    any_day: bool,
    /// The day-of-week field is `*`.
    any_weekday: bool,
}

/// How far back or ahead an expression is searched: a year and a day covers every expression
/// that names a real date (a 29 February one only in leap years).
const SEARCH_DAYS: i64 = 366;

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl std::str::FromStr for Cron {
    type Err = String;

    /// Parse `0 20 * * mon-fri`; the error names the field at fault.
    fn from_str(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "{text:?} has {} fields; a cron expression has 5: minute hour day-of-month month day-of-week (e.g. \"0 20 * * mon-fri\")",
                fields.len()
            ));
        };
        let mut weekdays = field(weekday, "day-of-week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Cron {
            text: fields.join(" "),
            minutes: field(minute, "minute", 0, 59, &[])?,
            hours: field(hour, "hour", 0, 23, &[])?,
            days: field(day, "day-of-month", 1, 31, &[])?,
            months: field(month, "month", 1, 12, &MONTHS)?,
            weekdays,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
        })
    }
}

impl std::fmt::Display for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// One field as a bit set of the values it names (`lo..=hi`); names count from `lo`.
fn field(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(s) if s > 0 => (r, s),
                _ => {
                    return Err(format!(
                        "{what} {part:?}: the step after '/' must be a number above 0"
                    ))
                }
            },
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, what, lo, hi, names)?,
                value(b, what, lo, hi, names)?,
            )
        } else {
            let v = value(range, what, lo, hi, names)?;
            (v, if step > 1 { hi } else { v })
        };
        if from > to {
            return Err(format!("{what} {part:?}: the range runs backwards"));
        }
        bits |= (from..=to)
            .step_by(step as usize)
            .fold(0, |b, v| b | (1 << v));
    }
    Ok(bits)
}

fn value(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(lo + i as u32);
    }
    match text.parse::<u32>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{what} {v} is out of range {lo}-{hi}")),
        Err(_) => Err(format!(
            "{what} {text:?} is not a number{}",
            name_hint(names)
        )),
    }
}

fn name_hint(names: &[&str]) -> String {
    match names.first() {
        Some(n) => format!(" or a name like {n:?}"),
        None => String::new(),
    }
}

fn has(bits: u64, v: i8) -> bool {
    (0..64).contains(&v) && bits & (1 << v) != 0
}

impl Cron {
    /// Whether the expression names this calendar day.
    fn names_day(&self, d: Date) -> bool {
        let day = has(self.days, d.day());
        let weekday = has(self.weekdays, d.weekday().to_sunday_zero_offset());
        has(self.months, d.month())
            && match (self.any_day, self.any_weekday) {
                (true, true) => true,
                (true, false) => weekday,
                (false, true) => day,
                (false, false) => day || weekday,
            }
    }

    /// The times of day it names, earliest first.
    fn times(&self) -> impl DoubleEndedIterator<Item = (i8, i8)> + '_ {
        (0..24i8).filter(|h| has(self.hours, *h)).flat_map(|h| {
            (0..60i8)
                .filter(|m| has(self.minutes, *m))
                .map(move |m| (h, m))
        })
    }

    /// The first instant it names after `t`.
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut day = tz.to_datetime(t).date();
        for _ in 0..=SEARCH_DAYS {
            if self.names_day(day) {
                let found = self
                    .times()
                    .filter_map(|(h, m)| instant(tz, day.at(h, m, 0, 0)))
                    .find(|at| *at > t);
                if found.is_some() {
                    return found;
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }

    /// The last instant it names at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut day = tz.to_datetime(t).date();
        for _ in 0..=SEARCH_DAYS {
            if self.names_day(day) {
                let found = self
                    .times()
                    .rev()
                    .filter_map(|(h, m)| instant(tz, day.at(h, m, 0, 0)))
                    .find(|at| *at <= t);
                if found.is_some() {
                    return found;
                }
            }
            day = day.yesterday().ok()?;
        }
        None
    }
}

/// The instant of a wall-clock time (see the module's note on DST).
fn instant(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    tz.to_ambiguous_timestamp(dt).compatible().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: &TimeZone, s: &str) -> Timestamp {
        let dt: DateTime = s.parse().expect("datetime");
        instant(tz, dt).expect("instant")
    }

    fn local(tz: &TimeZone, t: Option<Timestamp>) -> String {
        t.map(|t| tz.to_datetime(t).to_string()).unwrap_or_default()
    }

    #[test]
    fn weekday_evenings_skip_the_weekend() {
        let tz = TimeZone::UTC;
        let c: Cron = "0 20 * * mon-fri".parse().expect("cron");
        // 2026-11-27 is a Friday.
        let fri_noon = at(&tz, "2026-11-27T12:00");
        assert_eq!(
            local(&tz, c.next_after(fri_noon, &tz)),
            "2026-11-27T20:00:00"
        );
        let fri_night = at(&tz, "2026-11-27T20:00");
        assert_eq!(
            local(&tz, c.next_after(fri_night, &tz)),
            "2026-11-30T20:00:00"
        );
        assert_eq!(
            local(&tz, c.last_at_or_before(fri_night, &tz)),
            "2026-11-27T20:00:00"
        );
        let sun = at(&tz, "2026-11-29T23:00");
        assert_eq!(
            local(&tz, c.last_at_or_before(sun, &tz)),
            "2026-11-27T20:00:00"
        );
    }

    #[test]
    fn lists_steps_names_and_sunday_as_seven() {
        let tz = TimeZone::UTC;
        let c: Cron = "*/20 7,19 * jan-mar 7".parse().expect("cron");
        let t = at(&tz, "2026-11-27T00:00");
        // The first Sunday of January 2027 is the 3rd.
        assert_eq!(local(&tz, c.next_after(t, &tz)), "2027-01-03T07:00:00");
        let t = at(&tz, "2027-01-03T07:00");
        assert_eq!(local(&tz, c.next_after(t, &tz)), "2027-01-03T07:20:00");
        let t = at(&tz, "2027-01-03T07:40");
        assert_eq!(local(&tz, c.next_after(t, &tz)), "2027-01-03T19:00:00");
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        let tz = TimeZone::UTC;
        let c: Cron = "0 0 1 * mon".parse().expect("cron");
        let t = at(&tz, "2026-11-27T00:00");
        assert_eq!(local(&tz, c.next_after(t, &tz)), "2026-11-30T00:00:00");
        let t = at(&tz, "2026-11-30T00:00");
        assert_eq!(local(&tz, c.next_after(t, &tz)), "2026-12-01T00:00:00");
    }

    #[test]
    fn wall_clock_times_across_daylight_saving_changes() {
        let Ok(tz) = TimeZone::get("Europe/Berlin") else {
            panic!("no tz database: apt install tzdata");
        };
        // Clocks go forward at 02:00 on 2027-03-28: 02:30 does not exist that day.
        let c: Cron = "30 2 * * *".parse().expect("cron");
        let t = at(&tz, "2027-03-28T00:00");
        let next = c.next_after(t, &tz).expect("next");
        assert_eq!(tz.to_datetime(next).to_string(), "2027-03-28T03:30:00");
        // 20:00 local is 19:00 UTC in winter, 18:00 UTC in summer.
        let c: Cron = "0 20 * * *".parse().expect("cron");
        let winter = c
            .next_after(at(&tz, "2027-03-27T12:00"), &tz)
            .expect("winter");
        let summer = c
            .next_after(at(&tz, "2027-03-28T12:00"), &tz)
            .expect("summer");
        assert_eq!(summer.as_second() - winter.as_second(), 23 * 3600);
    }

    #[test]
    fn bad_expressions_say_which_field() {
        for (text, says) in [
            ("0 20 * *", "has 4 fields"),
            ("60 20 * * *", "minute 60 is out of range 0-59"),
            ("0 24 * * *", "hour 24 is out of range 0-23"),
            ("0 20 0 * *", "day-of-month 0 is out of range 1-31"),
            ("0 20 * 13 *", "month 13 is out of range 1-12"),
            ("0 20 * * 8", "day-of-week 8 is out of range 0-7"),
            (
                "0 20 * * fri-mon",
                "day-of-week \"fri-mon\": the range runs backwards",
            ),
            (
                "*/0 20 * * *",
                "the step after '/' must be a number above 0",
            ),
            (
                "0 20 * * weekdays",
                "day-of-week \"weekdays\" is not a number or a name like \"sun\"",
            ),
        ] {
            match text.parse::<Cron>() {
                Ok(c) => panic!("{text:?} accepted as {c:?}"),
                Err(e) => assert!(e.contains(says), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn a_date_that_never_comes_is_never_next() {
        let c: Cron = "0 0 31 feb *".parse().expect("cron");
        let tz = TimeZone::UTC;
        assert_eq!(c.next_after(at(&tz, "2026-11-27T00:00"), &tz), None);
        assert_eq!(c.last_at_or_before(at(&tz, "2026-11-27T00:00"), &tz), None);
    }
}
