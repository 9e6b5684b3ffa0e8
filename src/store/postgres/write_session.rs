//! The writer's side of the PostgreSQL store: one connection, one transaction per batch, and the
//! batch-local overlay SQLite's writer uses: the batch's refresh tokens and their sessions are
//! read in one statement at BEGIN, rows read are remembered, and the batch's events and
//! projection rows go to the database as one multi-row statement at COMMIT. A batch of any size
//! costs about five round trips.
//!
//! Every batch takes the append lock (`pg_advisory_xact_lock`) right after BEGIN and then reads
//! the chain head: whichever node holds the lock appends after the last committed event, and
//! the lock is released by COMMIT, so positions become visible in the order they were assigned.

use super::locks::{APPEND_LOCK, COMMIT_CHANNEL};
use super::registry::tx as registry;
use super::rows::queries;
use super::writes;
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
    overlay: Overlay,
}

impl PostgresWriteSession {
    pub(super) fn new(options: PgConnectOptions, head: ChainHead) -> Self {
        PostgresWriteSession {
            options,
            conn: None,
            committed: head,
            head,
            overlay: Overlay::default(),
        }
    }

    fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.conn.as_mut().ok_or_else(no_transaction)
    }

    async fn open_transaction(&mut self) -> Result<(), StoreError> {
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        // READ COMMITTED whatever the database's default: each statement after the lock must
        // see what the previous holder committed (under REPEATABLE READ the snapshot would date
        // from the lock statement, taken before the lock was granted).
        let lock = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({}, {});",
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

    /// Sends every pending row (inside the open transaction). Reads stay cached: they now match
    /// what the database holds.
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.overlay.pending() == 0 {
            return Ok(());
        }
        let o = &mut self.overlay;
        let events = std::mem::take(&mut o.events);
        let tokens = std::mem::take(&mut o.tokens);
        let sessions: Vec<Session> = std::mem::take(&mut o.sessions).into_values().collect();
        let users: Vec<User> = std::mem::take(&mut o.users).into_values().collect();
        o.versions.clear();
        o.stream_max.clear();
        o.token_index.clear();
        let conn = self.conn.as_mut().ok_or_else(no_transaction)?;
        match writes::write_rows(conn, &events, &tokens, &sessions, &users).await {
            Ok(()) => {}
            // Another node appended to one of our streams first (or took the position, which
            // the append lock rules out). The transaction is aborted, so the stream cannot be
            // looked up; the writer reruns each command alone, and each decides again.
            Err(sqlx::Error::Database(db))
                if db.is_unique_violation() && db.table() == Some("events") =>
            {
                let first = &events[0];
                return Err(StoreError::Conflict {
                    stream_id: first.stream_id.clone(),
                    expected: first.stream_version - 1,
                });
            }
            Err(other) => return Err(other.into()),
        }
        let o = &mut self.overlay;
        for (key, t, _) in tokens {
            o.read_tokens.insert(key.hash, Some(t));
        }
        for s in sessions {
            o.read_sessions.insert(s.session_id, Some(s));
        }
        for u in users {
            o.read_users.insert(u.user_id, Some(u));
        }
        Ok(())
    }

    async fn flush_if_full(&mut self) -> Result<(), StoreError> {
        if self.overlay.full() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Reads tokens and their sessions into the overlay, in one statement.
    async fn load_tokens(&mut self, keys: &[TokenKey]) -> Result<(), StoreError> {
        let rows = queries::tokens_with_sessions(self.conn()?, keys).await?;
        for k in keys {
            self.overlay.read_tokens.entry(k.hash).or_insert(None);
        }
        for (id, stored, record, session) in rows {
            // The row is the presented token's only if the whole token hashes to what is
            // stored; a known id with another body stays unknown (and loads nothing).
            let Some(key) = keys.iter().find(|k| k.id == id && k.hash.matches(&stored)) else {
                continue;
            };
            self.overlay.read_tokens.insert(key.hash, Some(record));
            self.overlay
                .read_sessions
                .entry(record.session_id)
                .or_insert(session);
        }
        Ok(())
    }
}

fn no_transaction() -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(
        "the write session has no open transaction".into(),
    ))
}

impl crate::store::WriteSession for PostgresWriteSession {
    async fn begin(&mut self, prefetch: &[TokenKey]) -> Result<(), StoreError> {
        self.overlay = Overlay::default();
        self.head = self.committed;
        self.open_transaction().await?;
        if !prefetch.is_empty() {
            self.load_tokens(prefetch).await?;
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        self.flush().await?;
        self.overlay = Overlay::default();
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
        self.overlay = Overlay::default();
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
        // Pending events must reach the log; pending projection rows would be deleted anyway.
        self.flush().await?;
        writes::clear_projections(self.conn()?).await?;
        registry::clear_projections(self.conn()?).await?;
        self.overlay.read_tokens.clear();
        self.overlay.read_sessions.clear();
        self.overlay.read_users.clear();
        Ok(())
    }
}

impl UnitOfWork for PostgresWriteSession {
    async fn user_by_id(&mut self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        if let Some(known) = self.overlay.user(user_id) {
            return Ok(known);
        }
        let user = queries::user_by_id(self.conn()?, user_id).await?;
        self.overlay.read_users.insert(user_id, user.clone());
        Ok(user)
    }

    async fn user_by_name(&mut self, username: &str) -> Result<Option<User>, StoreError> {
        if let Some(user) = self.overlay.user_named(username) {
            return Ok(Some(user));
        }
        let found = queries::user_by_name(self.conn()?, username).await?;
        match found {
            // The overlay is newer than the database for a user it holds.
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
        let session = queries::session(self.conn()?, session_id).await?;
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
            self.load_tokens(std::slice::from_ref(key)).await?;
        }
        Ok(self.overlay.read_tokens.get(&key.hash).copied().flatten())
    }

    async fn active_sessions_of(&mut self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        // A query over many rows: let the database answer it with the batch's writes applied.
        self.flush().await?;
        let sessions = queries::active_sessions_of(self.conn()?, user_id).await?;
        for s in &sessions {
            self.overlay
                .read_sessions
                .insert(s.session_id, Some(s.clone()));
        }
        Ok(sessions)
    }

    async fn active_user_count(&mut self) -> Result<u64, StoreError> {
        self.flush().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT user_id) FROM sessions WHERE status = 'active'",
        )
        .fetch_one(self.conn()?)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn stream_version(&mut self, stream_id: &str) -> Result<i64, StoreError> {
        let stored = queries::stream_version(self.conn()?, stream_id).await?;
        let pending = self.overlay.stream_max.get(stream_id).copied();
        Ok(stored.max(pending.unwrap_or(0)))
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
        // Statements over many rows: let the database see every write of the batch first.
        self.flush().await?;
        let cutoff = format_timestamp(cutoff);
        let conn = self.conn()?;
        let tokens = sqlx::query(
            "DELETE FROM refresh_tokens WHERE session_id IN (SELECT session_id FROM sessions \
             WHERE ended_at IS NOT NULL AND ended_at < $1::timestamptz)",
        )
        .bind(&cutoff)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        let sessions = sqlx::query(
            "DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < $1::timestamptz",
        )
        .bind(&cutoff)
        .execute(&mut *conn)
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
        self.flush().await?;
        registry::signing_key_records(self.conn()?).await
    }

    async fn put_signing_key(&mut self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        self.flush().await?;
        registry::put_signing_key(self.conn()?, key).await
    }

    async fn api_key_record(&mut self, key_id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.flush().await?;
        registry::api_key_record(self.conn()?, key_id).await
    }

    async fn put_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.flush().await?;
        registry::put_api_key(self.conn()?, key).await
    }

    async fn webhook_record(&mut self, id: Uuid) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.flush().await?;
        registry::webhook_record(self.conn()?, id).await
    }

    async fn put_webhook(&mut self, subscription: &SubscriptionRecord) -> Result<(), StoreError> {
        self.flush().await?;
        registry::put_webhook(self.conn()?, subscription).await
    }

    async fn delete_webhook(&mut self, id: Uuid) -> Result<(), StoreError> {
        self.flush().await?;
        registry::delete_webhook(self.conn()?, id).await
    }

    async fn put_secret(&mut self, owner: &str, material: &[u8]) -> Result<(), StoreError> {
        self.flush().await?;
        registry::put_secret(self.conn()?, owner, material).await
    }

    async fn delete_secret(&mut self, owner: &str) -> Result<(), StoreError> {
        self.flush().await?;
        registry::delete_secret(self.conn()?, owner).await
    }

    async fn start_webhook_delivery(&mut self, id: Uuid, after: i64) -> Result<(), StoreError> {
        self.flush().await?;
        registry::start_webhook_delivery(self.conn()?, id, after).await
    }

    async fn delete_webhook_delivery(&mut self, id: Uuid) -> Result<(), StoreError> {
        self.flush().await?;
        registry::delete_webhook_delivery(self.conn()?, id).await
    }
}
