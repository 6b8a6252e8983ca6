//! Resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `2e3`) as the
//! scheduler and the agent need them: cpu in millicores, everything else in
//! whole units (bytes, pods), rounded up like Kubernetes does.

/// A quantity string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct BadQuantity(pub String);

/// Parses a quantity and returns it scaled by `10^scale` (3 for milli),
/// rounded up to an integer and saturated at `i64::MAX`.
fn parse_scaled(s: &str, scale: i32) -> Result<i64, BadQuantity> {
    let bad = || BadQuantity(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() || num == "+" || num == "-" {
        return Err(bad());
    }
    let (negative, digits) = match num.as_bytes()[0] {
        b'-' => (true, &num[1..]),
        b'+' => (false, &num[1..]),
        _ => (false, num),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // (binary multiplier, decimal exponent)
    let (binary, exp10): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        e if e.starts_with(['e', 'E']) => {
            let n: i32 = e[1..].parse().map_err(|_| bad())?;
            if !(-30..=30).contains(&n) {
                return Err(bad());
            }
            (0, n)
        }
        _ => return Err(bad()),
    };
    // The value is int.frac * 2^binary * 10^(exp10 + scale); work in i128
    // with the fraction folded into the decimal exponent.
    let mut mantissa: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .saturating_mul(10)
            .saturating_add(i128::from(b - b'0'));
    }
    mantissa = mantissa.saturating_mul(1i128 << binary);
    let mut exp = exp10 + scale - frac.len() as i32;
    while exp > 0 {
        mantissa = mantissa.saturating_mul(10);
        exp -= 1;
    }
    let mut rounded_up = false;
    while exp < 0 {
        if mantissa % 10 != 0 {
            rounded_up = true;
        }
        mantissa /= 10;
        exp += 1;
    }
    if rounded_up {
        mantissa += 1;
    }
    let v = i64::try_from(mantissa).unwrap_or(i64::MAX);
    Ok(if negative { -v } else { v })
}

/// CPU in millicores: `"100m"` is 100, `"1.5"` is 1500.
pub fn cpu_millis(s: &str) -> Result<i64, BadQuantity> {
    parse_scaled(s, 3)
}

/// A count or a size in whole units: `"128Mi"` is 134217728 bytes.
pub fn value(s: &str) -> Result<i64, BadQuantity> {
    parse_scaled(s, 0)
}

/// Formats bytes the way the agent reports capacity: `Ki` units.
pub fn format_kib(bytes: i64) -> String {
    format!("{}Ki", bytes / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(cpu_millis("100m"), Ok(100));
        assert_eq!(cpu_millis("1"), Ok(1000));
        assert_eq!(cpu_millis("1.5"), Ok(1500));
        assert_eq!(cpu_millis("0.0001"), Ok(1), "rounds up like Kubernetes");
        assert_eq!(cpu_millis("2k"), Ok(2_000_000));
        assert_eq!(cpu_millis("500u"), Ok(1));
    }

    #[test]
    fn memory_forms() {
        assert_eq!(value("128Mi"), Ok(128 << 20));
        assert_eq!(value("1G"), Ok(1_000_000_000));
        assert_eq!(value("1e3"), Ok(1000));
        assert_eq!(value("1.5Gi"), Ok(3 << 29));
        assert_eq!(value("110"), Ok(110));
        assert_eq!(value("-5"), Ok(-5));
    }

    #[test]
    fn garbage_is_an_error() {
        for s in ["", "m", "1x", "1.2.3", "--1", "Mi", "1e", "1e99", "1 Mi"] {
            assert!(value(s).is_err(), "{s:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,20}") {
            let _ = value(&s);
            let _ = cpu_millis(&s);
        }

        #[test]
        fn integers_round_trip(n in 0i64..1_000_000_000) {
            prop_assert_eq!(value(&n.to_string()), Ok(n));
            prop_assert_eq!(cpu_millis(&format!("{n}m")), Ok(n));
        }
    }
}
