//! Cron expressions: the five fields of Vixie cron (`minute hour day-of-month month
//! day-of-week`) and when they next fire in an IANA time zone.
//!
//! Each field is a list of items separated by commas; an item is `*`, a number, a range
//! `a-b`, any of those with a step (`*/15`, `1-30/2`, `5/10` meaning `5-max/10`), and month
//! and day-of-week fields also take names (`jan`..`dec`, `sun`..`sat`, any case). Day-of-week
//! 7 is Sunday, as 0 is. The macros `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`
//! and `@yearly` (`@annually`) stand for their usual expressions.
//!
//! Day-of-month and day-of-week combine as in Vixie cron: when either field starts with `*`
//! (`*` or `*/2`), a day must match both; when neither does, a day matching either fires
//! (`0 0 1,15 * mon` fires on the 1st, the 15th and every Monday).
//!
//! Daylight saving time: expressions are in local wall-clock time. A local time that does not
//! exist (skipped when clocks go forward) fires once, at the moment the clocks jump; a local
//! time that happens twice (clocks go back) fires once, at its first occurrence.

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};

/// Days searched ahead for the next firing. Nine years covers an expression that fires only
/// on February 29th across a century year that is not a leap year (2096 to 2104).
pub const MAX_CRON_SEARCH_DAYS: i64 = 366 * 9;

/// Longest cron expression accepted, in bytes.
pub const MAX_CRON_EXPRESSION_BYTES: usize = 256;

/// A cron expression that failed to parse: what is wrong, and where in the expression
/// (a byte offset), so a caller can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronError {
    pub message: String,
    pub offset: usize,
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CronError {}

#[derive(Clone, Copy)]
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// 0 to 7, both Sunday.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// A parsed cron expression. Compare and store it by its text ([`Cron::expression`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    expression: String,
    /// Bit `m` set: fires at minute `m`.
    minutes: u64,
    hours: u32,
    /// Bit `d` (1-31).
    days_of_month: u32,
    /// Bit `m` (1-12).
    months: u16,
    /// Bit `d` (0-6, Sunday 0).
    days_of_week: u8,
    /// Either day field started with `*`: a day must match both (Vixie's `DOM_STAR` /
    /// `DOW_STAR`).
    day_and: bool,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.expression)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

impl Cron {
    /// Parses five fields (or a macro such as `@daily`).
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        if expression.len() > MAX_CRON_EXPRESSION_BYTES {
            return Err(CronError {
                message: format!(
                    "this cron expression is {} bytes long; at most {MAX_CRON_EXPRESSION_BYTES} \
                     are accepted",
                    expression.len()
                ),
                offset: 0,
            });
        }
        let trimmed = expression.trim();
        let lead = expression.len() - expression.trim_start().len();
        let expanded = match trimmed {
            "@hourly" => Some("0 * * * *"),
            "@daily" | "@midnight" => Some("0 0 * * *"),
            "@weekly" => Some("0 0 * * 0"),
            "@monthly" => Some("0 0 1 * *"),
            "@yearly" | "@annually" => Some("0 0 1 1 *"),
            other if other.starts_with('@') => {
                return Err(CronError {
                    message: format!(
                        "`{other}` is not a cron macro; write @hourly, @daily, @weekly, \
                         @monthly or @yearly, or five fields"
                    ),
                    offset: lead,
                });
            }
            _ => None,
        };
        let (text, base) = match expanded {
            Some(text) => (text, None),
            None => (expression, Some(())),
        };
        let at = |offset: usize| if base.is_some() { offset } else { lead };
        let mut fields = Vec::with_capacity(5);
        let mut rest = text;
        let mut consumed = 0;
        loop {
            let skipped = rest.len() - rest.trim_start().len();
            rest = &rest[skipped..];
            consumed += skipped;
            if rest.is_empty() {
                break;
            }
            let len = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push((&rest[..len], consumed));
            rest = &rest[len..];
            consumed += len;
        }
        if fields.len() != 5 {
            return Err(CronError {
                message: format!(
                    "a cron expression has 5 fields (minute hour day-of-month month \
                     day-of-week); this one has {}",
                    fields.len()
                ),
                offset: at(fields.get(5).map_or(lead, |(_, offset)| *offset)),
            });
        }
        let parse = |index: usize, spec: FieldSpec| -> Result<u64, CronError> {
            let (text, offset) = fields[index];
            parse_field(text, spec).map_err(|(message, inner)| CronError {
                message,
                offset: at(offset + inner),
            })
        };
        let minutes = parse(0, MINUTE)?;
        let hours = parse(1, HOUR)? as u32;
        let days_of_month = parse(2, DAY_OF_MONTH)? as u32;
        let months = parse(3, MONTH)? as u16;
        let dow = parse(4, DAY_OF_WEEK)?;
        // Sunday is both 0 and 7.
        let days_of_week = ((dow | (dow >> 7)) & 0x7f) as u8;
        let day_and = fields[2].0.starts_with('*') || fields[4].0.starts_with('*');
        let cron = Cron {
            expression: trimmed.to_string(),
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            day_and,
        };
        if let Some(reason) = cron.never_fires() {
            return Err(CronError {
                message: reason,
                offset: at(fields[2].1),
            });
        }
        Ok(cron)
    }

    /// The expression as written (trimmed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Why no day ever matches, if none does (`0 0 30 feb *`).
    fn never_fires(&self) -> Option<String> {
        if !self.day_and {
            return None;
        }
        // The longest each month can be, February counted with its leap day.
        const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let possible = (1..=12u32).any(|month| {
            self.months & (1 << month) != 0
                && (1..=MONTH_DAYS[month as usize - 1])
                    .any(|day| self.days_of_month & (1 << day) != 0)
        });
        (!possible).then(|| {
            "this cron expression never fires: no month it names has any of the days of the \
             month it names"
                .to_string()
        })
    }

    fn matches_day(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.day_and { dom && dow } else { dom || dow }
    }

    /// The first firing strictly after `after`, in `tz`; `None` if there is none within
    /// [`MAX_CRON_SEARCH_DAYS`].
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // A local time in a gap fires at the end of the gap, which may be later than the
        // time as written on the previous day's date; starting a day early covers it.
        let mut date = after
            .to_zoned(tz.clone())
            .date()
            .checked_sub(1.day())
            .ok()?;
        for _ in 0..MAX_CRON_SEARCH_DAYS {
            if self.matches_day(date) {
                for hour in bits(u64::from(self.hours)) {
                    for minute in bits(self.minutes) {
                        let civil = date.at(hour as i8, minute as i8, 0, 0);
                        if let Some(instant) = local_instant(civil, tz)
                            && instant > after
                        {
                            return Some(instant);
                        }
                    }
                }
            }
            date = date.checked_add(1.day()).ok()?;
        }
        None
    }

    /// Every firing in `(after, until]`, oldest first, at most `limit` of them (the newest
    /// ones when there are more).
    pub fn firings_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        tz: &TimeZone,
        limit: usize,
    ) -> Vec<Timestamp> {
        let mut found = std::collections::VecDeque::new();
        let mut cursor = after;
        while let Some(next) = self.next_after(cursor, tz) {
            if next > until || limit == 0 {
                break;
            }
            if found.len() == limit {
                found.pop_front();
            }
            found.push_back(next);
            cursor = next;
        }
        found.into()
    }
}

/// The instant a local wall-clock time fires at: itself, its first occurrence in a fold, or
/// the moment the clocks jump for a time inside a gap.
fn local_instant(civil: DateTime, tz: &TimeZone) -> Option<Timestamp> {
    let ambiguous = tz.to_ambiguous_timestamp(civil);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(civil).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(civil).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, the time lies before the jump; the jump is the
            // next transition.
            let early = after.to_timestamp(civil).ok()?;
            tz.following(early).next().map(|t| t.timestamp())
        }
    }
}

/// The set bits of `set`, lowest first.
fn bits(set: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |bit| set & (1u64 << bit) != 0)
}

/// Parses one field into a bit set; an error carries its message and its offset in the
/// field.
fn parse_field(text: &str, spec: FieldSpec) -> Result<u64, (String, usize)> {
    let mut set = 0u64;
    let mut offset = 0;
    for item in text.split(',') {
        set |= parse_item(item, spec).map_err(|(message, inner)| (message, offset + inner))?;
        offset += item.len() + 1;
    }
    Ok(set)
}

fn parse_item(item: &str, spec: FieldSpec) -> Result<u64, (String, usize)> {
    let FieldSpec { name, min, max, .. } = spec;
    if item.is_empty() {
        return Err((
            format!("{name} has an empty item; remove the extra comma"),
            0,
        ));
    }
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (item, None),
    };
    let (low, high) = if range == "*" {
        (min, max)
    } else if let Some((a, b)) = range.split_once('-') {
        let low = parse_value(a, spec).map_err(|m| (m, 0))?;
        let high = parse_value(b, spec).map_err(|m| (m, a.len() + 1))?;
        if high < low {
            return Err((
                format!("{name} range {a}-{b} goes backwards; write {b}-{a}, or list both ends"),
                0,
            ));
        }
        (low, high)
    } else {
        let value = parse_value(range, spec).map_err(|m| (m, 0))?;
        // `5/10` is `5-max/10`, as most crons read it.
        (value, if step.is_some() { max } else { value })
    };
    let step = match step {
        None => 1,
        Some(text) => {
            let at = range.len() + 1;
            let step: u32 = text
                .parse()
                .map_err(|_| (format!("{name} step `{text}` is not a whole number"), at))?;
            if step == 0 || step > max - min + 1 {
                return Err((
                    format!(
                        "{name} step {step} is out of 1-{}; a step counts {name}s between \
                         firings",
                        max - min + 1
                    ),
                    at,
                ));
            }
            step
        }
    };
    let mut set = 0u64;
    let mut value = low;
    while value <= high {
        set |= 1u64 << value;
        value += step;
    }
    Ok(set)
}

fn parse_value(text: &str, spec: FieldSpec) -> Result<u32, String> {
    let FieldSpec {
        name,
        min,
        max,
        names,
    } = spec;
    if let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(index as u32 + if name == "month" { 1 } else { 0 });
    }
    match text.parse::<u32>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        Ok(value) => Err(format!("{name} {value} is out of {min}-{max}")),
        Err(_) if names.is_empty() => Err(format!("{name} `{text}` is not a number")),
        Err(_) => Err(format!(
            "{name} `{text}` is not a number or a name ({}-{})",
            names[0],
            names[names.len() - 1]
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn next(cron: &str, zone: &str, after: &str) -> String {
        let tz = TimeZone::get(zone).expect("zone");
        Cron::parse(cron)
            .expect("parses")
            .next_after(at(after), &tz)
            .expect("fires")
            .to_zoned(tz)
            .to_string()
    }

    fn error(cron: &str) -> (String, usize) {
        let error = Cron::parse(cron).expect_err("refused");
        (error.message, error.offset)
    }

    #[test]
    fn out_of_range_values_name_the_field_and_the_range() {
        assert_eq!(error("61 * * * *"), ("minute 61 is out of 0-59".into(), 0));
        assert_eq!(error("0 24 * * *"), ("hour 24 is out of 0-23".into(), 2));
        assert_eq!(
            error("0 0 0 * *"),
            ("day-of-month 0 is out of 1-31".into(), 4)
        );
        assert_eq!(error("0 0 * 13 *"), ("month 13 is out of 1-12".into(), 6));
        assert_eq!(
            error("0 0 * * 8"),
            ("day-of-week 8 is out of 0-7".into(), 8)
        );
        assert_eq!(
            error("0 1,2,99 * * *"),
            ("hour 99 is out of 0-23".into(), 6)
        );
        assert_eq!(
            error("0 0 * * 1-9"),
            ("day-of-week 9 is out of 0-7".into(), 10)
        );
    }

    #[test]
    fn malformed_expressions_say_what_to_fix() {
        assert!(error("* * * *").0.contains("5 fields"));
        assert!(error("* * * * * *").0.contains("this one has 6"));
        assert_eq!(
            error("0 5-2 * * *").0,
            "hour range 5-2 goes backwards; write 2-5, or list both ends"
        );
        assert!(
            error("*/0 * * * *")
                .0
                .starts_with("minute step 0 is out of 1-60")
        );
        assert!(error("x * * * *").0.contains("minute `x` is not a number"));
        assert!(
            error("0 0 * foo *")
                .0
                .contains("not a number or a name (jan-dec)")
        );
        assert!(error("0 0 * * funday").0.contains("(sun-sat)"));
        assert!(error("0 0 1,,2 * *").0.contains("empty item"));
        assert!(error("0 0 30 feb *").0.contains("never fires"));
        assert!(error("@fortnightly").0.contains("not a cron macro"));
    }

    #[test]
    fn ranges_steps_lists_and_names() {
        let utc = "UTC";
        assert_eq!(
            next("*/15 * * * *", utc, "2026-01-01T00:07:00Z"),
            "2026-01-01T00:15:00+00:00[UTC]"
        );
        assert_eq!(
            next("10-20/5 * * * *", utc, "2026-01-01T00:16:00Z"),
            "2026-01-01T00:20:00+00:00[UTC]"
        );
        assert_eq!(
            next("10-20/5 * * * *", utc, "2026-01-01T00:20:00Z"),
            "2026-01-01T01:10:00+00:00[UTC]"
        );
        assert_eq!(
            next("5/20 * * * *", utc, "2026-01-01T00:26:00Z"),
            "2026-01-01T00:45:00+00:00[UTC]"
        );
        assert_eq!(
            next("0 9,17 * * *", utc, "2026-01-01T09:00:00Z"),
            "2026-01-01T17:00:00+00:00[UTC]"
        );
        // 2026-01-01 is a Thursday; the next Tuesday is the 6th.
        assert_eq!(
            next("30 3 * * TUE", utc, "2026-01-01T00:00:00Z"),
            "2026-01-06T03:30:00+00:00[UTC]"
        );
        assert_eq!(
            next("0 0 * * 7", utc, "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00+00:00[UTC]"
        );
        assert_eq!(
            next("0 0 1 mar-apr *", utc, "2026-01-01T00:00:00Z"),
            "2026-03-01T00:00:00+00:00[UTC]"
        );
        assert_eq!(
            next("@monthly", utc, "2026-01-01T00:00:00Z"),
            "2026-02-01T00:00:00+00:00[UTC]"
        );
        // February 29th: the next one after 2026 is in 2028.
        assert_eq!(
            next("0 0 29 2 *", utc, "2026-01-01T00:00:00Z"),
            "2028-02-29T00:00:00+00:00[UTC]"
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_combine_as_in_vixie_cron() {
        let utc = "UTC";
        // Neither starts with `*`: either matches. 2026-01-05 is a Monday, before the 15th.
        assert_eq!(
            next("0 0 15 * mon", utc, "2026-01-01T00:00:00Z"),
            "2026-01-05T00:00:00+00:00[UTC]"
        );
        assert_eq!(
            next("0 0 2 * mon", utc, "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00+00:00[UTC]"
        );
        // Day-of-month is `*`: only Mondays.
        assert_eq!(
            next("0 0 * * mon", utc, "2026-01-01T00:00:00Z"),
            "2026-01-05T00:00:00+00:00[UTC]"
        );
        // A starred step counts as `*` (Vixie's DOM_STAR): odd days that are Fridays.
        // 2026-01-02 is a Friday and odd.
        assert_eq!(
            next("0 0 */2 * fri", utc, "2026-01-03T00:00:00Z"),
            "2026-01-09T00:00:00+00:00[UTC]"
        );
        // The 13th and a Friday at once (both restricted would be OR; `*`-month keeps OR).
        assert_eq!(
            next("0 0 13 * 5", utc, "2026-01-10T00:00:00Z"),
            "2026-01-13T00:00:00+00:00[UTC]"
        );
    }

    #[test]
    fn a_time_skipped_by_daylight_saving_fires_once_when_the_clocks_jump() {
        // New York springs forward on 2026-03-08: 02:00 EST becomes 03:00 EDT.
        let zone = "America/New_York";
        assert_eq!(
            next("30 2 * * *", zone, "2026-03-07T12:00:00Z"),
            "2026-03-08T03:00:00-04:00[America/New_York]"
        );
        // The next one is the normal 02:30 of the following day.
        assert_eq!(
            next("30 2 * * *", zone, "2026-03-08T07:00:00Z"),
            "2026-03-09T02:30:00-04:00[America/New_York]"
        );
        // Every 15 minutes across the gap: 01:45 EST, then 03:00 EDT once (02:00, 02:15,
        // 02:30, 02:45 and 03:00 all fire at the jump, once).
        let cron = Cron::parse("*/15 * * * *").unwrap();
        let tz = TimeZone::get(zone).unwrap();
        let fired = cron.firings_between(
            at("2026-03-08T06:40:00Z"),
            at("2026-03-08T07:20:00Z"),
            &tz,
            100,
        );
        let local: Vec<String> = fired
            .iter()
            .map(|t| t.to_zoned(tz.clone()).strftime("%H:%M %Z").to_string())
            .collect();
        assert_eq!(local, ["01:45 EST", "03:00 EDT", "03:15 EDT"]);
    }

    #[test]
    fn a_time_repeated_by_daylight_saving_fires_once_at_its_first_occurrence() {
        // New York falls back on 2026-11-01: 02:00 EDT becomes 01:00 EST.
        let zone = "America/New_York";
        assert_eq!(
            next("30 1 * * *", zone, "2026-10-31T12:00:00Z"),
            "2026-11-01T01:30:00-04:00[America/New_York]"
        );
        // After the first 01:30 (05:30Z), the second (06:30Z) does not fire.
        assert_eq!(
            next("30 1 * * *", zone, "2026-11-01T05:30:00Z"),
            "2026-11-02T01:30:00-05:00[America/New_York]"
        );
        // Berlin: 03:00 CEST becomes 02:00 CET on 2026-10-25.
        assert_eq!(
            next("15 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z"),
            "2026-10-25T02:15:00+02:00[Europe/Berlin]"
        );
    }

    #[test]
    fn firings_between_keeps_the_newest_when_there_are_more_than_the_limit() {
        let cron = Cron::parse("0 * * * *").unwrap();
        let fired = cron.firings_between(
            at("2026-01-01T00:00:00Z"),
            at("2026-01-01T10:00:00Z"),
            &TimeZone::UTC,
            3,
        );
        assert_eq!(
            fired,
            [
                at("2026-01-01T08:00:00Z"),
                at("2026-01-01T09:00:00Z"),
                at("2026-01-01T10:00:00Z")
            ]
        );
    }
}
