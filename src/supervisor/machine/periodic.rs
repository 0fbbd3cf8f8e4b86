//! The machine-wide timers: the busy refresh, the checks for changed files, the
//! STATUS line, the disconnect check and the watchdog ping. Each one that fires
//! emits an action; the runtime schedules none of them itself.

use super::timer_table::Timer;
use super::Machine;
use crate::supervisor::action::{Action, Notify};
use std::time::Duration;

impl Machine {
    /// The first check for changed files, `check_every` after the start.
    pub(super) fn start_reload_checks(&mut self) {
        if let Some(every) = self.reload.check_every() {
            self.timers.set(Timer::ReloadCheck, Some(self.now + every));
        }
    }

    /// Asks for a check for changed files when one is due.
    pub(super) fn check_for_changes(&mut self) {
        if self.timers.is_expired(Timer::ReloadCheck, self.now) {
            self.push(Action::CheckForChanges);
            let every = self.reload.check_every().unwrap_or(Duration::MAX);
            self.timers.set(Timer::ReloadCheck, Some(self.now + every));
        }
    }

    /// Tells the counts when they changed, at most once per `status_interval`: a
    /// change within the interval is told when it ends ([`Timer::Status`]).
    pub(super) fn notify_status(&mut self) {
        let counts = self.pool.counts();
        match self.last_status {
            Some((_, last)) if last == counts => {
                self.timers.stop(Timer::Status);
            }
            Some((at, _)) if self.now < at + self.opts.status_interval => {
                self.timers
                    .set(Timer::Status, Some(at + self.opts.status_interval));
            }
            _ => {
                self.last_status = Some((self.now, counts));
                self.timers.stop(Timer::Status);
                self.push(Action::Notify(Notify::Status {
                    busy: counts.busy,
                    idle: counts.idle,
                    starting: counts.starting,
                }));
            }
        }
    }

    /// While children are busy, a look at the scoreboard every `busy_refresh` (a
    /// request finishing wakes nobody); and the backoff's end, while it holds.
    pub(super) fn arm_serving_timers(&mut self) {
        let refresh = (self.pool.counts().busy > 0).then(|| self.now + self.opts.busy_refresh);
        self.timers.set(Timer::BusyRefresh, refresh);
        if !self.backing_off() {
            self.timers.stop(Timer::BackoffEnd);
        }
    }

    /// When disconnects are watched: while a child has a request in hand, asks for
    /// a look at the connections every `disconnect_check_every`, the first one
    /// interval after the machine learned of the busy child. An idle pool asks
    /// for nothing.
    pub(super) fn check_disconnects_while_busy(&mut self) {
        let Some(every) = self.disconnect_check_every else {
            return;
        };
        if self.pool.in_request() == 0 {
            self.timers.stop(Timer::DisconnectCheck);
            return;
        }
        match self.timers.get(Timer::DisconnectCheck) {
            Some(at) if self.now < at => {}
            Some(_) => {
                self.push(Action::CheckDisconnects);
                self.timers
                    .set(Timer::DisconnectCheck, Some(self.now + every));
            }
            None => {
                self.timers
                    .set(Timer::DisconnectCheck, Some(self.now + every));
            }
        }
    }

    /// Pings the watchdog every `watchdog_interval` from the start, in every state
    /// but Stopped. A late ping does not bring the next one forward: the next is
    /// due one interval after the one missed, or after now if that has passed too.
    pub(super) fn ping_watchdog(&mut self) {
        let (Some(every), Some(due)) = (self.watchdog_interval, self.timers.get(Timer::Watchdog))
        else {
            return;
        };
        if self.now < due {
            return;
        }
        self.push(Action::Notify(Notify::Watchdog));
        let next = due + every;
        let next = if next <= self.now {
            self.now + every
        } else {
            next
        };
        self.timers.set(Timer::Watchdog, Some(next));
    }
}
