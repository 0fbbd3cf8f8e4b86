//! Reloads: rolling the children over to a new generation without dropping below
//! the minimum serving.

use super::phase::Phase;
use super::Machine;
use crate::policy::{ReloadPlan, ReloadTrigger};
use crate::supervisor::action::{Action, Hook, Level, Notify, SignalReason};
use crate::supervisor::transitions::cause;

impl Machine {
    pub(super) fn on_reload_trigger(&mut self, trigger: ReloadTrigger) {
        if !self.accepts_work() {
            self.log(
                Level::Info,
                format!("reload ({trigger:?}) ignored while {}", self.state().name()),
            );
            return;
        }
        let ReloadPlan {
            run_handler,
            restart_children,
            upgrade,
        } = self.reload.plan(trigger);
        if (run_handler || restart_children) && !upgrade {
            super::totals::inc(&mut self.totals.reloads, 1);
        }
        if run_handler {
            self.push(Action::RunHook(Hook::ReloadHandler));
        }
        if upgrade {
            // The new image rolls the children over itself.
            self.on_upgrade_trigger(trigger);
        } else if restart_children {
            let why = if matches!(self.phase, Phase::Reloading { .. }) {
                cause::RELOAD_AGAIN
            } else {
                cause::RELOAD
            };
            self.begin_reload_because(why);
        }
    }

    /// Starts rolling every child over to a new generation (`why`: the cause of
    /// the transition to Reloading).
    pub(super) fn begin_reload_because(&mut self, why: &'static str) {
        self.generation += 1;
        // A reload is the operator's "fixed it": new code starts without the old
        // code's crash-loop backoff.
        if self.crash_streak > 0 {
            self.end_streak("reload");
        }
        let counts = self.pool.counts();
        let total = counts.starting + counts.serving();
        let quiet_min = *self.scaling.quiet_range().start();
        let min_serving = self
            .reload
            .min_serving()
            .unwrap_or(quiet_min)
            .min(self.opts.max_children - 1);
        // A reload during a reload aims at the size the first one aimed at: the
        // previous generation's children, unproved yet, are no part of the pool's
        // size (counted, every HUP in a row would double it).
        let adopted = self.adopted_rollout.take();
        let (size, base) = match (&self.phase, adopted) {
            (Phase::Reloading { target, base, .. }, _) => (*target, *base),
            (_, Some(r)) => (r.target, r.base),
            _ => (total, self.generation - 1),
        };
        let target = size.max(min_serving).min(self.opts.max_children);
        self.log(
            Level::Info,
            format!(
                "reloading: rolling {total} children over to generation {}, keeping at least {min_serving} serving",
                self.generation
            ),
        );
        self.push(Action::Notify(Notify::Reloading));
        self.last_min_serving = Some(min_serving);
        self.transition(
            Phase::Reloading {
                generation: self.generation,
                min_serving,
                target,
                retired: 0,
                base,
            },
            why,
        );
    }

    /// One step of a rollout: start replacements (within the surge), retire old
    /// children as replacements become ready.
    pub(super) fn step_reload(&mut self) {
        let Phase::Reloading {
            generation,
            min_serving,
            target,
            retired,
            base,
        } = self.phase
        else {
            return;
        };
        let mut new_ready = 0;
        let mut new_proven = 0;
        let mut new_starting = 0;
        let mut old_reload_retiring = 0;
        // Serving children that can be counted on: old ones, and new ones proved
        // healthy. A new child that is only ready may be new code failing right
        // after its start: it is no replacement for an old one yet.
        let mut proven_serving = 0;
        for c in self.pool.children() {
            if c.generation == generation && c.retire.is_none() {
                if c.is_ready() {
                    new_ready += 1;
                } else {
                    new_starting += 1;
                }
            }
            if c.serving() && (c.generation <= base || self.is_proved(c)) {
                proven_serving += 1;
                if c.generation == generation {
                    new_proven += 1;
                }
            }
            if c.generation < generation
                && c.retire.is_some_and(|r| r.reason == SignalReason::Reload)
            {
                old_reload_retiring += 1;
            }
        }
        // Start replacements.
        let surge = self.reload.max_surge().unwrap_or(usize::MAX);
        let want = target
            .saturating_sub(new_ready + new_starting)
            .min(surge.saturating_sub(new_starting));
        new_starting += self.spawn(want);

        // Retire old children: those not ready yet at once (they serve nobody); ready
        // ones as replacements prove healthy (a request served, or
        // `min_healthy_uptime` up: the per-child pass wakes the machine then), never
        // below the minimum serving.
        let mut retired_now = 0;
        // Children of a generation a later HUP superseded before they proved
        // themselves are neither relied on nor part of the pool's size: they go
        // at once (kept, every HUP of a storm would add a pool's worth).
        let superseded: Vec<usize> = self
            .pool
            .iter()
            .filter(|(_, c)| {
                c.generation > base
                    && c.generation < generation
                    && c.serving()
                    && !self.is_proved(c)
            })
            .map(|(slot, _)| slot)
            .collect();
        for slot in superseded {
            // No credit spent: none of them was relied on. They still serve: the
            // pool keeps min_serving children serving, proved or not.
            if self.pool.counts().serving() <= min_serving {
                break;
            }
            self.retire(slot, SignalReason::Reload);
        }
        loop {
            let n = self.pool.counts();
            let Some(slot) = self.pool.pick_old(generation) else {
                break;
            };
            let ready = self.pool.get(slot).is_some_and(|c| c.is_ready());
            if ready {
                // One old child per proved new one; all of them once the proved
                // new ones make the whole pool (after HUPs in a row, old children
                // of several generations outnumber the pool's size).
                let credit = new_proven > retired + retired_now || new_proven >= target;
                // A full pool makes room one child at a time, and only once the
                // child that took the last room proved healthy.
                let stuck = n.alive() >= self.opts.max_children
                    && new_starting == 0
                    && new_ready == new_proven
                    && old_reload_retiring == 0;
                if proven_serving <= min_serving || !(credit || stuck) {
                    break;
                }
                old_reload_retiring += 1;
                let c = self.pool.get(slot);
                if c.is_some_and(|c| c.generation <= base || self.is_proved(c)) {
                    proven_serving -= 1;
                }
            }
            self.retire(slot, SignalReason::Reload);
            retired_now += 1;
        }
        if let Phase::Reloading { retired, .. } = &mut self.phase {
            *retired += retired_now;
        }
    }
}
