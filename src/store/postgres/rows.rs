//! PostgreSQL's dialect: its SQL, and its column types where they differ from SQLite's.
//!
//! The build has no sqlx `uuid`/`chrono` features, so values cross the wire in their text form
//! and the SQL casts them: uuids as `$n::uuid` / `col::text`, timestamps written as RFC 3339 text
//! (`$n::timestamptz`, exact at millisecond precision) and read as epoch milliseconds.

use crate::domain::token::TokenKey;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::StoreError;
use crate::store::dispatch::dialect::{
    Arg, Cols, Dialect, Query, RegistrySql, Sql, Stmt, bind_scalar, raw_access,
};
use crate::store::dispatch::rows::{ts_millis, uuid};
use sqlx::Postgres;
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

/// `(extract(epoch FROM col) * 1000)::bigint AS col`: a timestamp as epoch milliseconds.
macro_rules! millis {
    ($col:literal) => {
        concat!("(extract(epoch FROM ", $col, ") * 1000)::bigint AS ", $col)
    };
    ($expr:literal, $alias:literal) => {
        concat!(
            "(extract(epoch FROM ",
            $expr,
            ") * 1000)::bigint AS ",
            $alias
        )
    };
}

macro_rules! user_columns {
    () => {
        concat!(
            "user_id::text AS user_id, username, password_hash, roles::text AS roles, status, ",
            millis!("created_at"),
            ", ",
            millis!("password_changed_at"),
            ", version"
        )
    };
}

macro_rules! session_columns {
    () => {
        concat!(
            "session_id::text AS session_id, user_id::text AS user_id, status, scope, ",
            "roles::text AS roles, ",
            millis!("created_at"),
            ", ",
            millis!("auth_time"),
            ", ",
            millis!("last_seen_at"),
            ", ",
            millis!("idle_expires_at"),
            ", ",
            millis!("absolute_expires_at"),
            ", generation, retries, ",
            millis!("rotated_at"),
            ", rotated_from, current_token_id, current_token_hash, late_retry_generation, ",
            "login_context::text AS login_context, ",
            "last_context::text AS last_context, reauth_required, ",
            millis!("ended_at"),
            ", end_reason, version, dpop_jkt, client_id"
        )
    };
}

macro_rules! signing_key_columns {
    () => {
        concat!(
            "k.kid, k.algorithm, k.public_key, k.status, ",
            millis!("k.created_at", "created_at"),
            ", ",
            millis!("k.activated_at", "activated_at"),
            ", ",
            millis!("k.retired_at", "retired_at")
        )
    };
}

macro_rules! api_key_columns {
    () => {
        concat!(
            "a.key_id::text AS key_id, a.name, a.roles::text AS roles, ",
            millis!("a.created_at", "created_at"),
            ", ",
            millis!("a.revoked_at", "revoked_at")
        )
    };
}

macro_rules! webhook_columns {
    () => {
        concat!(
            "w.subscription_id::text AS subscription_id, w.url, ",
            "w.event_types::text AS event_types, w.format, ",
            millis!("w.created_at", "created_at")
        )
    };
}

impl Dialect for Postgres {
    const SQL: Sql = Sql {
        user_by_id: concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE user_id = $1::uuid"
        ),
        user_by_name: concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE username = $1"
        ),
        session: concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE session_id = $1::uuid"
        ),
        active_sessions_of: concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions ",
            "WHERE user_id = $1::uuid AND status = 'active' ORDER BY created_at, session_id"
        ),
        last_seen_session_of: concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE user_id = $1::uuid AND status = 'active' ",
            "AND NOT reauth_required AND session_id <> $2::uuid ",
            "ORDER BY last_seen_at DESC, created_at DESC, session_id DESC LIMIT 1"
        ),
        token: "SELECT token_hash AS t_hash, session_id::text AS t_session, \
             generation AS t_generation FROM refresh_tokens WHERE token_id = $1::uuid",
        stream_version: "SELECT COALESCE(MAX(stream_version), 0)::bigint AS v FROM events \
             WHERE stream_id = $1",
        events: concat!(
            "SELECT position, stream_id, stream_version, event_type, schema_version, ",
            "data_text AS data, metadata_text AS metadata, ",
            millis!("occurred_at"),
            ", ",
            millis!("recorded_at"),
            ", prev_hash, hash FROM events WHERE position > "
        ),
        insert_events: "INSERT INTO events (position, stream_id, stream_version, event_type, \
             schema_version, data_text, metadata_text, occurred_at, recorded_at, prev_hash, \
             hash) ",
        data_session_id: "data->>'session_id'",
        data_user_id: "data->>'user_id'",
        session_ids_of: "SELECT session_id::text AS session_id FROM sessions \
             WHERE user_id = $1::uuid ORDER BY created_at DESC",
        has_user_with_role: "SELECT EXISTS (SELECT 1 FROM users WHERE roles ? $1) AS found",
        sessions_due: "SELECT session_id::text AS session_id FROM sessions \
             WHERE status = 'active' AND idle_expires_at <= $1::timestamptz \
             ORDER BY idle_expires_at LIMIT $2",
        count_active_sessions: "SELECT count(*) AS n FROM sessions WHERE status = 'active'",
        migrated: "SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success",
        // Secrets are kept under the owner's stream id (`domain::event::*_stream`).
        registry: RegistrySql {
            signing_keys: concat!(
                "SELECT ",
                signing_key_columns!(),
                ", s.material AS private_key_sealed FROM signing_keys k ",
                "JOIN secrets s ON s.owner = 'signing_key-' || k.kid ORDER BY k.created_at, k.kid"
            ),
            signing_key_records: concat!(
                "SELECT ",
                signing_key_columns!(),
                " FROM signing_keys k ORDER BY k.created_at, k.kid"
            ),
            put_signing_key: "INSERT INTO signing_keys (kid, algorithm, public_key, status, \
                 created_at, activated_at, retired_at) \
                 VALUES ($1, $2, $3, $4, $5::timestamptz, $6::timestamptz, $7::timestamptz) \
                 ON CONFLICT (kid) DO UPDATE SET status = excluded.status, \
                 activated_at = excluded.activated_at, retired_at = excluded.retired_at",
            api_key: concat!(
                "SELECT ",
                api_key_columns!(),
                ", s.material AS key_hash FROM api_keys a ",
                "JOIN secrets s ON s.owner = 'api_key-' || a.key_id::text ",
                "WHERE a.key_id = $1::uuid"
            ),
            api_keys: concat!(
                "SELECT ",
                api_key_columns!(),
                ", s.material AS key_hash FROM api_keys a ",
                "JOIN secrets s ON s.owner = 'api_key-' || a.key_id::text ",
                "ORDER BY a.created_at, a.key_id"
            ),
            api_key_record: concat!(
                "SELECT ",
                api_key_columns!(),
                " FROM api_keys a WHERE a.key_id = $1::uuid"
            ),
            put_api_key: "INSERT INTO api_keys (key_id, name, roles, created_at, revoked_at) \
                 VALUES ($1::uuid, $2, $3::jsonb, $4::timestamptz, $5::timestamptz) \
                 ON CONFLICT (key_id) DO UPDATE SET name = excluded.name, roles = excluded.roles, \
                 revoked_at = excluded.revoked_at",
            webhooks: concat!(
                "SELECT ",
                webhook_columns!(),
                ", s.material AS secret_sealed, p.delivered_position, p.failures, p.last_error, ",
                millis!("p.last_attempt_at", "last_attempt_at"),
                " FROM webhook_subscriptions w ",
                "JOIN secrets s ON s.owner = 'webhook-' || w.subscription_id::text ",
                "JOIN webhook_progress p ON p.subscription_id = w.subscription_id ",
                "ORDER BY w.created_at, w.subscription_id"
            ),
            unlogged_webhooks: "SELECT subscription_id::text AS subscription_id \
                 FROM webhook_subscriptions w WHERE NOT EXISTS (SELECT 1 FROM events e \
                 WHERE e.stream_id = 'webhook-' || w.subscription_id::text) \
                 ORDER BY created_at, subscription_id",
            webhook_record: concat!(
                "SELECT ",
                webhook_columns!(),
                " FROM webhook_subscriptions w WHERE w.subscription_id = $1::uuid"
            ),
            put_webhook: "INSERT INTO webhook_subscriptions (subscription_id, url, event_types, \
                 format, created_at) VALUES ($1::uuid, $2, $3::jsonb, $4, $5::timestamptz) \
                 ON CONFLICT (subscription_id) DO UPDATE SET url = excluded.url, \
                 event_types = excluded.event_types, format = excluded.format, \
                 created_at = excluded.created_at",
            delete_webhook: "DELETE FROM webhook_subscriptions WHERE subscription_id = $1::uuid",
            put_secret: "INSERT INTO secrets (owner, material) VALUES ($1, $2) \
                 ON CONFLICT (owner) DO UPDATE SET material = excluded.material",
            delete_secret: "DELETE FROM secrets WHERE owner = $1",
            start_webhook_delivery: "INSERT INTO webhook_progress (subscription_id, \
                 delivered_position, failures) VALUES ($1::uuid, $2, 0) \
                 ON CONFLICT (subscription_id) DO NOTHING",
            delete_webhook_delivery: "DELETE FROM webhook_progress \
                 WHERE subscription_id = $1::uuid",
            webhook_delivered: "UPDATE webhook_progress SET \
                 delivered_position = GREATEST(delivered_position, $1), failures = 0, \
                 last_error = $2, last_attempt_at = $3::timestamptz \
                 WHERE subscription_id = $4::uuid",
            webhook_failed: "UPDATE webhook_progress SET \
                 delivered_position = GREATEST(delivered_position, $1), \
                 failures = failures + 1, last_error = $2, last_attempt_at = $3::timestamptz \
                 WHERE subscription_id = $4::uuid",
            backchannel_checkpoint: "SELECT delivered_position FROM backchannel_progress \
                 WHERE client_id = $1",
            backchannel_delivered: "INSERT INTO backchannel_progress (client_id, \
                 delivered_position, failures, last_error, last_attempt_at) \
                 VALUES ($1, $2, 0, $3, $4::timestamptz) \
                 ON CONFLICT (client_id) DO UPDATE SET delivered_position = \
                 GREATEST(backchannel_progress.delivered_position, EXCLUDED.delivered_position), \
                 failures = 0, last_error = EXCLUDED.last_error, \
                 last_attempt_at = EXCLUDED.last_attempt_at",
            backchannel_failed: "INSERT INTO backchannel_progress (client_id, \
                 delivered_position, failures, last_error, last_attempt_at) \
                 VALUES ($1, $2, 1, $3, $4::timestamptz) \
                 ON CONFLICT (client_id) DO UPDATE SET delivered_position = \
                 GREATEST(backchannel_progress.delivered_position, EXCLUDED.delivered_position), \
                 failures = backchannel_progress.failures + 1, last_error = EXCLUDED.last_error, \
                 last_attempt_at = EXCLUDED.last_attempt_at",
            put_login_failure: "INSERT INTO login_failures (throttle_key, failed_at) \
                 VALUES ($1, $2::timestamptz)",
            login_failure_at: millis!("failed_at"),
            claim_dpop_jti: "INSERT INTO dpop_proofs (jti_hash, expires_at) \
                 VALUES ($1, $2::timestamptz) ON CONFLICT (jti_hash) DO NOTHING",
            prune_dpop_jtis: "DELETE FROM dpop_proofs WHERE expires_at < $1::timestamptz",
            window_counts: "SELECT COUNT(*) AS n, COUNT(DISTINCT name_tag) AS d, \
                 COALESCE(SUM(CASE WHEN name_tag = $1 THEN 1 ELSE 0 END), 0)::bigint AS mine \
                 FROM detector_counts WHERE rule_id = $2 AND key_tag = $3 \
                 AND seen_at > $4::timestamptz",
            put_window_count: "INSERT INTO detector_counts (rule_id, key_tag, name_tag, seen_at) \
                 VALUES ($1, $2, $3, $4::timestamptz)",
            prune_window: "DELETE FROM detector_counts \
                 WHERE rule_id = $1 AND key_tag = $2 AND seen_at <= $3::timestamptz",
            breaker_spent: concat!(
                "SELECT COALESCE(SUM(CASE WHEN tripped_until IS NULL THEN 1 ELSE 0 END), 0)::bigint \
                 AS n, ",
                millis!("MAX(tripped_until)", "until"),
                " FROM breaker_spend WHERE rule_id = $1 AND spent_at > $2::timestamptz"
            ),
            put_breaker_spend: "INSERT INTO breaker_spend (rule_id, spent_at, tripped_until) \
                 VALUES ($1, $2::timestamptz, $3::timestamptz)",
            prune_breaker: "DELETE FROM breaker_spend \
                 WHERE rule_id = $1 AND spent_at <= $2::timestamptz",
        },
    };
    const MIGRATOR: &'static sqlx::migrate::Migrator = &super::MIGRATOR;
    const NUMBERED: bool = true;
    const UUID: &'static str = "::uuid";
    const TIME: &'static str = "::timestamptz";
    const JSON: &'static str = "::jsonb";
    /// One array parameter holds them all.
    const TOKENS_PER_STATEMENT: usize = usize::MAX;
    /// At most 20 parameters a row, far below PostgreSQL's 65,535 per statement.
    const ROWS_PER_STATEMENT: usize = 512;

    fn time(r: &PgRow, col: &str) -> Result<Option<Timestamp>, StoreError> {
        r.opt_int(col)?.map(ts_millis).transpose()
    }

    /// Written from RFC 3339 text at millisecond precision, a timestamp formats back to the
    /// same bytes.
    fn event_time(r: &PgRow, col: &str) -> Result<String, StoreError> {
        Ok(format_timestamp(ts_millis(r.int(col)?)?))
    }

    fn token_id(r: &PgRow, col: &str) -> Result<Uuid, StoreError> {
        uuid(r.text(col)?)
    }

    fn token_id_arg(id: &Uuid) -> Arg<'_> {
        Arg::from(id.to_string())
    }

    fn tokens_with_sessions<'a>(q: &mut Stmt<'a>, keys: &'a [TokenKey]) {
        let ids = keys.iter().map(|k| k.id.to_string()).collect();
        q.push(concat!(
            "SELECT t.t_id, t.t_hash, t.t_session, t.t_generation, s.* FROM ",
            "(SELECT token_id::text AS t_id, token_hash AS t_hash, session_id AS t_sid, ",
            "session_id::text AS t_session, generation AS t_generation FROM refresh_tokens ",
            "WHERE token_id = ANY("
        ))
        .cast(Arg::Strs(ids), "::text[]::uuid[]")
        .push(concat!(
            ")) t LEFT JOIN LATERAL (SELECT ",
            session_columns!(),
            " FROM sessions WHERE sessions.session_id = t.t_sid) s ON true"
        ));
    }

    fn prune(cutoff: Timestamp) -> [Stmt<'static>; 2] {
        let cutoff = format_timestamp(cutoff);
        [
            Stmt::new::<Self>(
                "DELETE FROM refresh_tokens WHERE session_id IN (SELECT session_id FROM sessions \
                 WHERE ended_at IS NOT NULL AND ended_at < $1::timestamptz)",
            )
            .arg(cutoff.clone()),
            Stmt::new::<Self>(
                "DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < $1::timestamptz",
            )
            .arg(cutoff),
        ]
    }

    async fn row_text(_: &mut PgConnection, _: &str) -> Result<String, StoreError> {
        Ok("t::text".to_owned())
    }

    async fn column_names(c: &mut PgConnection, table: &str) -> Result<Vec<String>, StoreError> {
        let q = Stmt::new::<Self>(
            "SELECT column_name::text AS name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .arg(table);
        Self::fetch_all(c, q)
            .await?
            .iter()
            .map(|r| r.text("name"))
            .collect()
    }

    fn column_text(col: &str) -> String {
        format!("{col}::text")
    }

    fn literal(col: &str) -> String {
        format!("quote_nullable({col}::text) || '::' || pg_typeof({col})::text")
    }

    fn bind<'q>(q: Query<'q, Self>, a: Arg<'q>) -> Query<'q, Self> {
        bind_scalar(q, a).unwrap_or_else(|(q, strs)| q.bind(strs))
    }

    raw_access!();
}
