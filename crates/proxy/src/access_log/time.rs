//! `%START_TIME(...)%` formatting: Envoy's strftime dialect in UTC, with its
//! sub-second extensions (`%f` nanoseconds, `%Nf` N digits, `%ENS` seconds
//! with N fractional digits, `%s` epoch seconds).

use std::time::{SystemTime, UNIX_EPOCH};

/// Envoy's default `START_TIME` format.
pub const DEFAULT: &str = "%Y-%m-%dT%H:%M:%E3SZ";

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn day_of_year(y: i64, m: u32, d: u32) -> u32 {
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    CUM[(m - 1) as usize] + d + u32::from(m > 2 && is_leap(y))
}

fn frac(nanos: u32, digits: usize) -> String {
    let digits = digits.clamp(1, 9);
    let s = format!("{nanos:09}");
    s[..digits].to_string()
}

/// Formats `t` with an Envoy/strftime format string, in UTC.
pub fn format(t: SystemTime, fmt: &str) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, mo, d) = civil(days);
    let (h, mi, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let mut out = String::with_capacity(fmt.len() + 16);
    let chars: Vec<char> = fmt.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '%' || i + 1 >= chars.len() {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        // %Nf and %ENS: a digit count first.
        let mut n = 0usize;
        let start = i;
        if chars[i] == 'E' {
            let mut j = i + 1;
            while j < chars.len() && chars[j].is_ascii_digit() {
                n = n * 10 + chars[j].to_digit(10).unwrap_or(0) as usize;
                j += 1;
            }
            if j < chars.len() && chars[j] == 'S' && j > i + 1 {
                out.push_str(&format!("{s:02}.{}", frac(nanos, n)));
                i = j + 1;
                continue;
            }
            if j < chars.len() && chars[j] == '*' && j + 1 < chars.len() && chars[j + 1] == 'S' {
                out.push_str(&format!("{s:02}.{nanos:09}"));
                i = j + 2;
                continue;
            }
        }
        while i < chars.len() && chars[i].is_ascii_digit() {
            n = n * 10 + chars[i].to_digit(10).unwrap_or(0) as usize;
            i += 1;
        }
        if i > start {
            if i < chars.len() && chars[i] == 'f' {
                out.push_str(&frac(nanos, n));
                i += 1;
            } else {
                out.push('%');
                i = start;
            }
            continue;
        }
        let spec = chars[i];
        i += 1;
        match spec {
            'Y' => out.push_str(&format!("{y:04}")),
            'y' => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            'C' => out.push_str(&format!("{:02}", y.div_euclid(100))),
            'm' => out.push_str(&format!("{mo:02}")),
            'd' => out.push_str(&format!("{d:02}")),
            'e' => out.push_str(&format!("{d:2}")),
            'H' => out.push_str(&format!("{h:02}")),
            'I' => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            'p' => out.push_str(if h < 12 { "AM" } else { "PM" }),
            'M' => out.push_str(&format!("{mi:02}")),
            'S' => out.push_str(&format!("{s:02}")),
            'f' => out.push_str(&format!("{nanos:09}")),
            's' => out.push_str(&secs.to_string()),
            'j' => out.push_str(&format!("{:03}", day_of_year(y, mo, d))),
            'a' => out.push_str(DAYS[days.rem_euclid(7) as usize]),
            'b' | 'h' => out.push_str(MONTHS[(mo - 1) as usize]),
            'u' => out.push_str(&((days + 3).rem_euclid(7) + 1).to_string()),
            'w' => out.push_str(&(days + 4).rem_euclid(7).to_string()),
            'z' => out.push_str("+0000"),
            'Z' => out.push_str("UTC"),
            'T' => out.push_str(&format!("{h:02}:{mi:02}:{s:02}")),
            'R' => out.push_str(&format!("{h:02}:{mi:02}")),
            'F' => out.push_str(&format!("{y:04}-{mo:02}-{d:02}")),
            'D' => out.push_str(&format!("{mo:02}/{d:02}/{:02}", y.rem_euclid(100))),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_like_envoy() {
        // 2026-11-22T03:07:30.602363 UTC, as Envoy printed it.
        let t = UNIX_EPOCH + Duration::new(1_795_316_850, 602_363_000);
        assert_eq!(format(t, DEFAULT), "2026-11-22T03:07:30.602Z");
        assert_eq!(
            format(t, "%Y/%m/%d %H:%M:%S.%f %3f %6f %9f %s %z"),
            "2026/11/22 03:07:30.602363000 602 602363 602363000 1795316850 +0000"
        );
        assert_eq!(format(t, "%s.%3f"), "1795316850.602");
        assert_eq!(
            format(t, "%E6S|%j|%a %b %e|%T|%F|%%"),
            "30.602363|326|Sun Nov 22|03:07:30|2026-11-22|%"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format(leap, "%F %a"), "2000-02-29 Tue");
    }
}
