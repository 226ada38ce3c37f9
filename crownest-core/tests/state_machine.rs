//! Property tests of the pure transition function.

use crownest_core::Error;
use crownest_core::lifecycle::{Input, Outcome, transition};
use crownest_core::status::RunStatus;
use proptest::prelude::*;

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(Input::ArchiveVerified),
        Just(Input::Start),
        Just(Input::SlotAcquired),
        Just(Input::CommandStarted),
        Just(Input::CommandEnded),
        Just(Input::Cancel),
        Just(Input::ArchiveTtlExpired),
        Just(Input::Finalized(Outcome::Succeeded)),
        Just(Input::Finalized(Outcome::Failed)),
        Just(Input::Finalized(Outcome::Canceled)),
        Just(Input::HostRestarted),
    ]
}

/// Which states can follow which, written independently of `transition`.
fn allowed(from: RunStatus, to: RunStatus) -> bool {
    use RunStatus::*;
    matches!(
        (from, to),
        (AwaitingArchive, ArchiveReady)
            | (ArchiveReady, Queued)
            | (Queued, Starting)
            | (Starting, Running)
            | (Starting | Running, Finalizing)
            | (AwaitingArchive | ArchiveReady | Queued, Canceled)
            | (Finalizing, Succeeded | Failed | Canceled)
    ) || (!from.is_terminal() && to == Failed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// From the initial state, any input sequence either moves along a legal edge or is
    /// refused with InvalidTransition naming the state; never a panic. Terminal states
    /// absorb, and a run reaches a terminal state at most once.
    #[test]
    fn any_sequence_is_legal_or_refused(inputs in proptest::collection::vec(input(), 0..40)) {
        let mut state = RunStatus::AwaitingArchive;
        let mut terminal_reached = 0;
        for i in inputs {
            match transition(state, i) {
                Ok(next) => {
                    prop_assert!(allowed(state, next), "{state:?} --{i:?}--> {next:?} is not a legal edge");
                    prop_assert!(!state.is_terminal(), "terminal {state:?} moved to {next:?}");
                    if next.is_terminal() {
                        terminal_reached += 1;
                    }
                    state = next;
                }
                Err(Error::InvalidTransition { from, input }) => {
                    prop_assert_eq!(from, state);
                    prop_assert_eq!(input, i.name());
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }
        prop_assert!(terminal_reached <= 1, "terminal reached {terminal_reached} times");
    }

    /// Every state accepts and refuses inputs deterministically.
    #[test]
    fn transition_is_a_function(s in 0usize..9, i in input()) {
        let state = RunStatus::ALL[s];
        let a = transition(state, i).ok();
        let b = transition(state, i).ok();
        prop_assert_eq!(a, b);
    }
}

#[test]
fn terminal_states_absorb_every_input() {
    for s in [RunStatus::Succeeded, RunStatus::Failed, RunStatus::Canceled] {
        for i in [
            Input::ArchiveVerified,
            Input::Start,
            Input::SlotAcquired,
            Input::CommandStarted,
            Input::CommandEnded,
            Input::Cancel,
            Input::ArchiveTtlExpired,
            Input::Finalized(Outcome::Succeeded),
            Input::HostRestarted,
        ] {
            assert!(
                matches!(transition(s, i), Err(Error::InvalidTransition { .. })),
                "{s:?} {i:?}"
            );
        }
    }
}

#[test]
fn the_happy_path() {
    let mut s = RunStatus::AwaitingArchive;
    for i in [
        Input::ArchiveVerified,
        Input::Start,
        Input::SlotAcquired,
        Input::CommandStarted,
        Input::CommandEnded,
        Input::Finalized(Outcome::Succeeded),
    ] {
        s = transition(s, i).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(s, RunStatus::Succeeded);
}

#[test]
fn cancel_before_the_sandbox_ends_at_once_and_after_goes_through_finalizing() {
    for s in [
        RunStatus::AwaitingArchive,
        RunStatus::ArchiveReady,
        RunStatus::Queued,
    ] {
        assert_eq!(transition(s, Input::Cancel).ok(), Some(RunStatus::Canceled));
    }
    for s in [RunStatus::Starting, RunStatus::Running] {
        assert_eq!(
            transition(s, Input::Cancel).ok(),
            Some(RunStatus::Finalizing)
        );
    }
    assert!(transition(RunStatus::Finalizing, Input::Cancel).is_err());
}

#[test]
fn only_a_run_awaiting_its_archive_expires_and_it_ends_canceled() {
    for s in RunStatus::ALL {
        let to = transition(s, Input::ArchiveTtlExpired).ok();
        if s == RunStatus::AwaitingArchive {
            assert_eq!(to, Some(RunStatus::Canceled));
        } else {
            assert_eq!(to, None, "{s:?} must not expire");
        }
    }
}
