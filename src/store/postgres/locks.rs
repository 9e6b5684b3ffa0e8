//! What several nodes on one database coordinate through: advisory locks (the append lock, one
//! lock per background job) and the commit notifications that wake
//! followers on other nodes.
//!
//! Keys use PostgreSQL's two-int4 form, whose first half names sessiond's lock space, so they
//! cannot collide with another application's single-bigint advisory locks.

use crate::store::StoreError;
use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, PgPool, Postgres};
use tokio::sync::watch;

/// "sessiond" in the first half of every sessiond lock key.
const LOCK_SPACE: i32 = 0x5e55_10d0;
/// Jobs get a space of their own, keyed by a hash of the job's name.
const JOB_LOCK_SPACE: i32 = 0x5e55_10d1;

/// Held (transaction-scoped) for every batch the writer appends: positions are assigned under
/// it, so they follow each other without gaps and become visible in commit order.
pub(super) const APPEND_LOCK: (i32, i32) = (LOCK_SPACE, 1);

/// The channel a commit notifies, with the last committed position as payload.
pub(super) const COMMIT_CHANNEL: &str = "sessiond_events";

fn job_key(job: &str) -> i32 {
    let digest = Sha256::digest(job.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A session-level advisory lock on a pooled connection. Released by [`HeldJobLock::release`];
/// if dropped instead, the connection is closed rather than returned to the pool, which ends
/// the database session and with it the lock.
pub struct HeldJobLock {
    conn: Option<PoolConnection<Postgres>>,
    key: i32,
}

impl HeldJobLock {
    pub(super) async fn try_take(pool: &PgPool, job: &str) -> Result<Option<Self>, StoreError> {
        let mut conn = pool.acquire().await?;
        let key = job_key(job);
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(JOB_LOCK_SPACE)
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(taken.then_some(HeldJobLock {
            conn: Some(conn),
            key,
        }))
    }

    pub async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(JOB_LOCK_SPACE)
            .bind(self.key)
            .execute(&mut *conn)
            .await;
        if let Err(e) = unlocked {
            tracing::warn!(error = %e, "releasing a job lock failed; closing its connection");
            drop(conn.detach());
        }
    }
}

impl Drop for HeldJobLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// A watch of the highest committed position known on this node: the local writer's commits,
/// and every other node's, announced by NOTIFY. Ends when every receiver is dropped.
pub(super) async fn follow_commits(
    pool: PgPool,
    mut local: watch::Receiver<i64>,
) -> Result<watch::Receiver<i64>, StoreError> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(COMMIT_CHANNEL).await?;
    let (tx, rx) = watch::channel(*local.borrow_and_update());
    let raise = move |tx: &watch::Sender<i64>, position: i64| {
        tx.send_if_modified(|known| {
            let higher = position > *known;
            if higher {
                *known = position;
            }
            higher
        });
    };
    tokio::spawn(async move {
        let mut local_open = true;
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                changed = local.changed(), if local_open => match changed {
                    Ok(()) => raise(&tx, *local.borrow_and_update()),
                    Err(_) => local_open = false,
                },
                note = listener.try_recv() => match note {
                    Ok(Some(n)) => match n.payload().parse() {
                        Ok(position) => raise(&tx, position),
                        Err(_) => tracing::warn!("unexpected payload on {COMMIT_CHANNEL}"),
                    },
                    // The connection was lost (and is re-established on the next call):
                    // notifications may have been missed, so catch up from the log's head.
                    Ok(None) => match head_position(&pool).await {
                        Ok(position) => raise(&tx, position),
                        Err(e) => tracing::warn!(error = %e, "reading the head after a lost LISTEN connection"),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN {COMMIT_CHANNEL} failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                },
            }
        }
    });
    Ok(rx)
}

async fn head_position(pool: &PgPool) -> Result<i64, StoreError> {
    let mut conn = pool.acquire().await?;
    Ok(crate::store::dispatch::tables::head::<Postgres>(&mut conn)
        .await?
        .position)
}
