//! The file watcher behind `auto_reload_check_every` (issue 9): which watched
//! files changed, each change reported once, and only once it is complete.
//!
//! A file's state is its fingerprint from `stat(2)`: (device, inode, size,
//! modification time to the nanosecond), or "missing" when it cannot be
//! stat'ed. The watcher keeps, per file, a **baseline** (the state last
//! reported, or the one at construction or [`renew`](Watcher::renew)) and the
//! state seen at the **last look**. At each [`look`](Watcher::look):
//!
//! - a state equal to the baseline is no change (also when the file changed
//!   and came back to it in between: nothing a reload would see differently);
//! - a state different from the baseline **and** from the last look is a file
//!   still being written (or replaced): not reported yet;
//! - a state different from the baseline and equal to the last look has been
//!   stable for one check: reported, and it becomes the baseline, so that one
//!   change is one report.
//!
//! A change is therefore reported at the second look after it, never the first.
//! The inode and device make a file replaced by a rename, or deleted and
//! recreated, count as changed even with the same size and mtime; a deletion is
//! a change too (missing is a state). Rewriting a file in place with the same
//! size and then restoring its mtime is not seen: nothing in the fingerprint
//! moved.

// `paths` and `renew` serve the unit tests (and future status tools).
#![cfg_attr(not(test), allow(dead_code))]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What `stat(2)` says of a file, enough to tell that it changed: a new inode
/// (rename over, delete and recreate), a new size or a new mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// A file's state at one look: `None` when it cannot be stat'ed (missing, or
/// a directory on the way no longer searchable), which is a state like any.
type State = Option<Fingerprint>;

fn state_of(path: &Path) -> State {
    // Follows symlinks: the file a program opens is the one that counts.
    std::fs::metadata(path).ok().map(|m| Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// One watched file: its path, the state last reported and the state at the
/// last look.
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    baseline: State,
    last: State,
}

/// Watches a list of files for changes, each reported once it has been stable
/// for one check; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Watcher {
    files: Vec<Watched>,
}

impl Watcher {
    /// Watches these paths, in this order (the indexes [`look`](Self::look)
    /// returns); their states now are the baseline.
    pub(crate) fn new(paths: impl IntoIterator<Item = PathBuf>) -> Watcher {
        let files = paths
            .into_iter()
            .map(|path| {
                let now = state_of(&path);
                Watched {
                    path,
                    baseline: now,
                    last: now,
                }
            })
            .collect();
        Watcher { files }
    }

    /// The watched paths, in the order of the indexes [`look`](Self::look)
    /// returns.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    /// Looks at every file once: the indexes (ascending) of those whose change
    /// is now reported, i.e. whose state differs from the baseline and is the
    /// same as at the previous look. A reported state becomes the baseline.
    pub(crate) fn look(&mut self) -> Vec<usize> {
        let mut changed = Vec::new();
        for (i, f) in self.files.iter_mut().enumerate() {
            let now = state_of(&f.path);
            if now != f.baseline && now == f.last {
                f.baseline = now;
                changed.push(i);
            }
            f.last = now;
        }
        changed
    }

    /// Retakes the baseline from the files as they are now, forgetting any
    /// change not reported yet: after a reload, whatever it loaded is the new
    /// reference.
    pub(crate) fn renew(&mut self) {
        for f in &mut self.files {
            let now = state_of(&f.path);
            f.baseline = now;
            f.last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::io::Write;
    use std::time::{Duration, SystemTime};

    /// A fresh directory for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("preforkd-watcher-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A fixed modification time, `s` seconds after an arbitrary origin: set
    /// explicitly, so no test waits for the clock to tick past the filesystem's
    /// granularity.
    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    /// Writes `bytes` as the whole content of `path` (same inode if it exists)
    /// and sets its mtime.
    fn write(path: &Path, bytes: &[u8], mtime: SystemTime) {
        let mut f = File::create(path).unwrap();
        f.write_all(bytes).unwrap();
        f.set_modified(mtime).unwrap();
    }

    /// Appends `bytes` to `path` and sets its mtime.
    fn append(path: &Path, bytes: &[u8], mtime: SystemTime) {
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
        f.set_modified(mtime).unwrap();
    }

    fn set_mtime(path: &Path, mtime: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    fn ino(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    /// Looks `n` times: every report, one list per look.
    fn looks(w: &mut Watcher, n: usize) -> Vec<Vec<usize>> {
        (0..n).map(|_| w.look()).collect()
    }

    const NONE: Vec<usize> = Vec::new();

    #[test]
    fn nothing_changed_nothing_reported() {
        let d = Dir::new("quiet");
        let (a, b) = (d.path("a"), d.path("b"));
        write(&a, b"a", at(0));
        write(&b, b"b", at(0));
        let mut w = Watcher::new([a.clone(), b.clone()]);
        assert_eq!(w.paths().collect::<Vec<_>>(), [a.as_path(), b.as_path()]);
        assert_eq!(looks(&mut w, 4), [NONE; 4]);
    }

    #[test]
    fn a_write_is_reported_once_at_the_second_look() {
        let d = Dir::new("write");
        let (a, b) = (d.path("a"), d.path("b"));
        write(&a, b"one", at(0));
        write(&b, b"b", at(0));
        let mut w = Watcher::new([a.clone(), b.clone()]);
        write(&b, b"two", at(1));
        // First look: seen, but it may still be being written.
        assert_eq!(w.look(), NONE);
        // Second: stable for one check, reported; then never again.
        assert_eq!(w.look(), [1]);
        assert_eq!(looks(&mut w, 3), [NONE; 3]);
        // A second change is a second report.
        write(&a, b"three", at(2));
        assert_eq!(looks(&mut w, 4), [NONE, vec![0], NONE, NONE]);
    }

    #[test]
    fn a_file_written_in_two_steps_across_looks_is_reported_once_complete() {
        let d = Dir::new("two-steps");
        let a = d.path("a");
        write(&a, b"old", at(0));
        let mut w = Watcher::new([a.clone()]);
        write(&a, b"first half", at(1));
        assert_eq!(w.look(), NONE);
        // The rest lands before the next look, with the same mtime (a coarse
        // clock): the size alone shows it is still moving.
        append(&a, b", second half", at(1));
        assert_eq!(w.look(), NONE);
        // Stable since the last look: now it is reported, once.
        assert_eq!(w.look(), [0]);
        assert_eq!(looks(&mut w, 3), [NONE; 3]);
    }

    #[test]
    fn a_file_that_keeps_changing_is_not_reported_until_it_settles() {
        let d = Dir::new("busy");
        let a = d.path("a");
        write(&a, b"0", at(0));
        let mut w = Watcher::new([a.clone()]);
        for s in 1..6 {
            write(&a, s.to_string().as_bytes(), at(s));
            assert_eq!(w.look(), NONE, "still changing at step {s}");
        }
        assert_eq!(w.look(), [0]);
        assert_eq!(w.look(), NONE);
    }

    #[test]
    fn a_change_undone_before_it_settles_is_no_change() {
        let d = Dir::new("undone");
        let a = d.path("a");
        write(&a, b"same", at(0));
        let mut w = Watcher::new([a.clone()]);
        set_mtime(&a, at(5));
        assert_eq!(w.look(), NONE);
        // Back to the baseline's fingerprint (same inode, size and mtime).
        set_mtime(&a, at(0));
        assert_eq!(looks(&mut w, 3), [NONE; 3]);
    }

    #[test]
    fn a_rename_over_with_the_same_size_and_mtime_is_a_change() {
        let d = Dir::new("rename");
        let (a, new) = (d.path("a"), d.path("a.new"));
        write(&a, b"version 1", at(0));
        let mut w = Watcher::new([a.clone()]);
        write(&new, b"version 2", at(0));
        let before = ino(&a);
        fs::rename(&new, &a).unwrap();
        assert_ne!(ino(&a), before, "a rename over gives the path a new inode");
        assert_eq!(looks(&mut w, 4), [NONE, vec![0], NONE, NONE]);
    }

    #[test]
    fn a_deletion_is_a_change_and_so_is_the_file_coming_back() {
        let d = Dir::new("delete");
        let (a, b) = (d.path("a"), d.path("b"));
        write(&a, b"a", at(0));
        write(&b, b"b", at(0));
        let mut w = Watcher::new([a.clone(), b.clone()]);
        fs::remove_file(&a).unwrap();
        assert_eq!(looks(&mut w, 4), [NONE, vec![0], NONE, NONE]);
        write(&a, b"a", at(0));
        assert_eq!(looks(&mut w, 4), [NONE, vec![0], NONE, NONE]);
    }

    #[test]
    fn deleted_then_recreated_identical_but_with_a_new_inode_is_a_change() {
        let d = Dir::new("recreate");
        let (a, keep) = (d.path("a"), d.path("keep"));
        write(&a, b"content", at(0));
        let mut w = Watcher::new([a.clone()]);
        let before = ino(&a);
        // Another name keeps the old inode in use, so the filesystem cannot hand
        // the same number to the new file (it may reuse a freed one).
        fs::hard_link(&a, &keep).unwrap();
        fs::remove_file(&a).unwrap();
        write(&a, b"content", at(0));
        assert_ne!(ino(&a), before);
        assert_eq!(fs::metadata(&a).unwrap().len(), 7);
        assert_eq!(looks(&mut w, 4), [NONE, vec![0], NONE, NONE]);
    }

    #[test]
    fn deleted_and_recreated_across_looks_is_one_report_once_it_settles() {
        let d = Dir::new("gap");
        let (a, keep) = (d.path("a"), d.path("keep"));
        write(&a, b"content", at(0));
        let mut w = Watcher::new([a.clone()]);
        fs::hard_link(&a, &keep).unwrap();
        fs::remove_file(&a).unwrap();
        // Missing at this look, back (new inode) at the next: still moving.
        assert_eq!(w.look(), NONE);
        write(&a, b"content", at(0));
        assert_eq!(w.look(), NONE);
        assert_eq!(looks(&mut w, 3), [vec![0], NONE, NONE]);
    }

    #[test]
    fn a_touch_with_the_same_content_is_a_change() {
        let d = Dir::new("touch");
        let a = d.path("a");
        write(&a, b"content", at(0));
        let mut w = Watcher::new([a.clone()]);
        let before = ino(&a);
        // Same bytes, same inode: only the mtime moves.
        write(&a, b"content", at(0));
        set_mtime(&a, at(1));
        assert_eq!(ino(&a), before);
        assert_eq!(looks(&mut w, 4), [NONE, vec![0], NONE, NONE]);
    }

    #[test]
    fn an_mtime_change_of_a_nanosecond_is_seen() {
        let d = Dir::new("nanos");
        let a = d.path("a");
        write(&a, b"content", at(0));
        let mut w = Watcher::new([a.clone()]);
        set_mtime(&a, at(0) + Duration::from_nanos(1));
        let m = fs::metadata(&a).unwrap();
        // Filesystems store nanoseconds on Linux (ext4, tmpfs, btrfs, xfs).
        assert_eq!(m.mtime_nsec(), 1);
        assert_eq!(looks(&mut w, 3), [NONE, vec![0], NONE]);
    }

    #[test]
    fn a_rewrite_in_place_with_size_and_mtime_restored_is_not_seen() {
        let d = Dir::new("in-place");
        let a = d.path("a");
        write(&a, b"aaaa", at(0));
        let mut w = Watcher::new([a.clone()]);
        // Nothing of the fingerprint moves: by design, not a change.
        write(&a, b"bbbb", at(0));
        assert_eq!(looks(&mut w, 3), [NONE; 3]);
    }

    #[test]
    fn a_file_missing_from_the_start_is_reported_when_it_appears() {
        let d = Dir::new("appears");
        let a = d.path("a");
        let mut w = Watcher::new([a.clone()]);
        assert_eq!(w.look(), NONE);
        write(&a, b"here", at(0));
        assert_eq!(looks(&mut w, 3), [NONE, vec![0], NONE]);
    }

    #[test]
    fn several_files_changing_together_are_reported_together() {
        let d = Dir::new("several");
        let paths: Vec<PathBuf> = (0..4).map(|i| d.path(&format!("f{i}"))).collect();
        for p in &paths {
            write(p, b"x", at(0));
        }
        let mut w = Watcher::new(paths.clone());
        write(&paths[3], b"yy", at(1));
        write(&paths[1], b"yy", at(1));
        assert_eq!(looks(&mut w, 3), [NONE, vec![1, 3], NONE]);
    }

    #[test]
    fn renew_takes_the_files_as_they_are_as_the_baseline() {
        let d = Dir::new("renew");
        let (a, b) = (d.path("a"), d.path("b"));
        write(&a, b"a", at(0));
        write(&b, b"b", at(0));
        let mut w = Watcher::new([a.clone(), b.clone()]);
        // A change seen but not yet reported when the reload happens...
        write(&a, b"a2", at(1));
        assert_eq!(w.look(), NONE);
        // ...and one not seen at all.
        write(&b, b"b2", at(1));
        w.renew();
        // Both are the reference now: nothing to report.
        assert_eq!(looks(&mut w, 3), [NONE; 3]);
        // Later changes are reported as usual.
        write(&b, b"b3", at(2));
        assert_eq!(looks(&mut w, 3), [NONE, vec![1], NONE]);
    }

    #[test]
    fn renew_clears_a_pending_change_so_it_needs_a_stable_look_again() {
        let d = Dir::new("renew-pending");
        let a = d.path("a");
        write(&a, b"a", at(0));
        let mut w = Watcher::new([a.clone()]);
        w.renew();
        write(&a, b"a2", at(1));
        assert_eq!(w.look(), NONE);
        w.renew();
        write(&a, b"a3", at(2));
        // Seen once after the renew, not yet stable.
        assert_eq!(w.look(), NONE);
        assert_eq!(w.look(), [0]);
    }
}
