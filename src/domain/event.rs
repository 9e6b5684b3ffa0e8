//! The event catalogue. Each event has a type name, a schema version and a JSON payload; stored
//! payloads of older versions pass through [`upcast`] before they are decoded, so old history
//! keeps replaying after a payload changes shape.

use super::Timestamp;
use super::context::RequestContext;
use super::token::TokenHash;
use super::webhook::WebhookFormat;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn user_stream(user_id: Uuid) -> String {
    format!("user-{user_id}")
}

pub fn session_stream(session_id: Uuid) -> String {
    format!("session-{session_id}")
}

/// Failed logins for names that match no user have no user stream; each gets a stream of its own
/// so that recording them never contends with anything.
pub fn login_attempt_stream(attempt_id: Uuid) -> String {
    format!("login-{attempt_id}")
}

/// Each rule receipt (and breaker trip) gets a stream of its own: recording one never contends
/// with the session or user it is about (both are named in the payload).
pub fn rule_stream(receipt_id: Uuid) -> String {
    format!("rule-{receipt_id}")
}

/// The receipt id of a rule receipt's stream.
pub fn receipt_of(stream_id: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix("rule-")
        .and_then(|id| Uuid::parse_str(id).ok())
}

pub fn signing_key_stream(kid: &str) -> String {
    format!("signing_key-{kid}")
}

pub fn api_key_stream(key_id: Uuid) -> String {
    format!("api_key-{key_id}")
}

pub use super::client::client_stream;

pub fn webhook_stream(subscription_id: Uuid) -> String {
    format!("webhook-{subscription_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Logout,
    User,
    Admin,
    Reuse,
    Rule,
    PasswordChange,
    LogoutEverywhere,
}

impl RevokeReason {
    pub const ALL: [RevokeReason; 7] = [
        RevokeReason::Logout,
        RevokeReason::User,
        RevokeReason::Admin,
        RevokeReason::Reuse,
        RevokeReason::Rule,
        RevokeReason::PasswordChange,
        RevokeReason::LogoutEverywhere,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::User => "user",
            RevokeReason::Admin => "admin",
            RevokeReason::Reuse => "reuse",
            RevokeReason::Rule => "rule",
            RevokeReason::PasswordChange => "password_change",
            RevokeReason::LogoutEverywhere => "logout_everywhere",
        }
    }
}

/// Why a spent refresh token coming back is treated as theft rather than a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReuseClass {
    /// The token that was just rotated, presented after the late-retry window (after the
    /// grace window when late retries are off).
    PreviousAfterGrace,
    /// The token that was just rotated, within the retry windows but from another device class
    /// than the rotation.
    PreviousOtherContext,
    /// A token of the generation before, handed out as a sibling (retry) but never used while it
    /// was current: another holder of the family moved on without it.
    DisplacedBranch,
    /// A token two or more generations old.
    OlderGeneration,
    /// A late retry right after a late retry on the generation before: the family's tokens
    /// alternate between two holders.
    RepeatedLateRetry,
}

impl ReuseClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ReuseClass::PreviousAfterGrace => "previous_after_grace",
            ReuseClass::PreviousOtherContext => "previous_other_context",
            ReuseClass::DisplacedBranch => "displaced_branch",
            ReuseClass::OlderGeneration => "older_generation",
            ReuseClass::RepeatedLateRetry => "repeated_late_retry",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryKind {
    Idle,
    Absolute,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    UnknownUser,
    BadPassword,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: Uuid,
    pub username: String,
    /// The argon2id PHC string, never the password.
    pub password_hash: String,
    pub roles: Vec<String>,
    pub context: RequestContext,
    /// Where sign-in notices are mailed, if the user gave an address (sealed by the vault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub user_id: Uuid,
    pub password_hash: String,
    /// The session the change was made from; it stays signed in.
    pub kept_session: Option<Uuid>,
    pub context: RequestContext,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginFailed {
    pub username: String,
    pub user_id: Option<Uuid>,
    pub reason: LoginFailure,
    pub context: RequestContext,
}

/// An attempt refused by the login throttle before any password was checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginThrottled {
    pub username: String,
    pub user_id: Option<Uuid>,
    /// The counters over their limits, strictest first.
    pub scopes: Vec<crate::domain::throttle::ThrottleScope>,
    /// What the client was told to wait, in seconds.
    pub retry_after_seconds: u64,
    pub context: RequestContext,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserLockChanged {
    pub user_id: Uuid,
    pub reason: String,
    pub context: Option<RequestContext>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserLoggedOutEverywhere {
    pub user_id: Uuid,
    pub sessions: Vec<Uuid>,
    pub context: Option<RequestContext>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStarted {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub scope: String,
    /// The roles granted at login; access tokens of this session carry them. A role change
    /// applies from the next login (revoke the sessions to apply it at once).
    #[serde(default)]
    pub roles: Vec<String>,
    pub generation: u32,
    /// The new token's public id (the token index's key) and its hash.
    pub token_id: Uuid,
    pub token_hash: TokenHash,
    #[serde(with = "super::ts_format")]
    pub auth_time: Timestamp,
    #[serde(with = "super::ts_format")]
    pub idle_expires_at: Timestamp,
    #[serde(with = "super::ts_format")]
    pub absolute_expires_at: Timestamp,
    pub context: RequestContext,
    /// The RFC 7638 thumbprint of the DPoP key the login proved possession of: every refresh
    /// of the family needs a proof by that key. Absent for a bearer session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
    /// The OAuth client the session was started for (`/oauth/authorize`); absent for a
    /// first-party login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRefreshed {
    pub session_id: Uuid,
    /// The generation the new token belongs to.
    pub generation: u32,
    pub token_id: Uuid,
    pub token_hash: TokenHash,
    pub presented_hash: TokenHash,
    #[serde(with = "super::ts_format")]
    pub idle_expires_at: Timestamp,
    pub context: RequestContext,
}

/// A retry of the token just replaced got the successor the rotation issued, again.
/// Version 2; version 1 (older builds) minted a sibling token of the generation instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshRetried {
    pub session_id: Uuid,
    /// The current generation, the successor's.
    pub generation: u32,
    /// The token handed out: the successor (version 1: the new sibling).
    pub token_id: Uuid,
    pub token_hash: TokenHash,
    pub presented_hash: TokenHash,
    /// 1 for the first retry of this generation (early and late together).
    pub retry: u32,
    /// After the grace window, within the late-retry window: an answer the client lost.
    pub late: bool,
    /// Version 1 only: the retry minted a token of its own (the projection indexes it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sibling: bool,
    #[serde(with = "super::ts_format")]
    pub idle_expires_at: Timestamp,
    pub context: RequestContext,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReuseDetected {
    pub session_id: Uuid,
    pub class: ReuseClass,
    pub presented_hash: TokenHash,
    pub presented_generation: u32,
    pub current_generation: u32,
    /// Time since the last rotation, when there was one.
    pub since_rotation_ms: Option<i64>,
    pub context: RequestContext,
}

/// What was wrong with the DPoP proof of a refresh of a bound family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpopFault {
    /// No `DPoP` header.
    Missing,
    /// A valid proof, by another key than the family's.
    OtherKey,
    /// A proof whose `jti` was already seen (on any node).
    Replayed,
    /// A proof that does not verify: shape, type, algorithm, signature, method, URL, time or
    /// nonce.
    Invalid,
}

impl DpopFault {
    pub fn as_str(self) -> &'static str {
        match self {
            DpopFault::Missing => "missing",
            DpopFault::OtherKey => "other_key",
            DpopFault::Replayed => "replayed",
            DpopFault::Invalid => "invalid",
        }
    }
}

/// A refresh token of a DPoP-bound family came without a valid proof by the family's key:
/// refused, nothing rotated. The rules can act on it (the shipped pack revokes the family).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpopMismatch {
    pub session_id: Uuid,
    pub fault: DpopFault,
    /// The thumbprint of the key that signed the proof, when one did.
    pub presented_jkt: Option<String>,
    pub presented_generation: u32,
    pub context: RequestContext,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReauthRequired {
    pub session_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionReauthenticated {
    pub session_id: Uuid,
    pub context: RequestContext,
}

/// A rule's receipt: what it saw, what it concluded and what was done about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleFired {
    pub rule_id: String,
    pub rule_version: u32,
    /// `enforce` or `shadow`.
    pub mode: String,
    pub severity: String,
    /// The event type the rule judged (`session.refreshed`, `login.failed`, ...).
    pub trigger: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub username: Option<String>,
    /// The detector's figures: locations, radii, distance, gap, speed, devices, counts.
    pub inputs: serde_json::Value,
    /// Build time of the GeoIP city database the current location came from.
    pub geoip_build: Option<u64>,
    /// The strongest action the rule asks for, and whether it refuses the request.
    pub wanted: String,
    pub deny: bool,
    /// What was done: `none` in shadow mode, `flag` when the breaker degraded it, else `wanted`.
    pub action: String,
    pub explanation: String,
    /// The request context the rule judged. A refused grant (a refresh revoked by a rule)
    /// records no event of its own, so this is what a backtest from an export replays it from.
    /// Its personal fields are sealed like every event's (`store/vault.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<RequestContext>,
}

/// The circuit breaker stopped revoking actions: past the cap they degrade to `flag`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerTripped {
    pub rule_id: String,
    pub wanted: String,
    /// Revoking actions taken in the window, and the cap they hit.
    pub count: u32,
    pub cap: u32,
    pub window_seconds: i64,
    pub active_users: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRevoked {
    pub session_id: Uuid,
    pub reason: RevokeReason,
    pub context: Option<RequestContext>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionExpired {
    pub session_id: Uuid,
    pub kind: ExpiryKind,
    /// When the lifetime ran out (not when it was noticed).
    #[serde(with = "super::ts_format")]
    pub expired_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SigningKeyCreated {
    pub kid: String,
    pub algorithm: String,
    /// The public key, base64url: the private part never enters the log.
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SigningKeyChanged {
    pub kid: String,
}

// Operations (issue 5): retention and the end of a signing key's publication.

/// The stream retention prunes are recorded on.
pub const RETENTION_STREAM: &str = "retention";

/// Projection rows of sessions that ended before `ended_before` were deleted (the events stay).
/// A projection rebuild applies the same prune at the same point of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionPruned {
    #[serde(with = "super::ts_format")]
    pub ended_before: Timestamp,
    pub sessions: u64,
    pub refresh_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub key_id: Uuid,
    pub name: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    pub key_id: Uuid,
}

/// A user's roles were replaced (from the next login on: sessions keep the roles granted at
/// their login).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRolesChanged {
    pub user_id: Uuid,
    pub roles: Vec<String>,
    pub previous: Vec<String>,
}

/// A webhook subscription was made. Its secret is not here: it is kept sealed outside the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSubscribed {
    pub subscription_id: Uuid,
    pub url: String,
    /// Event types delivered; empty means every type.
    pub event_types: Vec<String>,
    pub format: WebhookFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookUnsubscribed {
    pub subscription_id: Uuid,
}

// Personal data (issue 12): erasure and retention of the data keys that seal it.

/// What a personal field reads as once its subject was erased.
pub const ERASED_MARKER: &str = "[erased]";
/// What a personal field reads as once its retention period is over.
pub const EXPIRED_MARKER: &str = "[expired]";

/// A user was erased (GDPR art. 17): the sessions it still had were ended, every data key of
/// the user was destroyed, so its name, password hash, addresses and User-Agents in the log now
/// read as erased. The actor is in the metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserErased {
    pub user_id: Uuid,
    /// The sessions the erasure ended.
    pub sessions: Vec<Uuid>,
    /// Data keys destroyed.
    pub keys: u64,
}

/// The data keys of retention periods before `before` were destroyed: the request context
/// they sealed now reads as expired (the events, their order and the chain stay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonalDataExpired {
    #[serde(with = "super::ts_format")]
    pub before: Timestamp,
    pub keys: u64,
}

/// The stream `sessiond migrate` records its conversions on.
pub const MIGRATION_STREAM: &str = "migration";

/// `sessiond migrate` sealed the personal fields that history written by an older build held
/// in clear: the events from `from_position` on were rewritten and re-chained. The link to the
/// replaced chain is its head (position and hash), recorded here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogResealed {
    pub from_position: i64,
    pub old_head_position: i64,
    /// Hex SHA-256 of the replaced chain's head.
    pub old_head_hash: String,
    pub events: u64,
}

// OAuth clients and authorization codes (issue 14).

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientDeleted {
    pub client_id: String,
}

/// A code was exchanged for tokens (on the stream of the session it started).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationCodeRedeemed {
    pub session_id: Uuid,
    pub code_id: Uuid,
    pub client_id: String,
    /// The exchange carried a DPoP proof: the session's family is bound to this key's
    /// thumbprint from here on (RFC 9449 §5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// A code already exchanged was presented again: the session it started is revoked with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationCodeReused {
    pub session_id: Uuid,
    pub code_id: Uuid,
    /// The client that presented it (authenticated), which may not be the code's.
    pub presented_by: String,
    pub context: RequestContext,
}

macro_rules! catalogue {
    ($( $variant:ident($payload:ty) = $name:literal, version $version:literal; )*) => {
        /// Every event sessiond records.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $( $variant($payload), )*
        }

        impl Event {
            pub fn event_type(&self) -> &'static str {
                match self { $( Event::$variant(_) => $name, )* }
            }

            /// The payload version this code writes.
            pub fn schema_version(&self) -> u32 {
                match self { $( Event::$variant(_) => $version, )* }
            }

            pub fn data(&self) -> serde_json::Value {
                let value = match self { $( Event::$variant(p) => serde_json::to_value(p), )* };
                value.expect("event payloads are plain data and always serialize")
            }

            /// Decodes a stored payload, upcasting older schema versions first (only their payload
            /// is copied, so a replay decodes the value it parsed in place).
            pub fn decode(event_type: &str, schema_version: u32, data: &serde_json::Value) -> Result<Event, DecodeError> {
                let upcast = upcast(event_type, schema_version, data)?;
                let data = upcast.as_ref().unwrap_or(data);
                match event_type {
                    $( $name => serde::Deserialize::deserialize(data).map(Event::$variant)
                        .map_err(|e| DecodeError::Payload { event_type: event_type.to_owned(), reason: e.to_string() }), )*
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }

            pub fn current_schema_version(event_type: &str) -> Option<u32> {
                match event_type { $( $name => Some($version), )* _ => None }
            }

            pub const TYPES: &'static [&'static str] = &[ $( $name, )* ];
        }
    };
}

catalogue! {
    UserRegistered(UserRegistered) = "user.registered", version 1;
    PasswordChanged(PasswordChanged) = "user.password_changed", version 1;
    UserLocked(UserLockChanged) = "user.locked", version 1;
    UserUnlocked(UserLockChanged) = "user.unlocked", version 1;
    LoginFailed(LoginFailed) = "login.failed", version 1;
    LoginThrottled(LoginThrottled) = "login.throttled", version 1;
    UserLoggedOutEverywhere(UserLoggedOutEverywhere) = "user.logged_out_everywhere", version 1;
    SessionStarted(SessionStarted) = "session.started", version 1;
    SessionRefreshed(SessionRefreshed) = "session.refreshed", version 1;
    RefreshRetried(RefreshRetried) = "session.refresh_retried", version 2;
    ReuseDetected(ReuseDetected) = "session.reuse_detected", version 1;
    ReauthRequired(ReauthRequired) = "session.reauth_required", version 1;
    SessionRevoked(SessionRevoked) = "session.revoked", version 1;
    SessionExpired(SessionExpired) = "session.expired", version 1;
    SigningKeyCreated(SigningKeyCreated) = "signing_key.created", version 1;
    SigningKeyActivated(SigningKeyChanged) = "signing_key.activated", version 1;
    SigningKeyRetired(SigningKeyChanged) = "signing_key.retired", version 1;
    SigningKeyExpired(SigningKeyChanged) = "signing_key.expired", version 1;
    RetentionPruned(RetentionPruned) = "retention.pruned", version 1;
    ApiKeyCreated(ApiKeyCreated) = "api_key.created", version 1;
    ApiKeyRevoked(ApiKeyRevoked) = "api_key.revoked", version 1;
    UserRolesChanged(UserRolesChanged) = "user.roles_changed", version 1;
    WebhookSubscribed(WebhookSubscribed) = "webhook.subscribed", version 1;
    WebhookUnsubscribed(WebhookUnsubscribed) = "webhook.unsubscribed", version 1;
    // The rule engine (issue 3).
    SessionReauthenticated(SessionReauthenticated) = "session.reauthenticated", version 1;
    RuleFired(RuleFired) = "rule.fired", version 1;
    RuleBreakerTripped(BreakerTripped) = "rule.breaker_tripped", version 1;
    // DPoP (issue 13).
    DpopMismatch(DpopMismatch) = "session.dpop_mismatch", version 1;
    // Personal data (issue 12).
    UserErased(UserErased) = "user.erased", version 1;
    PersonalDataExpired(PersonalDataExpired) = "personal_data.expired", version 1;
    LogResealed(LogResealed) = "log.resealed", version 1;
    // OAuth clients and the authorization code flow (issue 14).
    ClientRegistered(super::client::Client) = "client.registered", version 1;
    ClientDeleted(ClientDeleted) = "client.deleted", version 1;
    AuthorizationCodeIssued(super::authorization::AuthorizationCode) = "authorization_code.issued", version 1;
    AuthorizationCodeRedeemed(AuthorizationCodeRedeemed) = "authorization_code.redeemed", version 1;
    AuthorizationCodeReused(AuthorizationCodeReused) = "authorization_code.reused", version 1;
    // Sign-in notices and exceptions (issue 15).
    NoticeCreated(super::notice::NoticeCreated) = "notice.created", version 1;
    NoticeConfirmed(super::notice::NoticeAnswered) = "notice.confirmed", version 1;
    NoticeDenied(super::notice::NoticeAnswered) = "notice.denied", version 1;
    ExceptionAdded(super::notice::ExceptionAdded) = "exception.added", version 1;
    // Analyst verdicts on alerts (issue 15, point 5).
    AlertVerdictRecorded(super::verdict::AlertVerdictRecorded) = "alert.verdict_recorded", version 1;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event_type} schema version {version} is newer than this build understands")]
    FutureVersion { event_type: String, version: u32 },
    #[error("{event_type}: {reason}")]
    Payload { event_type: String, reason: String },
}

/// Brings a stored payload up to the version this build decodes: `None` when it already is.
/// Each schema change adds one step here (vN -> vN+1) and bumps the version in the catalogue;
/// the stored row is never rewritten, so the hash chain stays intact.
pub fn upcast(
    event_type: &str,
    schema_version: u32,
    data: &serde_json::Value,
) -> Result<Option<serde_json::Value>, DecodeError> {
    let current = Event::current_schema_version(event_type)
        .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
    if schema_version > current {
        return Err(DecodeError::FutureVersion {
            event_type: event_type.to_owned(),
            version: schema_version,
        });
    }
    if event_type == "session.refresh_retried"
        && schema_version < 2
        && let Some(fields) = data.as_object()
    {
        // v1 -> v2: a v1 retry was early (there were no late ones) and minted a sibling.
        let mut fields = fields.clone();
        fields.insert("late".into(), serde_json::Value::Bool(false));
        fields.insert("sibling".into(), serde_json::Value::Bool(true));
        return Ok(Some(serde_json::Value::Object(fields)));
    }
    Ok(None)
}

/// Who caused an event, for timelines and audits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Actor {
    User(Uuid),
    Admin(Uuid),
    /// A caller of the security API or a resource server, by API key id.
    ApiKey(Uuid),
    Rule(String),
    System,
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Position of the event that caused this one, when an event (not a request) did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation: Option<i64>,
}

impl EventMetadata {
    pub fn new(actor: Actor, request_id: Option<String>) -> Self {
        EventMetadata {
            actor,
            request_id,
            causation: None,
        }
    }
}

/// Removes what only the service itself may read from an event's data (the password hash that
/// `user.registered` and `user.password_changed` carry, needed to rebuild the users table):
/// every export, admin view and delivery shows the data through this.
pub fn strip_secrets(data: &mut serde_json::Value) -> bool {
    data.as_object_mut()
        .is_some_and(|fields| fields.remove("password_hash").is_some())
}

#[cfg(test)]
mod tests;
