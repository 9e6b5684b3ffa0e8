//! The writer's side of the SQLite store: one connection, one transaction at a time. The unit
//! of work is the shared [`OverlaySession`]; this is what SQLite does its own way: `BEGIN
//! IMMEDIATE` in the round trip that reads the batch's tokens, the whole flush and the COMMIT
//! as one multi-statement query, and the WAL checkpoint between batches.

use crate::domain::token::TokenKey;
use crate::store::dispatch::dialect::{Dialect, Stmt};
use crate::store::dispatch::rows::{push_events, push_sessions, push_tokens, push_users};
use crate::store::dispatch::{data_keys, integrity, tables};
use crate::store::overlay::{FlushEnd, OverlaySession, Pending, TokenRow, WriteBackend};
use crate::store::{ChainHead, RecordedEvent, StoreError};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Executor, Row, Sqlite};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The writer's unit of work on SQLite.
pub type SqliteWriteSession = OverlaySession<SqliteWriter>;

/// The writer's connection. Every statement is a round trip to sqlx's worker thread, which
/// under load costs far more in wake-ups than the statements themselves: hence few of them.
pub struct SqliteWriter {
    conn: SqliteConnection,
    wal_restart_due: Arc<AtomicBool>,
}

impl SqliteWriter {
    pub(super) fn new(conn: SqliteConnection, wal_restart_due: Arc<AtomicBool>) -> Self {
        SqliteWriter {
            conn,
            wal_restart_due,
        }
    }

    /// Names the stream whose append lost the race, for the error (a rare path: another
    /// process wrote to one of our streams).
    async fn conflict_among(&mut self, events: &[RecordedEvent]) -> StoreError {
        for e in events {
            let q = Stmt::new::<Sqlite>(
                "SELECT hash FROM events WHERE stream_id = ? AND stream_version = ?",
            )
            .arg(e.stream_id.as_str())
            .arg(e.stream_version);
            let taken = Sqlite::fetch_optional(&mut self.conn, q).await;
            // A row with our hash is ours, written by an earlier statement of the flush.
            if let Ok(Some(row)) = taken
                && row
                    .try_get::<Vec<u8>, _>("hash")
                    .is_ok_and(|hash| hash != e.hash)
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
}

/// Joins the statements of one multi-statement query.
fn next_statement(q: &mut Stmt<'_>) {
    if !q.is_empty() {
        q.push("; ");
    }
}

impl WriteBackend for SqliteWriter {
    type Db = Sqlite;

    fn conn(&mut self) -> Result<&mut SqliteConnection, StoreError> {
        Ok(&mut self.conn)
    }

    async fn begin(
        &mut self,
        prefetch: &[TokenKey],
    ) -> Result<(Vec<TokenRow>, ChainHead), StoreError> {
        // IMMEDIATE takes the write lock up front: no deadlock upgrading a read lock later.
        if prefetch.is_empty() {
            let head = tables::head_after::<Sqlite>(&mut self.conn, "BEGIN IMMEDIATE; ").await?;
            return Ok((Vec::new(), head));
        }
        let found =
            tables::tokens_with_sessions::<Sqlite>(&mut self.conn, prefetch, "BEGIN IMMEDIATE; ")
                .await?;
        Ok((found, tables::head::<Sqlite>(&mut self.conn).await?))
    }

    /// Sends every pending write and, with a commit, the COMMIT, all as one multi-statement
    /// query: one round trip to the worker thread.
    async fn flush(&mut self, rows: Pending<'_>, end: FlushEnd) -> Result<(), StoreError> {
        let commit = matches!(end, FlushEnd::Commit { .. });
        if rows.is_empty() {
            if commit && !rows.begin {
                self.conn.execute("COMMIT").await?;
            }
            return Ok(());
        }
        // A session whose status did not change is written without touching `status`, so
        // SQLite leaves its sessions_by_user entry alone (it rewrites every index whose columns
        // are assigned, equal or not).
        let (same_status, other): (Vec<_>, Vec<_>) = rows.sessions.iter().partition(|s| {
            matches!(rows.read_sessions.get(&s.session_id),
                     Some(Some(before)) if before.status == s.status)
        });
        let per = Sqlite::ROWS_PER_STATEMENT;
        // A batch decided on top of the previous commit opens its transaction here: BEGIN,
        // rows and COMMIT in one round trip.
        let mut q = Stmt::new::<Sqlite>(if rows.begin { "BEGIN IMMEDIATE" } else { "" });
        for chunk in rows.events.chunks(per) {
            next_statement(&mut q);
            push_events::<Sqlite>(&mut q, chunk);
        }
        for chunk in rows.tokens.chunks(per) {
            next_statement(&mut q);
            push_tokens::<Sqlite>(&mut q, chunk);
        }
        for (sessions, set_status) in [(&same_status, false), (&other, true)] {
            for chunk in sessions.chunks(per) {
                next_statement(&mut q);
                push_sessions::<Sqlite>(&mut q, chunk.iter().copied(), set_status);
            }
        }
        for chunk in rows.users.chunks(per) {
            next_statement(&mut q);
            push_users::<Sqlite>(&mut q, chunk);
        }
        for chunk in rows.address_tags.chunks(per) {
            next_statement(&mut q);
            data_keys::push_address_tags::<Sqlite>(&mut q, chunk);
        }
        if let Some(cp) = rows.checkpoint {
            next_statement(&mut q);
            integrity::push_checkpoint_thin::<Sqlite>(&mut q, cp);
            next_statement(&mut q);
            integrity::push_checkpoint_insert::<Sqlite>(&mut q, cp);
        }
        if commit {
            next_statement(&mut q);
            q.push("COMMIT");
        }
        match Sqlite::execute(&mut self.conn, q).await {
            Ok(_) => Ok(()),
            // Only the events table turns a unique violation into a lost race; a duplicate
            // token hash, say, stays a database error as it was before batching.
            Err(sqlx::Error::Database(db))
                if db.is_unique_violation() && db.message().contains("events.") =>
            {
                Err(self.conflict_among(rows.events).await)
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn rollback(&mut self) {
        // Rolling back a transaction SQLite already ended fails harmlessly.
        let _ = self.conn.execute("ROLLBACK").await;
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
}
