//! Go-style durations (`15m`, `1h30m`, `90s`, `250ms`), as the ConfigMap and the flags write them.
//! Pure.

use std::time::Duration;

/// Parses a Go-style duration: a sequence of `<number><unit>` with units `h`, `m`, `s`, `ms`
/// (e.g. `15m`, `1h30m`, `90s`, `1.5h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("{s:?}: expected a number at {rest:?}"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?}: {:?} is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "" => return Err(format!("{s:?}: missing unit (h, m, s or ms)")),
            other => return Err(format!("{s:?}: unknown unit {other:?} (use h, m, s or ms)")),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(format!("{s:?}: too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_duration(s);
        assert_eq!(d("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d(" 1.5h "), Ok(Duration::from_secs(5400)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "1h-5m",
            "abc",
            "1..5s",
            "99999999999h",
        ] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
    }
}
