//! UTC calendar arithmetic for the API's timestamps (request `Timestamp`s, certificate
//! expiry, `CreateTime`): std has no calendar, and one small module beats a date crate.

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (date, hour, minute, second) of seconds since the epoch.
pub fn split(unix_secs: i64) -> ((i64, i64, i64), i64, i64, i64) {
    let of_day = unix_secs.rem_euclid(86_400);
    (
        civil_from_days(unix_secs.div_euclid(86_400)),
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
    )
}

/// `YYYY-MM-DDThh:mm:ssZ` (slb-api.md §1.2).
pub fn iso8601(unix_secs: i64) -> String {
    let ((year, month, day), h, m, s) = split(unix_secs);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_handles_calendar_edges() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (-86_400, "1969-12-31T00:00:00Z"),
            (951_782_399, "2000-02-28T23:59:59Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_674_777_599, "2023-01-26T23:59:59Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
        ] {
            assert_eq!(iso8601(secs), text);
        }
    }
}
