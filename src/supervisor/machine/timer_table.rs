//! Every timer of the machine in one table, as quinn-proto's `TimerTable`: the
//! earliest entry is the machine's next wake-up, the answer of
//! [`poll_timeout`](super::Machine::poll_timeout).

use crate::policy::Time;

/// What a timer is for. Each kind has at most one time in the [`TimerTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// The earliest per-child time found by the per-child pass: a KILL after a
    /// TERM, a start or busy timeout, a child becoming healthy.
    Children,
    /// While children are busy, look at the scoreboard again (`busy_refresh`): a
    /// request finishing wakes nobody.
    BusyRefresh,
    /// The scaling policy asked to be asked again.
    PolicyRecheck,
    /// The crash-loop backoff is over: spawns may resume.
    BackoffEnd,
    /// Ask the runtime to check for changed files ([`Action::CheckForChanges`]).
    ///
    /// [`Action::CheckForChanges`]: crate::Action::CheckForChanges
    ReloadCheck,
    /// A STATUS line held back by `status_interval` may go out.
    Status,
    /// Graceful shutdown: the children still alive get KILLed (`graceful_timeout`).
    ShutdownKill,
    /// After the shutdown's KILL: the parent stops waiting for unreaped children
    /// and exits (`kill_wait`).
    ShutdownGiveUp,
    /// Ask the runtime to look for clients that hung up
    /// ([`Action::CheckDisconnects`]), while a child is busy.
    ///
    /// [`Action::CheckDisconnects`]: crate::Action::CheckDisconnects
    DisconnectCheck,
    /// The next watchdog ping ([`Notify::Watchdog`]).
    ///
    /// [`Notify::Watchdog`]: crate::Notify::Watchdog
    Watchdog,
}

impl Timer {
    const COUNT: usize = 10;
    #[cfg(test)]
    const ALL: [Timer; Timer::COUNT] = [
        Timer::Children,
        Timer::BusyRefresh,
        Timer::PolicyRecheck,
        Timer::BackoffEnd,
        Timer::ReloadCheck,
        Timer::Status,
        Timer::ShutdownKill,
        Timer::ShutdownGiveUp,
        Timer::DisconnectCheck,
        Timer::Watchdog,
    ];

    /// The timers of the serving phases (Spawning, Serving, Reloading), stopped
    /// when a shutdown begins.
    pub(super) const SERVING: [Timer; 6] = [
        Timer::Children,
        Timer::BusyRefresh,
        Timer::PolicyRecheck,
        Timer::BackoffEnd,
        Timer::ReloadCheck,
        Timer::Status,
    ];
}

/// When each [`Timer`] is due, if it is set.
#[derive(Debug, Clone, Default)]
pub(super) struct TimerTable {
    at: [Option<Time>; Timer::COUNT],
}

impl TimerTable {
    /// Sets `timer` to `at`, or stops it if `at` is `None`. [`Time::MAX`] means
    /// never: the timer is stopped.
    pub(super) fn set(&mut self, timer: Timer, at: Option<Time>) {
        self.at[timer as usize] = at.filter(|&t| t < Time::MAX);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    pub(super) fn stop_all(&mut self) {
        self.at = [None; Timer::COUNT];
    }

    /// When `timer` is due, if it is set.
    pub(super) fn get(&self, timer: Timer) -> Option<Time> {
        self.at[timer as usize]
    }

    /// Whether `timer` is set and due at `now`.
    pub(super) fn is_expired(&self, timer: Timer, now: Time) -> bool {
        self.get(timer).is_some_and(|t| now >= t)
    }

    /// The earliest time set: when the machine next has something to do.
    pub(super) fn next_wake_up(&self) -> Option<Time> {
        self.at.iter().flatten().min().copied()
    }

    /// The timers set, with their times, in the order of [`Timer`].
    #[cfg(test)]
    pub(super) fn entries(&self) -> impl Iterator<Item = (Timer, Time)> + '_ {
        Timer::ALL
            .iter()
            .filter_map(|&t| self.get(t).map(|at| (t, at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_timer_is_the_next_wake_up() {
        let mut t = TimerTable::default();
        assert_eq!(t.next_wake_up(), None);
        t.set(Timer::Watchdog, Some(Time::from_millis(500)));
        t.set(Timer::Status, Some(Time::from_millis(200)));
        t.set(Timer::ReloadCheck, Some(Time::MAX));
        assert_eq!(t.next_wake_up(), Some(Time::from_millis(200)));
        assert_eq!(t.get(Timer::ReloadCheck), None, "MAX is never");
        assert!(t.is_expired(Timer::Status, Time::from_millis(200)));
        assert!(!t.is_expired(Timer::Watchdog, Time::from_millis(200)));
        t.stop(Timer::Status);
        assert_eq!(
            t.entries().collect::<Vec<_>>(),
            vec![(Timer::Watchdog, Time::from_millis(500))]
        );
        t.stop_all();
        assert_eq!(t.next_wake_up(), None);
    }

    #[test]
    fn all_lists_every_timer_once_in_order() {
        for (i, t) in Timer::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
    }
}
