//! The embedded backend: one SQLite file in WAL mode. A single writer connection (owned by the
//! group-commit writer) appends and projects; a small pool serves reads. The WAL is checkpointed
//! from the pool, never by the writer, so a checkpoint never stalls a commit.

use super::{
    ChainHead, EventFilter, NewEvent, RecordedEvent, StoreError, StoredSigningKey, TokenRecord,
    UnitOfWork,
};
use crate::domain::context::RequestContext;
use crate::domain::session::{Session, SessionStatus};
use crate::domain::token::TokenHash;
use crate::domain::user::{User, UserStatus};
use crate::domain::{Timestamp, format_timestamp, parse_timestamp};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Executor, QueryBuilder, Row, Sqlite};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    options: SqliteConnectOptions,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is durable once COMMIT returns (one fsync of the WAL per batch).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // Checkpoints run from the pool on a timer; the writer never pays for one.
            .pragma("wal_autocheckpoint", "0")
            .pragma("temp_store", "memory")
            .statement_cache_capacity(128);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            pool,
            options,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A dedicated connection for the writer task (or a rebuild), positioned at the chain head.
    pub async fn write_session(&self) -> Result<SqliteWriteSession, StoreError> {
        let conn = SqliteConnection::connect_with(&self.options).await?;
        let head = self.head().await?;
        Ok(SqliteWriteSession {
            conn,
            committed: head,
            head,
        })
    }

    /// Moves WAL content into the database file without blocking the writer (PASSIVE), and
    /// truncates the WAL when it can, so it does not grow without bound.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        let (busy, log, done): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if busy == 0 && log > 0 && log == done && log > 16_384 {
            // Everything is in the main file: a TRUNCATE now is cheap and resets the WAL.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn head(&self) -> Result<ChainHead, StoreError> {
        let row = sqlx::query("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(ChainHead::GENESIS),
            Some(r) => Ok(ChainHead {
                position: r.get("position"),
                hash: hash32(r.get::<Vec<u8>, _>("hash"))?,
            }),
        }
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

    pub async fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        queries::token(&mut conn, hash).await
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
        q.push(" ORDER BY position");
        if let Some(limit) = f.limit {
            q.push(" LIMIT ").push_bind(limit);
        }
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(recorded_event).collect()
    }

    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, public_key, private_key_sealed, status, created_at, \
             activated_at, retired_at FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredSigningKey {
                    kid: r.get("kid"),
                    algorithm: r.get("algorithm"),
                    public_key: r.get("public_key"),
                    private_key_sealed: r.get("private_key_sealed"),
                    status: r.get("status"),
                    created_at: ts(r.get("created_at"))?,
                    activated_at: opt_ts(r.get("activated_at"))?,
                    retired_at: opt_ts(r.get("retired_at"))?,
                })
            })
            .collect()
    }

    pub async fn insert_signing_key(&self, k: &StoredSigningKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, public_key, private_key_sealed, status, \
             created_at, activated_at, retired_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&k.kid)
        .bind(&k.algorithm)
        .bind(&k.public_key)
        .bind(&k.private_key_sealed)
        .bind(&k.status)
        .bind(format_timestamp(k.created_at))
        .bind(k.activated_at.map(format_timestamp))
        .bind(k.retired_at.map(format_timestamp))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn projection_snapshot(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for (table, key) in [
            ("users", "user_id"),
            ("sessions", "session_id"),
            ("refresh_tokens", "token_hash"),
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

/// The writer's connection: a unit of work between `begin` and `commit`, and the chain head it
/// appends after. The head moves with appends and falls back on rollback.
pub struct SqliteWriteSession {
    conn: SqliteConnection,
    committed: ChainHead,
    head: ChainHead,
}

impl super::writer::WriteSession for SqliteWriteSession {
    async fn begin(&mut self) -> Result<(), StoreError> {
        // IMMEDIATE takes the write lock up front: no deadlock upgrading a read lock later.
        self.conn.execute("BEGIN IMMEDIATE").await?;
        self.head = self.committed;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute("COMMIT").await?;
        self.committed = self.head;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), StoreError> {
        self.head = self.committed;
        // Rolling back a transaction SQLite already ended fails harmlessly.
        let _ = self.conn.execute("ROLLBACK").await;
        Ok(())
    }

    fn committed_position(&self) -> i64 {
        self.committed.position
    }

    async fn clear_projections(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM users; DELETE FROM sessions; DELETE FROM refresh_tokens;")
            .await?;
        Ok(())
    }
}

impl UnitOfWork for SqliteWriteSession {
    async fn user_by_id(&mut self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        queries::user_by_id(&mut self.conn, user_id).await
    }

    async fn user_by_name(&mut self, username: &str) -> Result<Option<User>, StoreError> {
        queries::user_by_name(&mut self.conn, username).await
    }

    async fn session(&mut self, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        queries::session(&mut self.conn, session_id).await
    }

    async fn token(&mut self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        queries::token(&mut self.conn, hash).await
    }

    async fn active_sessions_of(&mut self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE user_id = ? AND status = 'active' ORDER BY created_at",
        )
        .bind(user_id.to_string())
        .fetch_all(&mut self.conn)
        .await?;
        rows.iter().map(session_row).collect()
    }

    async fn stream_version(&mut self, stream_id: &str) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(stream_version) FROM events WHERE stream_id = ?")
                .bind(stream_id)
                .fetch_one(&mut self.conn)
                .await?;
        Ok(v.unwrap_or(0))
    }

    async fn append(&mut self, new: NewEvent) -> Result<RecordedEvent, StoreError> {
        let recorded_at = new.occurred_at;
        let e = RecordedEvent::seal(&new, self.head.position + 1, self.head.hash, recorded_at);
        let result = sqlx::query(
            "INSERT INTO events (position, stream_id, stream_version, event_type, schema_version, \
             data, metadata, occurred_at, recorded_at, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.position)
        .bind(&e.stream_id)
        .bind(e.stream_version)
        .bind(&e.event_type)
        .bind(e.schema_version)
        .bind(&e.data)
        .bind(&e.metadata)
        .bind(&e.occurred_at)
        .bind(&e.recorded_at)
        .bind(&e.prev_hash)
        .bind(&e.hash)
        .execute(&mut self.conn)
        .await;
        match result {
            Ok(_) => {
                self.head = ChainHead {
                    position: e.position,
                    hash: hash32(e.hash.clone())?,
                };
                Ok(e)
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(StoreError::Conflict {
                    stream_id: new.stream_id,
                    expected: new.expected_version,
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn put_user(&mut self, u: &User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (user_id, username, password_hash, roles, status, created_at, \
             password_changed_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (user_id) DO UPDATE SET username = excluded.username, \
             password_hash = excluded.password_hash, roles = excluded.roles, \
             status = excluded.status, password_changed_at = excluded.password_changed_at, \
             version = excluded.version",
        )
        .bind(u.user_id.to_string())
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(serde_json::to_string(&u.roles).expect("roles serialize"))
        .bind(u.status.as_str())
        .bind(format_timestamp(u.created_at))
        .bind(u.password_changed_at.map(format_timestamp))
        .bind(u.version)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    async fn put_session(&mut self, s: &Session) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, status, scope, created_at, auth_time, \
             last_seen_at, idle_expires_at, absolute_expires_at, generation, retries, rotated_at, \
             rotated_from, login_context, last_context, reauth_required, ended_at, end_reason, \
             version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (session_id) DO UPDATE SET status = excluded.status, \
             last_seen_at = excluded.last_seen_at, idle_expires_at = excluded.idle_expires_at, \
             generation = excluded.generation, retries = excluded.retries, \
             rotated_at = excluded.rotated_at, rotated_from = excluded.rotated_from, \
             last_context = excluded.last_context, reauth_required = excluded.reauth_required, \
             ended_at = excluded.ended_at, end_reason = excluded.end_reason, \
             version = excluded.version",
        )
        .bind(s.session_id.to_string())
        .bind(s.user_id.to_string())
        .bind(s.status.as_str())
        .bind(&s.scope)
        .bind(format_timestamp(s.created_at))
        .bind(format_timestamp(s.auth_time))
        .bind(format_timestamp(s.last_seen_at))
        .bind(format_timestamp(s.idle_expires_at))
        .bind(format_timestamp(s.absolute_expires_at))
        .bind(i64::from(s.generation))
        .bind(i64::from(s.retries))
        .bind(s.rotated_at.map(format_timestamp))
        .bind(s.rotated_from.map(|h| h.0.to_vec()))
        .bind(json(&s.login_context))
        .bind(json(&s.last_context))
        .bind(s.reauth_required)
        .bind(s.ended_at.map(format_timestamp))
        .bind(&s.end_reason)
        .bind(s.version)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    async fn put_token(
        &mut self,
        hash: &TokenHash,
        token: TokenRecord,
        issued_at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, generation, issued_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(hash.0.as_slice())
        .bind(token.session_id.to_string())
        .bind(i64::from(token.generation))
        .bind(format_timestamp(issued_at))
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }
}

/// Reads shared by the pool and the writer's own transaction.
mod queries {
    use super::*;

    pub async fn user_by_id(
        c: &mut SqliteConnection,
        id: Uuid,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE user_id = ?")
            .bind(id.to_string())
            .fetch_optional(c)
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    pub async fn user_by_name(
        c: &mut SqliteConnection,
        name: &str,
    ) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE username = ?")
            .bind(name)
            .fetch_optional(c)
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    pub async fn session(
        c: &mut SqliteConnection,
        id: Uuid,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE session_id = ?")
            .bind(id.to_string())
            .fetch_optional(c)
            .await?;
        row.as_ref().map(session_row).transpose()
    }

    pub async fn token(
        c: &mut SqliteConnection,
        hash: &TokenHash,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row =
            sqlx::query("SELECT session_id, generation FROM refresh_tokens WHERE token_hash = ?")
                .bind(hash.0.as_slice())
                .fetch_optional(c)
                .await?;
        row.map(|r| {
            Ok(TokenRecord {
                session_id: uuid(r.get("session_id"))?,
                generation: u32::try_from(r.get::<i64, _>("generation"))
                    .map_err(|_| StoreError::Corrupt("token generation".into()))?,
            })
        })
        .transpose()
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

fn hash32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| StoreError::Corrupt("hash length".into()))
}

fn uuid(s: String) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&s).map_err(|_| StoreError::Corrupt(format!("bad uuid {s:?}")))
}

fn ts(s: String) -> Result<Timestamp, StoreError> {
    parse_timestamp(&s).ok_or_else(|| StoreError::Corrupt(format!("bad timestamp {s:?}")))
}

fn opt_ts(s: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    s.map(ts).transpose()
}

fn context(s: String) -> Result<RequestContext, StoreError> {
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("context: {e}")))
}

fn user_row(r: &SqliteRow) -> Result<User, StoreError> {
    Ok(User {
        user_id: uuid(r.get("user_id"))?,
        username: r.get("username"),
        password_hash: r.get("password_hash"),
        roles: serde_json::from_str(&r.get::<String, _>("roles"))
            .map_err(|e| StoreError::Corrupt(format!("roles: {e}")))?,
        status: UserStatus::parse(&r.get::<String, _>("status"))
            .ok_or_else(|| StoreError::Corrupt("user status".into()))?,
        created_at: ts(r.get("created_at"))?,
        password_changed_at: opt_ts(r.get("password_changed_at"))?,
        version: r.get("version"),
    })
}

fn session_row(r: &SqliteRow) -> Result<Session, StoreError> {
    let small = |col: &str| {
        u32::try_from(r.get::<i64, _>(col)).map_err(|_| StoreError::Corrupt(col.to_owned()))
    };
    Ok(Session {
        session_id: uuid(r.get("session_id"))?,
        user_id: uuid(r.get("user_id"))?,
        status: SessionStatus::parse(&r.get::<String, _>("status"))
            .ok_or_else(|| StoreError::Corrupt("session status".into()))?,
        scope: r.get("scope"),
        created_at: ts(r.get("created_at"))?,
        auth_time: ts(r.get("auth_time"))?,
        last_seen_at: ts(r.get("last_seen_at"))?,
        idle_expires_at: ts(r.get("idle_expires_at"))?,
        absolute_expires_at: ts(r.get("absolute_expires_at"))?,
        generation: small("generation")?,
        retries: small("retries")?,
        rotated_at: opt_ts(r.get("rotated_at"))?,
        rotated_from: r
            .get::<Option<Vec<u8>>, _>("rotated_from")
            .map(|b| {
                TokenHash::from_slice(&b).ok_or_else(|| StoreError::Corrupt("rotated_from".into()))
            })
            .transpose()?,
        login_context: context(r.get("login_context"))?,
        last_context: context(r.get("last_context"))?,
        reauth_required: r.get("reauth_required"),
        ended_at: opt_ts(r.get("ended_at"))?,
        end_reason: r.get("end_reason"),
        version: r.get("version"),
    })
}

fn recorded_event(r: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: r.get("position"),
        stream_id: r.get("stream_id"),
        stream_version: r.get("stream_version"),
        event_type: r.get("event_type"),
        schema_version: r.get("schema_version"),
        data: r.get("data"),
        metadata: r.get("metadata"),
        occurred_at: r.get("occurred_at"),
        recorded_at: r.get("recorded_at"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    })
}
