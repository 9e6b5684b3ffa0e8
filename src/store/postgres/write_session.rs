//! The writer's side of the PostgreSQL store: one connection, one transaction per batch, one
//! prepared statement per read and per row written. Reads inside the transaction see the
//! batch's own writes, so no overlay is needed for correctness (batching rows into multi-row
//! statements is the next lever, as on SQLite).
//!
//! Every batch takes the append lock (`pg_advisory_xact_lock`) right after BEGIN and then reads
//! the chain head: whichever node holds the lock appends after the last committed event, and
//! the lock is released by COMMIT, so positions become visible in the order they were assigned.

use super::locks::{APPEND_LOCK, COMMIT_CHANNEL};
use super::rows::{hash32, queries, writes};
use crate::domain::Timestamp;
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::domain::user::User;
use crate::store::{ChainHead, NewEvent, RecordedEvent, StoreError, TokenRecord, UnitOfWork};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};
use uuid::Uuid;

pub struct PostgresWriteSession {
    options: PgConnectOptions,
    /// Opened on the first `begin`, so it belongs to the runtime that uses it (the writer runs
    /// on a thread of its own), and opened again after it failed.
    conn: Option<PgConnection>,
    committed: ChainHead,
    head: ChainHead,
}

impl PostgresWriteSession {
    pub(super) fn new(options: PgConnectOptions, head: ChainHead) -> Self {
        PostgresWriteSession {
            options,
            conn: None,
            committed: head,
            head,
        }
    }

    fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.conn.as_mut().ok_or_else(|| {
            StoreError::Database(sqlx::Error::Protocol(
                "the write session has no open transaction".into(),
            ))
        })
    }

    async fn open_transaction(&mut self) -> Result<(), StoreError> {
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        let lock = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({}, {});",
            APPEND_LOCK.0, APPEND_LOCK.1
        );
        let conn = self.conn()?;
        conn.execute(sqlx::raw_sql(&lock)).await?;
        // Another node may have appended since our last commit: chain onto what is really
        // there, under the lock we now hold.
        self.committed = queries::head(conn).await?;
        self.head = self.committed;
        Ok(())
    }
}

impl crate::store::writer::WriteSession for PostgresWriteSession {
    async fn begin(&mut self, _prefetch: &[TokenKey]) -> Result<(), StoreError> {
        self.head = self.committed;
        self.open_transaction().await
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        // The notification is sent when (and only if) the transaction commits, in one round
        // trip with the COMMIT. The payload is a number of ours, not user input.
        let sql = if self.head.position != self.committed.position {
            format!(
                "SELECT pg_notify('{COMMIT_CHANNEL}', '{}'); COMMIT;",
                self.head.position
            )
        } else {
            "COMMIT;".to_owned()
        };
        self.conn()?.execute(sqlx::raw_sql(&sql)).await?;
        self.committed = self.head;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), StoreError> {
        self.head = self.committed;
        if let Some(conn) = self.conn.as_mut()
            && conn.execute("ROLLBACK").await.is_err()
        {
            // A connection that cannot roll back is not trusted with the next batch.
            self.conn = None;
        }
        Ok(())
    }

    fn committed_position(&self) -> i64 {
        self.committed.position
    }

    async fn clear_projections(&mut self) -> Result<(), StoreError> {
        writes::clear_projections(self.conn()?).await
    }
}

impl UnitOfWork for PostgresWriteSession {
    async fn user_by_id(&mut self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        queries::user_by_id(self.conn()?, user_id).await
    }

    async fn user_by_name(&mut self, username: &str) -> Result<Option<User>, StoreError> {
        queries::user_by_name(self.conn()?, username).await
    }

    async fn session(&mut self, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        queries::session(self.conn()?, session_id).await
    }

    async fn token(&mut self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        queries::token(self.conn()?, key).await
    }

    async fn active_sessions_of(&mut self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        queries::active_sessions_of(self.conn()?, user_id).await
    }

    async fn stream_version(&mut self, stream_id: &str) -> Result<i64, StoreError> {
        queries::stream_version(self.conn()?, stream_id).await
    }

    async fn append(&mut self, new: NewEvent) -> Result<RecordedEvent, StoreError> {
        let recorded_at = new.occurred_at;
        let e = RecordedEvent::seal(&new, self.head.position + 1, self.head.hash, recorded_at);
        match writes::insert_event(self.conn()?, &e).await {
            Ok(()) => {}
            // The stream moved (or, without the append lock, the position was taken): the
            // transaction is aborted and the command must decide again.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(StoreError::Conflict {
                    stream_id: new.stream_id,
                    expected: new.expected_version,
                });
            }
            Err(other) => return Err(other.into()),
        }
        self.head = ChainHead {
            position: e.position,
            hash: hash32(e.hash.clone())?,
        };
        Ok(e)
    }

    async fn put_user(&mut self, u: &User) -> Result<(), StoreError> {
        writes::upsert_user(self.conn()?, u).await
    }

    async fn put_session(&mut self, s: &Session) -> Result<(), StoreError> {
        writes::upsert_session(self.conn()?, s).await
    }

    async fn put_token(
        &mut self,
        key: &TokenKey,
        token: TokenRecord,
        issued_at: Timestamp,
    ) -> Result<(), StoreError> {
        writes::insert_token(self.conn()?, key, token, issued_at).await
    }
}
