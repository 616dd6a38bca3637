//! Durations (`10m`, `1h30m`) and instants (`2030-01-01T12:00:00Z`) as written in definitions.

use jiff::tz::TimeZone;

/// Longest duration accepted, in milliseconds: what fits an `i64` of epoch milliseconds, so a
/// timer's due time can always be computed.
pub const MAX_DURATION_MS: u64 = i64::MAX as u64;

const DURATION_FORM: &str = "write whole numbers followed by units, largest unit first, such as \
     `500ms`, `30s`, `10m`, `1h30m` or `2d` (units: `d`, `h`, `m`, `s`, `ms`)";

/// Parses a duration such as `500ms`, `30s`, `10m`, `1h30m` or `2d` into milliseconds.
///
/// The text is one or more whole numbers, each followed by a unit: `d` (days of 24 hours), `h`,
/// `m` (minutes), `s` or `ms`. Units go from largest to smallest and appear at most once, so
/// `1h30m` is accepted and `30m1h` is not. No spaces, signs or fractions. Zero (`0s`) is a valid
/// duration here; callers for which zero makes no sense (timers) reject it themselves.
///
/// The error is a sentence saying what is wrong and how to write the duration.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err(format!("The duration is empty; {DURATION_FORM}."));
    }
    let bytes = text.as_bytes();
    let mut position = 0;
    let mut total_ms: u64 = 0;
    // Rank of the previous unit (larger is bigger), to enforce "largest first, once each".
    let mut previous_unit: Option<(u8, &str)> = None;
    while position < bytes.len() {
        let digits_start = position;
        while position < bytes.len() && bytes[position].is_ascii_digit() {
            position += 1;
        }
        if position == digits_start {
            return Err(format!("`{text}` is not a duration; {DURATION_FORM}."));
        }
        let unit_start = position;
        while position < bytes.len() && bytes[position].is_ascii_alphabetic() {
            position += 1;
        }
        let number = &text[digits_start..unit_start];
        let unit = &text[unit_start..position];
        let (rank, unit_ms): (u8, u64) = match unit {
            "d" => (5, 86_400_000),
            "h" => (4, 3_600_000),
            "m" => (3, 60_000),
            "s" => (2, 1_000),
            "ms" => (1, 1),
            "" => {
                return Err(format!(
                    "`{text}` has a number without a unit; {DURATION_FORM}."
                ));
            }
            other => {
                return Err(format!(
                    "`{other}` in `{text}` is not a unit of time; {DURATION_FORM}."
                ));
            }
        };
        if let Some((previous_rank, previous)) = previous_unit
            && rank >= previous_rank
        {
            return Err(format!(
                "In `{text}`, `{unit}` comes after `{previous}`; {DURATION_FORM}."
            ));
        }
        previous_unit = Some((rank, unit));
        let too_long =
            || format!("`{text}` is too long a duration; the longest is {MAX_DURATION_MS}ms.");
        let value: u64 = number.parse().map_err(|_| too_long())?;
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .filter(|ms| *ms <= MAX_DURATION_MS)
            .ok_or_else(too_long)?;
    }
    Ok(total_ms)
}

/// Parses an instant into epoch milliseconds. Accepted: RFC 3339 with an offset
/// (`2030-01-01T12:00:00Z`, `2030-01-01T12:00:00+02:00`), a zoned time
/// (`2030-01-01T12:00:00[Europe/Paris]`), or a date and time without an offset
/// (`2030-01-01T12:00:00`, also with a space instead of `T`), which is read in `local_tz`.
pub fn parse_instant_ms(text: &str, local_tz: &TimeZone) -> Result<i64, String> {
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return Ok(timestamp.as_millisecond());
    }
    if let Ok(zoned) = text.parse::<jiff::Zoned>() {
        return Ok(zoned.timestamp().as_millisecond());
    }
    match text.parse::<jiff::civil::DateTime>() {
        Ok(civil) => civil
            .to_zoned(local_tz.clone())
            .map(|zoned| zoned.timestamp().as_millisecond())
            .map_err(|error| format!("`{text}` cannot be placed in the local time zone: {error}.")),
        Err(_) => Err(format!(
            "`{text}` is not a date and time; write RFC 3339 such as `2030-01-01T12:00:00Z` \
             (UTC), `2030-01-01T12:00:00+02:00`, or `2030-01-01T12:00:00` for local time."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("2d"), Ok(172_800_000));
        assert_eq!(parse_duration_ms("1m500ms"), Ok(60_500));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
    }

    #[test]
    fn refuses_malformed_durations() {
        for bad in [
            "", "10", "m", "10x", "1.5h", "-1s", "30m1h", "1h1h", "1 h", "10M", "h10",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration_ms("99999999999999999999d").is_err());
        assert!(parse_duration_ms("106751991168d").is_err());
        assert!(parse_duration_ms("106751991167d").is_ok());
    }

    #[test]
    fn parses_instants_with_and_without_offsets() {
        let utc = TimeZone::UTC;
        assert_eq!(
            parse_instant_ms("2030-01-01T12:00:00Z", &utc),
            Ok(1_893_499_200_000)
        );
        assert_eq!(
            parse_instant_ms("2030-01-01T14:00:00+02:00", &utc),
            Ok(1_893_499_200_000)
        );
        assert_eq!(
            parse_instant_ms("2030-01-01T12:00:00", &utc),
            Ok(1_893_499_200_000)
        );
        let plus_two = TimeZone::fixed(jiff::tz::offset(2));
        assert_eq!(
            parse_instant_ms("2030-01-01 14:00:00", &plus_two),
            Ok(1_893_499_200_000)
        );
        assert!(parse_instant_ms("tomorrow", &utc).is_err());
    }
}
