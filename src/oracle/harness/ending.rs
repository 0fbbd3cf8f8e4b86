//! The end of a run: the pool settles into the policy's quiet range, then a
//! TERM stops it.

use super::Harness;
use crate::oracle::{Op, Violation};
use crate::{Action, Event, HookKind, Pid, Signal, State, Time};

impl Harness {
    /// Drives the machine with quiet events (forks succeed, children start and idle,
    /// signals are obeyed, timers fire) until nothing is due, then checks the pool is
    /// in the scaling policy's quiet range. Returns the number of rounds it took.
    pub fn quiesce(&mut self) -> Result<usize, Violation> {
        // Periodic work (reload checks) keeps a deadline forever, so "settled" also
        // means: no spawn or signal for longer than any timer of the machine.
        let o = self.machine.options();
        let horizon = o.backoff_max + o.graceful_timeout + o.kill_grace + o.start_timeout;
        let mut stable_since: Option<Time> = None;
        for round in 0..10_000 {
            match self.machine.state() {
                State::Stopped | State::ShuttingDown => return Ok(round),
                State::Init => self.feed(Event::HookFinished {
                    hook: HookKind::AfterInit,
                    ok: true,
                })?,
                _ => {}
            }
            let seen = self.trace.len();
            while !self.pending.is_empty() {
                self.apply_quiet(Op::SpawnOk)?;
            }
            let unready: Vec<Pid> = self
                .live
                .iter()
                .filter(|(_, c)| !c.ready)
                .map(|(p, _)| *p)
                .collect();
            for pid in unready {
                if let Some(c) = self.live.get_mut(&pid) {
                    c.ready = true;
                }
                self.feed(Event::ChildReady { pid })?;
            }
            for c in self.live.values_mut() {
                c.busy = false;
            }
            self.disconnected.clear();
            self.tick()?;
            self.deliver()?;
            let deadline = self.machine.poll_timeout();
            if let Some(t) = deadline {
                self.now = self.now.max(t);
                self.feed(Event::Timer)?;
            }
            let changed = self.trace[seen..]
                .iter()
                .any(|a| matches!(a, Action::Spawn { .. } | Action::Signal { .. }));
            let settled = self.pending.is_empty()
                && self
                    .live
                    .values()
                    .all(|c| !c.termed && !c.killed && !c.self_retiring);
            if changed || !settled {
                stable_since = None;
            } else if stable_since.is_none() {
                stable_since = Some(self.now);
            }
            let quiet_for = stable_since.map(|t| self.now - t);
            if settled && !changed && (deadline.is_none() || quiet_for > Some(horizon)) {
                return self.check_quiet().map(|()| round);
            }
        }
        self.fail("the pool did not settle within 10,000 quiet rounds".into())
    }

    fn apply_quiet(&mut self, op: Op) -> Result<(), Violation> {
        let step = self.step;
        let r = self.apply(op);
        self.step = step;
        r
    }

    fn check_quiet(&self) -> Result<(), Violation> {
        let state = self.machine.state();
        if state != State::Serving {
            return self.fail(format!("settled in {} instead of Serving", state.name()));
        }
        let max = self.machine.options().max_children;
        let range = self.machine.scaling_policy().quiet_range();
        let (lo, hi) = ((*range.start()).min(max), (*range.end()).min(max));
        let n = self.live.len();
        if n < lo || n > hi {
            return self.fail(format!(
                "settled with {n} children, outside the quiet range {lo}..={hi}"
            ));
        }
        Ok(())
    }

    /// Sends TERM with half the children busy and ignoring it, then lets time pass
    /// until the machine stops; checks it reaches `Stopped` and reaps every child.
    pub fn shut_down(&mut self) -> Result<(), Violation> {
        if !self.exited && self.machine.state() != State::ShuttingDown {
            let busy: Vec<Pid> = self.live.keys().copied().step_by(2).collect();
            for pid in busy {
                if let Some(c) = self.live.get_mut(&pid) {
                    if c.ready && !c.self_retiring {
                        c.busy = true;
                    }
                }
            }
            self.tick()?;
            self.feed(Event::Signal(Signal::Term))?;
        }
        for _ in 0..10_000 {
            if self.exited {
                break;
            }
            while !self.pending.is_empty() {
                self.apply_quiet(Op::SpawnOk)?;
            }
            self.deliver()?;
            if self.exited {
                break;
            }
            match self.machine.poll_timeout() {
                Some(t) => {
                    self.now = self.now.max(t);
                    self.feed(Event::Timer)?;
                }
                None => {
                    return self.fail(format!(
                        "stuck in {} with no deadline",
                        self.machine.state().name()
                    ))
                }
            }
        }
        if !self.exited {
            return self.fail("shutdown did not reach Stopped".into());
        }
        if let Some(pid) = self.live.keys().next() {
            // Children are left only if the machine gave up on them after KILL (a
            // random op jumped past the wait), and then it must say so.
            if self.machine.exit_code() != Some(1) {
                return self.fail(format!("stopped cleanly with child {pid:?} still alive"));
            }
        }
        Ok(())
    }

    /// [`quiesce`](Self::quiesce), then [`shut_down`](Self::shut_down).
    pub fn finish(&mut self) -> Result<(), Violation> {
        self.step += 1;
        if !self.exited {
            self.quiesce()?;
        }
        self.step += 1;
        self.shut_down()
    }
}
