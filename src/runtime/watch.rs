//! File-change watching for `auto_reload_check_every`: the watched files'
//! modification times against a baseline.

use super::parent::Parent;
use std::path::Path;
use std::time::SystemTime;

impl<T: 'static> Parent<T> {
    pub(super) fn files_changed(&mut self) -> bool {
        let mut changed = false;
        for (path, seen) in &mut self.baseline {
            let now = mtime(path);
            if now != *seen {
                slog::info!(self.logger, "{} changed", path.display());
                // The new state is the baseline: one change, one reload.
                *seen = now;
                changed = true;
            }
        }
        changed
    }
}

pub(super) fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}
