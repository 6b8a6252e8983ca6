//! The CronJob controller's pure decisions: which scheduled time (if any)
//! is due now, and which finished Jobs fall out of the history.

use apimachinery::cron::Schedule;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// More missed times than this since the last run is reported, as upstream
/// does: the controller was down long, or the clock jumped.
pub const TOO_MANY_MISSED: usize = 100;

/// What a sync should do about the schedule.
#[derive(Debug, PartialEq)]
pub enum Due {
    /// Nothing is due; the next time is `next` (None: never again).
    Nothing { next: Option<Timestamp> },
    /// Run for scheduled time `at`; `missed` counts the times it stands for
    /// (capped just above [`TOO_MANY_MISSED`]).
    Run {
        at: Timestamp,
        missed: usize,
        next: Option<Timestamp>,
    },
}

/// The most recent scheduled time in (`since`, `now`] not run yet. With a
/// starting deadline, times older than `now - deadline` are too late to
/// start and are skipped, so after an outage at most the latest one runs.
pub fn due(
    schedule: &Schedule,
    tz: &TimeZone,
    since: Timestamp,
    starting_deadline: Option<i64>,
    now: Timestamp,
) -> Due {
    let mut earliest = since;
    if let Some(d) = starting_deadline {
        let cutoff = now - SignedDuration::from_secs(d);
        if cutoff > earliest {
            earliest = cutoff;
        }
    }
    let next_after_now = || schedule.next_after(now, tz);
    let Some(first) = schedule.next_after(earliest, tz).filter(|t| *t <= now) else {
        return Due::Nothing {
            next: next_after_now(),
        };
    };
    // Count the missed times, but only so far: a schedule every minute
    // after a week away would otherwise walk ten thousand steps.
    let mut missed = 1;
    let mut t = first;
    while missed <= TOO_MANY_MISSED {
        match schedule.next_after(t, tz) {
            Some(n) if n <= now => {
                t = n;
                missed += 1;
            }
            _ => break,
        }
    }
    let at = if missed > TOO_MANY_MISSED {
        latest_before(schedule, tz, t, now)
    } else {
        t
    };
    Due::Run {
        at,
        missed,
        next: next_after_now(),
    }
}

/// The latest time at or before `now`, searching back in widening windows
/// from `now` so the walk stays short however far back `floor` is.
fn latest_before(
    schedule: &Schedule,
    tz: &TimeZone,
    floor: Timestamp,
    now: Timestamp,
) -> Timestamp {
    for hours in [1i64, 24, 24 * 31, 24 * 366, 24 * 366 * 5] {
        let start = now - SignedDuration::from_hours(hours);
        if start <= floor {
            break;
        }
        if let Some(mut t) = schedule.next_after(start, tz).filter(|t| *t <= now) {
            while let Some(n) = schedule.next_after(t, tz).filter(|n| *n <= now) {
                t = n;
            }
            return t;
        }
    }
    let mut t = floor;
    while let Some(n) = schedule.next_after(t, tz).filter(|n| *n <= now) {
        t = n;
    }
    t
}

/// The Job a CronJob makes for scheduled time `at`: named by the minute,
/// so a retried create after a crash finds the Job it already made.
pub fn job_name(cronjob: &str, at: Timestamp) -> String {
    format!("{cronjob}-{}", at.as_second().div_euclid(60))
}

/// Finished Jobs beyond `limit`, oldest first: `jobs` are (name, finish time).
pub fn beyond_history(mut jobs: Vec<(String, Timestamp)>, limit: i64) -> Vec<String> {
    let keep = limit.max(0) as usize;
    if jobs.len() <= keep {
        return Vec::new();
    }
    jobs.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let drop = jobs.len() - keep;
    jobs.into_iter().take(drop).map(|(n, _)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn every_minute() -> Schedule {
        Schedule::parse("* * * * *").expect("parses")
    }

    #[test]
    fn runs_the_time_that_just_passed_once() {
        let s = every_minute();
        let utc = TimeZone::UTC;
        let d = due(
            &s,
            &utc,
            at("2026-12-06T10:00:00Z"),
            None,
            at("2026-12-06T10:01:05Z"),
        );
        assert_eq!(
            d,
            Due::Run {
                at: at("2026-12-06T10:01:00Z"),
                missed: 1,
                next: Some(at("2026-12-06T10:02:00Z"))
            }
        );
        // Once recorded as the last schedule time, it is not due again.
        let d = due(
            &s,
            &utc,
            at("2026-12-06T10:01:00Z"),
            None,
            at("2026-12-06T10:01:30Z"),
        );
        assert_eq!(
            d,
            Due::Nothing {
                next: Some(at("2026-12-06T10:02:00Z"))
            }
        );
    }

    #[test]
    fn after_an_outage_only_the_latest_missed_time_runs() {
        let s = Schedule::parse("*/5 * * * *").expect("parses");
        let utc = TimeZone::UTC;
        let d = due(
            &s,
            &utc,
            at("2026-12-06T10:00:00Z"),
            None,
            at("2026-12-06T10:32:00Z"),
        );
        assert_eq!(
            d,
            Due::Run {
                at: at("2026-12-06T10:30:00Z"),
                missed: 6,
                next: Some(at("2026-12-06T10:35:00Z"))
            }
        );
        // A week away from a schedule every minute: reported as too many,
        // and still the latest time runs.
        let s = every_minute();
        match due(
            &s,
            &utc,
            at("2026-11-29T10:00:00Z"),
            None,
            at("2026-12-06T10:32:30Z"),
        ) {
            Due::Run { at: t, missed, .. } => {
                assert_eq!(t, at("2026-12-06T10:32:00Z"));
                assert!(missed > TOO_MANY_MISSED);
            }
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn a_starting_deadline_skips_times_too_late_to_start() {
        let s = Schedule::parse("0 * * * *").expect("parses");
        let utc = TimeZone::UTC;
        // 10:00 passed 20 minutes ago; a 10-minute deadline lets it go.
        let d = due(
            &s,
            &utc,
            at("2026-12-06T09:00:00Z"),
            Some(600),
            at("2026-12-06T10:20:00Z"),
        );
        assert_eq!(
            d,
            Due::Nothing {
                next: Some(at("2026-12-06T11:00:00Z"))
            }
        );
        let d = due(
            &s,
            &utc,
            at("2026-12-06T09:00:00Z"),
            Some(3600),
            at("2026-12-06T10:20:00Z"),
        );
        assert!(matches!(d, Due::Run { at: t, .. } if t == at("2026-12-06T10:00:00Z")));
    }

    #[test]
    fn names_and_history() {
        assert_eq!(
            job_name("hello", at("2026-12-06T10:01:00Z")),
            "hello-29942521"
        );
        let jobs = vec![
            ("c".to_string(), at("2026-12-06T10:03:00Z")),
            ("a".to_string(), at("2026-12-06T10:01:00Z")),
            ("b".to_string(), at("2026-12-06T10:02:00Z")),
        ];
        assert_eq!(beyond_history(jobs.clone(), 1), ["a", "b"]);
        assert_eq!(beyond_history(jobs.clone(), 3), Vec::<String>::new());
        assert_eq!(beyond_history(jobs, 0).len(), 3);
    }
}
