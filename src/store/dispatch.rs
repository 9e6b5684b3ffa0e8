//! The store's one interface: each call routed to the backend the `Store` holds.

use super::*;
use tokio::sync::watch;

impl Store {
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        match self {
            Store::Sqlite(s) => s.user_by_name(username).await,
            Store::Postgres(p) => p.user_by_name(username).await,
        }
    }

    pub async fn user_by_id(&self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        match self {
            Store::Sqlite(s) => s.user_by_id(user_id).await,
            Store::Postgres(p) => p.user_by_id(user_id).await,
        }
    }

    pub async fn session(&self, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        match self {
            Store::Sqlite(s) => s.session(session_id).await,
            Store::Postgres(p) => p.session(session_id).await,
        }
    }

    pub async fn token(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.token(key).await,
            Store::Postgres(p) => p.token(key).await,
        }
    }

    /// A page of events in position order.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<RecordedEvent>, StoreError> {
        match self {
            Store::Sqlite(s) => s.events(filter).await,
            Store::Postgres(p) => p.events(filter).await,
        }
    }

    /// A user's live sessions, oldest first.
    pub async fn active_sessions_of(&self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        match self {
            Store::Sqlite(s) => s.active_sessions_of(user_id).await,
            Store::Postgres(s) => s.active_sessions_of(user_id).await,
        }
    }

    /// Every session a user ever had (ended ones too), newest first.
    pub async fn session_ids_of(&self, user_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        match self {
            Store::Sqlite(s) => s.session_ids_of(user_id).await,
            Store::Postgres(s) => s.session_ids_of(user_id).await,
        }
    }

    /// Whether any user holds `role` (the first start says how to make a security user).
    pub async fn has_user_with_role(&self, role: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.has_user_with_role(role).await,
            Store::Postgres(s) => s.has_user_with_role(role).await,
        }
    }

    pub async fn head(&self) -> Result<ChainHead, StoreError> {
        match self {
            Store::Sqlite(s) => s.head().await,
            Store::Postgres(p) => p.head().await,
        }
    }

    /// Wakes followers of the log: the highest committed position known, fed by this node's
    /// writer (`local`, from [`Writer::committed`]) and, on PostgreSQL, by every other node's
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

    /// Every row of every inline projection in a fixed order, for comparing live and rebuilt.
    pub async fn projection_snapshot(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.projection_snapshot().await,
            Store::Postgres(p) => p.projection_snapshot().await,
        }
    }

    /// Active sessions past their idle or absolute expiry at `now`, soonest first.
    pub async fn sessions_due(&self, now: Timestamp, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sessions_due(now, limit).await,
            Store::Postgres(s) => s.sessions_due(now, limit).await,
        }
    }

    pub async fn count_active_sessions(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.count_active_sessions().await,
            Store::Postgres(s) => s.count_active_sessions().await,
        }
    }

    /// Fails unless the database answers and this build's migrations are all applied.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.check_ready().await,
            Store::Postgres(s) => s.check_ready().await,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }
}
