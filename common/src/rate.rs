//! Byte rates and sizes as operators write them (`10MiB/s`, `500KB/s`, `1G`, `0`), shared by
//! `lifeboatctl policy set --bandwidth`, `lifeboat-agent backup --bandwidth` and `[gc]
//! repack_budget`.

/// Parses a rate into bytes per second; `0` means unlimited. Decimal (KB, MB, GB) and binary
/// (KiB, MiB, GiB) units; the `/s` suffix is optional.
pub fn parse_bytes_per_sec(s: &str) -> Result<u64, String> {
    let t = s.trim();
    parse_with_units(
        s,
        t.strip_suffix("/s").unwrap_or(t),
        "bandwidth",
        "10MiB/s, 500KB/s or 0",
    )
}

/// Parses a size (`4GiB`, `500MB`, `0`) into bytes, with the units of [`parse_bytes_per_sec`].
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_with_units(s, s.trim(), "size", "4GiB, 500MB or 0")
}

fn parse_with_units(s: &str, t: &str, what: &str, example: &str) -> Result<u64, String> {
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid {what} {s:?}: expected e.g. {example}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1000,
        "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => return Err(format!("invalid {what} {s:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid {what} {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_junk() {
        assert_eq!(parse_bytes_per_sec("10MiB/s"), Ok(10 << 20));
        assert_eq!(parse_bytes_per_sec("500KB/s"), Ok(500_000));
        assert_eq!(parse_bytes_per_sec("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes_per_sec("0"), Ok(0));
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert!(parse_bytes("4GiB/s").is_err(), "a rate is not a size");
        assert!(parse_bytes_per_sec("fast").is_err());
        assert!(
            parse_bytes_per_sec("5 parsecs")
                .expect_err("refused")
                .contains("unknown unit")
        );
        assert!(
            parse_bytes_per_sec("99999999999GiB")
                .expect_err("refused")
                .contains("too large")
        );
    }
}
