//! The access log's line: the combined log format.

/// Formats one line of the combined log format (Apache's and nginx's default):
/// `host - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 2326 "referer" "agent"`.
/// `unix_secs` is the time of the request in seconds since the Unix epoch (UTC).
///
/// ```
/// use preforkd::runtime::combined_log_line;
/// let line = combined_log_line("127.0.0.1", 971_186_136, "GET / HTTP/1.1", 200, 6, None, Some("curl/8"));
/// assert_eq!(line, r#"127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 6 "-" "curl/8""#);
/// ```
pub fn combined_log_line(
    host: &str,
    unix_secs: u64,
    request_line: &str,
    status: u16,
    bytes: usize,
    referer: Option<&str>,
    user_agent: Option<&str>,
) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = civil_from_days((unix_secs / 86_400) as i64);
    let s = unix_secs % 86_400;
    // Quotes and control characters from the client must not break the line.
    let clean = |v: &str| -> String {
        v.chars()
            .map(|c| if c == '"' || c.is_control() { '?' } else { c })
            .collect()
    };
    format!(
        "{host} - - [{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000] \"{}\" {status} {bytes} \"{}\" \"{}\"",
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60,
        clean(request_line),
        referer.map_or_else(|| "-".into(), clean),
        user_agent.map_or_else(|| "-".into(), clean),
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn client_text_cannot_break_a_line() {
        let l = combined_log_line("h", 0, "GET /\"x\n HTTP/1.1", 404, 0, Some("r\""), None);
        assert_eq!(
            l,
            r#"h - - [01/Jan/1970:00:00:00 +0000] "GET /?x? HTTP/1.1" 404 0 "r?" "-""#
        );
    }
}
