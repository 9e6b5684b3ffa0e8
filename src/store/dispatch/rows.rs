//! Row mapping, written once for both databases: rows to domain values, and domain values to
//! the parameters of multi-row INSERTs. Where the column types differ, [`Dialect`] decides
//! (timestamps, the refresh-token id) or casts the parameter.

use super::dialect::{Cols, Dialect, Stmt};
use crate::domain::context::RequestContext;
use crate::domain::keys::{ApiKeyRecord, SigningKeyRecord, SigningKeyStatus};
use crate::domain::session::{Session, SessionStatus};
use crate::domain::token::{TokenHash, TokenKey};
use crate::domain::user::{User, UserStatus};
use crate::domain::webhook::{SubscriptionRecord, WebhookFormat};
use crate::domain::{Timestamp, format_timestamp, parse_timestamp};
use crate::store::{
    ChainHead, RecordedEvent, StoreError, StoredApiKey, StoredSigningKey, TokenRecord,
    WebhookSubscription,
};
use uuid::Uuid;

pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

fn from_json<T: serde::de::DeserializeOwned>(r: &impl Cols, col: &str) -> Result<T, StoreError> {
    serde_json::from_str(&r.text(col)?).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub fn hash32(v: Vec<u8>) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| StoreError::Corrupt("hash length".into()))
}

pub fn uuid(s: String) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&s).map_err(|_| StoreError::Corrupt(format!("bad uuid {s:?}")))
}

/// A timestamp stored as RFC 3339 text.
pub fn ts(s: String) -> Result<Timestamp, StoreError> {
    parse_timestamp(&s).ok_or_else(|| StoreError::Corrupt(format!("bad timestamp {s:?}")))
}

/// A timestamp selected as epoch milliseconds.
pub fn ts_millis(ms: i64) -> Result<Timestamp, StoreError> {
    chrono::DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp out of range: {ms} ms")))
}

fn time<D: Dialect>(r: &D::Row, col: &str) -> Result<Timestamp, StoreError> {
    D::time(r, col)?.ok_or_else(|| StoreError::Corrupt(format!("{col} is null")))
}

fn small(r: &impl Cols, col: &str) -> Result<u32, StoreError> {
    u32::try_from(r.int(col)?).map_err(|_| StoreError::Corrupt(col.to_owned()))
}

pub fn head(r: &impl Cols) -> Result<ChainHead, StoreError> {
    Ok(ChainHead {
        position: r.int("position")?,
        hash: hash32(r.bytes("hash")?)?,
    })
}

pub fn user<D: Dialect>(r: &D::Row) -> Result<User, StoreError> {
    Ok(User {
        user_id: uuid(r.text("user_id")?)?,
        username: r.text("username")?,
        password_hash: r.text("password_hash")?,
        roles: from_json(r, "roles")?,
        status: UserStatus::parse(&r.text("status")?)
            .ok_or_else(|| StoreError::Corrupt("user status".into()))?,
        created_at: time::<D>(r, "created_at")?,
        password_changed_at: D::time(r, "password_changed_at")?,
        version: r.int("version")?,
    })
}

pub fn session<D: Dialect>(r: &D::Row) -> Result<Session, StoreError> {
    let context = |col| from_json::<RequestContext>(r, col);
    Ok(Session {
        session_id: uuid(r.text("session_id")?)?,
        user_id: uuid(r.text("user_id")?)?,
        status: SessionStatus::parse(&r.text("status")?)
            .ok_or_else(|| StoreError::Corrupt("session status".into()))?,
        scope: r.text("scope")?,
        roles: from_json(r, "roles")?,
        created_at: time::<D>(r, "created_at")?,
        auth_time: time::<D>(r, "auth_time")?,
        last_seen_at: time::<D>(r, "last_seen_at")?,
        idle_expires_at: time::<D>(r, "idle_expires_at")?,
        absolute_expires_at: time::<D>(r, "absolute_expires_at")?,
        generation: small(r, "generation")?,
        retries: small(r, "retries")?,
        rotated_at: D::time(r, "rotated_at")?,
        rotated_from: r
            .opt_bytes("rotated_from")?
            .map(|b| {
                TokenHash::from_slice(&b).ok_or_else(|| StoreError::Corrupt("rotated_from".into()))
            })
            .transpose()?,
        current_token: current_token(r)?,
        // 0: never (generations start at 1).
        late_retry_generation: Some(small(r, "late_retry_generation")?).filter(|g| *g > 0),
        login_context: context("login_context")?,
        last_context: context("last_context")?,
        reauth_required: r.flag("reauth_required")?,
        ended_at: D::time(r, "ended_at")?,
        end_reason: r.opt_text("end_reason")?,
        dpop_jkt: r.opt_text("dpop_jkt")?,
        client_id: r.opt_text("client_id")?,
        version: r.int("version")?,
    })
}

/// The session's current token: its id (16 bytes) and hash, both or neither.
fn current_token(r: &impl Cols) -> Result<Option<TokenKey>, StoreError> {
    let corrupt = || StoreError::Corrupt("current_token".into());
    match (
        r.opt_bytes("current_token_id")?,
        r.opt_bytes("current_token_hash")?,
    ) {
        (Some(id), Some(hash)) => Ok(Some(TokenKey {
            id: Uuid::from_slice(&id).map_err(|_| corrupt())?,
            hash: TokenHash::from_slice(&hash).ok_or_else(corrupt)?,
        })),
        (None, None) => Ok(None),
        _ => Err(corrupt()),
    }
}

/// The refresh-token row (columns `t_hash`, `t_session`, `t_generation`) if it is `key`'s.
pub fn token(r: &impl Cols, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
    // A known id with another body is a forged token: as unknown as any other.
    if !key.hash.matches(&r.bytes("t_hash")?) {
        return Ok(None);
    }
    Ok(Some(TokenRecord {
        session_id: uuid(r.text("t_session")?)?,
        generation: u32::try_from(r.int("t_generation")?)
            .map_err(|_| StoreError::Corrupt("token generation".into()))?,
    }))
}

/// The stored event, its timestamps in the exact text the hash covers.
pub fn event<D: Dialect>(r: &D::Row) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: r.int("position")?,
        stream_id: r.text("stream_id")?,
        stream_version: r.int("stream_version")?,
        event_type: r.text("event_type")?,
        schema_version: r.int("schema_version")?,
        data: r.text("data")?,
        metadata: r.text("metadata")?,
        occurred_at: D::event_time(r, "occurred_at")?,
        recorded_at: D::event_time(r, "recorded_at")?,
        prev_hash: r.bytes("prev_hash")?,
        hash: r.bytes("hash")?,
    })
}

pub fn signing_key_record<D: Dialect>(r: &D::Row) -> Result<SigningKeyRecord, StoreError> {
    let status = r.text("status")?;
    Ok(SigningKeyRecord {
        kid: r.text("kid")?,
        algorithm: r.text("algorithm")?,
        public_key: r.bytes("public_key")?,
        status: SigningKeyStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("signing key status {status:?}")))?,
        created_at: time::<D>(r, "created_at")?,
        activated_at: D::time(r, "activated_at")?,
        retired_at: D::time(r, "retired_at")?,
    })
}

/// A key's row with its sealed private half (from the secrets table).
pub fn signing_key<D: Dialect>(r: &D::Row) -> Result<StoredSigningKey, StoreError> {
    let record = signing_key_record::<D>(r)?;
    Ok(StoredSigningKey::new(
        record,
        r.bytes("private_key_sealed")?,
    ))
}

pub fn signing_key_args<'a>(q: Stmt<'a>, k: &'a SigningKeyRecord) -> Stmt<'a> {
    q.arg(k.kid.as_str())
        .arg(k.algorithm.as_str())
        .arg(k.public_key.as_slice())
        .arg(k.status.as_str())
        .arg(format_timestamp(k.created_at))
        .arg(k.activated_at.map(format_timestamp))
        .arg(k.retired_at.map(format_timestamp))
}

pub fn api_key_record<D: Dialect>(r: &D::Row) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        key_id: uuid(r.text("key_id")?)?,
        name: r.text("name")?,
        roles: from_json(r, "roles")?,
        created_at: time::<D>(r, "created_at")?,
        revoked_at: D::time(r, "revoked_at")?,
    })
}

/// A key's row with its hash (from the secrets table).
pub fn api_key<D: Dialect>(r: &D::Row) -> Result<StoredApiKey, StoreError> {
    let k = api_key_record::<D>(r)?;
    Ok(StoredApiKey {
        key_id: k.key_id,
        name: k.name,
        key_hash: hash32(r.bytes("key_hash")?)?,
        roles: k.roles,
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    })
}

pub fn api_key_args<'a>(q: Stmt<'a>, k: &'a ApiKeyRecord) -> Stmt<'a> {
    q.arg(k.key_id.to_string())
        .arg(k.name.as_str())
        .arg(json(&k.roles))
        .arg(format_timestamp(k.created_at))
        .arg(k.revoked_at.map(format_timestamp))
}

pub fn subscription<D: Dialect>(r: &D::Row) -> Result<SubscriptionRecord, StoreError> {
    let format = r.text("format")?;
    Ok(SubscriptionRecord {
        subscription_id: uuid(r.text("subscription_id")?)?,
        url: r.text("url")?,
        event_types: from_json(r, "event_types")?,
        format: WebhookFormat::parse(&format)
            .ok_or_else(|| StoreError::Corrupt(format!("webhook format {format:?}")))?,
        created_at: time::<D>(r, "created_at")?,
    })
}

/// A subscription's row with its sealed secret and its delivery checkpoint.
pub fn webhook<D: Dialect>(r: &D::Row) -> Result<WebhookSubscription, StoreError> {
    let w = subscription::<D>(r)?;
    Ok(WebhookSubscription {
        subscription_id: w.subscription_id,
        url: w.url,
        secret_sealed: r.bytes("secret_sealed")?,
        event_types: w.event_types,
        format: w.format,
        created_at: w.created_at,
        delivered_position: r.int("delivered_position")?,
        failures: r.int("failures")?,
        last_error: r.opt_text("last_error")?,
        last_attempt_at: D::time(r, "last_attempt_at")?,
    })
}

pub fn subscription_args<'a>(q: Stmt<'a>, w: &'a SubscriptionRecord) -> Stmt<'a> {
    q.arg(w.subscription_id.to_string())
        .arg(w.url.as_str())
        .arg(json(&w.event_types))
        .arg(w.format.as_str())
        .arg(format_timestamp(w.created_at))
}

pub fn push_events<'a, D: Dialect>(q: &mut Stmt<'a>, rows: &'a [RecordedEvent]) {
    q.push(D::SQL.insert_events);
    q.values(rows, |t, e| {
        t.bind(e.position)
            .bind(e.stream_id.as_str())
            .bind(e.stream_version)
            .bind(e.event_type.as_str())
            .bind(e.schema_version)
            .bind(e.data.as_str())
            .bind(e.metadata.as_str())
            .cast(e.occurred_at.as_str(), D::TIME)
            .cast(e.recorded_at.as_str(), D::TIME)
            .bind(e.prev_hash.as_slice())
            .bind(e.hash.as_slice());
    });
}

pub fn push_tokens<'a, D: Dialect>(
    q: &mut Stmt<'a>,
    rows: &'a [(TokenKey, TokenRecord, Timestamp)],
) {
    q.push("INSERT INTO refresh_tokens (token_id, token_hash, session_id, generation, issued_at) ");
    q.values(rows, |t, (key, r, at)| {
        t.cast(D::token_id_arg(&key.id), D::UUID)
            .bind(key.hash.0.as_slice())
            .cast(r.session_id.to_string(), D::UUID)
            .bind(i64::from(r.generation))
            .cast(format_timestamp(*at), D::TIME);
    });
}

/// Sessions as upserts. Without `set_status` the conflict branch leaves `status` alone (SQLite
/// then leaves the index on it alone too; it rewrites every index whose columns are assigned).
pub fn push_sessions<'a, D: Dialect>(
    q: &mut Stmt<'a>,
    rows: impl IntoIterator<Item = &'a Session>,
    set_status: bool,
) {
    q.push(
        "INSERT INTO sessions (session_id, user_id, status, scope, roles, created_at, auth_time, \
         last_seen_at, idle_expires_at, absolute_expires_at, generation, retries, rotated_at, \
         rotated_from, current_token_id, current_token_hash, late_retry_generation, \
         login_context, last_context, reauth_required, ended_at, end_reason, version, \
         dpop_jkt, client_id) ",
    );
    q.values(rows, |t, s| {
        t.cast(s.session_id.to_string(), D::UUID)
            .cast(s.user_id.to_string(), D::UUID)
            .bind(s.status.as_str())
            .bind(s.scope.as_str())
            .cast(json(&s.roles), D::JSON);
        for at in [
            s.created_at,
            s.auth_time,
            s.last_seen_at,
            s.idle_expires_at,
            s.absolute_expires_at,
        ] {
            t.cast(format_timestamp(at), D::TIME);
        }
        t.bind(i64::from(s.generation))
            .bind(i64::from(s.retries))
            .cast(s.rotated_at.map(format_timestamp), D::TIME)
            .bind(s.rotated_from.as_ref().map(|h| h.0.as_slice()))
            .bind(s.current_token.as_ref().map(|k| k.id.as_bytes().as_slice()))
            .bind(s.current_token.as_ref().map(|k| k.hash.0.as_slice()))
            .bind(i64::from(s.late_retry_generation.unwrap_or(0)))
            .cast(json(&s.login_context), D::JSON)
            .cast(json(&s.last_context), D::JSON)
            .bind(s.reauth_required)
            .cast(s.ended_at.map(format_timestamp), D::TIME)
            .bind(s.end_reason.as_deref())
            .bind(s.version)
            // Set at the start, or by a code exchange with a proof (RFC 9449 §5).
            .bind(s.dpop_jkt.as_deref())
            .bind(s.client_id.as_deref());
    });
    q.push(" ON CONFLICT (session_id) DO UPDATE SET ");
    if set_status {
        q.push("status = excluded.status, ");
    }
    q.push(
        "auth_time = excluded.auth_time, last_seen_at = excluded.last_seen_at, \
         idle_expires_at = excluded.idle_expires_at, generation = excluded.generation, \
         retries = excluded.retries, rotated_at = excluded.rotated_at, \
         rotated_from = excluded.rotated_from, current_token_id = excluded.current_token_id, \
         current_token_hash = excluded.current_token_hash, \
         late_retry_generation = excluded.late_retry_generation, \
         last_context = excluded.last_context, \
         reauth_required = excluded.reauth_required, ended_at = excluded.ended_at, \
         end_reason = excluded.end_reason, version = excluded.version, \
         dpop_jkt = excluded.dpop_jkt",
    );
}

pub fn push_users<'a, D: Dialect>(q: &mut Stmt<'a>, rows: impl IntoIterator<Item = &'a User>) {
    q.push(
        "INSERT INTO users (user_id, username, password_hash, roles, status, created_at, \
         password_changed_at, version) ",
    );
    q.values(rows, |t, u| {
        t.cast(u.user_id.to_string(), D::UUID)
            .bind(u.username.as_str())
            .bind(u.password_hash.as_str())
            .cast(json(&u.roles), D::JSON)
            .bind(u.status.as_str())
            .cast(format_timestamp(u.created_at), D::TIME)
            .cast(u.password_changed_at.map(format_timestamp), D::TIME)
            .bind(u.version);
    });
    q.push(
        " ON CONFLICT (user_id) DO UPDATE SET username = excluded.username, \
         password_hash = excluded.password_hash, roles = excluded.roles, \
         status = excluded.status, password_changed_at = excluded.password_changed_at, \
         version = excluded.version",
    );
}
