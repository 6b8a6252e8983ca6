//! Time handling for the age-like columns: RFC 3339 parsing (no date crate
//! is available) and Kubernetes' "human duration" rendering, which kubectl
//! users read in every AGE column and must therefore match to the letter.

/// The largest number of whole seconds a Go `time.Duration` can hold.
/// `time.Since` saturates there, so anything older renders like this.
const GO_MAX_DURATION_SECS: i64 = i64::MAX / 1_000_000_000;

/// Unix time of Go's zero `time.Time` (0001-01-01T00:00:00Z). Kubernetes
/// treats that instant as "unset", so we do too.
pub(super) const GO_ZERO_TIME: i64 = -62_135_596_800;

/// Renders an elapsed time the way Kubernetes'
/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration` does: about two
/// significant figures, e.g. `"5s"`, `"3m2s"`, `"10m"`, `"5h3m"`, `"2d5h"`,
/// `"35d"`, `"2y30d"`, `"9y"`.
///
/// `seconds` is the elapsed time in whole seconds. A slightly negative value
/// (down to -1s) is clock skew and renders `"0s"`; anything further in the
/// future renders `"<invalid>"`.
pub fn human_duration(seconds: i64) -> String {
    // Tolerate one second of skew between our clock and the writer's.
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    // Go works on a saturating nanosecond Duration; clamp to stay identical.
    let seconds = seconds.min(GO_MAX_DURATION_SECS);
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return with_remainder(minutes, "m", seconds % 60, "s");
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return with_remainder(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return with_remainder(days, "d", hours % 24, "h");
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return with_remainder(years, "y", days % 365, "d");
    }
    format!("{years}y")
}

/// `"{major}{unit}"`, followed by the minor part only when it is non-zero.
fn with_remainder(major: i64, major_unit: &str, minor: i64, minor_unit: &str) -> String {
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit}{minor}{minor_unit}")
    }
}

/// Parses an RFC 3339 timestamp such as `"2026-11-28T08:51:37Z"`,
/// `"2026-11-28T08:51:37.123456Z"` or `"2026-11-28T10:51:37+02:00"` into
/// Unix seconds (fractions are truncated towards the earlier second).
///
/// Returns `None` for anything that is not a valid date-time with an
/// explicit offset; like Go, a leap second (`:60`) is rejected.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let separators_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b[16] == b':';
    if !separators_ok {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }

    let mut rest = &b[19..];
    if let Some((b'.', tail)) = rest.split_first() {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &tail[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h @ .., b':', m1, m2] if h.len() == 2 => {
            let (oh, om) = (digits(h)?, digits(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// The decimal value of a run of ASCII digits, or `None` if any byte is not one.
fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Counting years from
/// March puts the leap day last, so each 400-year era has a fixed shape.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 = days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn human_duration_seconds_and_skew() {
        assert_eq!(human_duration(-5), "<invalid>");
        assert_eq!(human_duration(-2), "<invalid>");
        assert_eq!(human_duration(-1), "0s");
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
    }

    #[test]
    fn human_duration_minutes() {
        assert_eq!(human_duration(120), "2m");
        assert_eq!(human_duration(182), "3m2s");
        assert_eq!(human_duration(599), "9m59s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(659), "10m");
        assert_eq!(human_duration(3 * 3600 - 1), "179m");
    }

    #[test]
    fn human_duration_hours_and_days() {
        assert_eq!(human_duration(3 * 3600), "3h");
        assert_eq!(human_duration(5 * 3600 + 3 * 60 + 59), "5h3m");
        assert_eq!(human_duration(8 * 3600 + 59 * 60), "8h");
        assert_eq!(human_duration(47 * 3600), "47h");
        assert_eq!(human_duration(48 * 3600), "2d");
        assert_eq!(human_duration(53 * 3600), "2d5h");
        assert_eq!(human_duration(8 * 86_400 - 1), "7d23h");
        assert_eq!(human_duration(35 * 86_400), "35d");
        assert_eq!(human_duration(729 * 86_400), "729d");
    }

    #[test]
    fn human_duration_years() {
        assert_eq!(human_duration(730 * 86_400), "2y");
        assert_eq!(human_duration(760 * 86_400), "2y30d");
        assert_eq!(human_duration(8 * 365 * 86_400 - 1), "7y364d");
        assert_eq!(human_duration(8 * 365 * 86_400), "8y");
        assert_eq!(human_duration(100 * 365 * 86_400), "100y");
        // Go's Duration saturates at ~292 years.
        assert_eq!(human_duration(i64::MAX), "292y");
    }

    #[test]
    fn parses_utc_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-28T08:51:37Z"), Some(1_795_855_897));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), Some(GO_ZERO_TIME));
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Some(253_402_300_799));
        assert_eq!(parse_rfc3339("2026-11-28t08:51:37z"), Some(1_795_855_897));
    }

    #[test]
    fn parses_fractions_and_offsets() {
        let base = Some(1_795_855_897);
        assert_eq!(parse_rfc3339("2026-11-28T08:51:37.5Z"), base);
        assert_eq!(parse_rfc3339("2026-11-28T08:51:37.123456Z"), base);
        assert_eq!(parse_rfc3339("2026-11-28T08:51:37.999999999Z"), base);
        assert_eq!(parse_rfc3339("2026-11-28T10:51:37+02:00"), base);
        assert_eq!(parse_rfc3339("2026-11-28T03:21:37-05:30"), base);
        assert_eq!(parse_rfc3339("2026-11-28T08:51:37.25+00:00"), base);
        assert_eq!(parse_rfc3339("2026-11-29T00:51:37+16:00"), base);
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28T08:51:37",
            "2026-11-28 08:51:37Z",
            "2026-11-28T08:51:37.Z",
            "2026-11-28T08:51:37+0200",
            "2026-11-28T08:51:37+24:00",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T08:60:00Z",
            "2026-11-28T08:51:60Z",
            "2026-11-28T08:51:37Zjunk",
            "+026-11-28T08:51:37Z",
            "2026-11-28T08:51:37é",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
    }

    /// Formats Unix seconds as RFC 3339 UTC, to check parsing round-trips.
    fn format_utc(t: i64) -> String {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (mut y, mut m, mut d) = (1970i64, 1i64, 1i64);
        // Walk years then months: slow but obviously correct for a test oracle.
        let mut left = days;
        while left < 0 {
            y -= 1;
            left += if is_leap(y) { 366 } else { 365 };
        }
        while left >= if is_leap(y) { 366 } else { 365 } {
            left -= if is_leap(y) { 366 } else { 365 };
            y += 1;
        }
        while left >= days_in_month(y, m) {
            left -= days_in_month(y, m);
            m += 1;
        }
        d += left;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    }

    proptest! {
        #[test]
        fn rfc3339_round_trips(t in GO_ZERO_TIME..253_402_300_799i64) {
            prop_assert_eq!(parse_rfc3339(&format_utc(t)), Some(t));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn parse_never_panics_on_near_misses(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})?") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn human_duration_never_panics(s in any::<i64>()) {
            let out = human_duration(s);
            prop_assert!(!out.is_empty());
        }
    }
}
