//! The writer's side of the PostgreSQL store: one connection, one transaction per batch. The
//! unit of work is the shared [`OverlaySession`]; this is what PostgreSQL does its own way.
//! A batch of any size costs about five round trips.
//!
//! Every batch takes the append lock (`pg_advisory_xact_lock`) right after BEGIN and then reads
//! the chain head: whichever node holds the lock appends after the last committed event, and
//! the lock is released by COMMIT, so positions become visible in the order they were assigned.

use super::locks::{APPEND_LOCK, COMMIT_CHANNEL};
use crate::domain::token::TokenKey;
use crate::store::dispatch::dialect::{Dialect, Stmt};
use crate::store::dispatch::rows::{push_events, push_sessions, push_tokens, push_users};
use crate::store::dispatch::{data_keys, integrity, tables};
use crate::store::overlay::{FlushEnd, OverlaySession, Pending, TokenRow, WriteBackend};
use crate::store::{ChainHead, StoreError};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor, Postgres, Row};

/// The writer's unit of work on PostgreSQL.
pub type PostgresWriteSession = OverlaySession<PostgresWriter>;

pub struct PostgresWriter {
    options: PgConnectOptions,
    /// Opened on the first `begin`, so it belongs to the runtime that uses it (the writer runs
    /// on a thread of its own), and opened again after it failed.
    conn: Option<PgConnection>,
}

impl PostgresWriter {
    pub(super) fn new(options: PgConnectOptions) -> Self {
        PostgresWriter {
            options,
            conn: None,
        }
    }

    /// Writes a batch's rows in as few statements as possible: one statement (data-modifying
    /// CTEs, one multi-row INSERT per table) per 512 rows of each table, so one round trip for
    /// a batch of any usual size.
    async fn write_rows(&mut self, rows: &Pending<'_>) -> Result<(), sqlx::Error> {
        let per = Postgres::ROWS_PER_STATEMENT;
        let mut events = rows.events.chunks(per);
        let mut tokens = rows.tokens.chunks(per);
        let mut sessions = rows.sessions.chunks(per);
        let mut users = rows.users.chunks(per);
        let mut address_tags = rows.address_tags.chunks(per);
        let mut checkpoint = rows.checkpoint;
        let conn = self.conn.as_mut().ok_or_else(no_transaction_sqlx)?;
        loop {
            let mut q = Stmt::new::<Postgres>("WITH ");
            let mut parts = 0;
            let mut part = |q: &mut Stmt<'_>| {
                q.push(&format!(
                    "{}w{parts} AS (",
                    if parts > 0 { ", " } else { "" }
                ));
                parts += 1;
            };
            if let Some(chunk) = events.next() {
                part(&mut q);
                push_events::<Postgres>(&mut q, chunk);
                q.push(")");
            }
            if let Some(chunk) = tokens.next() {
                part(&mut q);
                push_tokens::<Postgres>(&mut q, chunk);
                q.push(")");
            }
            if let Some(chunk) = sessions.next() {
                part(&mut q);
                push_sessions::<Postgres>(&mut q, chunk, true);
                q.push(")");
            }
            if let Some(chunk) = users.next() {
                part(&mut q);
                push_users::<Postgres>(&mut q, chunk);
                q.push(")");
            }
            if let Some(chunk) = address_tags.next() {
                part(&mut q);
                data_keys::push_address_tags::<Postgres>(&mut q, chunk);
                q.push(")");
            }
            // The checkpoint rides with the first statement (one snapshot: the thinning
            // cannot see the new row, as when the two ran one after the other).
            if let Some(cp) = checkpoint.take() {
                part(&mut q);
                integrity::push_checkpoint_thin::<Postgres>(&mut q, cp);
                q.push(")");
                part(&mut q);
                integrity::push_checkpoint_insert::<Postgres>(&mut q, cp);
                q.push(")");
            }
            if parts == 0 {
                return Ok(());
            }
            q.push(" SELECT 1");
            Postgres::execute(conn, q).await?;
        }
    }

    /// Opens the connection if needed, starts a transaction and takes the append lock.
    /// Begins a transaction, takes the append lock and reads the chain head under it: one
    /// round trip.
    async fn open(&mut self) -> Result<ChainHead, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        // READ COMMITTED whatever the database's default: each statement after the lock must
        // see what the previous holder committed (under REPEATABLE READ the snapshot would date
        // from the lock statement, taken before the lock was granted).
        let lock = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({}, {}); {}",
            APPEND_LOCK.0,
            APPEND_LOCK.1,
            tables::HEAD
        );
        let conn = self.conn.as_mut().ok_or_else(no_transaction_sqlx)?;
        let rows = conn.fetch_all(sqlx::raw_sql(&lock)).await?;
        // The lock's row has one (void) column; the head's, if the log has one, two.
        match rows.iter().find(|r| r.columns().len() == 2) {
            Some(r) => crate::store::dispatch::rows::head(r),
            None => Ok(ChainHead::GENESIS),
        }
    }

    async fn flush_open(&mut self, rows: Pending<'_>, end: FlushEnd) -> Result<(), StoreError> {
        match self.write_rows(&rows).await {
            Ok(()) => {}
            // Another node appended to one of our streams first (or took the position, which
            // the append lock rules out). The transaction is aborted, so the stream cannot be
            // looked up; the writer reruns each command alone, and each decides again.
            Err(sqlx::Error::Database(db))
                if db.is_unique_violation() && db.table() == Some("events") =>
            {
                let first = &rows.events[0];
                return Err(StoreError::Conflict {
                    stream_id: first.stream_id.clone(),
                    expected: first.stream_version - 1,
                });
            }
            Err(other) => return Err(other.into()),
        }
        let FlushEnd::Commit { appended } = end else {
            return Ok(());
        };
        // The notification is sent when (and only if) the transaction commits, in one round
        // trip with the COMMIT. The payload is a number of ours, not user input.
        let sql = match appended {
            Some(position) => {
                format!("SELECT pg_notify('{COMMIT_CHANNEL}', '{position}'); COMMIT;")
            }
            None => "COMMIT;".to_owned(),
        };
        self.conn
            .as_mut()
            .ok_or_else(no_transaction_sqlx)?
            .execute(sqlx::raw_sql(&sql))
            .await?;
        Ok(())
    }
}

fn no_transaction_sqlx() -> sqlx::Error {
    sqlx::Error::Protocol("the write session has no open transaction".into())
}

impl WriteBackend for PostgresWriter {
    type Db = Postgres;

    fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Database(no_transaction_sqlx()))
    }

    async fn begin(
        &mut self,
        prefetch: &[TokenKey],
    ) -> Result<(Vec<TokenRow>, ChainHead), StoreError> {
        let head = self.open().await?;
        let found = match prefetch.is_empty() {
            true => Vec::new(),
            false => tables::tokens_with_sessions::<Postgres>(self.conn()?, prefetch, "").await?,
        };
        Ok((found, head))
    }

    async fn flush(&mut self, rows: Pending<'_>, end: FlushEnd) -> Result<(), StoreError> {
        // A batch decided on top of the previous commit takes the lock only now: under it,
        // just its rows and the COMMIT (a stale decision fails on the unique constraints).
        if rows.begin {
            self.open().await?;
        }
        self.flush_open(rows, end).await
    }

    async fn rollback(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && conn.execute("ROLLBACK").await.is_err()
        {
            // A connection that cannot roll back is not trusted with the next batch.
            self.conn = None;
        }
    }
}
