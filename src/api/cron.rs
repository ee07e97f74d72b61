//! Cron schedules: `spec.schedule` parsed once into a typed [`Schedule`], and the times it
//! names found without a clock of its own.
//!
//! A schedule is five fields (minute, hour, day of month, month, day of week), one of the
//! macros (`@daily`, …), or `@every <duration>`, as Kubernetes' CronJob controller reads it.
//! The API server validates with [`Schedule::parse`] and the controller runs what it parsed,
//! so a schedule the server took is one the controller can run.
//!
//! Times are searched in a [`Zone`]'s wall-clock time, skipping whole months, days and hours
//! that cannot match, so the cost of a search does not grow with the gap it spans. A wall-clock
//! time that a zone skips (clocks jump forward over it) names no instant and is not run; one
//! it repeats (clocks fall back) names two, and both run: each names a moment that came.
//!
//! Invariants: every search is bounded by [`SEARCH_YEARS`] (a schedule such as `0 0 30 2 *`
//! parses but never fires: searches for it end with `None`); a parsed `@every` interval is at
//! least one second.

use std::fmt;
use std::path::Path;

use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Searches look this many years ahead or back: more than the 28-year cycle after which
/// weekdays and leap days repeat, so any day a schedule can name is found.
pub const SEARCH_YEARS: i32 = 30;

/// More missed times than this are reported as too many (Kubernetes' `TooManyMissedTimes`).
pub const TOO_MANY_MISSED: u32 = 100;

/// Where the system keeps its time zone files (the IANA database, as TZif files).
pub const ZONEINFO: &str = "/usr/share/zoneinfo";

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Fields(Fields),
    /// `@every`: whole seconds, at least one, counted from the last run.
    Every(Duration),
}

/// The five fields as bit sets: bit `n` set means value `n` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    minutes: u64,
    hours: u64,
    /// Bits 1..=31.
    days: u64,
    /// Bits 1..=12.
    months: u64,
    /// Bits 0..=6, Sunday = 0 (a 7 in the text is folded to 0).
    weekdays: u64,
    /// Both day fields are restricted (neither is `*` or `?`): a day matches if either does,
    /// cron's rule; otherwise both must.
    either_day: bool,
}

/// One of the five fields, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

/// Why a schedule was refused; the user fixes the text. Not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty schedule")]
    Empty,
    #[error("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")]
    TimeZoneInSchedule,
    #[error(
        "expected exactly 5 fields (minute hour day-of-month month day-of-week), found {found}"
    )]
    FieldCount { found: usize },
    #[error(
        "unrecognized descriptor {0:?}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>"
    )]
    Descriptor(String),
    #[error("bad duration {0:?} after @every: use a duration such as 90s, 5m or 1h30m")]
    Duration(String),
    #[error("{field} field: {text:?} is neither a number nor a name")]
    NotANumber { field: Field, text: String },
    #[error("{field} field: {value} is outside {min}-{max}")]
    OutOfRange {
        field: Field,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("{field} field: range {text:?} starts after it ends")]
    Backwards { field: Field, text: String },
    #[error("{field} field: the step in {text:?} must be a whole number above 0")]
    Step { field: Field, text: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A time zone name the zone database does not know. Not retryable until the name (or the
/// database) changes.
#[derive(Debug, thiserror::Error)]
#[error("unknown time zone {name:?}: {source}")]
pub struct UnknownZone {
    pub name: String,
    #[source]
    source: jiff::Error,
}

/// The time zone database: reads TZif files on first use of a zone and keeps them.
#[derive(Clone, Debug)]
pub struct Zones {
    db: jiff::tz::TimeZoneDatabase,
}

/// Where a schedule's wall-clock times are read.
#[derive(Clone, Debug)]
pub enum Zone {
    Utc,
    Named(jiff::tz::TimeZone),
}

/// The latest scheduled time in a window, and how many fell in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// The latest one: the time to run now.
    pub latest: OffsetDateTime,
    /// How many times fell in the window, counted up to [`TOO_MANY_MISSED`] + 1.
    pub count: u32,
}

// === impl Schedule ===

impl Schedule {
    /// Parses a schedule as Kubernetes' CronJob controller reads it.
    pub fn parse(text: &str) -> Result<Schedule> {
        let s = text.trim();
        if s.is_empty() {
            return Err(Error::Empty);
        }
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err(Error::TimeZoneInSchedule);
        }
        if let Some(macro_name) = s.strip_prefix('@') {
            let fields = match macro_name {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                other => {
                    return match other.strip_prefix("every ") {
                        Some(d) => every(d.trim()),
                        None => Err(Error::Descriptor(s.to_owned())),
                    };
                }
            };
            return Schedule::parse(fields);
        }
        let texts: Vec<&str> = s.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = texts[..] else {
            return Err(Error::FieldCount { found: texts.len() });
        };
        let (minutes, _) = field(minute, Field::Minute)?;
        let (hours, _) = field(hour, Field::Hour)?;
        let (days, any_day) = field(day, Field::DayOfMonth)?;
        let (months, _) = field(month, Field::Month)?;
        let (weekdays, any_weekday) = field(weekday, Field::DayOfWeek)?;
        // Sunday is 0 and 7.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        Ok(Schedule(Kind::Fields(Fields {
            minutes,
            hours,
            days,
            months,
            weekdays,
            either_day: !any_day && !any_weekday,
        })))
    }

    /// The first scheduled time after `after`, in UTC.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        self.next_after_in(&Zone::Utc, after)
    }

    /// The first scheduled time after `after`, the fields read as wall-clock time in `zone`.
    pub fn next_after_in(&self, zone: &Zone, after: OffsetDateTime) -> Option<OffsetDateTime> {
        match &self.0 {
            Kind::Every(d) => after.replace_nanosecond(0).ok()?.checked_add(*d),
            Kind::Fields(f) => {
                // Clocks about to fall back show wall-clock times before `after`'s again: start
                // from the earlier reading, skipping candidates that are not after `after`.
                let local = zone
                    .local(after)
                    .min(zone.local_as(after, after + Duration::DAY));
                let mut from = next_minute(local)?;
                loop {
                    let civil = f.first_from(from)?;
                    if let Some(t) = zone
                        .instants(civil)
                        .into_iter()
                        .flatten()
                        .find(|t| *t > after)
                    {
                        return Some(t);
                    }
                    from = next_minute(civil)?;
                }
            }
        }
    }

    /// The latest scheduled time in (`from`, `to`], and how many there were: what a controller
    /// that last ran at `from` (or was created then) has missed by `to`.
    pub fn missed(&self, zone: &Zone, from: OffsetDateTime, to: OffsetDateTime) -> Option<Missed> {
        if to <= from {
            return None;
        }
        let latest = match &self.0 {
            Kind::Every(d) => {
                let start = from.replace_nanosecond(0).ok()?;
                let times = (to - start).whole_seconds() / d.whole_seconds();
                if times < 1 {
                    return None;
                }
                return Some(Missed {
                    latest: start
                        .checked_add(Duration::seconds(d.whole_seconds().checked_mul(times)?))?,
                    count: u32::try_from(times)
                        .unwrap_or(u32::MAX)
                        .min(TOO_MANY_MISSED + 1),
                });
            }
            Kind::Fields(f) => {
                // Clocks that just fell back showed later wall-clock times before `to`.
                let mut until = zone.local(to).max(zone.local_as(to, to - Duration::DAY));
                loop {
                    let civil = f.last_until(until)?;
                    if let Some(t) = zone
                        .instants(civil)
                        .into_iter()
                        .flatten()
                        .rev()
                        .find(|t| *t <= to)
                    {
                        break t;
                    }
                    until = civil.checked_sub(Duration::MINUTE)?;
                }
            }
        };
        if latest <= from {
            return None;
        }
        // Counting walks forward, so it stops at the cap: decades of missed minutes cost no
        // more than a hundred steps.
        let mut count = 0;
        let mut t = from;
        while count <= TOO_MANY_MISSED {
            match self.next_after_in(zone, t) {
                Some(next) if next <= latest => {
                    count += 1;
                    t = next;
                }
                _ => break,
            }
        }
        Some(Missed { latest, count })
    }
}

/// `@every <duration>`: Go's duration syntax (`1h30m`, `90s`, `1.5h`), rounded up to a second
/// as Kubernetes' cron library does.
fn every(text: &str) -> Result<Schedule> {
    let bad = || Error::Duration(text.to_owned());
    let mut rest = text;
    let mut nanos: f64 = 0.0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_len);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return Err(bad()),
        };
        nanos += number * scale;
        rest = after;
    }
    let seconds = (nanos / 1e9).ceil().max(1.0);
    if seconds > 1e12 {
        return Err(bad());
    }
    // In range: checked just above.
    Ok(Schedule(Kind::Every(Duration::seconds(seconds as i64))))
}

/// One field's bit set, and whether it is unrestricted (`*` or `?` in any part).
fn field(text: &str, which: Field) -> Result<(u64, bool)> {
    let (min, max) = which.bounds();
    let mut bits = 0u64;
    let mut any = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step = s.parse::<u32>().ok().filter(|n| *n > 0);
                (
                    r,
                    Some(step.ok_or_else(|| Error::Step {
                        field: which,
                        text: part.to_owned(),
                    })?),
                )
            }
            None => (part, None),
        };
        let (first, last) = match range {
            "*" | "?" => {
                any = true;
                // Sunday once, as 0: 7 is only another spelling.
                (min, if which == Field::DayOfWeek { 6 } else { max })
            }
            r => match r.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (which.value(a)?, which.value(b)?);
                    if a > b {
                        return Err(Error::Backwards {
                            field: which,
                            text: r.to_owned(),
                        });
                    }
                    (a, b)
                }
                // `5/15` means from 5 to the end, every 15.
                None if step.is_some() => (which.value(r)?, max),
                None => {
                    let v = which.value(r)?;
                    (v, v)
                }
            },
        };
        let step = step.unwrap_or(1);
        let mut v = first;
        while v <= last {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, any))
}

// === impl Fields ===

impl Fields {
    fn day_matches(&self, date: Date) -> bool {
        let day = has(self.days, u32::from(date.day()));
        let weekday = has(
            self.weekdays,
            u32::from(date.weekday().number_days_from_sunday()),
        );
        if self.either_day {
            day || weekday
        } else {
            day && weekday
        }
    }

    /// The first matching wall-clock minute at or after `from` (a whole minute).
    fn first_from(&self, from: PrimitiveDateTime) -> Option<PrimitiveDateTime> {
        let limit = from.year().saturating_add(SEARCH_YEARS);
        let (mut date, mut hour, mut minute) = (
            from.date(),
            u32::from(from.hour()),
            u32::from(from.minute()),
        );
        loop {
            if date.year() > limit {
                return None;
            }
            let month = u32::from(u8::from(date.month()));
            if !has(self.months, month) {
                // Day 1 of the next month in the set.
                date = match next_bit(self.months, month + 1) {
                    Some(m) => first_day(date.year(), m)?,
                    None => first_day(date.year() + 1, next_bit(self.months, 1)?)?,
                };
                (hour, minute) = (0, 0);
                continue;
            }
            if !self.day_matches(date) {
                date = date.next_day()?;
                (hour, minute) = (0, 0);
                continue;
            }
            match next_bit(self.hours, hour) {
                None => {
                    date = date.next_day()?;
                    (hour, minute) = (0, 0);
                    continue;
                }
                Some(h) if h != hour => (hour, minute) = (h, 0),
                Some(_) => {}
            }
            match next_bit(self.minutes, minute) {
                Some(m) => return at(date, hour, m),
                None if hour < 23 => (hour, minute) = (hour + 1, 0),
                None => {
                    date = date.next_day()?;
                    (hour, minute) = (0, 0);
                }
            }
        }
    }

    /// The last matching wall-clock minute at or before `until`.
    fn last_until(&self, until: PrimitiveDateTime) -> Option<PrimitiveDateTime> {
        let limit = until.year().saturating_sub(SEARCH_YEARS);
        let (mut date, mut hour, mut minute) = (
            until.date(),
            u32::from(until.hour()),
            u32::from(until.minute()),
        );
        loop {
            if date.year() < limit {
                return None;
            }
            let month = u32::from(u8::from(date.month()));
            if !has(self.months, month) {
                // The last day of the previous month in the set (bit 0 is never set).
                date = match prev_bit(self.months, month - 1) {
                    Some(m) => last_day(date.year(), m)?,
                    None => last_day(date.year() - 1, prev_bit(self.months, 12)?)?,
                };
                (hour, minute) = (23, 59);
                continue;
            }
            if !self.day_matches(date) {
                date = date.previous_day()?;
                (hour, minute) = (23, 59);
                continue;
            }
            match prev_bit(self.hours, hour) {
                None => {
                    date = date.previous_day()?;
                    (hour, minute) = (23, 59);
                    continue;
                }
                Some(h) if h != hour => (hour, minute) = (h, 59),
                Some(_) => {}
            }
            match prev_bit(self.minutes, minute) {
                Some(m) => return at(date, hour, m),
                None if hour > 0 => (hour, minute) = (hour - 1, 59),
                None => {
                    date = date.previous_day()?;
                    (hour, minute) = (23, 59);
                }
            }
        }
    }
}

// === impl Field ===

impl Field {
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Field::Month => &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
            Field::DayOfWeek => &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
            _ => &[],
        }
    }

    /// A number or name within the field's bounds.
    fn value(self, text: &str) -> Result<u32> {
        let (min, max) = self.bounds();
        let lower = text.to_ascii_lowercase();
        if let Some(i) = self.names().iter().position(|n| *n == lower) {
            // Month names count from 1, day names from 0 (Sunday): both from `min`.
            return Ok(u32::try_from(i).unwrap_or(0) + min);
        }
        let value: u32 = text.parse().map_err(|_| Error::NotANumber {
            field: self,
            text: text.to_owned(),
        })?;
        if value < min || value > max {
            return Err(Error::OutOfRange {
                field: self,
                value,
                min,
                max,
            });
        }
        Ok(value)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        })
    }
}

// === impl Zones ===

impl Zones {
    /// The database in `dir` (normally [`ZONEINFO`]); an empty or missing one knows only UTC.
    pub fn from_dir(dir: &Path) -> Zones {
        let db = jiff::tz::TimeZoneDatabase::from_dir(dir).unwrap_or_else(|e| {
            tracing::info!(dir = %dir.display(), error = %e, "no time zone database: CronJobs may only use UTC");
            jiff::tz::TimeZoneDatabase::none()
        });
        Zones { db }
    }

    /// The zone `spec.timeZone` names; none means the controller's own zone, which for keelson
    /// is UTC.
    pub fn zone(&self, name: Option<&str>) -> Result<Zone, UnknownZone> {
        match name {
            None | Some("UTC" | "Etc/UTC") => Ok(Zone::Utc),
            Some(name) => self
                .db
                .get(name)
                .map(Zone::Named)
                .map_err(|source| UnknownZone {
                    name: name.to_owned(),
                    source,
                }),
        }
    }
}

// === impl Zone ===

impl Zone {
    /// The zone's offset at `t`.
    pub fn offset(&self, t: OffsetDateTime) -> UtcOffset {
        match self {
            Zone::Utc => UtcOffset::UTC,
            Zone::Named(tz) => jiff::Timestamp::from_second(t.unix_timestamp())
                .ok()
                .and_then(|ts| UtcOffset::from_whole_seconds(tz.to_offset(ts).seconds()).ok())
                .unwrap_or(UtcOffset::UTC),
        }
    }

    /// The wall-clock time at `t`.
    fn local(&self, t: OffsetDateTime) -> PrimitiveDateTime {
        self.local_as(t, t)
    }

    /// The wall-clock time at `t` read with the offset in force at `when`.
    fn local_as(&self, t: OffsetDateTime, when: OffsetDateTime) -> PrimitiveDateTime {
        let local = t.to_offset(self.offset(when));
        PrimitiveDateTime::new(local.date(), local.time())
    }

    /// The instants a wall-clock time names, earliest first: none in a gap, two in a fold.
    fn instants(&self, civil: PrimitiveDateTime) -> [Option<OffsetDateTime>; 2] {
        let with = |seconds: i32| {
            UtcOffset::from_whole_seconds(seconds)
                .ok()
                .map(|o| civil.assume_offset(o).to_offset(UtcOffset::UTC))
        };
        let Zone::Named(tz) = self else {
            return [Some(civil.assume_utc()), None];
        };
        let Ok(dt) = jiff::civil::DateTime::new(
            i16::try_from(civil.year()).unwrap_or(i16::MAX),
            i8::try_from(u8::from(civil.month())).unwrap_or(1),
            i8::try_from(civil.day()).unwrap_or(1),
            i8::try_from(civil.hour()).unwrap_or(0),
            i8::try_from(civil.minute()).unwrap_or(0),
            0,
            0,
        ) else {
            return [None, None];
        };
        match tz.to_ambiguous_timestamp(dt).offset() {
            jiff::tz::AmbiguousOffset::Unambiguous { offset } => [with(offset.seconds()), None],
            jiff::tz::AmbiguousOffset::Gap { .. } => [None, None],
            // The offset before the fall back is the larger: its instant comes first.
            jiff::tz::AmbiguousOffset::Fold { before, after } => {
                [with(before.seconds()), with(after.seconds())]
            }
        }
    }
}

// === impl Missed ===

impl Missed {
    /// More than [`TOO_MANY_MISSED`] times were missed: the clock jumped, or the controller was
    /// away for long.
    pub fn too_many(&self) -> bool {
        self.count > TOO_MANY_MISSED
    }
}

// === helpers ===

fn has(bits: u64, n: u32) -> bool {
    n < 64 && bits & (1 << n) != 0
}

/// The lowest set bit at or above `from`.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let above = bits >> from;
    (above != 0).then(|| from + above.trailing_zeros())
}

/// The highest set bit at or below `at`.
fn prev_bit(bits: u64, at: u32) -> Option<u32> {
    let below = if at >= 63 {
        bits
    } else {
        bits & ((1 << (at + 1)) - 1)
    };
    (below != 0).then(|| 63 - below.leading_zeros())
}

fn month_of(m: u32) -> Option<Month> {
    Month::try_from(u8::try_from(m).ok()?).ok()
}

fn first_day(year: i32, month: u32) -> Option<Date> {
    Date::from_calendar_date(year, month_of(month)?, 1).ok()
}

fn last_day(year: i32, month: u32) -> Option<Date> {
    let month = month_of(month)?;
    Date::from_calendar_date(year, month, month.length(year)).ok()
}

fn at(date: Date, hour: u32, minute: u32) -> Option<PrimitiveDateTime> {
    let time = Time::from_hms(u8::try_from(hour).ok()?, u8::try_from(minute).ok()?, 0).ok()?;
    Some(PrimitiveDateTime::new(date, time))
}

/// The whole minute after `t`'s minute.
fn next_minute(t: PrimitiveDateTime) -> Option<PrimitiveDateTime> {
    t.replace_second(0)
        .ok()?
        .replace_nanosecond(0)
        .ok()?
        .checked_add(Duration::MINUTE)
}

#[cfg(test)]
mod tests;
