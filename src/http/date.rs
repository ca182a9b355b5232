//! The `Date` header value (RFC 9110 §5.6.7, IMF-fixdate), formatted at most
//! once a second instead of once a response.
//!
//! It owns the calendar arithmetic; the caller owns the clock and passes `now`
//! in, so the value is testable without waiting and nothing global is kept.

use std::time::{SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
const IMF_FIXDATE_LEN: usize = 29;

/// 9999-12-31T23:59:59Z: IMF-fixdate has four year digits, so later clocks
/// are clamped here rather than printed wrongly.
const LAST_FORMATTABLE_SECS: u64 = 253_402_300_799;

const SECS_PER_DAY: u64 = 86_400;

const WEEKDAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// The last formatted date and the second it is for.
#[derive(Clone, Debug)]
pub struct HttpDate {
    secs: u64,
    text: [u8; IMF_FIXDATE_LEN],
}

impl HttpDate {
    pub fn new(now: SystemTime) -> Self {
        let secs = clamped_secs(now);
        HttpDate {
            secs,
            text: format(secs),
        }
    }

    /// Reformats only when `now` is in a different second; returns whether it
    /// did, so a caller can tell when cached responses went stale.
    pub fn update(&mut self, now: SystemTime) -> bool {
        let secs = clamped_secs(now);
        if secs == self.secs {
            return false;
        }
        self.secs = secs;
        self.text = format(secs);
        true
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }
}

/// Before the epoch clamps to the epoch: a clock that far wrong gives a
/// visibly wrong date rather than a panic or a negative year.
fn clamped_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(LAST_FORMATTABLE_SECS)
}

fn format(secs: u64) -> [u8; IMF_FIXDATE_LEN] {
    let days = secs / SECS_PER_DAY;
    let secs_of_day = secs % SECS_PER_DAY;
    let (year, month0, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 4) % 7) as usize];
    let month = MONTHS[month0 % 12];

    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(weekday);
    write_digits(&mut out[5..7], day);
    out[8..11].copy_from_slice(month);
    write_digits(&mut out[12..16], year);
    write_digits(&mut out[17..19], secs_of_day / 3600);
    write_digits(&mut out[20..22], secs_of_day / 60 % 60);
    write_digits(&mut out[23..25], secs_of_day % 60);
    out
}

/// Fills `out` with the low decimal digits of `n`, zero-padded.
fn write_digits(out: &mut [u8], mut n: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Howard Hinnant's `civil_from_days`, for days since 1970-01-01 (never
/// negative here). Returns (year, month index 0..12 from January, day 1..=31).
fn civil_from_days(days: u64) -> (u64, usize, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month0 = ((month_from_march + 2) % 12) as usize;
    let year = year_of_era + era * 400 + u64::from(month0 < 2);
    (year, month0, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn text(secs: u64) -> String {
        String::from_utf8(HttpDate::new(at(secs)).as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn known_timestamps() {
        let cases: &[(u64, &str)] = &[
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 GMT"),
            (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"),
            (1_709_251_200, "Fri, 01 Mar 2024 00:00:00 GMT"),
            (1_795_467_600, "Mon, 23 Nov 2026 21:00:00 GMT"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"),
            (LAST_FORMATTABLE_SECS, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for &(secs, expected) in cases {
            assert_eq!(text(secs), expected, "{secs}");
        }
    }

    #[test]
    fn out_of_range_clocks_clamp() {
        let before = UNIX_EPOCH - Duration::from_secs(86_400 * 400);
        assert_eq!(
            HttpDate::new(before).as_bytes(),
            b"Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(text(u64::MAX / 4), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn update_reformats_only_on_a_new_second() {
        let mut date = HttpDate::new(at(784_111_777));
        assert!(!date.update(at(784_111_777) + Duration::from_millis(999)));
        assert_eq!(date.as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(date.update(at(784_111_778)));
        assert_eq!(date.as_bytes(), b"Sun, 06 Nov 1994 08:49:38 GMT");
        assert!(date.update(at(0)));
        assert_eq!(date.as_bytes(), b"Thu, 01 Jan 1970 00:00:00 GMT");
    }

    /// The slow, obvious calendar: walk years, then months.
    fn naive(secs: u64) -> String {
        let is_leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let mut days = secs / SECS_PER_DAY;
        let mut year = 1970;
        loop {
            let len = if is_leap(year) { 366 } else { 365 };
            if days < len {
                break;
            }
            days -= len;
            year += 1;
        }
        let lengths = [
            31,
            if is_leap(year) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        let mut month = 0;
        while days >= lengths[month] {
            days -= lengths[month];
            month += 1;
        }
        // Zeller's congruence, independent of counting from the epoch.
        let (y, m) = if month < 2 {
            (year - 1, month as u64 + 13)
        } else {
            (year, month as u64 + 1)
        };
        let q = days + 1;
        let h = (q + 13 * (m + 1) / 5 + y % 100 + y % 100 / 4 + y / 100 / 4 + 5 * (y / 100)) % 7;
        let weekday = ["Sat", "Sun", "Mon", "Tue", "Wed", "Thu", "Fri"][h as usize];
        let names = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let s = secs % SECS_PER_DAY;
        format!(
            "{weekday}, {:02} {} {year:04} {:02}:{:02}:{:02} GMT",
            days + 1,
            names[month],
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }

    #[test]
    fn agrees_with_the_naive_calendar() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            // xorshift64: reproducible without a dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let secs = next() % 8_000_000_000;
            assert_eq!(text(secs), naive(secs), "{secs}");
        }
        for day in 0..3000 {
            let secs = day * SECS_PER_DAY + day % SECS_PER_DAY;
            assert_eq!(text(secs), naive(secs), "{secs}");
        }
    }
}
