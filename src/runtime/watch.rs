//! File-change watching for `auto_reload_check_every`: the watched files'
//! modification times against a baseline.

use super::system::System;
use crate::supervisor::driver::Changed;
use std::path::Path;
use std::time::SystemTime;

impl<T: 'static> System<T> {
    /// What changed among the watched files since the last look (the first is the
    /// running executable); the new state is the baseline.
    pub(super) fn look_at_files(&mut self) -> Changed {
        let mut changed = Changed::default();
        for (i, (path, seen)) in self.baseline.iter_mut().enumerate() {
            let now = mtime(path);
            if now != *seen {
                slog::info!(self.logger, "{} changed", path.display());
                // The new state is the baseline: one change, one reload.
                *seen = now;
                if i == 0 && self.watch_executable {
                    changed.executable = true;
                } else {
                    changed.data = true;
                }
            }
        }
        changed
    }
}

pub(super) fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}
