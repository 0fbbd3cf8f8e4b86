//! The pool: one slot per scoreboard slot, the pid index, and the counts, kept in
//! step with the children by the only code that changes them.

use crate::policy::{Pid, Time};
use crate::supervisor::action::SignalReason;
use crate::supervisor::event::{Scoreboard, SlotState};
use std::collections::BTreeMap;

/// Why and since when a child is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retire {
    pub(super) at: Time,
    pub(super) reason: SignalReason,
}

/// One child as the machine knows it. Only [`Pool`] changes a child (it hands out
/// no `&mut Child`), so the counts cannot drift from the children.
#[derive(Debug, Clone)]
pub(super) struct Child {
    /// None until the runtime reports the fork.
    pub(super) pid: Option<Pid>,
    pub(super) generation: u64,
    pub(super) spawned_at: Time,
    pub(super) ready_at: Option<Time>,
    /// Start of the request in hand, when busy.
    pub(super) busy_since: Option<Time>,
    pub(super) requests: u64,
    /// Resident set size at the last scoreboard reading, if measured.
    pub(super) memory: Option<u64>,
    pub(super) max_requests: Option<u64>,
    pub(super) retire: Option<Retire>,
    pub(super) killed: bool,
}

impl Child {
    /// A child just asked for: no pid yet, not ready, not retiring.
    pub(super) fn new(generation: u64, now: Time, max_requests: Option<u64>) -> Child {
        Child {
            pid: None,
            generation,
            spawned_at: now,
            ready_at: None,
            busy_since: None,
            requests: 0,
            memory: None,
            max_requests,
            retire: None,
            killed: false,
        }
    }
    pub(super) fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }
    pub(super) fn serving(&self) -> bool {
        self.is_ready() && self.retire.is_none()
    }
}

/// The pool's counts; children being retired are only in `retiring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Forked (or being forked), not ready.
    pub starting: usize,
    /// Ready, idle.
    pub idle: usize,
    /// Ready, busy.
    pub busy: usize,
    /// On their way out.
    pub retiring: usize,
}

impl Counts {
    /// Every live child, retiring ones included.
    pub fn alive(&self) -> usize {
        self.starting + self.idle + self.busy + self.retiring
    }
    /// Ready children not retiring: the ones that serve.
    pub fn serving(&self) -> usize {
        self.idle + self.busy
    }
}

/// What a child counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    counts: Counts,
    /// Retiring children still busy with a request.
    retiring_busy: usize,
}

impl Tally {
    const EMPTY: Tally = Tally {
        counts: Counts {
            starting: 0,
            idle: 0,
            busy: 0,
            retiring: 0,
        },
        retiring_busy: 0,
    };

    fn add(&mut self, c: &Child, sign: isize) {
        self.add_kind(Kind::of(c), sign);
    }

    fn add_kind(&mut self, k: Kind, sign: isize) {
        let n = if k.retiring {
            if k.busy {
                bump(&mut self.retiring_busy, sign);
            }
            &mut self.counts.retiring
        } else if !k.ready {
            &mut self.counts.starting
        } else if k.busy {
            &mut self.counts.busy
        } else {
            &mut self.counts.idle
        };
        bump(n, sign);
    }
}

/// What decides where a child is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    retiring: bool,
    ready: bool,
    busy: bool,
}

impl Kind {
    fn of(c: &Child) -> Kind {
        Kind {
            retiring: c.retire.is_some(),
            ready: c.is_ready(),
            busy: c.busy_since.is_some(),
        }
    }
}

fn bump(n: &mut usize, sign: isize) {
    *n = n.wrapping_add_signed(sign);
}

/// The children, one per scoreboard slot, indexed by pid, with their counts.
#[derive(Debug)]
pub(super) struct Pool {
    slots: Vec<Option<Child>>,
    by_pid: BTreeMap<Pid, usize>,
    tally: Tally,
}

impl Pool {
    /// An empty pool of `max_children` slots.
    pub(super) fn new(max_children: usize) -> Pool {
        Pool {
            slots: vec![None; max_children],
            by_pid: BTreeMap::new(),
            tally: Tally::EMPTY,
        }
    }

    /// The number of slots (`max_children`).
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The counts, as of now.
    pub(super) fn counts(&self) -> Counts {
        self.tally.counts
    }

    /// Children with a request in hand, retiring ones included.
    pub(super) fn in_request(&self) -> usize {
        self.tally.counts.busy + self.tally.retiring_busy
    }

    /// Live children, those still being forked included.
    pub(super) fn len(&self) -> usize {
        self.tally.counts.alive()
    }

    /// Children the runtime reported forked (they have a pid).
    pub(super) fn forked(&self) -> usize {
        self.by_pid.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn get(&self, slot: usize) -> Option<&Child> {
        self.slots.get(slot)?.as_ref()
    }

    pub(super) fn slot_of(&self, pid: Pid) -> Option<usize> {
        self.by_pid.get(&pid).copied()
    }

    pub(super) fn by_pid(&self, pid: Pid) -> Option<&Child> {
        self.get(self.slot_of(pid)?)
    }

    /// The live children, in slot order.
    pub(super) fn children(&self) -> impl Iterator<Item = &Child> + '_ {
        self.slots.iter().flatten()
    }

    /// The live children with their slots, in slot order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &Child)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
    }

    pub(super) fn is_free(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(Option::is_none)
    }

    /// Whether `slot` holds a child asked for and not reported forked yet.
    pub(super) fn is_pending(&self, slot: usize) -> bool {
        matches!(self.slots.get(slot), Some(Some(c)) if c.pid.is_none())
    }

    /// Puts a new child into free slot `slot`.
    pub(super) fn insert(&mut self, slot: usize, child: Child) {
        debug_assert!(self.is_free(slot) && child.pid.is_none());
        if let Some(s @ None) = self.slots.get_mut(slot) {
            self.tally.add(&child, 1);
            *s = Some(child);
        }
    }

    /// Records the pid of the pending child in `slot`.
    pub(super) fn set_pid(&mut self, slot: usize, pid: Pid) {
        if let Some(Some(c)) = self.slots.get_mut(slot) {
            c.pid = Some(pid);
            self.by_pid.insert(pid, slot);
        }
    }

    /// Drops the pending child of `slot` (its fork failed).
    pub(super) fn remove_pending(&mut self, slot: usize) {
        if self.is_pending(slot) {
            if let Some(c) = self.slots[slot].take() {
                self.tally.add(&c, -1);
            }
        }
    }

    /// Takes child `pid` out of the pool (it was reaped), with its slot.
    pub(super) fn remove(&mut self, pid: Pid) -> Option<(usize, Child)> {
        let slot = self.by_pid.remove(&pid)?;
        let c = self.slots[slot].take()?;
        self.tally.add(&c, -1);
        Some((slot, c))
    }

    /// Changes the child in `slot` with `f`, keeping the counts in step.
    fn update(&mut self, slot: usize, f: impl FnOnce(&mut Child)) {
        if let Some(Some(c)) = self.slots.get_mut(slot) {
            self.tally.add(c, -1);
            f(c);
            self.tally.add(c, 1);
        }
    }

    /// Child `pid` said it is ready (if it had not before).
    pub(super) fn mark_ready(&mut self, pid: Pid, now: Time) {
        if let Some(slot) = self.slot_of(pid) {
            self.update(slot, |c| {
                c.ready_at.get_or_insert(now);
            });
        }
    }

    /// Marks the child in `slot` as leaving, unless it already is.
    pub(super) fn retire(&mut self, slot: usize, retire: Retire) {
        self.update(slot, |c| {
            c.retire.get_or_insert(retire);
        });
    }

    /// The child in `slot` was sent KILL; it is leaving, if it was not already.
    pub(super) fn mark_killed(&mut self, slot: usize, retire: Retire) {
        self.update(slot, |c| {
            c.killed = true;
            c.retire.get_or_insert(retire);
        });
    }

    /// Takes in a scoreboard reading at `now`: readiness, requests, memory and
    /// busyness of each child whose slot shows its pid.
    pub(super) fn read_scoreboard(&mut self, sb: &Scoreboard, now: Time) {
        let tally = &mut self.tally;
        for (slot, reading) in self.slots.iter_mut().zip(&sb.slots) {
            let Some(c) = slot.as_mut() else { continue };
            if c.pid != Some(reading.pid) {
                continue; // stale: the slot's previous owner, or not yet written
            }
            c.requests = reading.requests;
            c.memory = reading.memory;
            let before = Kind::of(c);
            match reading.state {
                SlotState::Idle => {
                    c.ready_at.get_or_insert(now);
                    c.busy_since = None;
                }
                SlotState::Busy => {
                    c.ready_at.get_or_insert(now);
                    // A start in the future (clock skew) counts from now.
                    c.busy_since = Some(reading.request_start.unwrap_or(now).min(now));
                }
                SlotState::Retiring => {
                    c.busy_since = None;
                    c.retire.get_or_insert(Retire {
                        at: now,
                        reason: SignalReason::MaxRequests,
                    });
                }
                SlotState::Starting | SlotState::Empty => {}
            }
            let after = Kind::of(c);
            if before != after {
                tally.add_kind(before, -1);
                tally.add_kind(after, 1);
            }
        }
    }

    /// Whether a child older than `generation` still serves (is not retiring).
    pub(super) fn has_old(&self, generation: u64) -> bool {
        self.children()
            .any(|c| c.generation < generation && c.retire.is_none())
    }

    /// The old child to retire next: not yet ready first, then idle, then busy;
    /// lowest generation first. Children still being forked wait for their pid.
    pub(super) fn pick_old(&self, generation: u64) -> Option<usize> {
        self.iter()
            .filter(|(_, c)| c.generation < generation && c.retire.is_none() && c.pid.is_some())
            .min_by_key(|(i, c)| (c.is_ready(), c.busy_since.is_some(), c.generation, *i))
            .map(|(i, _)| i)
    }

    /// The idle child to retire: oldest generation first, then the highest slot.
    pub(super) fn pick_idle(&self) -> Option<usize> {
        self.iter()
            .filter(|(_, c)| c.serving() && c.busy_since.is_none() && c.pid.is_some())
            .min_by_key(|(i, c)| (c.generation, std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
    }

    /// The counts found by looking at every child: what the kept counts must be.
    pub(super) fn recount(&self) -> (Counts, usize) {
        let mut t = Tally::EMPTY;
        for c in self.children() {
            t.add(c, 1);
        }
        (t.counts, t.retiring_busy)
    }

    /// The kept counts, in the shape of [`recount`](Pool::recount).
    pub(super) fn kept(&self) -> (Counts, usize) {
        (self.tally.counts, self.tally.retiring_busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::event::SlotReading;

    fn reading(pid: i32, state: SlotState) -> SlotReading {
        SlotReading {
            pid: Pid(pid),
            state,
            ..SlotReading::default()
        }
    }

    #[test]
    fn the_kept_counts_follow_every_change() {
        let mut p = Pool::new(4);
        let t = Time::from_millis;
        for slot in 0..3 {
            p.insert(slot, Child::new(1, t(0), None));
        }
        assert_eq!(p.counts().starting, 3);
        p.set_pid(0, Pid(10));
        p.set_pid(1, Pid(11));
        p.remove_pending(2);
        assert_eq!(p.kept(), p.recount());
        assert_eq!(p.len(), 2);
        p.mark_ready(Pid(10), t(1));
        let sb = Scoreboard {
            slots: vec![
                reading(10, SlotState::Busy),
                reading(11, SlotState::Idle),
                reading(99, SlotState::Busy),
            ],
            backlog: None,
        };
        p.read_scoreboard(&sb, t(2));
        assert_eq!(p.kept(), p.recount());
        assert_eq!((p.counts().busy, p.counts().idle), (1, 1));
        assert_eq!(p.in_request(), 1);
        let leave = Retire {
            at: t(3),
            reason: SignalReason::ScaleDown,
        };
        p.retire(0, leave);
        assert_eq!(p.kept(), p.recount());
        assert_eq!((p.counts().retiring, p.in_request()), (1, 1));
        p.mark_killed(1, leave);
        assert_eq!(p.kept(), p.recount());
        assert_eq!(p.counts().retiring, 2);
        assert!(p.remove(Pid(10)).is_some());
        assert!(p.remove(Pid(10)).is_none());
        assert_eq!(p.kept(), p.recount());
        assert_eq!((p.in_request(), p.len(), p.forked()), (0, 1, 1));
    }
}
