//! The in-place upgrade: what the parent hands across its re-exec ([`Handoff`]),
//! how the new image adopts it, and the way back when the new code cannot take
//! over.
//!
//! The steps, each an action the runtime answers:
//! 1. USR2, or the executable replaced on disk, and the reload policy says
//!    `upgrade`: RELOADING=1, then [`Action::ProbeUpgrade`] (the new executable is
//!    tried with this configuration and the handoff, touching nothing).
//! 2. [`Event::UpgradeProbed`](crate::Event::UpgradeProbed) `ok`:
//!    [`Action::ReExec`]`(New)`. Not ok, or the exec fails
//!    ([`Event::ReExecFailed`](crate::Event::ReExecFailed)): logged, READY=1, this
//!    image keeps serving.
//! 3. The new image's machine is built with [`MachineBuilder::adopt`]: the
//!    running children are in its pool, as an older generation. Once its
//!    `after_init` succeeds it rolls them over like a HUP (never below the minimum
//!    serving), and READY=1 follows when the old generation is gone.
//! 4. The way back: if that `after_init` fails, or the new generation crashes
//!    [`ROLLBACK_CRASHES`] times in a row before one of its children proves
//!    healthy, [`Action::ReExec`]`(Previous)`: the image that handed over takes
//!    the children back.

use super::builder::MachineBuilder;
use super::phase::Phase;
use super::pool::{Child, Retire};
use super::totals::Totals;
use super::Machine;
use crate::policy::{Pid, ReloadTrigger, Time};
use crate::supervisor::action::{Action, Image, Level, Notify, SignalReason};
use crate::supervisor::config::ConfigError;
use crate::supervisor::transitions::cause;
use serde::{Deserialize, Serialize};

/// Crashes in a row of an adopting image's new children, none of them healthy
/// yet, after which it hands the children back to the previous image.
pub const ROLLBACK_CRASHES: u32 = 3;

/// The format of [`Handoff`]; an image refuses a handoff of another format.
const HANDOFF_FORMAT: u32 = 1;

/// Where an in-place upgrade is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Upgrade {
    /// None under way.
    #[default]
    Idle,
    /// The new executable is being tried.
    Probing,
    /// The re-exec was asked for.
    Executing,
}

/// What a parent hands across its re-exec so the new image adopts its children:
/// the children (slot, pid, generation, age, readiness, requests, retirement),
/// the generation counter, the crash streak and the machine's time. Serialize it
/// with serde; the new image passes it to [`MachineBuilder::adopt`].
///
/// Fields an image does not know are ignored: one added within a format is
/// optional (`#[serde(default)]`), so an image reads what a later one writes (the
/// way back goes to an older image); a change an older reader would misread
/// takes another format, which [`MachineBuilder::adopt`] refuses (in the trial,
/// before anything changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    format: u32,
    now: Time,
    generation: u64,
    crash_streak: u32,
    /// Whether the image that hands over can be returned to.
    previous: bool,
    children: Vec<HandedChild>,
    /// How far TTIN/TTOU moved the scaling policy's quiet minimum: applied again.
    adjustment: i32,
    /// The scaling policy's running state ([`ScalingPolicy::state`]), with its
    /// name: restored if the new image runs a policy of that name.
    ///
    /// [`ScalingPolicy::state`]: crate::policy::ScalingPolicy::state
    scaling_state: Option<(String, serde_json::Value)>,
    /// Whether the children come back from a new image that could not take over
    /// (the way back), rather than go forward to new code.
    #[serde(default)]
    returned: bool,
    /// The cumulative counters, which go on counting in the new image.
    #[serde(default)]
    totals: Totals,
    /// The rollout under way when the children were handed over, if one was.
    #[serde(default)]
    rollout: Option<HandedRollout>,
}

/// A rollout under way, as handed over: the adopting image's own rollout aims at
/// its size and relies on the same generation (counted afresh, its old and new
/// children together would double the pool at each upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct HandedRollout {
    /// The pool's size the rollout aims at.
    pub(super) target: usize,
    /// The newest generation known to work when the chain of reloads began.
    pub(super) base: u64,
}

/// One running child, as handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HandedChild {
    slot: usize,
    pid: Pid,
    generation: u64,
    spawned_at: Time,
    ready_at: Option<Time>,
    busy_since: Option<Time>,
    requests: u64,
    max_requests: Option<u64>,
    retiring: Option<(Time, SignalReason)>,
    killed: bool,
}

impl Handoff {
    /// The pids of the children handed over, in slot order.
    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.children.iter().map(|c| c.pid)
    }

    /// The machine's time at the handoff: the new image's clock goes on from it.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Marks whether the image that hands over can be returned to (the runtime
    /// keeps it open): without it, the new image has no way back.
    pub fn with_previous(mut self, previous: bool) -> Handoff {
        self.previous = previous;
        self
    }

    /// Whether the image that handed over can be returned to.
    pub fn has_previous(&self) -> bool {
        self.previous
    }

    /// Marks the handoff as the way back: the image receiving it is the one the
    /// children came from, and says so rather than "upgraded".
    pub fn returning(mut self) -> Handoff {
        self.returned = true;
        self
    }

    /// Whether this handoff is the way back from a failed upgrade.
    pub fn is_returning(&self) -> bool {
        self.returned
    }

    /// Checks it fits a pool of `max_children` slots.
    pub(super) fn check(&self, max_children: usize) -> Result<(), ConfigError> {
        if self.format != HANDOFF_FORMAT {
            return Err(ConfigError::new(
                "handoff",
                format!(
                    "format {} from the running image, this one reads {HANDOFF_FORMAT}",
                    self.format
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.children {
            if c.slot >= max_children {
                return Err(ConfigError::new(
                    "max_children",
                    format!(
                        "is {max_children}, but a running child (pid {}) holds slot {}: \
                         upgrade with max_children of at least {}",
                        c.pid,
                        c.slot,
                        self.slots_needed()
                    ),
                ));
            }
            if !seen.insert(c.slot) || c.pid.0 <= 0 {
                return Err(ConfigError::new(
                    "handoff",
                    format!(
                        "slot {} or pid {} handed over twice or invalid",
                        c.slot, c.pid
                    ),
                ));
            }
        }
        let pids: std::collections::BTreeSet<Pid> = self.pids().collect();
        if pids.len() != self.children.len() {
            return Err(ConfigError::new("handoff", "a pid is handed over twice"));
        }
        Ok(())
    }

    fn slots_needed(&self) -> usize {
        self.children.iter().map(|c| c.slot + 1).max().unwrap_or(0)
    }
}

impl MachineBuilder {
    /// Builds a machine that adopts the children `handoff` describes (an in-place
    /// upgrade's new image). It starts in `Init`, runs `after_init`, then rolls the
    /// adopted children over to a new generation; if `after_init` fails, it hands
    /// them back ([`Action::ReExec`]`(Previous)`) when the handoff says the previous
    /// image is there. Refused (naming `max_children`) if a child's slot does not
    /// fit the pool.
    pub fn adopt(self, handoff: Handoff) -> Self {
        self.with_handoff(handoff)
    }
}

impl Machine {
    /// What to hand across a re-exec now (see [`Handoff`]). Children whose fork
    /// was not reported yet are not included: the runtime forks synchronously, so
    /// there are none when it re-executes.
    pub fn handoff(&self) -> Handoff {
        let children = self
            .pool
            .iter()
            .filter_map(|(slot, c)| {
                Some(HandedChild {
                    slot,
                    pid: c.pid?,
                    generation: c.generation,
                    spawned_at: c.spawned_at,
                    ready_at: c.ready_at,
                    busy_since: c.busy_since,
                    requests: c.requests,
                    max_requests: c.max_requests,
                    retiring: c.retire.map(|r| (r.at, r.reason)),
                    killed: c.killed,
                })
            })
            .collect();
        let scaling_state = self
            .scaling
            .state()
            .and_then(|s| serde_json::to_value(s).ok())
            .map(|v| (self.scaling.name().to_string(), v));
        Handoff {
            format: HANDOFF_FORMAT,
            now: self.now,
            generation: self.generation,
            crash_streak: self.crash_streak,
            previous: false,
            children,
            adjustment: {
                let now = *self.scaling.quiet_range().start() as i64;
                (now - self.base_quiet as i64).clamp(i32::MIN as i64, i32::MAX as i64) as i32
            },
            scaling_state,
            returned: false,
            totals: self.totals,
            rollout: match self.phase {
                Phase::Reloading { target, base, .. } => Some(HandedRollout { target, base }),
                _ => self.adopted_rollout,
            },
        }
    }

    /// Whether an upgrade trigger now would start an upgrade: serving, none
    /// under way, and the last one proven (see the in-place upgrade's docs).
    pub fn accepts_upgrade(&self) -> bool {
        self.accepts_work() && self.adopting != Some(true) && self.upgrade == Upgrade::Idle
    }

    /// Whether this machine adopted its children from a previous image.
    pub fn adopted(&self) -> bool {
        self.adopting.is_some()
    }

    /// Puts the handed-over children in the pool (at build time).
    pub(super) fn take_in(&mut self, h: &Handoff) {
        self.now = self.now.max(h.now);
        self.generation = h.generation;
        self.crash_streak = h.crash_streak;
        self.totals = h.totals;
        self.adopted_rollout = h.rollout;
        for c in &h.children {
            let mut child = Child::new(c.generation, c.spawned_at, c.max_requests);
            child.ready_at = c.ready_at;
            child.busy_since = c.busy_since;
            child.requests = c.requests;
            child.retire = c.retiring.map(|(at, reason)| Retire { at, reason });
            child.killed = c.killed;
            self.pool.insert(c.slot, child);
            self.pool.set_pid(c.slot, c.pid);
        }
        if h.adjustment != 0 {
            self.scaling.adjust(h.adjustment);
        }
        if let Some((name, state)) = &h.scaling_state {
            if name == self.scaling.name() {
                let mut de = <dyn erased_serde::Deserializer>::erase(state.clone());
                if let Err(e) = self.scaling.restore_state(&mut de) {
                    self.log(
                        Level::Warning,
                        format!("the {name} policy's handed-over state was refused ({e}): it starts afresh"),
                    );
                }
            }
        }
    }

    /// `after_init` succeeded in an adopting image: roll the adopted children over.
    pub(super) fn begin_adopted_reload(&mut self) {
        let adopted = self.pool.len();
        let (what, count) = if self.returned {
            (
                "back from a failed upgrade: took back",
                &mut self.totals.upgrades_returned,
            )
        } else {
            ("upgraded in place: adopted", &mut self.totals.upgrades_done)
        };
        super::totals::inc(count, 1);
        self.log(
            Level::Info,
            format!(
                "{what} {adopted} children of generation {} and older",
                self.generation
            ),
        );
        self.begin_reload_because(cause::ADOPTED);
    }

    pub(super) fn on_upgrade_trigger(&mut self, trigger: ReloadTrigger) {
        if self.adopting == Some(true) {
            // The adopted generation is not proven yet: an upgrade now would lose
            // the way back to the image known to work.
            self.log(
                Level::Info,
                format!("upgrade ({trigger:?}) ignored: the last one is not proven yet"),
            );
            return;
        }
        match self.upgrade {
            Upgrade::Idle => {}
            _ => {
                self.log(
                    Level::Info,
                    format!("upgrade ({trigger:?}) ignored: one is under way"),
                );
                return;
            }
        }
        self.log(
            Level::Info,
            format!("upgrade in place ({trigger:?}): trying the new executable first"),
        );
        self.upgrade = Upgrade::Probing;
        super::totals::inc(&mut self.totals.upgrades_begun, 1);
        self.push(Action::Notify(Notify::Reloading));
        self.push(Action::ProbeUpgrade);
    }

    pub(super) fn on_upgrade_probed(&mut self, ok: bool) {
        if self.upgrade != Upgrade::Probing {
            return;
        }
        if !self.accepts_work() {
            // A stop came meanwhile: it wins.
            self.upgrade = Upgrade::Idle;
            return;
        }
        if ok {
            self.upgrade = Upgrade::Executing;
            self.push(Action::ReExec(Image::New));
        } else {
            self.upgrade_failed("the new executable failed its trial");
        }
    }

    pub(super) fn on_reexec_failed(&mut self) {
        if self.upgrade != Upgrade::Executing {
            return;
        }
        if self.adopting == Some(true) {
            // The way back failed: do not try it again at every step.
            self.adopting = Some(false);
        }
        if self.phase == Phase::Init {
            // The way back failed after this image's after_init failed: it has no
            // state to fork children with; stop the adopted ones gracefully.
            self.upgrade = Upgrade::Idle;
            self.log(
                Level::Error,
                "the way back to the previous image failed too; stopping the adopted children"
                    .into(),
            );
            self.begin_shutdown(false, crate::supervisor::event::Signal::Term);
            return;
        }
        self.upgrade_failed("the re-exec failed");
    }

    fn upgrade_failed(&mut self, why: &str) {
        self.upgrade = Upgrade::Idle;
        super::totals::inc(&mut self.totals.upgrades_abandoned, 1);
        self.log(
            Level::Error,
            format!("upgrade abandoned: {why}; this image keeps serving"),
        );
        if self.accepts_work() {
            self.push(Action::Notify(Notify::Ready));
        }
    }

    /// In an adopting image: hands the children back to the previous image when
    /// the new code cannot take over. Returns whether it did.
    pub(super) fn roll_back_if_failing(&mut self, why: &str) -> bool {
        let Some(previous) = self.adopting else {
            return false;
        };
        if !previous || self.upgrade != Upgrade::Idle {
            return false;
        }
        self.log(
            Level::Error,
            format!("the new code cannot take over ({why}): handing the children back to the previous image"),
        );
        self.upgrade = Upgrade::Executing;
        self.push(Action::Notify(Notify::Reloading));
        self.push(Action::ReExec(Image::Previous));
        true
    }

    /// The adopting image's rollout: its new generation is proven once one of its
    /// children is healthy; before that, [`ROLLBACK_CRASHES`] crashes in a row
    /// send the children back.
    pub(super) fn watch_adoption(&mut self) {
        let Some(true) = self.adopting else { return };
        // Its own generation, in the rollout or after it.
        let generation = self.generation;
        let proven = self
            .pool
            .children()
            .any(|c| c.generation == generation && self.is_proved(c));
        if proven {
            // The new code works: no way back is needed any more.
            self.adopting = Some(false);
            self.log(
                Level::Info,
                format!("upgrade proven: a child of generation {generation} is healthy; upgrades are accepted again"),
            );
            return;
        }
        if self.crash_streak >= ROLLBACK_CRASHES {
            let why = format!("{} crashes in a row of its children", self.crash_streak);
            self.roll_back_if_failing(&why);
        }
    }
}
