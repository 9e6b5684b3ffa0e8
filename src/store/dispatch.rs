//! The store's one interface: each call routed to the backend the `Store` holds. The shared
//! code both backends run lives below: [`dialect`] (what differs), [`rows`] (row mapping) and
//! [`tables`] (every read and write through the pool).

pub(crate) mod data_keys;
pub(crate) mod dialect;
pub mod integrity;
pub(crate) mod notices;
pub(crate) mod oauth;
pub(crate) mod registry;
pub(crate) mod rows;
pub(crate) mod tables;
pub(crate) mod verdicts;

use super::*;
use tokio::sync::watch;

/// Generates one `Store` method per signature, each calling the method of the same name on
/// the backend the `Store` holds.
macro_rules! route {
    ($($(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) $(-> $ret:ty)?;)*) => {
        impl Store {
    /// The events after position `after` (and before `before`, if given), at most `limit`, in
    /// position order, opened and decoded for a replay. On SQLite read by a lean reader of its
    /// own; on PostgreSQL as [`Store::events_parsed`] reads them.
    pub async fn replay_page(
        &self,
        after: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ReplayedEvent>, StoreError> {
        match self {
            Store::Sqlite(s) => s.replay_page(after, before, limit).await,
            Store::Postgres(p) => p.replay_page(after, before, limit).await,
        }
    }

            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
                    match self {
                        Store::Sqlite(s) => s.$name($($arg),*).await,
                        Store::Postgres(p) => p.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

route! {
    fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError>;
    fn user_by_id(&self, user_id: Uuid) -> Result<Option<User>, StoreError>;
    fn session(&self, session_id: Uuid) -> Result<Option<Session>, StoreError>;
    fn token(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError>;
    /// A page of events in position order, read through: sealed personal fields opened (or
    /// their erased/expired markers). For the stored bytes (the chain, a keyless export) use
    /// `raw_events`.
    fn events(&self, filter: &EventFilter) -> Result<Vec<RecordedEvent>, StoreError>;
    /// [`Store::events`] with each event's read-through data parsed (the `data` text is left
    /// as stored): for a replay, which would otherwise print the opened JSON to parse it again.
    fn events_parsed(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<(RecordedEvent, serde_json::Value)>, StoreError>;
    /// A page of events exactly as stored: personal fields sealed.
    fn raw_events(&self, filter: &EventFilter) -> Result<Vec<RecordedEvent>, StoreError>;
    /// A user's live sessions, oldest first.
    fn active_sessions_of(&self, user_id: Uuid) -> Result<Vec<Session>, StoreError>;
    /// Every session a user ever had (ended ones too), newest first.
    fn session_ids_of(&self, user_id: Uuid) -> Result<Vec<Uuid>, StoreError>;
    /// Whether any user holds `role` (the first start says how to make a security user).
    fn has_user_with_role(&self, role: &str) -> Result<bool, StoreError>;
    /// The API key with this id whose stored hash matches; `None` for any other.
    fn api_key(&self, key: &TokenKey) -> Result<Option<StoredApiKey>, StoreError>;
    fn api_keys(&self) -> Result<Vec<StoredApiKey>, StoreError>;
    fn head(&self) -> Result<ChainHead, StoreError>;
    /// Every signing key with its sealed private half, oldest first.
    fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError>;
    /// Every row of every inline projection in a fixed order, for comparing live and rebuilt.
    fn projection_snapshot(&self) -> Result<Vec<String>, StoreError>;
    /// Active sessions past their idle or absolute expiry at `now`, soonest first.
    fn sessions_due(&self, now: Timestamp, limit: i64) -> Result<Vec<Uuid>, StoreError>;
    fn count_active_sessions(&self) -> Result<i64, StoreError>;
    /// Fails unless the database answers and this build's migrations are all applied.
    fn check_ready(&self) -> Result<(), StoreError>;
    /// Every subscription with its sealed secret and delivery checkpoint.
    fn webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError>;
    /// Subscriptions made before they were recorded in the log, to be adopted into it.
    fn unlogged_webhooks(&self) -> Result<Vec<Uuid>, StoreError>;
    /// One delivery attempt: on success (`error` None) the checkpoint moves to
    /// `delivered_position` and the failure count resets; a failure counts up.
    fn record_webhook_attempt(
        &self,
        id: Uuid,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Where a client's back-channel logout delivery stands; `None` before its first attempt.
    fn backchannel_checkpoint(&self, client_id: &str) -> Result<Option<i64>, StoreError>;
    /// One back-channel logout attempt for a client, like `record_webhook_attempt`.
    fn record_backchannel_attempt(
        &self,
        client_id: &str,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Stored signed checkpoints after a position, oldest first.
    fn checkpoints(&self, after_position: i64, limit: i64) -> Result<Vec<crate::domain::checkpoint::Checkpoint>, StoreError>;
    /// The newest stored checkpoints, newest first.
    fn latest_checkpoints(&self, limit: i64) -> Result<Vec<crate::domain::checkpoint::Checkpoint>, StoreError>;
    /// A page of a projected table (`integrity::PROJECTED_TABLES[table]`) in key order.
    fn projection_rows(&self, table: usize, from: Option<&integrity::PageKey>, limit: i64) -> Result<Vec<integrity::ProjectedRow>, StoreError>;
    /// For each probe `(throttle key, since, n)`, the `n`-th newest login failure (0 = newest)
    /// under the key after `since`: one read for all of them.
    fn nth_login_failures(&self, probes: &[(String, Timestamp, i64)]) -> Result<Vec<Option<Timestamp>>, StoreError>;
    /// The OAuth client with this id, and its secret's SHA-256 when it is confidential.
    fn client(&self, client_id: &str) -> Result<Option<(crate::domain::client::Client, Option<Vec<u8>>)>, StoreError>;
    /// Every registered OAuth client, oldest first.
    fn clients(&self) -> Result<Vec<crate::domain::client::Client>, StoreError>;
    /// A user's sign-in notices, newest first.
    fn notices_of(&self, user_id: Uuid, limit: i64) -> Result<Vec<crate::domain::notice::Notice>, StoreError>;
    /// The alerts (rule receipts) at these log positions, with their verdicts.
    fn alerts_at(&self, positions: &[i64]) -> Result<Vec<crate::domain::verdict::Alert>, StoreError>;
    /// Per rule: alerts and verdicts (the `alerts` projection, migration 0019).
    fn rule_stats(&self) -> Result<Vec<crate::domain::verdict::RuleStats>, StoreError>;
    /// When the user last denied a sign-in notice ("this wasn't me"), if ever.
    fn last_denial(&self, user_id: Uuid) -> Result<Option<Timestamp>, StoreError>;
    /// Where the mailing of notices stands; `None` before its first attempt.
    fn mail_checkpoint(&self, channel: &str) -> Result<Option<i64>, StoreError>;
    /// One mailing attempt, like `record_webhook_attempt`.
    fn record_mail_attempt(
        &self,
        channel: &str,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    fn close(&self);
}

/// The calls whose backends differ in kind, not only in SQL.
impl Store {
    /// Hands the store the personal-data vault (keys derived from the master key): from now on
    /// appends seal personal fields and reads open them. Installed once, before the writer
    /// starts; without it (tools that hold no master key) events are read as stored.
    pub fn install_vault(&self, vault: std::sync::Arc<vault::Vault>) {
        let slot = match self {
            Store::Sqlite(s) => &s.vault,
            Store::Postgres(p) => &p.vault,
        };
        let _ = slot.set(vault);
    }

    /// The installed vault, if any (a scratch store for `events verify` shares it).
    pub fn vault(&self) -> Option<std::sync::Arc<vault::Vault>> {
        match self {
            Store::Sqlite(s) => s.vault.get().cloned(),
            Store::Postgres(p) => p.vault.get().cloned(),
        }
    }

    /// The address-index tag that narrows a search for `net` (see
    /// [`vault::Vault::search_tag`]); `None` without the vault or for a network wider than
    /// every indexed one.
    pub fn address_tag(&self, net: &ipnet::IpNet) -> Option<String> {
        self.vault()?.search_tag(net)
    }

    /// Wakes followers of the log: the highest committed position known, fed by this node's
    /// writer (`local`, the position its commits reach) and, on PostgreSQL, by every other node's
    /// commits (LISTEN/NOTIFY). Followers still poll now and then: a notification can be lost
    /// with its connection.
    pub async fn follow_commits(
        &self,
        local: watch::Receiver<i64>,
    ) -> Result<watch::Receiver<i64>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(local),
            Store::Postgres(p) => p.follow_commits(local).await,
        }
    }

    /// The lock for one run of a background job, or `None` if another node is running it.
    pub async fn try_job_lock(&self, job: &str) -> Result<Option<JobLock>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Some(JobLock { held: None })),
            Store::Postgres(p) => Ok(p
                .try_job_lock(job)
                .await?
                .map(|held| JobLock { held: Some(held) })),
        }
    }
}
