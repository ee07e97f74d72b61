use super::*;
use time::format_description::well_known::Rfc3339;

fn t(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn next(schedule: &str, after: &str) -> Option<OffsetDateTime> {
    Schedule::parse(schedule).unwrap().next_after(t(after))
}

#[test]
fn schedules_parse_as_kubernetes_reads_them() {
    for (text, same_as) in [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("0 0 * * 7", "0 0 * * 0"),
        ("0 0 * * sun", "0 0 * * 0"),
        ("0 0 * * 5-7", "0 0 * * 0,5,6"),
        ("0 0 ? * MON-FRI", "0 0 * * 1-5"),
        ("0 0 1 JAN-mar *", "0 0 1 1,2,3 *"),
        ("*/20 * * * *", "0,20,40 * * * *"),
        ("1-30/10 * * * *", "1,11,21 * * * *"),
        ("50/5 * * * *", "50,55 * * * *"),
        ("  0   3 * * *  ", "0 3 * * *"),
    ] {
        assert_eq!(
            Schedule::parse(text).unwrap(),
            Schedule::parse(same_as).unwrap(),
            "{text}"
        );
    }
    assert!(Schedule::parse("@every 1h30m").is_ok());
    assert!(Schedule::parse("@every 1.5s").is_ok());
}

#[test]
fn bad_schedules_say_which_field_and_what_text() {
    use Field::*;
    let cases: [(&str, Error); 13] = [
        ("", Error::Empty),
        ("* * * *", Error::FieldCount { found: 4 }),
        ("* * * * * *", Error::FieldCount { found: 6 }),
        (
            "61 * * * *",
            Error::OutOfRange {
                field: Minute,
                value: 61,
                min: 0,
                max: 59,
            },
        ),
        (
            "* 24 * * *",
            Error::OutOfRange {
                field: Hour,
                value: 24,
                min: 0,
                max: 23,
            },
        ),
        (
            "* * 0 * *",
            Error::OutOfRange {
                field: DayOfMonth,
                value: 0,
                min: 1,
                max: 31,
            },
        ),
        (
            "* * * 13 *",
            Error::OutOfRange {
                field: Month,
                value: 13,
                min: 1,
                max: 12,
            },
        ),
        (
            "* * * * 8",
            Error::OutOfRange {
                field: DayOfWeek,
                value: 8,
                min: 0,
                max: 7,
            },
        ),
        (
            "5-1 * * * *",
            Error::Backwards {
                field: Minute,
                text: "5-1".into(),
            },
        ),
        (
            "*/0 * * * *",
            Error::Step {
                field: Minute,
                text: "*/0".into(),
            },
        ),
        (
            "* * * foo *",
            Error::NotANumber {
                field: Month,
                text: "foo".into(),
            },
        ),
        ("@sometimes", Error::Descriptor("@sometimes".into())),
        ("TZ=UTC 0 * * * *", Error::TimeZoneInSchedule),
    ];
    for (text, want) in cases {
        assert_eq!(Schedule::parse(text), Err(want), "{text}");
    }
    assert_eq!(
        Schedule::parse("@every soon"),
        Err(Error::Duration("soon".into()))
    );
    assert_eq!(
        Schedule::parse("every minute").unwrap_err().to_string(),
        "expected exactly 5 fields (minute hour day-of-month month day-of-week), found 2"
    );
    assert_eq!(
        Schedule::parse("0 0 * * fry").unwrap_err().to_string(),
        "day-of-week field: \"fry\" is neither a number nor a name"
    );
}

#[test]
fn next_times_cross_month_and_year_ends_and_find_leap_days() {
    let cases = [
        ("* * * * *", "2026-12-01T10:00:30Z", "2026-12-01T10:01:00Z"),
        ("0 0 1 * *", "2026-01-31T12:00:00Z", "2026-02-01T00:00:00Z"),
        ("0 0 31 * *", "2026-04-01T00:00:00Z", "2026-05-31T00:00:00Z"),
        ("0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
        (
            "59 23 31 12 *",
            "2026-12-31T23:59:00Z",
            "2027-12-31T23:59:00Z",
        ),
        (
            "*/15 9-17 * jan-mar mon-fri",
            "2026-12-01T10:00:00Z",
            "2027-01-01T09:00:00Z",
        ),
        ("0 12 * * 0", "2026-12-01T00:00:00Z", "2026-12-06T12:00:00Z"),
        ("0 12 * * 7", "2026-12-01T00:00:00Z", "2026-12-06T12:00:00Z"),
        ("30 * * * *", "2026-12-01T23:45:00Z", "2026-12-02T00:30:00Z"),
        (
            "@every 90s",
            "2026-12-01T10:00:00.5Z",
            "2026-12-01T10:01:30Z",
        ),
    ];
    for (schedule, after, want) in cases {
        assert_eq!(
            next(schedule, after),
            Some(t(want)),
            "{schedule} after {after}"
        );
    }
    // Parses, as in Kubernetes, but never fires.
    assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), None);
}

#[test]
fn day_of_month_and_day_of_week_are_ored_only_when_both_are_restricted() {
    // 2026-12-01 is a Tuesday; Friday the 4th comes before the 13th.
    assert_eq!(
        next("0 0 13 * 5", "2026-12-01T00:00:00Z"),
        Some(t("2026-12-04T00:00:00Z"))
    );
    assert_eq!(
        next("0 0 13 * *", "2026-12-01T00:00:00Z"),
        Some(t("2026-12-13T00:00:00Z"))
    );
    assert_eq!(
        next("0 0 * * 5", "2026-12-05T00:00:00Z"),
        Some(t("2026-12-11T00:00:00Z"))
    );
    // `*/2` counts as unrestricted: odd days that are Fridays.
    assert_eq!(
        next("0 0 */2 * 5", "2026-12-01T00:00:00Z"),
        Some(t("2026-12-11T00:00:00Z"))
    );
}

#[test]
fn missed_times_give_the_latest_and_a_capped_count() {
    let every_minute = Schedule::parse("* * * * *").unwrap();
    let m = every_minute
        .missed(
            &Zone::Utc,
            t("2026-12-01T10:00:00Z"),
            t("2026-12-01T10:05:30Z"),
        )
        .unwrap();
    assert_eq!(m.latest, t("2026-12-01T10:05:00Z"));
    assert_eq!(m.count, 5);
    assert!(!m.too_many());
    assert_eq!(
        every_minute.missed(
            &Zone::Utc,
            t("2026-12-01T10:05:00Z"),
            t("2026-12-01T10:05:30Z")
        ),
        None
    );
    // Decades of missed minutes: found at once, counted only up to the cap.
    let m = every_minute
        .missed(
            &Zone::Utc,
            t("2000-01-01T00:00:00Z"),
            t("2026-12-01T10:05:30Z"),
        )
        .unwrap();
    assert_eq!(m.latest, t("2026-12-01T10:05:00Z"));
    assert_eq!(m.count, TOO_MANY_MISSED + 1);
    assert!(m.too_many());

    // Weekdays at nine: nothing over the weekend, then Monday's.
    let weekdays = Schedule::parse("0 9 * * mon-fri").unwrap();
    let friday = t("2026-12-04T10:00:00Z");
    assert_eq!(
        weekdays.missed(&Zone::Utc, friday, t("2026-12-07T08:59:59Z")),
        None
    );
    assert_eq!(
        weekdays.missed(&Zone::Utc, friday, t("2026-12-07T09:00:00Z")),
        Some(Missed {
            latest: t("2026-12-07T09:00:00Z"),
            count: 1
        })
    );

    let hourly = Schedule::parse("@every 1h").unwrap();
    assert_eq!(
        hourly.missed(
            &Zone::Utc,
            t("2026-12-01T10:00:00Z"),
            t("2026-12-01T13:30:00Z")
        ),
        Some(Missed {
            latest: t("2026-12-01T13:00:00Z"),
            count: 3
        })
    );
}

/// The system's zone database, when this machine has one.
fn berlin() -> Option<Zone> {
    let zones = Zones::from_dir(Path::new(ZONEINFO));
    zones.zone(Some("Europe/Berlin")).ok()
}

#[test]
fn zones_skip_wall_clock_times_that_do_not_exist_and_repeat_folded_ones() {
    let zones = Zones::from_dir(Path::new(ZONEINFO));
    assert!(matches!(zones.zone(None), Ok(Zone::Utc)));
    assert!(matches!(zones.zone(Some("Etc/UTC")), Ok(Zone::Utc)));
    let unknown = zones.zone(Some("Nowhere/Atlantis")).unwrap_err();
    assert!(
        unknown.to_string().contains("Nowhere/Atlantis"),
        "{unknown}"
    );
    let Some(berlin) = berlin() else {
        eprintln!("no Europe/Berlin in {ZONEINFO}: zone cases skipped");
        return;
    };
    let half_past_two = Schedule::parse("30 2 * * *").unwrap();
    let next = |after: &str| half_past_two.next_after_in(&berlin, t(after)).unwrap();
    // 2026-03-29: clocks jump from 02:00 to 03:00; that day has no 02:30.
    assert_eq!(next("2026-03-28T12:00:00Z"), t("2026-03-30T00:30:00Z"));
    // 2026-10-25: 02:00-03:00 happens twice, first at +02:00, then at +01:00.
    assert_eq!(next("2026-10-24T12:00:00Z"), t("2026-10-25T00:30:00Z"));
    assert_eq!(next("2026-10-25T00:30:00Z"), t("2026-10-25T01:30:00Z"));
    assert_eq!(next("2026-10-25T01:30:00Z"), t("2026-10-26T01:30:00Z"));
    // From the last minute before the fall back, the repeated hour comes next.
    let half_hourly = Schedule::parse("*/30 * * * *").unwrap();
    assert_eq!(
        half_hourly.next_after_in(&berlin, t("2026-10-25T00:59:00Z")),
        Some(t("2026-10-25T01:00:00Z"))
    );
    // Looking back from the repeated hour finds the first 02:30.
    let m = half_past_two
        .missed(
            &berlin,
            t("2026-10-24T12:00:00Z"),
            t("2026-10-25T01:15:00Z"),
        )
        .unwrap();
    assert_eq!(
        m,
        Missed {
            latest: t("2026-10-25T00:30:00Z"),
            count: 1
        }
    );
    assert_eq!(
        berlin.offset(t("2026-07-01T00:00:00Z")),
        UtcOffset::from_hms(2, 0, 0).unwrap()
    );
}
