//! The multi-node backend: one PostgreSQL database shared by every sessiond node. Each node's
//! group-commit writer owns one connection; a pool serves reads. Nodes agree through the
//! database only: the append lock orders the log, the unique constraint settles races on a
//! stream (the first signing key is created under the append lock), advisory locks elect who
//! runs a job, and NOTIFY
//! tells followers on other nodes that the log moved.

mod access;
mod locks;
mod operations;
mod registry;
mod rows;
mod write_session;
mod writes;

pub use locks::HeldJobLock;
pub use write_session::PostgresWriteSession;

use crate::domain::format_timestamp;
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::domain::user::User;
use crate::store::{ChainHead, EventFilter, RecordedEvent, StoreError, TokenRecord};
use rows::*;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row};
use std::str::FromStr;
use tokio::sync::watch;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`) and applies pending migrations. Several nodes may do
    /// this at once: sqlx runs migrations under an advisory lock of its own.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("sessiond");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStore { pool, options })
    }

    /// The writer's session; its connection is opened by its first transaction.
    pub async fn write_session(&self) -> Result<PostgresWriteSession, StoreError> {
        // A batch never idles inside its transaction; if a node stalls there (paused VM, lost
        // network), the server ends the transaction so the append lock it holds does not stop
        // every other node's writer for longer than this.
        let options = self
            .options
            .clone()
            .options([("idle_in_transaction_session_timeout", "10s")]);
        Ok(PostgresWriteSession::new(options, self.head().await?))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn head(&self) -> Result<ChainHead, StoreError> {
        queries::head(&mut *self.pool.acquire().await?).await
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        queries::user_by_name(&mut *self.pool.acquire().await?, username).await
    }

    pub async fn user_by_id(&self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        queries::user_by_id(&mut *self.pool.acquire().await?, user_id).await
    }

    pub async fn session(&self, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        queries::session(&mut *self.pool.acquire().await?, session_id).await
    }

    pub async fn token(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        queries::token(&mut *self.pool.acquire().await?, key).await
    }

    pub async fn events(&self, f: &EventFilter) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > "
        ));
        q.push_bind(f.after_position);
        if let Some(stream) = &f.stream_id {
            q.push(" AND stream_id = ").push_bind(stream.clone());
        }
        if !f.stream_ids.is_empty() {
            q.push(" AND stream_id = ANY(")
                .push_bind(f.stream_ids.clone())
                .push(")");
        }
        if let Some(before) = f.before_position {
            q.push(" AND position < ").push_bind(before);
        }
        if let Some(subject) = f.subject {
            let id = subject.to_string();
            q.push(" AND (data->>'session_id' = ")
                .push_bind(id.clone())
                .push(" OR data->>'user_id' = ")
                .push_bind(id)
                .push(")");
        }
        if !f.event_types.is_empty() {
            q.push(" AND event_type = ANY(")
                .push_bind(f.event_types.clone())
                .push(")");
        }
        if let Some(since) = f.since {
            q.push(" AND occurred_at >= ")
                .push_bind(format_timestamp(since))
                .push("::timestamptz");
        }
        if let Some(until) = f.until {
            q.push(" AND occurred_at < ")
                .push_bind(format_timestamp(until))
                .push("::timestamptz");
        }
        q.push(if f.newest_first {
            " ORDER BY position DESC"
        } else {
            " ORDER BY position"
        });
        if let Some(limit) = f.limit {
            q.push(" LIMIT ").push_bind(limit);
        }
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(recorded_event).collect()
    }

    /// The job's lock if no other node holds it.
    pub async fn try_job_lock(&self, job: &str) -> Result<Option<HeldJobLock>, StoreError> {
        HeldJobLock::try_take(&self.pool, job).await
    }

    /// `local` (this node's writer) merged with every node's commit notifications.
    pub async fn follow_commits(
        &self,
        local: watch::Receiver<i64>,
    ) -> Result<watch::Receiver<i64>, StoreError> {
        locks::follow_commits(self.pool.clone(), local).await
    }

    pub async fn projection_snapshot(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for (table, key) in [
            ("users", "user_id"),
            ("sessions", "session_id"),
            ("refresh_tokens", "token_id"),
            ("signing_keys", "kid"),
            ("api_keys", "key_id"),
            ("webhook_subscriptions", "subscription_id"),
        ] {
            let sql = format!("SELECT '{table}|' || t::text FROM {table} t ORDER BY {key}");
            for row in sqlx::query(&sql).fetch_all(&self.pool).await? {
                out.push(row.get::<String, _>(0));
            }
        }
        Ok(out)
    }
}
