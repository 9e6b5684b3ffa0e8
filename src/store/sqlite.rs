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
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// WAL frames (pages) beyond which the log is started over after a checkpoint.
const WAL_RESTART_FRAMES: i64 = 32_768;
/// Frames a checkpoint may leave behind for the writer to finish (a few batches' worth).
const WAL_LEFTOVER_FRAMES: i64 = 128;

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
        Ok(SqliteWriteSession {
            conn,
            committed: head,
            head,
            overlay: Overlay::default(),
            wal_restart_due: self.wal_restart_due.clone(),
        })
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
///
/// Every statement is a round trip to sqlx's worker thread, so the transaction keeps a
/// batch-local overlay: rows read are remembered, and appends and projection writes are held in
/// memory and sent as a few multi-row statements at commit (or earlier, see [`Overlay::full`]).
/// Reads look at the overlay first, so a command sees the writes of the commands before it.
pub struct SqliteWriteSession {
    conn: SqliteConnection,
    committed: ChainHead,
    head: ChainHead,
    overlay: Overlay,
    wal_restart_due: Arc<AtomicBool>,
}

/// Writes not yet sent to SQLite, and rows already read, for the current transaction only:
/// another process may write between our transactions, so nothing survives commit or rollback.
#[derive(Default)]
struct Overlay {
    events: Vec<RecordedEvent>,
    /// (stream, version) of every event in `events`: the in-memory side of the UNIQUE guard.
    versions: HashSet<(String, i64)>,
    stream_max: HashMap<String, i64>,
    tokens: Vec<(TokenHash, TokenRecord, Timestamp)>,
    token_index: HashMap<TokenHash, TokenRecord>,
    sessions: HashMap<Uuid, Session>,
    users: HashMap<Uuid, User>,
    /// Rows as SQLite holds them now (`None`: known to be absent).
    read_tokens: HashMap<TokenHash, Option<TokenRecord>>,
    read_sessions: HashMap<Uuid, Option<Session>>,
    read_users: HashMap<Uuid, Option<User>>,
}

/// Pending rows after which the overlay is flushed early, so a rebuild of a long log does not
/// hold every projection row in memory.
const OVERLAY_FLUSH_ROWS: usize = 4096;
/// Rows per multi-row statement: well under SQLite's 32,766 bound parameters (19 per session).
const ROWS_PER_STATEMENT: usize = 256;

impl Overlay {
    fn pending(&self) -> usize {
        self.events.len() + self.tokens.len() + self.sessions.len() + self.users.len()
    }

    fn full(&self) -> bool {
        self.pending() >= OVERLAY_FLUSH_ROWS
    }

    fn session(&self, id: Uuid) -> Option<Option<Session>> {
        self.sessions
            .get(&id)
            .map(|s| Some(s.clone()))
            .or_else(|| self.read_sessions.get(&id).cloned())
    }

    fn user(&self, id: Uuid) -> Option<Option<User>> {
        self.users
            .get(&id)
            .map(|u| Some(u.clone()))
            .or_else(|| self.read_users.get(&id).cloned())
    }

    fn user_named(&self, name: &str) -> Option<User> {
        self.users
            .values()
            .chain(self.read_users.values().flatten())
            .find(|u| u.username == name)
            .cloned()
    }
}

impl SqliteWriteSession {
    /// Sends every pending write to SQLite (inside the open transaction) and, with `commit`,
    /// commits, all as one multi-statement query: one round trip to sqlx's worker thread, which
    /// under load costs far more in wake-ups than the statements themselves. Reads stay cached:
    /// they now match what SQLite holds.
    async fn flush(&mut self, commit: bool) -> Result<(), StoreError> {
        let o = &mut self.overlay;
        if o.pending() == 0 {
            if commit {
                self.conn.execute("COMMIT").await?;
            }
            return Ok(());
        }
        let events = std::mem::take(&mut o.events);
        let tokens = std::mem::take(&mut o.tokens);
        let sessions = std::mem::take(&mut o.sessions);
        let users: Vec<User> = std::mem::take(&mut o.users).into_values().collect();
        o.versions.clear();
        o.stream_max.clear();
        o.token_index.clear();
        // A session whose status did not change is written without touching `status`, so
        // SQLite leaves its sessions_by_user entry alone (it rewrites every index whose columns
        // are assigned, equal or not).
        let (same_status, other): (Vec<_>, Vec<_>) = sessions.into_values().partition(|s| {
            matches!(o.read_sessions.get(&s.session_id),
                     Some(Some(before)) if before.status == s.status)
        });

        let mut q = QueryBuilder::<Sqlite>::new("");
        let mut statements = Statements::default();
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            statements.next(&mut q);
            push_events(&mut q, chunk);
        }
        for chunk in tokens.chunks(ROWS_PER_STATEMENT) {
            statements.next(&mut q);
            push_tokens(&mut q, chunk);
        }
        for (rows, set_status) in [(&same_status, false), (&other, true)] {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                statements.next(&mut q);
                push_sessions(&mut q, chunk, set_status);
            }
        }
        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            statements.next(&mut q);
            push_users(&mut q, chunk);
        }
        if commit {
            statements.next(&mut q);
            q.push("COMMIT");
        }
        match q.build().execute(&mut self.conn).await {
            Ok(_) => {}
            // Only the events table turns a unique violation into a lost race; a duplicate
            // token hash, say, stays a database error as it was before batching.
            Err(sqlx::Error::Database(db))
                if db.is_unique_violation() && db.message().contains("events.") =>
            {
                return Err(self.conflict_among(&events).await);
            }
            Err(other) => return Err(other.into()),
        }
        drop(q);

        let o = &mut self.overlay;
        for (hash, t, _) in tokens {
            o.read_tokens.insert(hash, Some(t));
        }
        for s in same_status.into_iter().chain(other) {
            o.read_sessions.insert(s.session_id, Some(s));
        }
        for u in users {
            o.read_users.insert(u.user_id, Some(u));
        }
        Ok(())
    }

    /// Names the stream whose append lost the race, for the error (a rare path: another
    /// process wrote to one of our streams).
    async fn conflict_among(&mut self, events: &[RecordedEvent]) -> StoreError {
        for e in events {
            let taken: Result<Option<Vec<u8>>, _> = sqlx::query_scalar(
                "SELECT hash FROM events WHERE stream_id = ? AND stream_version = ?",
            )
            .bind(&e.stream_id)
            .bind(e.stream_version)
            .fetch_optional(&mut self.conn)
            .await;
            // A row with our hash is ours, written by an earlier statement of the flush.
            if let Ok(Some(hash)) = taken
                && hash != e.hash
            {
                return StoreError::Conflict {
                    stream_id: e.stream_id.clone(),
                    expected: e.stream_version - 1,
                };
            }
        }
        // Otherwise the position was taken: another process appended to the log.
        let first = &events[0];
        StoreError::Conflict {
            stream_id: first.stream_id.clone(),
            expected: first.stream_version - 1,
        }
    }

    async fn flush_if_full(&mut self) -> Result<(), StoreError> {
        if self.overlay.full() {
            self.flush(false).await?;
        }
        Ok(())
    }

    /// Reads tokens and, in the same statement, their sessions: a refresh needs both. With
    /// `begin`, the transaction starts in the same round trip.
    async fn load_tokens(&mut self, hashes: &[TokenHash], begin: bool) -> Result<(), StoreError> {
        for (i, chunk) in hashes.chunks(ROWS_PER_STATEMENT).enumerate() {
            let mut q = QueryBuilder::<Sqlite>::new(if begin && i == 0 {
                "BEGIN IMMEDIATE; "
            } else {
                ""
            });
            q.push(
                "SELECT t.token_hash AS t_hash, t.session_id AS t_session, \
                 t.generation AS t_generation, s.* FROM refresh_tokens t \
                 LEFT JOIN sessions s ON s.session_id = t.session_id WHERE t.token_hash IN (",
            );
            let mut sep = q.separated(", ");
            for h in chunk {
                sep.push_bind(h.0.to_vec());
            }
            q.push(")");
            let rows = q.build().fetch_all(&mut self.conn).await?;
            for h in chunk {
                self.overlay.read_tokens.entry(*h).or_insert(None);
            }
            for r in &rows {
                let hash = TokenHash::from_slice(&r.get::<Vec<u8>, _>("t_hash"))
                    .ok_or_else(|| StoreError::Corrupt("token hash length".into()))?;
                let record = TokenRecord {
                    session_id: uuid(r.get("t_session"))?,
                    generation: u32::try_from(r.get::<i64, _>("t_generation"))
                        .map_err(|_| StoreError::Corrupt("token generation".into()))?,
                };
                self.overlay.read_tokens.insert(hash, Some(record));
                let session = match r.get::<Option<String>, _>("session_id") {
                    Some(_) => Some(session_row(r)?),
                    None => None,
                };
                self.overlay
                    .read_sessions
                    .entry(record.session_id)
                    .or_insert(session);
            }
        }
        Ok(())
    }
}

/// Joins the statements of one multi-statement query.
#[derive(Default)]
struct Statements {
    any: bool,
}

impl Statements {
    fn next(&mut self, q: &mut QueryBuilder<'_, Sqlite>) {
        if self.any {
            q.push("; ");
        }
        self.any = true;
    }
}

fn push_events<'a>(q: &mut QueryBuilder<'a, Sqlite>, rows: &'a [RecordedEvent]) {
    q.push(
        "INSERT INTO events (position, stream_id, stream_version, event_type, schema_version, \
         data, metadata, occurred_at, recorded_at, prev_hash, hash) ",
    );
    q.push_values(rows, |mut b, e| {
        b.push_bind(e.position)
            .push_bind(&e.stream_id)
            .push_bind(e.stream_version)
            .push_bind(&e.event_type)
            .push_bind(e.schema_version)
            .push_bind(&e.data)
            .push_bind(&e.metadata)
            .push_bind(&e.occurred_at)
            .push_bind(&e.recorded_at)
            .push_bind(&e.prev_hash)
            .push_bind(&e.hash);
    });
}

fn push_tokens<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    rows: &'a [(TokenHash, TokenRecord, Timestamp)],
) {
    q.push("INSERT INTO refresh_tokens (token_hash, session_id, generation, issued_at) ");
    q.push_values(rows, |mut b, (hash, t, at)| {
        b.push_bind(hash.0.as_slice())
            .push_bind(t.session_id.to_string())
            .push_bind(i64::from(t.generation))
            .push_bind(format_timestamp(*at));
    });
}

fn push_sessions<'a>(q: &mut QueryBuilder<'a, Sqlite>, rows: &'a [Session], set_status: bool) {
    q.push(
        "INSERT INTO sessions (session_id, user_id, status, scope, created_at, auth_time, \
         last_seen_at, idle_expires_at, absolute_expires_at, generation, retries, rotated_at, \
         rotated_from, login_context, last_context, reauth_required, ended_at, end_reason, \
         version) ",
    );
    q.push_values(rows, |mut b, s| {
        b.push_bind(s.session_id.to_string())
            .push_bind(s.user_id.to_string())
            .push_bind(s.status.as_str())
            .push_bind(&s.scope)
            .push_bind(format_timestamp(s.created_at))
            .push_bind(format_timestamp(s.auth_time))
            .push_bind(format_timestamp(s.last_seen_at))
            .push_bind(format_timestamp(s.idle_expires_at))
            .push_bind(format_timestamp(s.absolute_expires_at))
            .push_bind(i64::from(s.generation))
            .push_bind(i64::from(s.retries))
            .push_bind(s.rotated_at.map(format_timestamp))
            .push_bind(s.rotated_from.as_ref().map(|h| h.0.as_slice()))
            .push_bind(json(&s.login_context))
            .push_bind(json(&s.last_context))
            .push_bind(s.reauth_required)
            .push_bind(s.ended_at.map(format_timestamp))
            .push_bind(&s.end_reason)
            .push_bind(s.version);
    });
    q.push(" ON CONFLICT (session_id) DO UPDATE SET ");
    if set_status {
        q.push("status = excluded.status, ");
    }
    q.push(
        "last_seen_at = excluded.last_seen_at, idle_expires_at = excluded.idle_expires_at, \
         generation = excluded.generation, retries = excluded.retries, \
         rotated_at = excluded.rotated_at, rotated_from = excluded.rotated_from, \
         last_context = excluded.last_context, reauth_required = excluded.reauth_required, \
         ended_at = excluded.ended_at, end_reason = excluded.end_reason, \
         version = excluded.version",
    );
}

fn push_users<'a>(q: &mut QueryBuilder<'a, Sqlite>, rows: &'a [User]) {
    q.push(
        "INSERT INTO users (user_id, username, password_hash, roles, status, created_at, \
         password_changed_at, version) ",
    );
    q.push_values(rows, |mut b, u| {
        b.push_bind(u.user_id.to_string())
            .push_bind(&u.username)
            .push_bind(&u.password_hash)
            .push_bind(json(&u.roles))
            .push_bind(u.status.as_str())
            .push_bind(format_timestamp(u.created_at))
            .push_bind(u.password_changed_at.map(format_timestamp))
            .push_bind(u.version);
    });
    q.push(
        " ON CONFLICT (user_id) DO UPDATE SET username = excluded.username, \
         password_hash = excluded.password_hash, roles = excluded.roles, \
         status = excluded.status, password_changed_at = excluded.password_changed_at, \
         version = excluded.version",
    );
}

impl super::writer::WriteSession for SqliteWriteSession {
    async fn begin(&mut self, prefetch: &[TokenHash]) -> Result<(), StoreError> {
        self.overlay = Overlay::default();
        self.head = self.committed;
        // IMMEDIATE takes the write lock up front: no deadlock upgrading a read lock later.
        if prefetch.is_empty() {
            self.conn.execute("BEGIN IMMEDIATE").await?;
            Ok(())
        } else {
            self.load_tokens(prefetch, true).await
        }
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        self.flush(true).await?;
        self.overlay = Overlay::default();
        self.committed = self.head;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), StoreError> {
        self.overlay = Overlay::default();
        self.head = self.committed;
        // Rolling back a transaction SQLite already ended fails harmlessly.
        let _ = self.conn.execute("ROLLBACK").await;
        Ok(())
    }

    fn committed_position(&self) -> i64 {
        self.committed.position
    }

    async fn between_batches(&mut self) {
        if self.wal_restart_due.swap(false, Ordering::AcqRel) {
            // Catches up the frames written since the background pass, so the next BEGIN
            // finds the WAL fully checkpointed and starts it over.
            let started = std::time::Instant::now();
            match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut self.conn)
                .await
            {
                Ok(r) => tracing::trace!(
                    micros = started.elapsed().as_micros() as u64,
                    log = r.get::<i64, _>(1),
                    done = r.get::<i64, _>(2),
                    "writer-side WAL checkpoint"
                ),
                Err(e) => tracing::warn!(error = %e, "writer-side WAL checkpoint failed"),
            }
        }
    }

    async fn clear_projections(&mut self) -> Result<(), StoreError> {
        // Pending events must reach the log; pending projection rows would be deleted anyway.
        self.flush(false).await?;
        self.conn
            .execute("DELETE FROM users; DELETE FROM sessions; DELETE FROM refresh_tokens;")
            .await?;
        self.overlay.read_tokens.clear();
        self.overlay.read_sessions.clear();
        self.overlay.read_users.clear();
        Ok(())
    }
}

impl UnitOfWork for SqliteWriteSession {
    async fn user_by_id(&mut self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        if let Some(known) = self.overlay.user(user_id) {
            return Ok(known);
        }
        let user = queries::user_by_id(&mut self.conn, user_id).await?;
        self.overlay.read_users.insert(user_id, user.clone());
        Ok(user)
    }

    async fn user_by_name(&mut self, username: &str) -> Result<Option<User>, StoreError> {
        if let Some(user) = self.overlay.user_named(username) {
            return Ok(Some(user));
        }
        let found = queries::user_by_name(&mut self.conn, username).await?;
        match found {
            // The overlay is newer than SQLite for a user it holds.
            Some(u) => match self.overlay.user(u.user_id) {
                Some(newer) => Ok(newer.filter(|n| n.username == username)),
                None => {
                    self.overlay.read_users.insert(u.user_id, Some(u.clone()));
                    Ok(Some(u))
                }
            },
            None => Ok(None),
        }
    }

    async fn session(&mut self, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        if let Some(known) = self.overlay.session(session_id) {
            return Ok(known);
        }
        let session = queries::session(&mut self.conn, session_id).await?;
        self.overlay
            .read_sessions
            .insert(session_id, session.clone());
        Ok(session)
    }

    async fn token(&mut self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        if let Some(t) = self.overlay.token_index.get(hash) {
            return Ok(Some(*t));
        }
        if !self.overlay.read_tokens.contains_key(hash) {
            self.load_tokens(std::slice::from_ref(hash), false).await?;
        }
        Ok(self.overlay.read_tokens.get(hash).copied().flatten())
    }

    async fn active_sessions_of(&mut self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        // A query over many rows: let SQLite answer it with every write of the batch applied.
        self.flush(false).await?;
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE user_id = ? AND status = 'active' ORDER BY created_at",
        )
        .bind(user_id.to_string())
        .fetch_all(&mut self.conn)
        .await?;
        let sessions = rows
            .iter()
            .map(session_row)
            .collect::<Result<Vec<_>, _>>()?;
        for s in &sessions {
            self.overlay
                .read_sessions
                .insert(s.session_id, Some(s.clone()));
        }
        Ok(sessions)
    }

    async fn stream_version(&mut self, stream_id: &str) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(stream_version) FROM events WHERE stream_id = ?")
                .bind(stream_id)
                .fetch_one(&mut self.conn)
                .await?;
        let pending = self.overlay.stream_max.get(stream_id).copied();
        Ok(v.unwrap_or(0).max(pending.unwrap_or(0)))
    }

    async fn append(&mut self, new: NewEvent) -> Result<RecordedEvent, StoreError> {
        let version = new.expected_version + 1;
        if self
            .overlay
            .versions
            .contains(&(new.stream_id.clone(), version))
        {
            return Err(StoreError::Conflict {
                stream_id: new.stream_id,
                expected: new.expected_version,
            });
        }
        let recorded_at = new.occurred_at;
        let e = RecordedEvent::seal(&new, self.head.position + 1, self.head.hash, recorded_at);
        self.head = ChainHead {
            position: e.position,
            hash: hash32(e.hash.clone())?,
        };
        let o = &mut self.overlay;
        o.versions.insert((new.stream_id.clone(), version));
        let max = o.stream_max.entry(new.stream_id).or_insert(version);
        *max = (*max).max(version);
        o.events.push(e.clone());
        self.flush_if_full().await?;
        Ok(e)
    }

    async fn put_user(&mut self, u: &User) -> Result<(), StoreError> {
        self.overlay.users.insert(u.user_id, u.clone());
        self.flush_if_full().await
    }

    async fn put_session(&mut self, s: &Session) -> Result<(), StoreError> {
        self.overlay.sessions.insert(s.session_id, s.clone());
        self.flush_if_full().await
    }

    async fn put_token(
        &mut self,
        hash: &TokenHash,
        token: TokenRecord,
        issued_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.overlay.token_index.insert(*hash, token);
        self.overlay.tokens.push((*hash, token, issued_at));
        self.flush_if_full().await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Actor, EventMetadata};
    use crate::domain::parse_timestamp;
    use crate::domain::session::SessionPolicy;
    use crate::store::Store;
    use crate::store::commands::{Command, RegisterUser, Reply, execute};
    use crate::store::writer::WriteSession;
    use chrono::Duration;

    fn policy() -> SessionPolicy {
        SessionPolicy {
            idle_lifetime: Duration::days(30),
            absolute_lifetime: Duration::days(90),
            grace_window: Duration::seconds(30),
            max_grace_retries: 3,
        }
    }

    fn meta() -> EventMetadata {
        EventMetadata {
            actor: Actor::Anonymous,
            request_id: Some("req".into()),
            causation: None,
        }
    }

    fn hash(n: u8) -> TokenHash {
        TokenHash([n; 32])
    }

    fn numbered_token(n: u32) -> TokenHash {
        let mut h = [7u8; 32];
        h[..4].copy_from_slice(&n.to_be_bytes());
        TokenHash(h)
    }

    /// Register, log in twice, rotate, reuse an old token, log out everywhere: every kind of
    /// read the overlay must answer from a write earlier in the same batch.
    fn script() -> Vec<Command> {
        let user_id = Uuid::from_u128(1);
        let (s1, s2) = (Uuid::from_u128(11), Uuid::from_u128(12));
        let ctx = RequestContext::default();
        let start = |session_id, token| Command::StartSession {
            user_id,
            session_id,
            scope: "openid".into(),
            token,
            context: ctx.clone(),
        };
        let refresh = |from, to| Command::Refresh {
            presented: hash(from),
            new_token: hash(to),
            context: ctx.clone(),
        };
        vec![
            Command::Register(RegisterUser {
                user_id,
                username: "alice".into(),
                password_hash: "x".into(),
                roles: vec!["user".into()],
                context: ctx.clone(),
            }),
            start(s1, hash(1)),
            start(s2, hash(2)),
            refresh(1, 3),
            refresh(3, 4),
            refresh(2, 5),
            refresh(1, 6),  // an older generation: reuse, the family is revoked
            refresh(9, 10), // unknown
            Command::LogoutEverywhere {
                user_id,
                except: None,
                context: None,
            },
        ]
    }

    async fn open(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
        SqliteStore::open(&dir.path().join(name)).await.unwrap()
    }

    async fn run(ws: &mut SqliteWriteSession, commands: &[Command]) -> Vec<Reply> {
        let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let prefetch: Vec<TokenHash> = commands
            .iter()
            .filter_map(|c| c.presented_token())
            .copied()
            .collect();
        ws.begin(&prefetch).await.unwrap();
        let mut replies = Vec::new();
        for c in commands {
            replies.push(
                execute(ws, c.clone(), &meta(), now, &policy())
                    .await
                    .unwrap(),
            );
        }
        ws.commit().await.unwrap();
        replies
    }

    async fn all_events(store: &SqliteStore) -> Vec<RecordedEvent> {
        store.events(&EventFilter::default()).await.unwrap()
    }

    #[tokio::test]
    async fn one_batch_equals_one_transaction_per_command_and_rebuilds_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (batched, single) = (open(&dir, "a.db").await, open(&dir, "b.db").await);
        let commands = script();

        let mut ws = batched.write_session().await.unwrap();
        let batch_replies = run(&mut ws, &commands).await;
        let mut ws1 = single.write_session().await.unwrap();
        let mut single_replies = Vec::new();
        for c in &commands {
            single_replies.extend(run(&mut ws1, std::slice::from_ref(c)).await);
        }
        assert_eq!(batch_replies, single_replies);
        assert!(matches!(batch_replies[4], Reply::Refreshed { .. }));
        assert!(matches!(batch_replies[6], Reply::Rejected(_)));

        let events = all_events(&batched).await;
        assert_eq!(events, all_events(&single).await);
        let mut prev = [0u8; 32];
        for e in &events {
            assert_eq!(e.prev_hash, prev.to_vec());
            prev = crate::store::chain::event_hash(e);
            assert_eq!(e.hash, prev.to_vec());
        }
        let live = batched.projection_snapshot().await.unwrap();
        assert_eq!(live, single.projection_snapshot().await.unwrap());
        assert!(live.iter().any(|r| r.starts_with("refresh_tokens|")));

        let store = Store::Sqlite(batched.clone());
        assert_eq!(
            store.rebuild_projections().await.unwrap(),
            events.len() as u64
        );
        assert_eq!(batched.projection_snapshot().await.unwrap(), live);
    }

    #[tokio::test]
    async fn a_rebuild_larger_than_the_overlay_flushes_as_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "big.db").await;
        let mut ws = store.write_session().await.unwrap();
        run(&mut ws, &script()[..1]).await;
        let sessions: Vec<Command> = (0..OVERLAY_FLUSH_ROWS as u128)
            .map(|i| Command::StartSession {
                user_id: Uuid::from_u128(1),
                session_id: Uuid::from_u128(1000 + i),
                scope: "openid".into(),
                token: numbered_token(i as u32),
                context: RequestContext::default(),
            })
            .collect();
        run(&mut ws, &sessions).await;
        let live = store.projection_snapshot().await.unwrap();
        Store::Sqlite(store.clone())
            .rebuild_projections()
            .await
            .unwrap();
        assert_eq!(store.projection_snapshot().await.unwrap(), live);
    }

    #[tokio::test]
    async fn appending_twice_at_one_version_is_a_conflict_in_the_batch_and_across_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "c.db").await;
        let mut a = store.write_session().await.unwrap();
        let mut b = store.write_session().await.unwrap();
        let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        let record = |kid: &str| NewEvent {
            stream_id: "signing-key-k".into(),
            expected_version: 0,
            event: crate::domain::event::Event::SigningKeyActivated(
                crate::domain::event::SigningKeyChanged { kid: kid.into() },
            ),
            metadata: meta(),
            occurred_at: now,
        };

        // Within one batch the overlay is the guard.
        a.begin(&[]).await.unwrap();
        a.append(record("k")).await.unwrap();
        let err = a.append(record("k")).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        a.rollback().await.unwrap();

        // Across writers it is SQLite's UNIQUE constraint, met when the overlay is flushed.
        a.begin(&[]).await.unwrap();
        a.append(record("k")).await.unwrap();
        a.commit().await.unwrap();
        b.begin(&[]).await.unwrap();
        b.append(record("k2")).await.unwrap();
        let err = b.commit().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { stream_id, expected: 0 } if stream_id == "signing-key-k"),
            "{err}"
        );
        b.rollback().await.unwrap();
        assert_eq!(all_events(&store).await.len(), 1);
    }

    #[tokio::test]
    async fn rollback_discards_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "d.db").await;
        let mut ws = store.write_session().await.unwrap();
        let commands = script();
        run(&mut ws, &commands[..1]).await;

        let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
        ws.begin(&[]).await.unwrap();
        execute(&mut ws, commands[1].clone(), &meta(), now, &policy())
            .await
            .unwrap();
        assert!(ws.token(&hash(1)).await.unwrap().is_some());
        ws.rollback().await.unwrap();

        ws.begin(&[hash(1)]).await.unwrap();
        assert!(ws.token(&hash(1)).await.unwrap().is_none());
        assert!(ws.session(Uuid::from_u128(11)).await.unwrap().is_none());
        assert_eq!(
            ws.stream_version("session-00000000-0000-0000-0000-00000000000b")
                .await
                .unwrap(),
            0
        );
        ws.commit().await.unwrap();
        assert_eq!(all_events(&store).await.len(), 1);
        assert_eq!(
            store.head().await.unwrap().position,
            ws.committed_position()
        );
    }
}
