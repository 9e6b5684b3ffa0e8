//! The writes of the PostgreSQL store: the writer's batch of rows as multi-row statements, the
//! rebuild's emptying of the projections (signing keys, API keys and webhooks: `registry.rs`).
//! Values cross the wire in text form and are cast in SQL (see `rows.rs`).

use super::rows::json;
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::domain::user::User;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::{RecordedEvent, StoreError, TokenRecord};
use sqlx::postgres::PgConnection;
use sqlx::{Executor, Postgres, QueryBuilder};

/// Rows per table per statement: at most 20 parameters a row, far below PostgreSQL's
/// 65,535 per statement.
const ROWS_PER_STATEMENT: usize = 512;

/// Writes a batch's rows in as few statements as possible: one statement (data-modifying
/// CTEs, one multi-row INSERT per table) per 512 rows of each table, so one round trip for a
/// batch of any usual size. A unique violation (a lost race on a stream) is left to the
/// caller to map.
pub async fn write_rows(
    c: &mut PgConnection,
    events: &[RecordedEvent],
    tokens: &[(TokenKey, TokenRecord, Timestamp)],
    sessions: &[Session],
    users: &[User],
) -> Result<(), sqlx::Error> {
    let mut events = events.chunks(ROWS_PER_STATEMENT);
    let mut tokens = tokens.chunks(ROWS_PER_STATEMENT);
    let mut sessions = sessions.chunks(ROWS_PER_STATEMENT);
    let mut users = users.chunks(ROWS_PER_STATEMENT);
    loop {
        let mut q = QueryBuilder::<Postgres>::new("WITH ");
        let mut parts = 0;
        if let Some(rows) = events.next() {
            part(&mut q, &mut parts);
            push_events(&mut q, rows);
            q.push(")");
        }
        if let Some(rows) = tokens.next() {
            part(&mut q, &mut parts);
            push_tokens(&mut q, rows);
            q.push(")");
        }
        if let Some(rows) = sessions.next() {
            part(&mut q, &mut parts);
            push_sessions(&mut q, rows);
            q.push(")");
        }
        if let Some(rows) = users.next() {
            part(&mut q, &mut parts);
            push_users(&mut q, rows);
            q.push(")");
        }
        if parts == 0 {
            return Ok(());
        }
        q.push(" SELECT 1");
        q.build().execute(&mut *c).await?;
    }
}

fn part(q: &mut QueryBuilder<'_, Postgres>, parts: &mut usize) {
    if *parts > 0 {
        q.push(", ");
    }
    q.push(format!("w{parts} AS ("));
    *parts += 1;
}

fn push_events<'a>(q: &mut QueryBuilder<'a, Postgres>, rows: &'a [RecordedEvent]) {
    q.push(
        "INSERT INTO events (position, stream_id, stream_version, event_type, \
         schema_version, data_text, metadata_text, occurred_at, recorded_at, prev_hash, hash) ",
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
            .push_unseparated("::timestamptz")
            .push_bind(&e.recorded_at)
            .push_unseparated("::timestamptz")
            .push_bind(&e.prev_hash)
            .push_bind(&e.hash);
    });
}

fn push_tokens<'a>(
    q: &mut QueryBuilder<'a, Postgres>,
    rows: &'a [(TokenKey, TokenRecord, Timestamp)],
) {
    q.push("INSERT INTO refresh_tokens (token_id, token_hash, session_id, generation, issued_at) ");
    q.push_values(rows, |mut b, (key, t, at)| {
        b.push_bind(key.id.to_string())
            .push_unseparated("::uuid")
            .push_bind(key.hash.0.as_slice())
            .push_bind(t.session_id.to_string())
            .push_unseparated("::uuid")
            .push_bind(i64::from(t.generation))
            .push_bind(format_timestamp(*at))
            .push_unseparated("::timestamptz");
    });
}

fn push_sessions<'a>(q: &mut QueryBuilder<'a, Postgres>, rows: &'a [Session]) {
    q.push(
        "INSERT INTO sessions (session_id, user_id, status, scope, roles, created_at, \
         auth_time, last_seen_at, idle_expires_at, absolute_expires_at, generation, retries, \
         rotated_at, rotated_from, login_context, last_context, reauth_required, ended_at, \
         end_reason, version) ",
    );
    q.push_values(rows, |mut b, s| {
        b.push_bind(s.session_id.to_string())
            .push_unseparated("::uuid")
            .push_bind(s.user_id.to_string())
            .push_unseparated("::uuid")
            .push_bind(s.status.as_str())
            .push_bind(&s.scope)
            .push_bind(json(&s.roles))
            .push_unseparated("::jsonb");
        for t in [
            s.created_at,
            s.auth_time,
            s.last_seen_at,
            s.idle_expires_at,
            s.absolute_expires_at,
        ] {
            b.push_bind(format_timestamp(t))
                .push_unseparated("::timestamptz");
        }
        b.push_bind(i64::from(s.generation))
            .push_bind(i64::from(s.retries))
            .push_bind(s.rotated_at.map(format_timestamp))
            .push_unseparated("::timestamptz")
            .push_bind(s.rotated_from.as_ref().map(|h| h.0.as_slice()))
            .push_bind(json(&s.login_context))
            .push_unseparated("::jsonb")
            .push_bind(json(&s.last_context))
            .push_unseparated("::jsonb")
            .push_bind(s.reauth_required)
            .push_bind(s.ended_at.map(format_timestamp))
            .push_unseparated("::timestamptz")
            .push_bind(&s.end_reason)
            .push_bind(s.version);
    });
    q.push(
        " ON CONFLICT (session_id) DO UPDATE SET status = excluded.status, \
         auth_time = excluded.auth_time, last_seen_at = excluded.last_seen_at, idle_expires_at = excluded.idle_expires_at, \
         generation = excluded.generation, retries = excluded.retries, \
         rotated_at = excluded.rotated_at, rotated_from = excluded.rotated_from, \
         last_context = excluded.last_context, reauth_required = excluded.reauth_required, \
         ended_at = excluded.ended_at, end_reason = excluded.end_reason, \
         version = excluded.version",
    );
}

fn push_users<'a>(q: &mut QueryBuilder<'a, Postgres>, rows: &'a [User]) {
    q.push(
        "INSERT INTO users (user_id, username, password_hash, roles, status, created_at, \
         password_changed_at, version) ",
    );
    q.push_values(rows, |mut b, u| {
        b.push_bind(u.user_id.to_string())
            .push_unseparated("::uuid")
            .push_bind(&u.username)
            .push_bind(&u.password_hash)
            .push_bind(json(&u.roles))
            .push_unseparated("::jsonb")
            .push_bind(u.status.as_str())
            .push_bind(format_timestamp(u.created_at))
            .push_unseparated("::timestamptz")
            .push_bind(u.password_changed_at.map(format_timestamp))
            .push_unseparated("::timestamptz")
            .push_bind(u.version);
    });
    q.push(
        " ON CONFLICT (user_id) DO UPDATE SET username = excluded.username, \
         password_hash = excluded.password_hash, roles = excluded.roles, \
         status = excluded.status, password_changed_at = excluded.password_changed_at, \
         version = excluded.version",
    );
}

pub async fn clear_projections(c: &mut PgConnection) -> Result<(), StoreError> {
    // DELETE, not TRUNCATE: readers keep seeing the old rows until the rebuild commits.
    c.execute(sqlx::raw_sql(
        "DELETE FROM users; DELETE FROM sessions; DELETE FROM refresh_tokens;",
    ))
    .await?;
    Ok(())
}
