//! Conformance suites (feature `conformance`): one public async function per contract
//! bullet of [`crate::Store`] and [`crate::SandboxBackend`]/[`crate::Sandbox`], and macros
//! that stamp them as `#[tokio::test]`s, so an implementation's `tests/conformance.rs` is
//! one macro call and a new implementation gets the whole suite for free.
//!
//! ```text
//! // crownest-store-sqlite/tests/conformance.rs
//! crownest_core::store_conformance!(async {
//!     let dir = tempfile::tempdir().unwrap().keep();
//!     std::sync::Arc::new(crownest_store_sqlite::SqliteStore::open(dir).await.unwrap())
//! });
//! ```
//!
//! Every function panics with a message naming the violated contract bullet.

pub mod backend;
pub mod store;

pub use backend::{BackendHarness, Need, Programs};

/// Stamps one `#[tokio::test]` per [`store`] case. The argument is an async block (or any
/// future) yielding an `Arc<dyn Store>`; it is evaluated afresh for every case.
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        $crate::store_conformance!(@cases $factory;
            create_and_get,
            idempotency_key_returns_existing,
            idempotency_key_keeps_the_first_spec,
            create_run_with_commits_only_a_new_run,
            unknown_run_is_not_found,
            list_runs_newest_first_filtered_and_paged,
            list_runs_filtered_by_backend_labels_and_created,
            delete_run_removes_an_ended_run_and_refuses_a_live_one,
            commit_seals_gap_free_hash_chain,
            commit_with_stale_seq_conflicts_and_writes_nothing,
            terminal_must_be_last_with_evidence,
            nothing_appends_after_terminal,
            evidence_is_stored_with_terminal,
            evidence_envelope_is_stored_with_evidence,
            cancel_flag_survives_commits,
            list_events_returns_a_window,
            blobs_are_content_addressed,
            blob_mismatch_keeps_nothing,
            transfer_chunks_any_order_idempotent,
            transfer_chunk_conflict_keeps_the_stored_chunk,
            artifacts_are_found_by_id,
            list_unfinished_returns_non_terminal,
            concurrent_commits_to_many_runs,
            discard_blob_deletes_only_unnamed_blobs,
            list_transfers_by_run,
            collect_garbage_respects_names_and_ages,
            usage_counts_every_run_once,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: ::std::sync::Arc<dyn $crate::Store> = $factory.await;
                $crate::conformance::store::$case(store).await;
            }
        )*
    };
}

/// Stamps one `#[tokio::test]` per [`backend`] case. The argument is an async block (or
/// any future) yielding a [`BackendHarness`]; it is evaluated afresh for every case.
///
/// Each case is registered with what it needs (`cap X`: the backend declares
/// [`crate::Capability`]`::X`; `program p`: [`Programs`] has the optional program `p`). A
/// case whose needs are not met prints `SKIPPED backend conformance case <name> on backend
/// <backend>: <why>` on stderr and passes only for that reason.
#[macro_export]
macro_rules! backend_conformance {
    ($factory:expr) => {
        $crate::backend_conformance!(@cases $factory;
            // A run end to end (run.rs).
            name_and_templates: [],
            unknown_template_is_invalid_spec: [],
            materialize_extracts_the_archive: [],
            exit_codes_pass_through: [],
            a_signal_death_is_signaled: [cap ExitSignal, program die_by_sigterm],
            unknown_program_is_spawn_failed: [],
            a_bad_cwd_is_spawn_failed: [],
            env_is_exactly_the_spec: [],
            secrets_reach_the_command_and_are_masked: [],
            cwd_is_inside_the_workspace: [],
            stdin_is_closed: [],
            stdout_and_stderr_are_streamed: [],
            an_output_flood_is_capped_and_drained: [],
            timeout_ends_the_command_with_the_kill_ladder: [],
            sigkill_ends_a_command_that_ignores_sigterm: [program run_forever_ignoring_term],
            cancel_while_running: [],
            a_memory_hog_ends_limit_exceeded: [cap MemoryLimit],
            a_fork_bomb_is_contained: [cap PidsLimit, program fork_bomb],
            host_files_outside_the_workspace_are_unreachable: [cap FilesystemIsolation],
            // One sandbox driven directly (sandbox.rs).
            create_gives_a_fresh_empty_workspace: [],
            materialize_rejects_a_hostile_archive: [],
            materialize_is_all_or_nothing: [],
            exec_calls_started_once_before_any_output: [],
            exec_returns_after_every_descendant_ended: [program background_writer],
            sigterm_reaches_processes_in_other_sessions: [cap ProcessTreeKill, program term_tree],
            sigkill_reaches_every_process_the_command_started: [cap ProcessTreeKill, program stubborn_tree],
            signal_with_no_command_running_is_ok: [],
            destroy_is_idempotent: [],
            destroy_ends_a_running_command: [],
            // Artifacts (artifacts.rs).
            artifact_regular_file_is_collected: [],
            artifact_symlink_is_not_followed: [],
            artifact_missing_is_reported: [],
            required_artifact_missing_fails_the_run: [],
            artifact_directory_is_a_tar_of_its_regular_files: [],
            artifact_fifo_is_refused: [program mkfifo],
            artifact_over_max_bytes_is_too_large: [],
            artifact_paths_outside_the_workspace_are_refused: [],
            // Sweeps and kept sandboxes (sweep.rs).
            sweep_orphans_destroys_unlisted_sandboxes: [],
            sweep_spares_sandboxes_of_live_runs: [],
            keep_sandbox_is_recorded: [cap KeepSandbox],
            kept_sandbox_survives_sweeps_until_its_deadline: [cap KeepSandbox],
            // Capabilities are data (capabilities.rs).
            isolation_never_claims_more_than_capabilities: [],
            a_hard_requirement_the_backend_lacks_is_refused_at_create: [],
            evidence_records_what_was_not_enforced: [],
        );
    };
    (@need cap $c:ident) => {
        $crate::conformance::Need::Capability($crate::Capability::$c)
    };
    (@need program $p:ident) => {
        $crate::conformance::Need::Program(::std::stringify!($p))
    };
    (@cases $factory:expr; $($case:ident : [$($kind:ident $need:ident),*]),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness: $crate::conformance::BackendHarness = $factory.await;
                harness
                    .run_case(
                        ::std::stringify!($case),
                        &[$($crate::backend_conformance!(@need $kind $need)),*],
                        $crate::conformance::backend::$case,
                    )
                    .await;
            }
        )*
    };
}
