//! File-change watching for `auto_reload_check_every`: the watched files'
//! modification times against a baseline.

use super::system::System;
use std::path::Path;
use std::time::SystemTime;

impl<T: 'static> System<T> {
    /// Whether a watched file changed since the last look; the new state is the
    /// baseline.
    pub(super) fn look_at_files(&mut self) -> bool {
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
