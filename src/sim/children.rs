//! The simulated children: forked, booting, taking requests from the queue,
//! obeying signals, exiting.

use super::parent::Inbox;
use super::{Ev, Sim};
use crate::ChildSignal;
use crate::{ExitStatus, Pid, Time};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    Starting,
    Ready,
    /// Exited, not reaped yet: its slot still shows it.
    Gone,
}

#[derive(Debug, Clone)]
pub(super) struct Child {
    pub(super) slot: usize,
    pub(super) life: Life,
    /// TERMed, or leaving after its request limit: takes no new request.
    pub(super) leaving: bool,
    pub(super) max_requests: Option<u64>,
    pub(super) requests: u64,
    /// The request in hand.
    pub(super) current: Option<usize>,
    pub(super) request_start: Option<Time>,
    pub(super) idle_since: Time,
    pub(super) heartbeat: Time,
}

impl Child {
    pub(super) fn is_idle(&self) -> bool {
        self.life == Life::Ready && !self.leaving && self.current.is_none()
    }
}

impl Sim {
    /// A fork completed: the child exists, and boots.
    pub(super) fn child_forked(&mut self, slot: usize, pid: Pid, max_requests: Option<u64>) {
        let now = self.now;
        if let Some(owner) = self.slot_owner.get_mut(slot) {
            *owner = Some(pid);
        }
        self.children.insert(
            pid,
            Child {
                slot,
                life: Life::Starting,
                leaving: false,
                max_requests,
                requests: 0,
                current: None,
                request_start: None,
                idle_since: now,
                heartbeat: now,
            },
        );
        self.schedule(now + self.config.boot_latency, Ev::Ready(pid));
    }

    /// A child finished booting: it tells the parent, and takes work.
    pub(super) fn child_ready(&mut self, pid: Pid) {
        let now = self.now;
        let Some(c) = self.children.get_mut(&pid) else {
            return;
        };
        if c.life != Life::Starting {
            return;
        }
        c.life = Life::Ready;
        c.idle_since = now;
        c.heartbeat = now;
        self.push_inbox(Inbox::Ready(pid));
        self.dispatch();
    }

    /// Idle children take queued requests, the one idle the longest first.
    pub(super) fn dispatch(&mut self) {
        let now = self.now;
        while !self.queue.is_empty() {
            let Some((&pid, _)) = self
                .children
                .iter()
                .filter(|(_, c)| c.is_idle())
                .min_by_key(|(_, c)| (c.idle_since, c.slot))
            else {
                break;
            };
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            if let Some(c) = self.children.get_mut(&pid) {
                c.current = Some(req);
                c.request_start = Some(now);
                c.heartbeat = now;
            }
            let r = &mut self.rep().requests[req];
            r.started = Some(now);
            r.pid = Some(pid);
            let service = r.service;
            self.schedule(now + service, Ev::Finish(pid, req));
            let ticks = self.config.ticks;
            // The first busy child wakes a parent that asked (the busy watch).
            let watched = std::mem::take(&mut self.watch_busy);
            if watched
                || ticks.on_every_request
                || (ticks.on_saturation && !self.children.values().any(Child::is_idle))
            {
                self.request_tick();
            }
        }
    }

    pub(super) fn on_finish(&mut self, pid: Pid, req: usize) {
        let now = self.now;
        let Some(c) = self.children.get_mut(&pid) else {
            return;
        };
        if c.current != Some(req) {
            return; // KILLed meanwhile
        }
        c.current = None;
        c.request_start = None;
        c.requests += 1;
        c.heartbeat = now;
        c.idle_since = now;
        let limit_reached = c.max_requests.is_some_and(|m| c.requests >= m);
        let leave = c.leaving || limit_reached;
        c.leaving |= limit_reached;
        let r = self.rep();
        r.requests[req].finished = Some(now);
        r.completed += 1;
        r.last_finish = Some(now);
        if self.config.ticks.on_every_request {
            self.request_tick();
        }
        if leave {
            self.child_exits(pid, ExitStatus::Exited(0));
        } else {
            self.dispatch();
        }
        self.check_done();
    }

    pub(super) fn on_child_signal(&mut self, pid: Pid, signal: ChildSignal) {
        let Some(c) = self.children.get_mut(&pid) else {
            return;
        };
        if c.life == Life::Gone {
            return;
        }
        match signal {
            ChildSignal::Term => {
                c.leaving = true;
                if c.current.is_none() {
                    self.child_exits(pid, ExitStatus::Exited(0));
                }
            }
            ChildSignal::Kill => {
                if let Some(req) = c.current.take() {
                    let r = Arc::make_mut(&mut self.report);
                    r.requests[req].dropped = true;
                    r.dropped += 1;
                }
                c.leaving = true;
                self.child_exits(pid, ExitStatus::Signaled(9));
                self.check_done();
            }
            ChildSignal::Usr1 => {} // reopening logs changes nothing here
        }
    }

    fn child_exits(&mut self, pid: Pid, status: ExitStatus) {
        if let Some(c) = self.children.get_mut(&pid) {
            c.life = Life::Gone;
            c.current = None;
            c.request_start = None;
            c.heartbeat = self.now;
        }
        self.push_inbox(Inbox::Exited { pid, status });
    }

    pub(super) fn check_done(&mut self) {
        if self.done_at.is_none()
            && self.next_arrival == self.workload.len()
            && self.report.unfinished() == 0
        {
            self.done_at = Some(self.now);
        }
    }
}
