//! The embedded backend: one SQLite file in WAL mode. A single writer connection (owned by the
//! group-commit writer) appends and projects; a small pool serves reads. The WAL is checkpointed
//! from the pool, never by the writer, so a checkpoint never stalls a commit.

mod access;
mod operations;
mod registry;
mod rows;
#[cfg(test)]
mod tests;
mod write_session;

pub use write_session::SqliteWriteSession;

use crate::domain::format_timestamp;
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::domain::user::User;
use crate::store::{ChainHead, EventFilter, RecordedEvent, StoreError, TokenRecord};
use rows::*;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// WAL frames (pages) beyond which the log is started over after a checkpoint.
pub(crate) const WAL_RESTART_FRAMES: i64 = 32_768;
/// Frames a checkpoint may leave behind for the writer to finish (a few batches' worth).
pub(crate) const WAL_LEFTOVER_FRAMES: i64 = 128;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    options: SqliteConnectOptions,
    path: PathBuf,
    /// Set by the background checkpoint when the WAL is worth starting over; see
    /// [`SqliteStore::checkpoint`].
    wal_restart_due: Arc<AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            // A refresh rewrites a few randomly placed pages (token hash, stream version,
            // session row); each costs a whole page in the WAL, so smaller pages mean fewer
            // bytes per commit and per checkpoint. Rows here fit 2 KiB pages without overflow.
            // Takes effect when the file is created.
            .page_size(2048)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is durable once COMMIT returns (one fsync of the WAL per batch).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // Checkpoints run from the pool on a timer; the writer never pays for one.
            .pragma("wal_autocheckpoint", "0")
            // Bytes of WAL file kept when the log starts over after a full checkpoint. Generous:
            // trimming the file is an ftruncate in the writer's commit (12 ms seen under load),
            // so it should happen only after an unusual spike, not on every restart.
            .pragma("journal_size_limit", "536870912")
            .pragma("temp_store", "memory")
            .statement_cache_capacity(128);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // An embedded connection does not go stale; the default ping on every acquire is a
            // round trip to the connection's worker thread for nothing.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            pool,
            options,
            path: path.to_owned(),
            wal_restart_due: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A dedicated connection for the writer task (or a rebuild), positioned at the chain head.
    pub async fn write_session(&self) -> Result<SqliteWriteSession, StoreError> {
        // Multi-row statements differ by row count: room for them in the statement cache.
        // A larger page cache than the default 2 MB keeps the index pages that refreshes touch
        // at random (token hashes, stream versions) out of the read() path.
        let options = self
            .options
            .clone()
            .statement_cache_capacity(1024)
            .pragma("cache_size", "-65536");
        let conn = SqliteConnection::connect_with(&options).await?;
        let head = self.head().await?;
        Ok(SqliteWriteSession::new(
            conn,
            head,
            self.wal_restart_due.clone(),
        ))
    }

    /// Moves WAL content into the database file without blocking the writer (PASSIVE).
    ///
    /// SQLite starts the WAL over when a write transaction begins with every frame already
    /// checkpointed, which under steady load never happens by itself: frames arrive while the
    /// checkpoint runs. A TRUNCATE would force it, but it takes the write lock and the writer
    /// then sleeps in SQLite's busy handler (steps of up to 100 ms: 180 ms batches at p99.9).
    /// So this only flags that a restart is due; the writer, between two batches, checkpoints
    /// the few frames written since (cheap, right after this pass) and its next transaction
    /// restarts the log.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        // Frames keep arriving while a pass runs; a few passes catch up, each shorter than the
        // last, so the writer is left with little to do.
        for _ in 0..8 {
            let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&self.pool)
                .await?;
            let (busy, log, done): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            if busy != 0 || log < WAL_RESTART_FRAMES {
                break;
            }
            if log - done <= WAL_LEFTOVER_FRAMES {
                self.wal_restart_due.store(true, Ordering::Release);
                break;
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn head(&self) -> Result<ChainHead, StoreError> {
        let mut conn = self.pool.acquire().await?;
        queries::head(&mut conn).await
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        queries::user_by_name(&mut conn, username).await
    }

    pub async fn user_by_id(&self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        queries::user_by_id(&mut conn, user_id).await
    }

    pub async fn session(&self, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        queries::session(&mut conn, session_id).await
    }

    pub async fn token(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        queries::token(&mut conn, key).await
    }

    pub async fn events(&self, f: &EventFilter) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT position, stream_id, stream_version, event_type, schema_version, data, \
             metadata, occurred_at, recorded_at, prev_hash, hash FROM events WHERE position > ",
        );
        q.push_bind(f.after_position);
        if let Some(stream) = &f.stream_id {
            q.push(" AND stream_id = ").push_bind(stream.clone());
        }
        if !f.stream_ids.is_empty() {
            q.push(" AND stream_id IN (");
            let mut sep = q.separated(", ");
            for s in &f.stream_ids {
                sep.push_bind(s.clone());
            }
            q.push(")");
        }
        if let Some(before) = f.before_position {
            q.push(" AND position < ").push_bind(before);
        }
        if let Some(subject) = f.subject {
            let id = subject.to_string();
            q.push(" AND (json_extract(data, '$.session_id') = ")
                .push_bind(id.clone())
                .push(" OR json_extract(data, '$.user_id') = ")
                .push_bind(id)
                .push(")");
        }
        if !f.event_types.is_empty() {
            q.push(" AND event_type IN (");
            let mut sep = q.separated(", ");
            for t in &f.event_types {
                sep.push_bind(t.clone());
            }
            q.push(")");
        }
        if let Some(since) = f.since {
            q.push(" AND occurred_at >= ")
                .push_bind(format_timestamp(since));
        }
        if let Some(until) = f.until {
            q.push(" AND occurred_at < ")
                .push_bind(format_timestamp(until));
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
            let cols: Vec<String> = sqlx::query(&format!("PRAGMA table_info({table})"))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.get::<String, _>("name"))
                .collect();
            let select = cols
                .iter()
                .map(|c| format!("quote({c})"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            let sql = format!("SELECT '{table}|' || {select} FROM {table} ORDER BY {key}");
            for row in sqlx::query(&sql).fetch_all(&self.pool).await? {
                out.push(row.get::<String, _>(0));
            }
        }
        Ok(out)
    }
}
