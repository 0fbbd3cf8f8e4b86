//! A child's memory, as `max_child_memory` measures it: the resident set size from
//! `/proc/<pid>/statm` (its second field, in pages). One short read per child per
//! scoreboard tick, and only when the limit is set.

/// The resident set size of `pid` in bytes, or `None` if it cannot be read (the
/// process is gone, or /proc is not mounted).
pub(crate) fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    parse_statm(&statm, page_size())
}

/// The resident pages of a statm line, times the page size.
fn parse_statm(statm: &str, page: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page)
}

/// The system's page size (4096 if it cannot be read).
pub(crate) fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_resident_pages_times_page_size() {
        assert_eq!(
            parse_statm("2048 300 100 1 0 500 0\n", 4096),
            Some(300 * 4096)
        );
        assert_eq!(parse_statm("", 4096), None);
        assert_eq!(parse_statm("1 x", 4096), None);
        assert_eq!(parse_statm("1 18446744073709551615", 4096), None);
    }

    #[test]
    fn our_own_rss_is_measured() {
        let rss = rss_bytes(std::process::id() as i32).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert_eq!(rss_bytes(-1), None);
    }
}
