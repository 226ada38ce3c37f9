//! The versioned schema: a new schema is migrated and recorded in `schema_version`;
//! reopening keeps every row and applies nothing; many stores opening one new schema at
//! once (each its own pool, i.e. its own server sessions, as separate processes) migrate it
//! exactly once; an older schema is brought up to date; a newer one is refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use crownest_core::event::verify_chain;
use crownest_core::store::Store;
use crownest_store_postgres::schema::{MIGRATIONS, SCHEMA_VERSION, migrate_to};
use crownest_store_postgres::{PostgresConfig, PostgresStore};

/// `(version, applied_at as text)` rows of `schema_version`.
async fn recorded(url: &str, schema: &str) -> Vec<(i32, String)> {
    connect(url, schema)
        .await
        .query(
            "SELECT version, applied_at::text FROM schema_version ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_schema_is_migrated_and_reopening_changes_nothing() {
    let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(
        versions,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "steps are 1, 2, ... SCHEMA_VERSION"
    );
    let Some(t) = TempStore::open().await else {
        return;
    };
    assert_eq!(t.schema_version().await.unwrap(), SCHEMA_VERSION);
    let first = recorded(&t.url, &t.schema).await;
    assert_eq!(
        first.iter().map(|r| r.0).collect::<Vec<_>>(),
        versions,
        "one row per applied step"
    );

    // Some data: a run with events, a terminal commit with evidence, a blob.
    let run = t.create_run(new_run()).await.unwrap().into_run();
    t.commit(&run.id, events_commit(1, vec![out("before reopen")]))
        .await
        .unwrap();
    let blob = t
        .put_blob(stream_of(b"kept across reopen"), any_blob())
        .await
        .unwrap();
    let events = t.list_events(&run.id, 0, 10).await.unwrap();
    let record = t.get_run(&run.id).await.unwrap();

    // Another instance (a restarted process) opens the same schema.
    t.close();
    let again = t.reopen().await;
    assert_eq!(
        recorded(&t.url, &t.schema).await,
        first,
        "reopening applies nothing"
    );
    assert_eq!(again.get_run(&run.id).await.unwrap(), record);
    assert_eq!(again.list_events(&run.id, 0, 10).await.unwrap(), events);
    assert_eq!(
        read_all(again.open_blob(&blob.sha256).await.unwrap()),
        b"kept across reopen"
    );
    let sealed = again
        .commit(&run.id, events_commit(2, vec![out("after reopen")]))
        .await
        .unwrap();
    assert_eq!(sealed[0].seq, 2, "the chain goes on where it was");
    verify_chain(&run.id, &again.list_events(&run.id, 0, 10).await.unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stores_opening_a_new_schema_at_once_migrate_it_once() {
    let Some(url) = url() else {
        return;
    };
    let schema = fresh_schema();
    let dir = tempfile::tempdir().unwrap();
    let opens = (0..8).map(|_| {
        PostgresStore::open(
            PostgresConfig::new(&url, dir.path())
                .with_schema(&schema)
                .with_pool_size(2),
        )
    });
    let stores: Vec<PostgresStore> = futures::future::join_all(opens)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let rows = recorded(&url, &schema).await;
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "each step applied once"
    );
    // All of them work on the one schema.
    let run = stores[0].create_run(new_run()).await.unwrap().into_run();
    assert_eq!(stores[7].get_run(&run.id).await.unwrap(), run);
    for s in &stores {
        s.close();
    }
    drop_schema(&url, &schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_schema_is_brought_up_to_date() {
    let Some(url) = url() else {
        return;
    };
    let schema = fresh_schema();
    // A schema at version 0: only the `schema_version` table, as a build older than every
    // step (or a step that failed and rolled back) leaves it.
    {
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; SET search_path = {schema}"
            ))
            .await
            .unwrap();
        assert_eq!(migrate_to(&mut client, Some(&schema), 0).await.unwrap(), 0);
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables, 1, "only schema_version");
    }
    let dir = tempfile::tempdir().unwrap();
    let store = PostgresStore::open(PostgresConfig::new(&url, dir.path()).with_schema(&schema))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let run = store.create_run(new_run()).await.unwrap().into_run();
    assert_eq!(store.get_run(&run.id).await.unwrap(), run);
    store.close();
    drop_schema(&url, &schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_build_is_refused() {
    let Some(t) = TempStore::open().await else {
        return;
    };
    connect(&t.url, &t.schema)
        .await
        .execute(
            "INSERT INTO schema_version (version, description) VALUES ($1, 'from the future')",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    let err = PostgresStore::open(t.config()).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schema_name_or_url_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let err = PostgresStore::open(
        PostgresConfig::new("postgres://nobody@127.0.0.1:1/x", dir.path())
            .with_schema("robert'); DROP TABLE runs;--"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, crownest_core::Error::InvalidSpec { ref field, .. } if field == "schema"),
        "{err:?}"
    );
    let err = PostgresStore::open(PostgresConfig::new("postgres://a:b:c@[/x", dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, crownest_core::Error::InvalidSpec { ref field, .. } if field == "url"),
        "{err:?}"
    );
}
