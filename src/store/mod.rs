//! Storage only: the event log with its hash chain, the inline read models' tables, and the
//! unit-of-work interface through which the application layer (`commands`) reads and writes
//! them inside one transaction. Each backend implements [`UnitOfWork`] and [`WriteSession`] over
//! one of its transactions; reads that need no transaction use [`Store`] directly.

pub mod chain;
mod dispatch;
pub(crate) mod overlay;
pub mod postgres;
pub mod sqlite;
pub mod vault;

use crate::domain::event::{DecodeError, Event, EventMetadata};
use crate::domain::keys::{ApiKeyRecord, SigningKeyRecord, SigningKeyStatus};
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::domain::user::User;
use crate::domain::webhook::{SubscriptionRecord, WebhookFormat};
use crate::domain::{Timestamp, format_timestamp};
use std::future::Future;
use uuid::Uuid;

pub use dispatch::integrity;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first; the command must reload and decide again.
    #[error("stream {stream_id} moved past version {expected}")]
    Conflict { stream_id: String, expected: i64 },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not what this build expects: {0}")]
    Corrupt(String),
    #[error("the writer has stopped")]
    WriterStopped,
}

impl StoreError {
    /// Whether the database is down or out of reach (connection refused or lost, pool
    /// exhausted waiting for one, the server shutting down), as opposed to a fault of the data
    /// or the query: the request may succeed when retried later.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(e) = self else {
            return matches!(self, StoreError::WriterStopped);
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => true,
            // Class 08 (connection exception), 57P01-57P03 (shutdown, cannot connect now),
            // 53300 (too many connections).
            sqlx::Error::Database(d) => d
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
            _ => false,
        }
    }
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// An event on its way into the log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub stream_id: String,
    /// The stream's version before this event; the event becomes `expected_version + 1`.
    pub expected_version: i64,
    pub event: Event,
    pub metadata: EventMetadata,
    pub occurred_at: Timestamp,
}

/// An event as the log holds it: the exact stored text, so its hash can be checked.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i64,
    #[serde(serialize_with = "raw_json")]
    pub data: String,
    #[serde(serialize_with = "raw_json")]
    pub metadata: String,
    pub occurred_at: String,
    pub recorded_at: String,
    #[serde(serialize_with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Vec<u8>,
}

/// One event of the log as a replay applies it: opened, parsed and decoded once.
pub struct ReplayedEvent {
    pub position: i64,
    pub stream_id: String,
    pub event: Event,
    pub at: Timestamp,
    /// Its read-through data (sealed fields opened), parsed: what the address index reads.
    pub data: serde_json::Value,
}

impl ReplayedEvent {
    /// From a stored event's columns and its read-through data.
    pub fn decode(
        position: i64,
        stream_id: String,
        event_type: &str,
        schema_version: i64,
        occurred_at: &str,
        data: serde_json::Value,
    ) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("position {position}: {what}"));
        let version = u32::try_from(schema_version).map_err(|_| corrupt("schema version"))?;
        let event = Event::decode(event_type, version, &data)?;
        let at =
            crate::domain::parse_timestamp(occurred_at).ok_or_else(|| corrupt("occurred_at"))?;
        Ok(ReplayedEvent {
            position,
            stream_id,
            event,
            at,
            data,
        })
    }
}

fn raw_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match serde_json::value::RawValue::from_string(text.to_owned()) {
        Ok(raw) => raw.serialize(s),
        // A tampered row may no longer be JSON; export it as a string rather than fail.
        Err(_) => s.serialize_str(text),
    }
}

fn hex_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::domain::token::hex(b))
}

impl RecordedEvent {
    pub fn decode(&self) -> Result<Event, StoreError> {
        self.decode_data(&self.data_value()?)
    }

    /// The event's data, parsed.
    pub fn data_value(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&self.data)
            .map_err(|e| StoreError::Corrupt(format!("position {}: {e}", self.position)))
    }

    /// The event, from its data already parsed (see [`Self::data_value`]).
    pub fn decode_data(&self, data: &serde_json::Value) -> Result<Event, StoreError> {
        let version = u32::try_from(self.schema_version).map_err(|_| {
            StoreError::Corrupt(format!("position {}: schema version", self.position))
        })?;
        Ok(Event::decode(&self.event_type, version, data)?)
    }

    pub fn occurred_at(&self) -> Result<Timestamp, StoreError> {
        crate::domain::parse_timestamp(&self.occurred_at)
            .ok_or_else(|| StoreError::Corrupt(format!("position {}: occurred_at", self.position)))
    }

    /// Builds the stored form of `new` at `position`, chained to `prev_hash`; `data` is its
    /// payload as stored (personal fields sealed, see [`vault`]).
    pub fn seal(
        new: &NewEvent,
        data: String,
        position: i64,
        prev_hash: [u8; 32],
        recorded_at: Timestamp,
    ) -> Self {
        let mut e = RecordedEvent {
            position,
            stream_id: new.stream_id.clone(),
            stream_version: new.expected_version + 1,
            event_type: new.event.event_type().to_owned(),
            schema_version: i64::from(new.event.schema_version()),
            data,
            metadata: serde_json::to_string(&new.metadata).expect("metadata serializes"),
            occurred_at: format_timestamp(new.occurred_at),
            recorded_at: format_timestamp(recorded_at),
            prev_hash: prev_hash.to_vec(),
            hash: Vec::new(),
        };
        e.hash = chain::event_hash(&e).to_vec();
        e
    }
}

/// The last event of the log: where the next append chains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub position: i64,
    pub hash: [u8; 32],
}

impl ChainHead {
    pub const GENESIS: ChainHead = ChainHead {
        position: 0,
        hash: [0u8; 32],
    };
}

/// Which refresh-token family and generation a token hash belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRecord {
    pub session_id: Uuid,
    pub generation: u32,
}

/// One transaction of one backend, as the command logic and the projections see it.
/// Methods return `Send` futures so the writer can run on any tokio worker.
pub trait UnitOfWork: Send {
    fn user_by_id(
        &mut self,
        user_id: Uuid,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    fn user_by_name(
        &mut self,
        username: &str,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    fn session(
        &mut self,
        session_id: Uuid,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;
    /// The token with this id, if its stored hash is `key.hash` (else `None`, as if unknown).
    fn token(
        &mut self,
        key: &TokenKey,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;
    fn active_sessions_of(
        &mut self,
        user_id: Uuid,
    ) -> impl Future<Output = Result<Vec<Session>, StoreError>> + Send;
    /// The user's active session seen most recently that waits for no re-authentication,
    /// `except` left out: where a login is compared from (travel), without reading every
    /// session the user keeps open.
    fn last_seen_session_of(
        &mut self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;
    /// Users with at least one active session (the rule circuit breaker's denominator).
    fn active_user_count(&mut self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// The version of the last event in a stream, 0 for a stream with none.
    fn stream_version(
        &mut self,
        stream_id: &str,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Appends one event, or fails with [`StoreError::Conflict`] if the stream moved.
    fn append(
        &mut self,
        event: NewEvent,
    ) -> impl Future<Output = Result<RecordedEvent, StoreError>> + Send;
    fn put_user(&mut self, user: &User) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn put_session(
        &mut self,
        session: &Session,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn put_token(
        &mut self,
        key: &TokenKey,
        token: TokenRecord,
        issued_at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes the session rows, and their refresh-token rows, of sessions that ended before
    /// `cutoff` (retention). The events stay.
    fn prune_ended_before(
        &mut self,
        cutoff: Timestamp,
    ) -> impl Future<Output = Result<PruneCounts, StoreError>> + Send;

    // Signing keys, API keys and webhook subscriptions: projected like the rest, but written
    // rarely, so not batched: each call sends the batch's pending writes first and then runs
    // its statement in the transaction.

    /// Every signing key, oldest first (by creation, then kid).
    fn signing_key_records(
        &mut self,
    ) -> impl Future<Output = Result<Vec<SigningKeyRecord>, StoreError>> + Send;
    fn put_signing_key(
        &mut self,
        key: &SigningKeyRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn api_key_record(
        &mut self,
        key_id: Uuid,
    ) -> impl Future<Output = Result<Option<ApiKeyRecord>, StoreError>> + Send;
    fn put_api_key(
        &mut self,
        key: &ApiKeyRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn webhook_record(
        &mut self,
        subscription_id: Uuid,
    ) -> impl Future<Output = Result<Option<SubscriptionRecord>, StoreError>> + Send;
    fn put_webhook(
        &mut self,
        subscription: &SubscriptionRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn delete_webhook(
        &mut self,
        subscription_id: Uuid,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// One failed password check under each of its throttle keys (the login-throttle
    /// projection of `login.failed`).
    fn put_login_failures(
        &mut self,
        keys: &[String],
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Keeps what must not enter the log (a sealed private key or webhook secret, an API key's
    /// hash) under `owner`, the stream id of what it belongs to. Not a projection: a rebuild
    /// leaves it alone.
    fn put_secret(
        &mut self,
        owner: &str,
        material: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn delete_secret(&mut self, owner: &str)
    -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A new subscription's delivery checkpoint: it delivers events after `after_position`.
    /// Delivery moves it (`Store::record_webhook_attempt`); a rebuild leaves it alone.
    fn start_webhook_delivery(
        &mut self,
        subscription_id: Uuid,
        after_position: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn delete_webhook_delivery(
        &mut self,
        subscription_id: Uuid,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records a DPoP proof's `jti` (its SHA-256) as seen until `expires_at`; `false` if it was
    /// seen before, by this node or another (the table's primary key settles a race). Not a
    /// projection: a rebuild leaves it alone.
    fn claim_dpop_jti(
        &mut self,
        jti_hash: &[u8; 32],
        expires_at: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Erasure: destroys every data key of `user_id` (its sealed fields in the log read as
    /// erased from now on), deletes the login-throttle rows of its name and redacts the request
    /// context its session rows keep. Returns the keys destroyed. Not undone by a rebuild.
    fn erase_personal_data(
        &mut self,
        user_id: Uuid,
        username: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// `sessiond migrate`: seals the personal fields that events written before sealing hold
    /// in clear, and re-chains the log from the first event it changed. `None` when nothing
    /// was clear (or no vault is installed).
    fn reseal_history(
        &mut self,
    ) -> impl Future<Output = Result<Option<Resealed>, StoreError>> + Send;
    /// The address index of a replayed (read-through) event: its request-context address and
    /// networks as keyed hashes (see [`vault::Vault::address_tags`]); nothing for an erased or
    /// expired address, or without the vault. Appends index themselves.
    fn index_address(
        &mut self,
        event: &ReplayedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Retention: destroys the data keys of periods before `before_period`; returns how many.
    fn expire_personal_data(
        &mut self,
        before_period: i64,
        now: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// OAuth clients (projected from their streams) and authorization codes (projected from
    /// the `authorization_code.*` events of the session streams).
    fn client_record(
        &mut self,
        client_id: &str,
    ) -> impl Future<Output = Result<Option<crate::domain::client::Client>, StoreError>> + Send;
    fn put_client(
        &mut self,
        client: &crate::domain::client::Client,
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn delete_client(
        &mut self,
        client_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn authorization_code(
        &mut self,
        code_id: Uuid,
    ) -> impl Future<
        Output = Result<Option<crate::domain::authorization::AuthorizationCode>, StoreError>,
    > + Send;
    fn put_authorization_code(
        &mut self,
        code: &crate::domain::authorization::AuthorizationCode,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Sign-in notices and exceptions (projected from the user streams, migration 0016).
    fn notice(
        &mut self,
        notice_id: Uuid,
    ) -> impl Future<Output = Result<Option<crate::domain::notice::Notice>, StoreError>> + Send;
    fn put_notice(
        &mut self,
        notice: &crate::domain::notice::Notice,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A user's notices created after `since`, newest first (at most 100).
    fn recent_notices(
        &mut self,
        user_id: Uuid,
        since: Timestamp,
    ) -> impl Future<Output = Result<Vec<crate::domain::notice::Notice>, StoreError>> + Send;
    /// When the user last denied a notice, if ever.
    fn last_denial(
        &mut self,
        user_id: Uuid,
    ) -> impl Future<Output = Result<Option<Timestamp>, StoreError>> + Send;
    fn put_exception(
        &mut self,
        exception: &crate::domain::notice::Exception,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A user's exceptions still live at `now`.
    fn live_exceptions(
        &mut self,
        user_id: Uuid,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<crate::domain::notice::Exception>, StoreError>> + Send;
    /// The alert (rule receipt) at this log position, with its verdict (migration 0019).
    fn alert_at(
        &mut self,
        position: i64,
    ) -> impl Future<Output = Result<Option<crate::domain::verdict::Alert>, StoreError>> + Send;
    fn put_alert(
        &mut self,
        alert: &crate::domain::verdict::Alert,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets the proofs whose window ended before `before`; returns how many.
    fn prune_dpop_jtis(
        &mut self,
        before: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    // Detector memory (issue 15): shared by every node, kept across restarts, changed in the
    // writer's transaction with the events judged. Not a projection: a rebuild leaves it.
    /// A threshold window's (rows, distinct names, rows of `name_tag`) after `since`; rows at
    /// or before `since` are deleted.
    fn window_counts(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        since: Timestamp,
    ) -> impl Future<Output = Result<(i64, i64, i64), StoreError>> + Send;
    fn put_window_count(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A rule's breaker spend after `since` (older rows deleted): actions, latest trip's end.
    fn breaker_spent(
        &mut self,
        rule_id: &str,
        since: Timestamp,
    ) -> impl Future<Output = Result<(i64, Option<Timestamp>), StoreError>> + Send;
    fn put_breaker_spend(
        &mut self,
        rule_id: &str,
        at: Timestamp,
        tripped_until: Option<Timestamp>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Which of these (hashed) networks `user_id` was seen on after `since`.
    fn usual_networks_seen(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        since: Timestamp,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Marks each of `networks` seen by `user_id` at `at`.
    fn put_usual_networks(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The writer's transaction control over its unit of work.
pub trait WriteSession: UnitOfWork + 'static {
    /// Starts a transaction and reads ahead, in the same go, the refresh tokens the batch will
    /// look up (and their sessions).
    fn begin(
        &mut self,
        prefetch: &[TokenKey],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Starts deciding a batch on top of the commit in flight, before it is durable (see
    /// `overlay::session::pipeline`); `false` if that is not possible now (nothing in flight,
    /// or the batch in flight cannot be read through), and then nothing was started.
    fn begin_on_top(
        &mut self,
        prefetch: &[TokenKey],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Reads ahead more tokens (and their sessions) the open batch will look up.
    fn prefetch(
        &mut self,
        keys: &[TokenKey],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Hands the transaction to the commit task and returns without waiting for it: the next
    /// batch may be decided on top. [`WriteSession::finish_commit`] says whether it committed.
    fn start_commit(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Waits for the commit in flight (if any) to be durable or to fail. Cancel-safe.
    fn finish_commit(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Commits and waits for it.
    fn commit(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            self.start_commit().await?;
            self.finish_commit().await
        }
    }
    fn rollback(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The last position known durable.
    fn committed_position(&self) -> i64;
    /// Empties the inline projections (for a rebuild), inside the current transaction.
    fn clear_projections(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Where the log stands in this transaction: the last event appended, or the committed
    /// head before any append.
    fn head(&self) -> ChainHead;
    /// Stores a signed checkpoint of the head in this transaction (see
    /// [`dispatch::integrity::put_checkpoint`]).
    fn put_checkpoint(
        &mut self,
        checkpoint: &crate::domain::checkpoint::Checkpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What a reseal of old clear-text history changed: from which position the chain was
/// recomputed, the head it replaced, and how many events it sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    pub from_position: i64,
    pub old_head: ChainHead,
    pub events: u64,
}

/// What a retention prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneCounts {
    pub sessions: u64,
    pub refresh_tokens: u64,
}

/// The store behind the service: one variant per backend.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// A background job's lock, held until released or dropped. On SQLite (one node) it is
/// always granted and holds nothing.
pub struct JobLock {
    held: Option<postgres::HeldJobLock>,
}

impl JobLock {
    pub async fn release(self) {
        if let Some(held) = self.held {
            held.release().await;
        }
    }
}

/// Filters for reading the log back (export, timelines).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub stream_id: Option<String>,
    /// Any of these streams (a user's own stream and its sessions', say); empty means all.
    pub stream_ids: Vec<String>,
    pub event_types: Vec<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub after_position: i64,
    /// Only positions below this one (paging newest first).
    pub before_position: Option<i64>,
    /// Only events about this session or user (`session_id` or `user_id` in the payload): the
    /// rule receipts, which live in streams of their own.
    pub subject: Option<Uuid>,
    /// Only events indexed under this address tag (see [`Store::address_tag`]).
    pub address_tag: Option<String>,
    /// Newest first instead of position order.
    pub newest_first: bool,
    pub limit: Option<i64>,
}

/// A signing key as stored: its projected row and, from the secrets table, the private half
/// sealed with the master key.
#[derive(Debug, Clone)]
pub struct StoredSigningKey {
    pub kid: String,
    pub algorithm: String,
    pub public_key: Vec<u8>,
    pub private_key_sealed: Vec<u8>,
    pub status: SigningKeyStatus,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub retired_at: Option<Timestamp>,
}

impl StoredSigningKey {
    pub fn new(record: SigningKeyRecord, private_key_sealed: Vec<u8>) -> Self {
        StoredSigningKey {
            kid: record.kid,
            algorithm: record.algorithm,
            public_key: record.public_key,
            private_key_sealed,
            status: record.status,
            created_at: record.created_at,
            activated_at: record.activated_at,
            retired_at: record.retired_at,
        }
    }

    /// The projected part: everything but the private half.
    pub fn record(&self) -> SigningKeyRecord {
        SigningKeyRecord {
            kid: self.kid.clone(),
            algorithm: self.algorithm.clone(),
            public_key: self.public_key.clone(),
            status: self.status,
            created_at: self.created_at,
            activated_at: self.activated_at,
            retired_at: self.retired_at,
        }
    }
}

/// A webhook subscription (its projected row), its sealed secret and where its delivery
/// stands (the delivery worker's checkpoint).
#[derive(Debug, Clone)]
pub struct WebhookSubscription {
    pub subscription_id: Uuid,
    pub url: String,
    /// The HMAC secret, sealed with the master key (the subscription id as associated data).
    pub secret_sealed: Vec<u8>,
    /// Event types delivered; empty means every type.
    pub event_types: Vec<String>,
    pub format: WebhookFormat,
    pub created_at: Timestamp,
    /// The last log position delivered (or passed over as not subscribed).
    pub delivered_position: i64,
    /// Consecutive failed attempts since the last success.
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<Timestamp>,
}

/// An API key as stored: its hash, never the key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredApiKey {
    pub key_id: Uuid,
    pub name: String,
    pub key_hash: [u8; 32],
    pub roles: Vec<String>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}
