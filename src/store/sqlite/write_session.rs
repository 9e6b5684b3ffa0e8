//! The writer's side of the SQLite store: one connection, one transaction at a time, with a
//! batch-local overlay so a batch of commands costs a few statements.

use super::registry::tx as registry;
use super::rows::*;
use crate::domain::keys::{ApiKeyRecord, SigningKeyRecord};
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::domain::user::User;
use crate::domain::webhook::SubscriptionRecord;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::overlay::Overlay;
use crate::store::{
    ChainHead, NewEvent, PruneCounts, RecordedEvent, StoreError, TokenRecord, UnitOfWork,
};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Executor, QueryBuilder, Row, Sqlite};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

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

/// Rows per multi-row statement: well under SQLite's 32,766 bound parameters (19 per session).
const ROWS_PER_STATEMENT: usize = 256;

impl SqliteWriteSession {
    pub(super) fn new(
        conn: SqliteConnection,
        head: ChainHead,
        wal_restart_due: Arc<AtomicBool>,
    ) -> Self {
        SqliteWriteSession {
            conn,
            committed: head,
            head,
            overlay: Overlay::default(),
            wal_restart_due,
        }
    }

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
        for (key, t, _) in tokens {
            o.read_tokens.insert(key.hash, Some(t));
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
    async fn load_tokens(&mut self, keys: &[TokenKey], begin: bool) -> Result<(), StoreError> {
        for (i, chunk) in keys.chunks(ROWS_PER_STATEMENT).enumerate() {
            let mut q = QueryBuilder::<Sqlite>::new(if begin && i == 0 {
                "BEGIN IMMEDIATE; "
            } else {
                ""
            });
            q.push(
                "SELECT t.token_id AS t_id, t.token_hash AS t_hash, t.session_id AS t_session, \
                 t.generation AS t_generation, s.* FROM refresh_tokens t \
                 LEFT JOIN sessions s ON s.session_id = t.session_id WHERE t.token_id IN (",
            );
            let mut sep = q.separated(", ");
            for k in chunk {
                sep.push_bind(k.id.as_bytes().to_vec());
            }
            q.push(")");
            let rows = q.build().fetch_all(&mut self.conn).await?;
            for k in chunk {
                self.overlay.read_tokens.entry(k.hash).or_insert(None);
            }
            for r in &rows {
                let id = Uuid::from_slice(&r.get::<Vec<u8>, _>("t_id"))
                    .map_err(|_| StoreError::Corrupt("token id length".into()))?;
                let stored: Vec<u8> = r.get("t_hash");
                // The row is the presented token's only if the whole token hashes to what is
                // stored; a known id with another body stays unknown (and loads nothing).
                let Some(hash) = chunk
                    .iter()
                    .find(|k| k.id == id && k.hash.matches(&stored))
                    .map(|k| k.hash)
                else {
                    continue;
                };
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
    rows: &'a [(TokenKey, TokenRecord, Timestamp)],
) {
    q.push("INSERT INTO refresh_tokens (token_id, token_hash, session_id, generation, issued_at) ");
    q.push_values(rows, |mut b, (key, t, at)| {
        b.push_bind(key.id.as_bytes().as_slice())
            .push_bind(key.hash.0.as_slice())
            .push_bind(t.session_id.to_string())
            .push_bind(i64::from(t.generation))
            .push_bind(format_timestamp(*at));
    });
}

fn push_sessions<'a>(q: &mut QueryBuilder<'a, Sqlite>, rows: &'a [Session], set_status: bool) {
    q.push(
        "INSERT INTO sessions (session_id, user_id, status, scope, roles, created_at, auth_time, \
         last_seen_at, idle_expires_at, absolute_expires_at, generation, retries, rotated_at, \
         rotated_from, login_context, last_context, reauth_required, ended_at, end_reason, \
         version) ",
    );
    q.push_values(rows, |mut b, s| {
        b.push_bind(s.session_id.to_string())
            .push_bind(s.user_id.to_string())
            .push_bind(s.status.as_str())
            .push_bind(&s.scope)
            .push_bind(json(&s.roles))
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
        "auth_time = excluded.auth_time, last_seen_at = excluded.last_seen_at, \
         idle_expires_at = excluded.idle_expires_at, generation = excluded.generation, retries = excluded.retries, \
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

impl crate::store::WriteSession for SqliteWriteSession {
    async fn begin(&mut self, prefetch: &[TokenKey]) -> Result<(), StoreError> {
        self.overlay = Overlay::default();
        self.head = self.committed;
        // IMMEDIATE takes the write lock up front: no deadlock upgrading a read lock later.
        if prefetch.is_empty() {
            self.conn.execute("BEGIN IMMEDIATE").await?;
        } else {
            self.load_tokens(prefetch, true).await?;
        }
        // Another process (a second server, a CLI tool) may have appended since our last
        // commit: chain onto what is really there, under the lock we now hold.
        self.committed = queries::head(&mut self.conn).await?;
        self.head = self.committed;
        Ok(())
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
        registry::clear_projections(&mut self.conn).await?;
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

    async fn token(&mut self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        if let Some(t) = self.overlay.token_index.get(&key.hash) {
            return Ok(Some(*t));
        }
        if !self.overlay.read_tokens.contains_key(&key.hash) {
            self.load_tokens(std::slice::from_ref(key), false).await?;
        }
        Ok(self.overlay.read_tokens.get(&key.hash).copied().flatten())
    }

    async fn active_sessions_of(&mut self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        // A query over many rows: let SQLite answer it with every write of the batch applied.
        self.flush(false).await?;
        let sessions = queries::active_sessions_of(&mut self.conn, user_id).await?;
        for s in &sessions {
            self.overlay
                .read_sessions
                .insert(s.session_id, Some(s.clone()));
        }
        Ok(sessions)
    }

    async fn active_user_count(&mut self) -> Result<u64, StoreError> {
        self.flush(false).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT user_id) FROM sessions WHERE status = 'active'",
        )
        .fetch_one(&mut self.conn)
        .await?;
        Ok(n.max(0) as u64)
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
        let e = self.overlay.append(new, &mut self.head)?;
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
        key: &TokenKey,
        token: TokenRecord,
        issued_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.overlay.token_index.insert(key.hash, token);
        self.overlay.tokens.push((*key, token, issued_at));
        self.flush_if_full().await
    }

    async fn prune_ended_before(&mut self, cutoff: Timestamp) -> Result<PruneCounts, StoreError> {
        // Statements over many rows: let SQLite see every write of the batch first.
        self.flush(false).await?;
        let cutoff_text = format_timestamp(cutoff);
        // A session's tokens were issued before it ended, so their UUIDv7 ids all sort below
        // an id made of the cutoff's milliseconds and zeros: the scan stays among old tokens.
        let mut id_bound = [0u8; 16];
        let millis = cutoff.timestamp_millis().max(0) as u64;
        id_bound[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        let tokens = sqlx::query(
            "DELETE FROM refresh_tokens WHERE token_id < ? AND session_id IN \
             (SELECT session_id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?)",
        )
        .bind(id_bound.as_slice())
        .bind(&cutoff_text)
        .execute(&mut self.conn)
        .await?
        .rows_affected();
        let sessions =
            sqlx::query("DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?")
                .bind(&cutoff_text)
                .execute(&mut self.conn)
                .await?
                .rows_affected();
        self.overlay.read_sessions.clear();
        self.overlay.read_tokens.clear();
        Ok(PruneCounts {
            sessions,
            refresh_tokens: tokens,
        })
    }

    async fn signing_key_records(&mut self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.flush(false).await?;
        registry::signing_key_records(&mut self.conn).await
    }

    async fn put_signing_key(&mut self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        self.flush(false).await?;
        registry::put_signing_key(&mut self.conn, key).await
    }

    async fn api_key_record(&mut self, key_id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.flush(false).await?;
        registry::api_key_record(&mut self.conn, key_id).await
    }

    async fn put_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.flush(false).await?;
        registry::put_api_key(&mut self.conn, key).await
    }

    async fn webhook_record(&mut self, id: Uuid) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.flush(false).await?;
        registry::webhook_record(&mut self.conn, id).await
    }

    async fn put_webhook(&mut self, subscription: &SubscriptionRecord) -> Result<(), StoreError> {
        self.flush(false).await?;
        registry::put_webhook(&mut self.conn, subscription).await
    }

    async fn delete_webhook(&mut self, id: Uuid) -> Result<(), StoreError> {
        self.flush(false).await?;
        registry::delete_webhook(&mut self.conn, id).await
    }

    async fn put_secret(&mut self, owner: &str, material: &[u8]) -> Result<(), StoreError> {
        self.flush(false).await?;
        registry::put_secret(&mut self.conn, owner, material).await
    }

    async fn delete_secret(&mut self, owner: &str) -> Result<(), StoreError> {
        self.flush(false).await?;
        registry::delete_secret(&mut self.conn, owner).await
    }

    async fn start_webhook_delivery(&mut self, id: Uuid, after: i64) -> Result<(), StoreError> {
        self.flush(false).await?;
        registry::start_webhook_delivery(&mut self.conn, id, after).await
    }

    async fn delete_webhook_delivery(&mut self, id: Uuid) -> Result<(), StoreError> {
        self.flush(false).await?;
        registry::delete_webhook_delivery(&mut self.conn, id).await
    }
}
