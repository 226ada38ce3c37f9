//! Schema migrations: an old database is brought to the current version on open, its data
//! kept (and backfilled where a step adds an index of existing data).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use crownest_core::run::ArtifactKind;
use crownest_core::store::Store;
use crownest_core::{Artifact, ArtifactId};
use crownest_store_sqlite::SqliteStore;
use crownest_store_sqlite::schema::{MIGRATIONS, SCHEMA_VERSION, create_at_version};

fn user_version(path: &std::path::Path) -> u32 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_and_backfilled() {
    let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(
        versions,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "steps are 1, 2, ... SCHEMA_VERSION"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crownest.db");

    // A version-1 store holding a run whose record lists an artifact (v1 had no artifacts
    // table) and one event.
    let mut run = new_run();
    let artifact = Artifact {
        artifact_id: ArtifactId::new(),
        run_id: run.id.clone(),
        path: "report.xml".into(),
        kind: ArtifactKind::File,
        size_bytes: 3,
        sha256: crownest_core::Sha256Digest::of(b"xml"),
        mode: 0o644,
        skipped: Vec::new(),
    };
    run.artifacts.push(artifact.clone());
    let event = crownest_core::event::seal(&run.chain_head, &run.id, 1, out("v1 output"));
    run.next_seq = 2;
    run.chain_head = event.hash.clone();
    {
        let conn = create_at_version(&db, 1).unwrap();
        assert_eq!(user_version(&db), 1);
        conn.execute(
            "INSERT INTO runs (id, status, next_seq, chain_head, record) VALUES (?1, ?2, 2, ?3, ?4)",
            rusqlite::params![run.id.as_str(), run.status.as_str(), run.chain_head, serde_json::to_string(&run).unwrap()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO events (run_id, seq, event) VALUES (?1, 1, ?2)",
            rusqlite::params![run.id.as_str(), serde_json::to_string(&event).unwrap()],
        )
        .unwrap();
        let has_artifacts: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'artifacts'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!has_artifacts, "version 1 has no artifacts table");
    }

    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert_eq!(user_version(&db), SCHEMA_VERSION);
    assert_eq!(store.get_run(&run.id).await.unwrap(), run);
    assert_eq!(
        store.list_events(&run.id, 0, 10).await.unwrap(),
        vec![event]
    );
    assert_eq!(
        store.get_artifact(&artifact.artifact_id).await.unwrap(),
        artifact,
        "backfilled"
    );
    let sealed = store
        .commit(&run.id, events_commit(2, vec![out("v2 output")]))
        .await
        .unwrap();
    assert_eq!(sealed[0].seq, 2);
    drop(store);

    // Reopening an up-to-date store changes nothing.
    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert_eq!(user_version(&db), SCHEMA_VERSION);
    assert_eq!(store.list_events(&run.id, 0, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).await.unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("crownest.db")).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_opening_a_new_store_at_once_migrate_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(SqliteStore::open(dir.path()), SqliteStore::open(dir.path()));
    let (a, b) = (a.unwrap(), b.unwrap());
    let run = a.create_run(new_run()).await.unwrap().into_run();
    assert_eq!(b.get_run(&run.id).await.unwrap(), run);
    assert_eq!(
        user_version(&dir.path().join("crownest.db")),
        SCHEMA_VERSION
    );
}
