//! [`Coordination`] on PostgreSQL: leases in a table with expiries on the server's clock,
//! the shared queue claimed with `FOR UPDATE SKIP LOCKED`, and `LISTEN/NOTIFY` to wake
//! claimers.
//!
//! * `renew_lease` is one upsert; it reports `Lapsed` when the row it replaced had expired.
//! * `lease_liveness` compares `expires_at` with the server's `now()`, so hosts' clocks do
//!   not matter.
//! * `claim_queued` selects the oldest claimable runs (`queued`, no owner, one of the
//!   caller's backends) `FOR UPDATE SKIP LOCKED` and, in the same statement, writes the
//!   owner into their records and clears `claimable`: two claimers never get one run, and a
//!   claimer never waits on another's lock.
//! * A commit that makes a run claimable is followed by `NOTIFY` on the store's queue
//!   channel (one per schema). Only those commits notify: a notifying transaction takes a
//!   global lock at commit, so the frequent commits (output, heartbeats) never do.
//!   Claimers also poll (`EngineConfig::claim_poll_interval`), so a lost notification (the
//!   listening connection dropped) delays a claim, never loses it.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use crownest_core::ownership::{Liveness, RunOwner};
use crownest_core::store::coordination::{Coordination, LeaseRenewal};
use crownest_core::{Result, RunRecord};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::config::PostgresConfig;
use crate::error::db;
use crate::runs::{execute, query};
use crate::store::PostgresStore;

/// The `NOTIFY` channel of a store's queue (notifications are per database; the schema
/// keeps stores in one database apart).
pub(crate) fn queue_channel(config: &PostgresConfig) -> String {
    format!(
        "crownest_queue_{}",
        config.schema.as_deref().unwrap_or("public")
    )
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[async_trait]
impl Coordination for PostgresStore {
    async fn renew_lease(&self, instance: &str, ttl: Duration) -> Result<LeaseRenewal> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "renewing a lease",
            "WITH old AS (SELECT expires_at FROM leases WHERE instance = $1 FOR UPDATE)
             INSERT INTO leases (instance, expires_at, renewed_at)
             VALUES ($1, now() + $2 * interval '1 millisecond', now())
             ON CONFLICT (instance) DO UPDATE
                SET expires_at = excluded.expires_at, renewed_at = excluded.renewed_at
             RETURNING (SELECT expires_at < now() FROM old)",
            &[&instance, &millis(ttl)],
        )
        .await?;
        let lapsed: Option<bool> = rows.first().and_then(|r| r.get(0));
        Ok(if lapsed == Some(true) {
            LeaseRenewal::Lapsed
        } else {
            LeaseRenewal::Held
        })
    }

    async fn release_lease(&self, instance: &str) -> Result<()> {
        let client = self.client().await?;
        execute(
            &client,
            "releasing a lease",
            "DELETE FROM leases WHERE instance = $1",
            &[&instance],
        )
        .await?;
        Ok(())
    }

    async fn lease_liveness(&self, instances: &[String]) -> Result<HashMap<String, Liveness>> {
        let mut out: HashMap<String, Liveness> = instances
            .iter()
            .map(|i| (i.clone(), Liveness::Gone))
            .collect();
        if instances.is_empty() {
            return Ok(out);
        }
        let client = self.client().await?;
        let rows = query(
            &client,
            "reading leases",
            "SELECT instance, expires_at > now() FROM leases WHERE instance = ANY($1)",
            &[&instances],
        )
        .await?;
        for row in rows {
            let instance: String = row.get(0);
            let held: bool = row.get(1);
            out.insert(instance, Liveness::from_alive(held));
        }
        Ok(out)
    }

    async fn claim_queued(
        &self,
        owner: &RunOwner,
        backends: &[String],
        limit: usize,
    ) -> Result<Vec<RunRecord>> {
        if limit == 0 || backends.is_empty() {
            return Ok(Vec::new());
        }
        let owner_json = serde_json::to_string(owner)
            .map_err(|e| crownest_core::Error::store("encoding the owner", e))?;
        let client = self.client().await?;
        let rows = query(
            &client,
            "claiming queued runs",
            "WITH c AS (
                 SELECT id FROM runs
                  WHERE claimable AND backend = ANY($1)
                  ORDER BY id
                  LIMIT $2
                  FOR UPDATE SKIP LOCKED)
             UPDATE runs r
                SET claimable = false,
                    record = jsonb_set(r.record::jsonb, '{owner}', $3::text::jsonb)::text
               FROM c
              WHERE r.id = c.id
             RETURNING r.record",
            &[
                &backends,
                &i64::try_from(limit).unwrap_or(i64::MAX),
                &owner_json,
            ],
        )
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let text: &str = row.get(0);
            let record: RunRecord = serde_json::from_str(text)
                .map_err(|e| crownest_core::Error::store("decoding a claimed run", e))?;
            claimed.push(record);
        }
        claimed.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(claimed)
    }

    fn queue_notices(&self) -> Option<watch::Receiver<u64>> {
        Some(self.queue_notices_rx())
    }
}

/// Listens on the queue channel on a connection of its own (reconnecting after a loss),
/// moving `tx` at each notification and after each (re)connection. Ends when every
/// receiver is gone.
pub(crate) fn spawn_listener(config: &PostgresConfig, tx: watch::Sender<u64>) {
    let channel = queue_channel(config);
    let url = config.url.clone();
    let connect_timeout = config.connect_timeout;
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        while !tx.is_closed() {
            match listen_once(&url, connect_timeout, &channel, &tx).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::debug!(error = %e, "queue listener lost its connection");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}

async fn listen_once(
    url: &str,
    connect_timeout: Duration,
    channel: &str,
    tx: &watch::Sender<u64>,
) -> std::result::Result<(), String> {
    let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| e.to_string())?;
    pg.connect_timeout(connect_timeout);
    pg.application_name("crownest-queue-listener");
    let (client, mut connection) = pg.connect(NoTls).await.map_err(|e| e.to_string())?;
    let (msg_tx, mut msg_rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if msg_tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let listen = format!("LISTEN \"{channel}\"");
    if let Err(e) = client.batch_execute(&listen).await {
        driver.abort();
        return Err(db("listening for queued runs", e).to_string());
    }
    // Connected: whatever was notified while not listening is picked up by a poll now.
    tx.send_modify(|n| *n += 1);
    loop {
        tokio::select! {
            m = msg_rx.recv() => match m {
                Some(()) => tx.send_modify(|n| *n += 1),
                None => return Err("the listening connection ended".into()),
            },
            () = tx.closed() => {
                driver.abort();
                return Ok(());
            }
        }
    }
}
