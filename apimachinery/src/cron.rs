//! Cron schedules as CronJobs write them: five fields (minute, hour, day of
//! month, month, day of week) or a `@hourly`-style descriptor, and the next
//! time a schedule fires in a given time zone.
//!
//! Day of month and day of week combine as cron always has: when both are
//! restricted a day matching either fires; when one is `*` (or `?`) only the
//! other one counts.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month was `*` or `?`: only the weekday restricts days.
    any_day: bool,
    /// Day of week was `*` or `?`: only the day of month restricts days.
    any_weekday: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The schedule's own time zone prefix, which CronJobs refuse in favour of
/// `spec.timeZone`.
pub fn names_time_zone(schedule: &str) -> bool {
    let s = schedule.trim_start();
    s.starts_with("TZ=") || s.starts_with("CRON_TZ=")
}

/// The named IANA time zone a CronJob's `spec.timeZone` gives; `Local`
/// is refused since it would mean whatever zone the controller runs in.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("local") || name.is_empty() {
        return Err("must be an explicit IANA time zone name".into());
    }
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name stands for this value (1 for months, 0 for weekdays).
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: MONTHS,
        names_from: 1,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 6,
        names: WEEKDAYS,
        names_from: 0,
    },
];

impl Field {
    fn value(&self, s: &str) -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + self.names_from);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("failed to parse {} value {s:?}", self.name))?;
        if n < self.min || n > self.max {
            return Err(format!(
                "{} value {n} is out of range {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(n)
    }

    /// The bits one comma-separated part sets: `*`, `n`, `a-b`, each with an optional `/step`.
    fn part(&self, part: &str) -> Result<u64, String> {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("invalid step {s:?} in {} field", self.name))?;
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (self.min, self.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (self.value(a)?, self.value(b)?);
            if a > b {
                return Err(format!("{} range {range} starts after it ends", self.name));
            }
            (a, b)
        } else {
            let a = self.value(range)?;
            // `5/15` means from 5 to the end in steps of 15.
            (a, if step.is_some() { self.max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut bits = 0u64;
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
        Ok(bits)
    }

    fn parse(&self, text: &str) -> Result<u64, String> {
        if text.is_empty() {
            return Err(format!("empty {} field", self.name));
        }
        text.split(',')
            .try_fold(0u64, |acc, p| Ok(acc | self.part(p)?))
    }
}

impl Schedule {
    /// Parses a five-field schedule or a descriptor; the error says which field is wrong.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => return Err(format!("unrecognized descriptor: {t}")),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {text:?}",
                fields.len()
            ));
        }
        let mut bits = [0u64; 5];
        for (i, f) in FIELDS.iter().enumerate() {
            bits[i] = f.parse(fields[i])?;
        }
        let star = |s: &str| s.starts_with('*') || s.starts_with('?');
        Ok(Schedule {
            minutes: bits[0],
            hours: bits[1],
            days: bits[2],
            months: bits[3],
            weekdays: bits[4],
            any_day: star(fields[2]),
            any_weekday: star(fields[4]),
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day || self.any_weekday {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time after `after` (strictly) that the schedule fires in
    /// `tz`, or None if it never fires within five years (as `0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        // Whole minutes only: the first candidate is the next minute boundary.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year() + 5;
        while t.year() <= limit {
            if self.months & (1 << t.month()) == 0 {
                t = t
                    .date()
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .at(0, 0, 0, 0);
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.at(0, 0, 0, 0);
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = hour_start(t).checked_add(1.hour()).ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A wall time skipped by a clock change fires just after it
            // (the compatible reading); one repeated fires at its first
            // occurrence, so a time at or before `after` is passed over.
            if let Ok(z) = t.to_zoned(tz.clone()) {
                if z.timestamp() > after {
                    return Some(z.timestamp());
                }
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

fn hour_start(t: DateTime) -> DateTime {
    t.date().at(t.hour(), 0, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule)
            .expect("parses")
            .next_after(at(after), &TimeZone::UTC)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn fields_ranges_steps_and_names() {
        assert_eq!(
            next("* * * * *", "2026-12-06T21:18:09Z"),
            "2026-12-06T21:19:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-06T21:18:09Z"),
            "2026-12-06T21:30:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-12-06T21:26:00Z"),
            "2026-12-06T21:45:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2026-12-06T13:00:00Z"),
            "2026-12-06T17:00:00Z"
        );
        assert_eq!(
            next("30 2 * JAN,jul *", "2026-12-06T00:00:00Z"),
            "2027-01-01T02:30:00Z"
        );
        assert_eq!(
            next("0 0 * * MON-FRI", "2026-12-05T12:00:00Z"),
            "2026-12-07T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-12-06T21:00:00Z"),
            "2026-12-06T22:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-12-06T21:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
    }

    #[test]
    fn day_of_month_and_weekday_combine_as_cron_does() {
        // Both restricted: the 13th or any Friday, whichever comes first.
        assert_eq!(
            next("0 0 13 * 5", "2026-12-06T00:00:00Z"),
            "2026-12-11T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * 5", "2026-12-11T00:00:00Z"),
            "2026-12-13T00:00:00Z"
        );
        // Weekday `*`: the day of month alone decides.
        assert_eq!(
            next("0 0 13 * *", "2026-12-06T00:00:00Z"),
            "2026-12-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 31 * *", "2026-11-06T00:00:00Z"),
            "2026-12-31T00:00:00Z"
        );
        assert_eq!(
            next("0 0 30 2 *", "2026-12-06T00:00:00Z"),
            "",
            "February has no 30th"
        );
    }

    #[test]
    fn time_zones_and_clock_changes() {
        let ny = TimeZone::get("America/New_York").expect("tz database");
        let s = Schedule::parse("30 2 * * *").expect("parses");
        // 2026-03-08 02:30 does not exist in New York: it fires at 03:30 EDT.
        let t = s
            .next_after(at("2026-03-08T05:00:00Z"), &ny)
            .expect("fires");
        assert_eq!(t.to_string(), "2026-03-08T07:30:00Z");
        let s = Schedule::parse("30 1 * * *").expect("parses");
        // 01:30 happens twice on 2026-11-01: once only, at the first.
        let t = s
            .next_after(at("2026-11-01T04:00:00Z"), &ny)
            .expect("fires");
        assert_eq!(t.to_string(), "2026-11-01T05:30:00Z");
        let t = s.next_after(t, &ny).expect("fires");
        assert_eq!(t.to_string(), "2026-11-02T06:30:00Z");
    }

    #[test]
    fn malformed_schedules_name_what_is_wrong() {
        let err = |s: &str| Schedule::parse(s).expect_err(s);
        assert!(err("* * * *").contains("exactly 5 fields"));
        assert!(err("60 * * * *").contains("minute value 60 is out of range 0-59"));
        assert!(err("* * * foo *").contains("month"));
        assert!(err("*/0 * * * *").contains("step"));
        assert!(err("5-1 * * * *").contains("starts after it ends"));
        assert!(err("@every 5m").contains("descriptor"));
        assert!(err("* * * * 7").contains("day of week"));
        assert!(names_time_zone("CRON_TZ=UTC 0 * * * *"));
        assert!(time_zone("Local").is_err());
        assert!(time_zone("Mars/Olympus")
            .expect_err("no such zone")
            .contains("unknown"));
        assert!(time_zone("Etc/UTC").is_ok());
        assert!(!names_time_zone("0 * * * *"));
    }
}
