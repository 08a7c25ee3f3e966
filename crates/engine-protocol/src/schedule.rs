//! A schedule's timetable (CONTRACT.md §5 `strategy_schedules`): a five-field cron
//! expression in a time zone (UTC unless `timezone` names another), or a fixed
//! interval; checked once, with the field at fault named, and asked for the due
//! times after an instant. The manager plans with it; `enginectl` checks a schedule
//! with it before inserting one.
//!
//! Cron is [`croner`] (POSIX/Vixie semantics: day of month and day of week match
//! when either does; names such as `MON` and `JAN`; `@daily` and the other
//! nicknames), the zones are `chrono-tz`'s IANA database, so a local time that a
//! daylight-saving change skips or repeats is handled by the crate, not here.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

/// The five fields of a cron expression, in order, with what each allows.
const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 (0 and 7 are Sunday) or SUN-SAT"),
];

/// Why a schedule's timetable cannot work; the words go to `last_error` and to
/// `enginectl`, each saying what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTimetable {
    #[error(
        "cron '{cron}' has {found} fields; a cron expression has five: minute hour day-of-month month day-of-week (e.g. '30 18 * * 1-5')"
    )]
    FieldCount { cron: String, found: usize },
    #[error(
        "cron '{cron}': the {field} field '{value}' does not parse ({reason}); allowed: {allowed}, with lists (1,5), ranges (1-5) and steps (*/15)"
    )]
    Field {
        cron: String,
        field: &'static str,
        value: String,
        allowed: &'static str,
        reason: String,
    },
    #[error("cron '{cron}' does not parse: {reason}")]
    Cron { cron: String, reason: String },
    #[error("cron '{cron}' never matches a date (e.g. 30 February)")]
    NeverDue { cron: String },
    #[error(
        "unknown time zone '{0}'; use an IANA name such as 'UTC', 'Europe/London' or 'America/New_York'"
    )]
    TimeZone(String),
    #[error("interval_s must be a whole number of seconds above 0, got {0}")]
    Interval(i64),
    #[error("a schedule has exactly one of cron and interval_s")]
    NeitherOrBoth,
}

/// When a schedule is due.
#[derive(Debug, Clone)]
pub enum Timetable {
    Cron {
        cron: Box<croner::Cron>,
        zone: Tz,
        /// The expression as written (for messages and comparisons).
        text: String,
    },
    Every(TimeDelta),
}

impl PartialEq for Timetable {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Timetable::Cron { text, zone, .. },
                Timetable::Cron {
                    text: t2, zone: z2, ..
                },
            ) => text == t2 && zone == z2,
            (Timetable::Every(a), Timetable::Every(b)) => a == b,
            _ => false,
        }
    }
}

impl Timetable {
    /// From a schedule's columns: exactly one of `cron` (with an optional
    /// `timezone`) and `interval_s`.
    pub fn from_columns(
        cron: Option<&str>,
        timezone: Option<&str>,
        interval_s: Option<i64>,
    ) -> Result<Timetable, BadTimetable> {
        match (cron, interval_s) {
            (Some(cron), None) => Timetable::cron(cron, timezone),
            (None, Some(seconds)) => Timetable::every_seconds(seconds),
            _ => Err(BadTimetable::NeitherOrBoth),
        }
    }

    /// Every `seconds` seconds (at least 1).
    pub fn every_seconds(seconds: i64) -> Result<Timetable, BadTimetable> {
        if seconds < 1 {
            return Err(BadTimetable::Interval(seconds));
        }
        Ok(Timetable::Every(TimeDelta::seconds(seconds)))
    }

    /// A five-field cron expression in `timezone` (`None`: UTC).
    pub fn cron(text: &str, timezone: Option<&str>) -> Result<Timetable, BadTimetable> {
        let zone = match timezone.map(str::trim).filter(|z| !z.is_empty()) {
            None => Tz::UTC,
            Some(name) => {
                Tz::from_str(name).map_err(|_| BadTimetable::TimeZone(name.to_string()))?
            }
        };
        let cron = parse_cron(text)?;
        let timetable = Timetable::Cron {
            cron: Box::new(cron),
            zone,
            text: text.trim().to_string(),
        };
        // A pattern such as `0 0 30 2 *` parses but never comes.
        if timetable.next_after(DateTime::UNIX_EPOCH).is_none() {
            return Err(BadTimetable::NeverDue {
                cron: text.to_string(),
            });
        }
        Ok(timetable)
    }

    /// The first due time strictly after `t` (`None`: never again). An interval is
    /// counted from `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timetable::Every(interval) => t.checked_add_signed(*interval),
            Timetable::Cron { cron, zone, .. } => cron
                .find_next_occurrence(&t.with_timezone(zone), false)
                .ok()
                .map(|local| local.with_timezone(&Utc)),
        }
    }

    /// The latest due time at or before `t` of a cron timetable (`None` for an
    /// interval, which has no fixed grid).
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timetable::Every(_) => None,
            Timetable::Cron { cron, zone, .. } => cron
                .find_previous_occurrence(&t.with_timezone(zone), true)
                .ok()
                .map(|local| local.with_timezone(&Utc)),
        }
    }

    /// Whether `t` is one of the due times of a cron timetable (an interval has no
    /// fixed grid: every instant may be one).
    pub fn is_due_time(&self, t: DateTime<Utc>) -> bool {
        match self {
            Timetable::Every(_) => true,
            Timetable::Cron { cron, zone, .. } => cron
                .find_next_occurrence(&t.with_timezone(zone), true)
                .is_ok_and(|local| local.with_timezone(&Utc) == t),
        }
    }

    /// How it reads in a list: `every 5m`, `cron 30 18 * * 1-5 (America/New_York)`.
    pub fn describe(&self) -> String {
        match self {
            Timetable::Every(interval) => {
                format!("every {}", seconds_words(interval.num_seconds()))
            }
            Timetable::Cron { text, zone, .. } if *zone == Tz::UTC => format!("cron {text}"),
            Timetable::Cron { text, zone, .. } => format!("cron {text} ({})", zone.name()),
        }
    }
}

/// `300` → `5m`, `90` → `90s`, `7200` → `2h`, `86400` → `1d`.
pub fn seconds_words(seconds: i64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds >= size && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

fn croner_parse(text: &str) -> Result<croner::Cron, String> {
    croner::Cron::from_str(text).map_err(|err| err.to_string())
}

/// Parse five fields (or a nickname such as `@daily`); when the expression does
/// not parse, each field is tried alone (the others `*`) to name the one at fault.
fn parse_cron(text: &str) -> Result<croner::Cron, BadTimetable> {
    let text = text.trim();
    let fields: Vec<&str> = text.split_whitespace().collect();
    let nickname = fields.len() == 1 && fields[0].starts_with('@');
    if fields.len() != FIELDS.len() && !nickname {
        return Err(BadTimetable::FieldCount {
            cron: text.to_string(),
            found: fields.len(),
        });
    }
    let reason = match croner_parse(text) {
        Ok(cron) => return Ok(cron),
        Err(reason) => reason,
    };
    if !nickname {
        for (i, (field, allowed)) in FIELDS.iter().enumerate() {
            let mut probe = ["*"; 5];
            probe[i] = fields[i];
            if let Err(alone) = croner_parse(&probe.join(" ")) {
                return Err(BadTimetable::Field {
                    cron: text.to_string(),
                    field,
                    value: fields[i].to_string(),
                    allowed,
                    reason: alone,
                });
            }
        }
    }
    Err(BadTimetable::Cron {
        cron: text.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn cron_in_utc_and_in_a_zone_with_daylight_saving() {
        let utc = Timetable::cron("30 18 * * 1-5", None).unwrap();
        // Friday 2026-01-02 17:00 UTC → 18:30 that day; after it, Monday.
        assert_eq!(
            utc.next_after(at("2026-01-02T17:00:00Z")),
            Some(at("2026-01-02T18:30:00Z"))
        );
        assert_eq!(
            utc.next_after(at("2026-01-02T18:30:00Z")),
            Some(at("2026-01-05T18:30:00Z"))
        );
        let ny = Timetable::cron("30 18 * * 1-5", Some("America/New_York")).unwrap();
        // Winter: UTC-5; summer: UTC-4.
        assert_eq!(
            ny.next_after(at("2026-01-05T12:00:00Z")),
            Some(at("2026-01-05T23:30:00Z"))
        );
        assert_eq!(
            ny.next_after(at("2026-07-06T12:00:00Z")),
            Some(at("2026-07-06T22:30:00Z"))
        );
        assert!(ny.is_due_time(at("2026-07-06T22:30:00Z")));
        assert!(!ny.is_due_time(at("2026-07-06T22:31:00Z")));
        assert_eq!(ny.describe(), "cron 30 18 * * 1-5 (America/New_York)");
        assert_eq!(utc.describe(), "cron 30 18 * * 1-5");
    }

    #[test]
    fn an_interval_counts_from_the_instant_given() {
        let every = Timetable::from_columns(None, None, Some(300)).unwrap();
        assert_eq!(
            every.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:05:00Z"))
        );
        assert_eq!(every.describe(), "every 5m");
        assert_eq!(
            Timetable::from_columns(None, None, Some(0)).unwrap_err(),
            BadTimetable::Interval(0)
        );
        assert_eq!(
            Timetable::from_columns(Some("* * * * *"), None, Some(5)).unwrap_err(),
            BadTimetable::NeitherOrBoth
        );
        assert_eq!(seconds_words(90), "90s");
        assert_eq!(seconds_words(7200), "2h");
    }

    #[test]
    fn a_bad_cron_names_the_field_at_fault() {
        let err = Timetable::cron("61 18 * * *", None).unwrap_err();
        let BadTimetable::Field { field, value, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((*field, value.as_str()), ("minute", "61"));
        assert!(err.to_string().contains("allowed: 0-59"), "{err}");
        for (cron, want) in [
            ("0 25 * * *", "hour"),
            ("0 0 32 * *", "day-of-month"),
            ("0 0 * 13 *", "month"),
            ("0 0 * * FUNDAY", "day-of-week"),
        ] {
            match Timetable::cron(cron, None).unwrap_err() {
                BadTimetable::Field { field, .. } => assert_eq!(field, want, "{cron}"),
                other => panic!("{cron}: {other:?}"),
            }
        }
        assert_eq!(
            Timetable::cron("* * * *", None).unwrap_err().to_string(),
            "cron '* * * *' has 4 fields; a cron expression has five: minute hour day-of-month month day-of-week (e.g. '30 18 * * 1-5')"
        );
        assert!(matches!(
            Timetable::cron("0 0 30 2 *", None).unwrap_err(),
            BadTimetable::NeverDue { .. }
        ));
        assert!(Timetable::cron("@daily", None).is_ok());
    }

    #[test]
    fn an_unknown_time_zone_is_refused_by_name() {
        let err = Timetable::cron("0 18 * * *", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(err, BadTimetable::TimeZone("Mars/Olympus".to_string()));
        assert!(err
            .to_string()
            .starts_with("unknown time zone 'Mars/Olympus'"));
        assert!(Timetable::cron("0 18 * * *", Some("Europe/London")).is_ok());
    }
}
