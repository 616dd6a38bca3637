//! Run leases and replica heartbeats on PostgreSQL.
//!
//! Each is one statement on a pooled connection, outside the writer's batches: a claim needs
//! no decision, only an atomic `UPDATE`. A statement locks the run rows it changes in id order
//! (`ORDER BY id FOR UPDATE` in a subquery), as the writer's batches do, so the two cannot
//! deadlock on them; the writer reads a run's epoch while it holds the row lock, so a claim
//! waits for a batch that is committing to that run, and a commit after the claim sees the new
//! epoch. A statement PostgreSQL aborts anyway (a lost connection) is run again, up to
//! [`super::writer::BATCH_ATTEMPTS`] times; each is idempotent for its caller.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::codec::{array, db_error, is_retryable};
use super::writer::{BATCH_ATTEMPTS, BATCH_RETRY_BACKOFF_MS};
use crate::rows::{ACTIVE_RUN_SQL, replicas_with_leases, sorted_leases};
use crate::{Lease, ReplicaRecord, Result, RunOwner};

fn lease_from_row(row: &PgRow) -> std::result::Result<Lease, sqlx::Error> {
    Ok(Lease {
        run_id: row.try_get("id")?,
        epoch: row.try_get("epoch")?,
        expires_ms: row
            .try_get::<Option<i64>, _>("lease_expires_ms")?
            .unwrap_or(0),
    })
}

/// Runs `statement` (a lease `UPDATE ... RETURNING id, epoch, lease_expires_ms`, built afresh
/// for each attempt by `make`), retrying what PostgreSQL aborted.
async fn leases_of<'q>(
    pool: &PgPool,
    what: &str,
    make: impl Fn() -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<Vec<Lease>> {
    let mut attempt = 1;
    loop {
        let result = make().fetch_all(pool).await.and_then(|rows| {
            rows.iter()
                .map(lease_from_row)
                .collect::<std::result::Result<Vec<_>, _>>()
        });
        match result {
            Ok(leases) => return Ok(sorted_leases(leases)),
            Err(error) if is_retryable(&error) && attempt < BATCH_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(
                    BATCH_RETRY_BACKOFF_MS * u64::from(attempt),
                ))
                .await;
                attempt += 1;
            }
            Err(error) => return Err(db_error(what, error)),
        }
    }
}

pub(crate) async fn claim_runs(
    pool: &PgPool,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
    limit: u32,
) -> Result<Vec<Lease>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // SKIP LOCKED: a run a batch is committing right now is left for the next claim rather
    // than waited for; the subquery re-checks the lease on the latest row version it locks.
    let sql = format!(
        "UPDATE runs SET owner = $1, lease_expires_ms = $3, epoch = epoch + 1 \
         WHERE id IN (SELECT id FROM runs WHERE {ACTIVE_RUN_SQL} \
             AND (owner IS NULL OR lease_expires_ms IS NULL OR lease_expires_ms <= $2) \
             ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
         RETURNING id, epoch, lease_expires_ms"
    );
    let expires = now_ms.saturating_add(ttl_ms);
    leases_of(pool, "claim runs", || {
        sqlx::query(&sql)
            .bind(owner)
            .bind(now_ms)
            .bind(expires)
            .bind(i64::from(limit))
    })
    .await
}

pub(crate) async fn claim_run(
    pool: &PgPool,
    run_id: &str,
    owner: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Option<Lease>> {
    // One row: the UPDATE waits for its lock and then re-checks the lease on the row as the
    // other transaction left it, so two claimers cannot both match.
    let expires = now_ms.saturating_add(ttl_ms);
    let leases = leases_of(pool, "claim a run", || {
        sqlx::query(
            "UPDATE runs SET owner = $2, lease_expires_ms = $4, epoch = epoch + 1 \
             WHERE id = $1 \
               AND (owner IS NULL OR lease_expires_ms IS NULL OR lease_expires_ms <= $3) \
             RETURNING id, epoch, lease_expires_ms",
        )
        .bind(run_id)
        .bind(owner)
        .bind(now_ms)
        .bind(expires)
    })
    .await?;
    Ok(leases.into_iter().next())
}

pub(crate) async fn renew_leases(
    pool: &PgPool,
    owner: &str,
    leases: &[Lease],
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Vec<Lease>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let ids = array(leases, |l| l.run_id.as_str());
    let epochs = array(leases, |l| l.epoch);
    let expires = now_ms.saturating_add(ttl_ms);
    leases_of(pool, "renew leases", || {
        sqlx::query(
            "UPDATE runs SET lease_expires_ms = $4 \
             FROM UNNEST($2::text[], $3::bigint[]) AS v (id, epoch) \
             WHERE runs.id = v.id AND runs.epoch = v.epoch AND runs.owner = $1 \
               AND runs.id IN (SELECT id FROM runs WHERE id = ANY($2) AND owner = $1 \
                   ORDER BY id FOR UPDATE) \
             RETURNING runs.id, runs.epoch, runs.lease_expires_ms",
        )
        .bind(owner)
        .bind(ids.clone())
        .bind(epochs.clone())
        .bind(expires)
    })
    .await
}

pub(crate) async fn release_leases(pool: &PgPool, owner: &str, leases: &[Lease]) -> Result<u64> {
    if leases.is_empty() {
        return Ok(0);
    }
    let ids = array(leases, |l| l.run_id.as_str());
    let epochs = array(leases, |l| l.epoch);
    let claimable = crate::Notice::RunsClaimable.payloads().concat();
    let released = leases_of(pool, "release leases", || {
        // The notice is sent once per released row, in the statement's own transaction;
        // PostgreSQL folds identical notices of one transaction into one.
        sqlx::query(
            "WITH released AS ( \
                 UPDATE runs SET owner = NULL, lease_expires_ms = NULL \
                 FROM UNNEST($2::text[], $3::bigint[]) AS v (id, epoch) \
                 WHERE runs.id = v.id AND runs.epoch = v.epoch AND runs.owner = $1 \
                   AND runs.id IN (SELECT id FROM runs WHERE id = ANY($2) AND owner = $1 \
                       ORDER BY id FOR UPDATE) \
                 RETURNING runs.id, runs.epoch, runs.lease_expires_ms) \
             SELECT id, epoch, lease_expires_ms, pg_notify($4, $5)::text AS notified \
             FROM released",
        )
        .bind(owner)
        .bind(ids.clone())
        .bind(epochs.clone())
        .bind(crate::NOTICE_CHANNEL)
        .bind(claimable.clone())
    })
    .await?;
    Ok(released.len() as u64)
}

pub(crate) async fn run_owner(pool: &PgPool, run_id: &str) -> Result<Option<RunOwner>> {
    let row = sqlx::query("SELECT owner, epoch, lease_expires_ms FROM runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error("read a run's owner", e))?;
    row.map(|row| {
        Ok(RunOwner {
            owner: row.try_get("owner")?,
            epoch: row.try_get("epoch")?,
            expires_ms: row.try_get("lease_expires_ms")?,
        })
    })
    .transpose()
    .map_err(|e| db_error("read a run's owner", e))
}

pub(crate) async fn heartbeat(
    pool: &PgPool,
    id: &str,
    address: &str,
    started_at_ms: i64,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO replicas (id, address, started_at_ms, seen_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET address = excluded.address, seen_at_ms = GREATEST(replicas.seen_at_ms, excluded.seen_at_ms)",
    )
    .bind(id)
    .bind(address)
    .bind(started_at_ms)
    .bind(now_ms)
    .execute(pool)
    .await
    .map_err(|e| db_error("record a replica heartbeat", e))?;
    Ok(())
}

pub(crate) async fn replicas(pool: &PgPool, seen_since_ms: i64) -> Result<Vec<ReplicaRecord>> {
    let read = async {
        let replicas = sqlx::query(
            "SELECT id, address, started_at_ms, seen_at_ms FROM replicas WHERE seen_at_ms >= $1",
        )
        .bind(seen_since_ms)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                row.try_get("address")?,
                row.try_get("started_at_ms")?,
                row.try_get("seen_at_ms")?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        let sql = format!(
            "SELECT owner, id, epoch, lease_expires_ms FROM runs \
             WHERE owner IS NOT NULL AND {ACTIVE_RUN_SQL}"
        );
        let leases = sqlx::query(&sql)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("owner")?, lease_from_row(row)?)))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        Ok::<_, sqlx::Error>(replicas_with_leases(replicas, leases))
    };
    read.await.map_err(|e| db_error("list replicas", e))
}

/// Listens for notices on its own connection of `pool` and broadcasts them, reconnecting (with
/// a [`crate::Notice::Resync`] after each connect, since notices sent meanwhile are lost) until
/// the pool is closed.
pub(crate) async fn listen(
    pool: PgPool,
    label: String,
    notices: tokio::sync::broadcast::Sender<crate::Notice>,
) {
    use sqlx::postgres::PgListener;
    let mut wait_ms = crate::NOTICE_RECONNECT_MIN_MS;
    loop {
        if pool.is_closed() {
            return;
        }
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            // Reconnecting is this loop's job, so a reconnect always ends in a resync.
            listener.eager_reconnect(false);
            listener.listen(crate::NOTICE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listener.await {
            Ok(mut listener) => {
                wait_ms = crate::NOTICE_RECONNECT_MIN_MS;
                tracing::debug!(database = %label, "listening for notices");
                let _ = notices.send(crate::Notice::Resync);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            if let Some(notice) =
                                crate::Notice::from_payload(notification.payload())
                            {
                                let _ = notices.send(notice);
                            }
                        }
                        Ok(None) => {
                            tracing::warn!(database = %label, "notice listener lost its connection; reconnecting");
                            break;
                        }
                        Err(error) => {
                            if !pool.is_closed() {
                                tracing::warn!(database = %label, %error, "notice listener failed; reconnecting");
                            }
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                if !pool.is_closed() {
                    tracing::warn!(database = %label, %error, wait_ms, "cannot listen for notices; retrying");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        wait_ms = (wait_ms * 2).min(crate::NOTICE_RECONNECT_MAX_MS);
    }
}
