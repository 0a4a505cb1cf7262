//! CPU, size and duration values, as `docker run` flags and Compose files write them. `uc run`
//! parses its flags with these too, so both read `0.5`, `512M` and `1m30s` the same way.

/// Cores (`0.5`, `2`) to thousandths of a core.
pub fn parse_cpus(s: &str) -> Result<u64, String> {
    let cores: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of cores (0.5, 2)"))?;
    if !(cores > 0.0 && cores <= 1024.0) {
        return Err(format!(
            "{s:?}: expected more than 0 and at most 1024 cores"
        ));
    }
    Ok((cores * 1000.0).round() as u64)
}

/// A memory size (`512M`, `1g`, `1.5GiB`, bytes without a unit) to bytes; at least 4 MiB, the
/// least Docker accepts.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (number, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (512M, 1G)"))?;
    let scale: u64 = match unit.to_ascii_lowercase().trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?}: the unit is one of K, M, G, T")),
    };
    let bytes = (n * scale as f64).round();
    if !(4.0 * 1024.0 * 1024.0..1e18).contains(&bytes) {
        return Err(format!("{s:?}: Docker needs at least 4M"));
    }
    Ok(bytes as u64)
}

/// A duration (`500ms`, `10s`, `1m30s`, `2h`; a bare number is seconds) to milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a duration (500ms, 10s, 1m30s)");
    if let Ok(secs) = t.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let mut rest = t;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "us" | "µs" => 0.001,
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(format!("{s:?}: the units are ms, s, m and h")),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    if total.is_nan() || total >= 1e15 {
        return Err(bad());
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values() {
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert!(parse_cpus("0").is_err());
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert!(parse_bytes("1k").is_err());
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("10"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert!(parse_duration_ms("10 parsecs").is_err());
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("s").is_err());
    }

    proptest! {
        #[test]
        fn never_panic(s in ".{0,20}") {
            let _ = (parse_cpus(&s), parse_bytes(&s), parse_duration_ms(&s));
        }
    }
}
