//! The kill ladder (DESIGN §4), as a value: SIGTERM to the command's tree → `grace` →
//! SIGKILL → `confirm` → destroy the sandbox.
//!
//! Pure: no I/O, no clock, no runtime. The driver asks [`KillLadder::due`] when to wake,
//! hands [`KillLadder::poll`] the time it woke at, and carries out the [`Rung`] it gets
//! (a `kill` event, then the signal or the destroy). The ladder is armed with the command's
//! deadline: passing it starts the climb for [`KillReason::Timeout`]; a cancel starts it at
//! once for [`KillReason::Cancel`]; once climbing, the reason does not change. It stops when
//! the command ends ([`KillLadder::command_ended`]) or after its last rung, which leaves the
//! command without an exit status ([`KillLadder::destroyed`]).

use std::time::{Duration, Instant};

use crate::backend::KillSignal;
use crate::event::{EventKind, KillReason};

/// The waits between rungs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KillTiming {
    /// After SIGTERM, how long the command has to end before SIGKILL (`killGraceMs`).
    pub(crate) grace: Duration,
    /// After SIGKILL, how long to wait for the command to end before the sandbox is
    /// destroyed (`kill_confirm_timeout`).
    pub(crate) confirm: Duration,
}

/// What a rung does to the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillAction {
    /// Signal the command's whole process tree.
    Signal(KillSignal),
    /// Destroy the sandbox with whatever still runs in it.
    Destroy,
}

/// One rung to carry out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rung {
    /// Why the ladder climbs.
    pub(crate) reason: KillReason,
    /// What to do.
    pub(crate) action: KillAction,
}

impl Rung {
    /// The `kill` event that records this rung (committed before it is carried out).
    pub(crate) fn event(&self) -> EventKind {
        let (signal, action) = match self.action {
            KillAction::Signal(s) => (Some(s.name().to_owned()), None),
            KillAction::Destroy => (None, Some("destroy".to_owned())),
        };
        EventKind::Kill {
            signal,
            action,
            reason: self.reason,
        }
    }
}

/// The rungs, in the order they fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Term,
    Kill,
    Destroy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not climbing: the command runs until its deadline (or a cancel).
    Armed { deadline: Instant },
    /// Climbing: `next` fires at `due`.
    Climbing {
        reason: KillReason,
        next: Step,
        due: Instant,
    },
    /// The last rung fired: the sandbox was destroyed with the command in it.
    Destroyed { reason: KillReason },
    /// The command ended (on its own, or on a rung's signal).
    Ended { reason: Option<KillReason> },
}

/// The kill ladder of one command. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KillLadder {
    timing: KillTiming,
    state: State,
}

impl KillLadder {
    /// A ladder armed with the command's deadline.
    pub(crate) fn new(deadline: Instant, timing: KillTiming) -> Self {
        Self {
            timing,
            state: State::Armed { deadline },
        }
    }

    /// When [`poll`](Self::poll) has something to do: the deadline, or the next rung.
    /// `None` once the ladder has stopped.
    pub(crate) fn due(&self) -> Option<Instant> {
        match self.state {
            State::Armed { deadline } => Some(deadline),
            State::Climbing { due, .. } => Some(due),
            State::Destroyed { .. } | State::Ended { .. } => None,
        }
    }

    /// True once the ladder has started climbing (and until it stops).
    pub(crate) fn is_climbing(&self) -> bool {
        matches!(self.state, State::Climbing { .. })
    }

    /// Why the ladder climbed (or climbs), if it did.
    pub(crate) fn reason(&self) -> Option<KillReason> {
        match self.state {
            State::Armed { .. } => None,
            State::Climbing { reason, .. } | State::Destroyed { reason } => Some(reason),
            State::Ended { reason } => reason,
        }
    }

    /// A client canceled: the climb starts now (its first rung is due at `now`). Ignored
    /// once the ladder climbs or has stopped. Returns whether it started the climb.
    pub(crate) fn cancel(&mut self, now: Instant) -> bool {
        if !matches!(self.state, State::Armed { .. }) {
            return false;
        }
        self.state = State::Climbing {
            reason: KillReason::Cancel,
            next: Step::Term,
            due: now,
        };
        true
    }

    /// The rung to carry out at `now`, if one is due; the next one is then due a grace (or
    /// confirm) period after `now`. `None` when nothing is due or the ladder has stopped.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Rung> {
        let (reason, step) = match self.state {
            State::Armed { deadline } if now >= deadline => (KillReason::Timeout, Step::Term),
            State::Climbing { reason, next, due } if now >= due => (reason, next),
            _ => return None,
        };
        let (action, next) = match step {
            Step::Term => (
                KillAction::Signal(KillSignal::Term),
                Some((Step::Kill, self.timing.grace)),
            ),
            Step::Kill => (
                KillAction::Signal(KillSignal::Kill),
                Some((Step::Destroy, self.timing.confirm)),
            ),
            Step::Destroy => (KillAction::Destroy, None),
        };
        self.state = match next {
            Some((next, wait)) => State::Climbing {
                reason,
                next,
                // A wait beyond the clock's range: the next rung is due at once (a ladder
                // that never climbs on would leave the command running).
                due: now.checked_add(wait).unwrap_or(now),
            },
            None => State::Destroyed { reason },
        };
        Some(Rung { reason, action })
    }

    /// The command ended: the ladder stops (nothing more fires).
    pub(crate) fn command_ended(&mut self) {
        if !matches!(self.state, State::Destroyed { .. }) {
            self.state = State::Ended {
                reason: self.reason(),
            };
        }
    }

    /// After the last rung: the reason. The command then has no exit status: it did not
    /// end, the sandbox around it was destroyed.
    pub(crate) fn destroyed(&self) -> Option<KillReason> {
        match self.state {
            State::Destroyed { reason } => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// Time passes, then the driver polls.
        Wait(u64),
        /// The driver wakes exactly when the ladder said.
        WakeWhenDue,
        Cancel,
        CommandEnded,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..3_000).prop_map(Op::Wait),
            Just(Op::WakeWhenDue),
            Just(Op::Cancel),
            Just(Op::CommandEnded),
        ]
    }

    fn step_of(action: KillAction) -> Step {
        match action {
            KillAction::Signal(KillSignal::Term) => Step::Term,
            KillAction::Signal(KillSignal::Kill) => Step::Kill,
            KillAction::Destroy => Step::Destroy,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever happens and whenever the driver wakes: rungs fire in order (Term, Kill,
        /// Destroy), each at most once, never before they are due, with at least `grace`
        /// between Term and Kill and `confirm` between Kill and Destroy; the reason never
        /// changes once climbing; nothing fires before the deadline without a cancel;
        /// nothing fires after the command ended or after Destroy.
        #[test]
        fn rungs_are_ordered_timely_and_stop(
            deadline_ms in 0u64..5_000,
            grace_ms in 0u64..3_000,
            confirm_ms in 0u64..3_000,
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let t0 = Instant::now();
            let timing = KillTiming { grace: ms(grace_ms), confirm: ms(confirm_ms) };
            let mut ladder = KillLadder::new(t0 + ms(deadline_ms), timing);
            let mut now = t0;
            let mut fired: Vec<(Step, Instant, KillReason)> = Vec::new();
            let mut canceled_at: Option<Instant> = None;
            let mut ended = false;
            for op in ops {
                match op {
                    Op::Wait(d) => now += ms(d),
                    Op::WakeWhenDue => match ladder.due() {
                        Some(due) if due > now => now = due,
                        _ => {}
                    },
                    Op::Cancel => {
                        let climbing_before = ladder.is_climbing() || ladder.reason().is_some();
                        let started = ladder.cancel(now);
                        prop_assert_eq!(started, !climbing_before && !ended);
                        if started {
                            canceled_at = Some(now);
                        }
                        continue;
                    }
                    Op::CommandEnded => {
                        ended = true;
                        ladder.command_ended();
                        prop_assert_eq!(ladder.due(), None);
                        continue;
                    }
                }
                let due = ladder.due();
                let before = ladder;
                match ladder.poll(now) {
                    Some(rung) => {
                        prop_assert!(!ended, "a rung fired after the command ended");
                        prop_assert!(due.is_some_and(|d| d <= now), "fired before due");
                        let step = step_of(rung.action);
                        match fired.last() {
                            None => {
                                prop_assert_eq!(step, Step::Term);
                                match canceled_at {
                                    Some(_) => prop_assert_eq!(rung.reason, KillReason::Cancel),
                                    None => {
                                        prop_assert_eq!(rung.reason, KillReason::Timeout);
                                        prop_assert!(now >= t0 + ms(deadline_ms));
                                    }
                                }
                            }
                            Some(&(last, at, reason)) => {
                                prop_assert!(step > last, "{step:?} after {last:?}");
                                prop_assert_eq!(rung.reason, reason);
                                let wait = if step == Step::Kill { grace_ms } else { confirm_ms };
                                prop_assert!(now.duration_since(at) >= ms(wait));
                            }
                        }
                        fired.push((step, now, rung.reason));
                    }
                    None => {
                        prop_assert!(ended || ladder.destroyed().is_some() || due.is_some_and(|d| d > now));
                        prop_assert_eq!(ladder, before, "an idle poll changes nothing");
                    }
                }
            }
            let steps: Vec<Step> = fired.iter().map(|f| f.0).collect();
            prop_assert!(steps.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(ladder.destroyed().is_some(), steps.last() == Some(&Step::Destroy));
            if ladder.destroyed().is_some() {
                prop_assert_eq!(ladder.due(), None);
                prop_assert_eq!(ladder.poll(now + ms(1_000_000)), None);
            }
        }

        /// A command that never ends: polling when due, the ladder always ends in Destroy
        /// after exactly Term, Kill, Destroy, for the reason it started with.
        #[test]
        fn a_command_that_never_ends_is_destroyed(
            deadline_ms in 0u64..5_000,
            grace_ms in 0u64..3_000,
            confirm_ms in 0u64..3_000,
            cancel_after in proptest::option::of(0u64..6_000),
        ) {
            let t0 = Instant::now();
            let timing = KillTiming { grace: ms(grace_ms), confirm: ms(confirm_ms) };
            let mut ladder = KillLadder::new(t0 + ms(deadline_ms), timing);
            let mut now = t0;
            let mut expected = KillReason::Timeout;
            if let Some(c) = cancel_after.filter(|c| *c < deadline_ms) {
                now += ms(c);
                prop_assert!(ladder.cancel(now));
                expected = KillReason::Cancel;
            }
            let mut rungs = Vec::new();
            while let Some(due) = ladder.due() {
                now = now.max(due);
                let rung = ladder.poll(now);
                prop_assert!(rung.is_some(), "due but nothing fired");
                rungs.extend(rung);
                prop_assert!(rungs.len() <= 3);
            }
            let actions: Vec<KillAction> = rungs.iter().map(|r| r.action).collect();
            prop_assert_eq!(actions, vec![
                KillAction::Signal(KillSignal::Term),
                KillAction::Signal(KillSignal::Kill),
                KillAction::Destroy,
            ]);
            prop_assert!(rungs.iter().all(|r| r.reason == expected));
            prop_assert_eq!(ladder.destroyed(), Some(expected));
            prop_assert_eq!(ladder.reason(), Some(expected));
        }
    }

    #[test]
    fn a_command_that_ends_in_time_is_never_signaled() {
        let t0 = Instant::now();
        let timing = KillTiming {
            grace: ms(100),
            confirm: ms(100),
        };
        let mut ladder = KillLadder::new(t0 + ms(1_000), timing);
        assert_eq!(ladder.poll(t0 + ms(999)), None);
        ladder.command_ended();
        assert_eq!(ladder.poll(t0 + ms(10_000)), None);
        assert_eq!(ladder.reason(), None);
        assert_eq!(ladder.destroyed(), None);
    }

    #[test]
    fn a_command_that_ends_on_term_stops_the_climb_and_keeps_the_reason() {
        let t0 = Instant::now();
        let timing = KillTiming {
            grace: ms(100),
            confirm: ms(100),
        };
        let mut ladder = KillLadder::new(t0 + ms(1_000), timing);
        assert!(ladder.cancel(t0));
        let term = ladder.poll(t0);
        assert_eq!(
            term.map(|r| r.event()),
            Some(EventKind::Kill {
                signal: Some("SIGTERM".into()),
                action: None,
                reason: KillReason::Cancel
            })
        );
        assert_eq!(ladder.due(), Some(t0 + ms(100)));
        // A timeout while climbing for a cancel does not change why.
        assert_eq!(ladder.poll(t0 + ms(50)), None);
        ladder.command_ended();
        assert_eq!(ladder.poll(t0 + ms(5_000)), None);
        assert_eq!(ladder.reason(), Some(KillReason::Cancel));
        assert_eq!(ladder.destroyed(), None);
    }

    #[test]
    fn the_last_rung_is_a_destroy_event() {
        let rung = Rung {
            reason: KillReason::Timeout,
            action: KillAction::Destroy,
        };
        assert_eq!(
            rung.event(),
            EventKind::Kill {
                signal: None,
                action: Some("destroy".into()),
                reason: KillReason::Timeout
            }
        );
    }
}
