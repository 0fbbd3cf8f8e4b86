//! File-change watching for `auto_reload_check_every`: which watched files
//! changed (see [`Watcher`](super::watcher::Watcher) for what counts as a change);
//! the first is the running executable, whose change is an upgrade.

use super::system::System;
use crate::supervisor::driver::Changed;

impl<T: 'static> System<T> {
    /// What changed among the watched files since the last look (the first is the
    /// running executable when it is known).
    pub(super) fn look_at_files(&mut self) -> Changed {
        let mut changed = Changed::default();
        for i in self.watcher.look() {
            let path = self.watcher.paths().nth(i).map(|p| p.display().to_string());
            slog::info!(self.logger, "{} changed", path.unwrap_or_default());
            if i == 0 && self.watch_executable {
                changed.executable = true;
            } else {
                changed.data = true;
            }
        }
        changed
    }
}
