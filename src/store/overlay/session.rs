//! The writer's unit of work, written once: the [`Overlay`] in front of one backend's write
//! connection. Every read looks at the overlay first; every write waits in it for the flush.
//! What differs between the backends (how a transaction starts and what it locks, how pending
//! rows become statements, how a commit is announced) is the small [`WriteBackend`] trait.

use super::Overlay;
use crate::domain::Timestamp;
use crate::domain::keys::{ApiKeyRecord, SigningKeyRecord};
use crate::domain::session::Session;
use crate::domain::token::{TokenHash, TokenKey};
use crate::domain::user::User;
use crate::domain::webhook::SubscriptionRecord;
use crate::store::dispatch::dialect::Dialect;
use crate::store::dispatch::{oauth, registry, tables};
use crate::store::{
    ChainHead, NewEvent, PruneCounts, RecordedEvent, StoreError, TokenRecord, UnitOfWork,
};
use std::collections::HashMap;
use std::future::Future;
use uuid::Uuid;

/// A refresh token found for a presented key: its hash, its row, and its session's row.
pub type TokenRow = (TokenHash, TokenRecord, Option<Session>);

/// The rows a flush sends.
pub struct Pending<'a> {
    pub events: &'a [RecordedEvent],
    pub tokens: &'a [(TokenKey, TokenRecord, Timestamp)],
    pub sessions: &'a [Session],
    pub users: &'a [User],
    /// Sessions as the database holds them, so a backend may leave unchanged columns alone.
    pub read_sessions: &'a HashMap<Uuid, Option<Session>>,
}

impl Pending<'_> {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.tokens.is_empty()
            && self.sessions.is_empty()
            && self.users.is_empty()
    }
}

/// How a flush ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushEnd {
    /// The transaction stays open.
    Open,
    /// The transaction commits; `appended` is the new last position if the batch appended.
    Commit { appended: Option<i64> },
}

/// One backend's write connection, as raw row access: only what differs between databases.
pub trait WriteBackend: Send + 'static {
    type Db: Dialect;

    /// The connection, inside the open transaction.
    fn conn(&mut self) -> Result<&mut <Self::Db as sqlx::Database>::Connection, StoreError>;

    /// Starts a transaction under whatever orders appends, and reads `prefetch`'s tokens with
    /// their sessions (in the same round trip where the database allows).
    fn begin(
        &mut self,
        prefetch: &[TokenKey],
    ) -> impl Future<Output = Result<Vec<TokenRow>, StoreError>> + Send;

    /// Sends `rows` as multi-row statements and, for [`FlushEnd::Commit`], commits. A lost
    /// race on a stream is a [`StoreError::Conflict`].
    fn flush(
        &mut self,
        rows: Pending<'_>,
        end: FlushEnd,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends the transaction without a trace; never fails (a backend that cannot roll back
    /// drops the connection instead).
    fn rollback(&mut self) -> impl Future<Output = ()> + Send;

    /// Housekeeping between two batches.
    fn between_batches(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The writer's connection: a unit of work between `begin` and `commit`, and the chain head it
/// appends after. The head moves with appends and falls back on rollback.
///
/// Every statement is a round trip, so the transaction keeps a batch-local overlay: rows read
/// are remembered, and appends and projection writes are held in memory and sent as a few
/// multi-row statements at commit (or earlier, see [`Overlay::full`]).
pub struct OverlaySession<B> {
    backend: B,
    committed: ChainHead,
    head: ChainHead,
    overlay: Overlay,
}

type Db<B> = <B as WriteBackend>::Db;

impl<B: WriteBackend> OverlaySession<B> {
    pub(crate) fn new(backend: B, head: ChainHead) -> Self {
        OverlaySession {
            backend,
            committed: head,
            head,
            overlay: Overlay::default(),
        }
    }

    /// Sends every pending write (inside the open transaction), and commits with `end`. Reads
    /// stay cached: they now match what the database holds.
    async fn flush(&mut self, end: FlushEnd) -> Result<(), StoreError> {
        let o = &mut self.overlay;
        if o.pending() == 0 && end == FlushEnd::Open {
            return Ok(());
        }
        let events = std::mem::take(&mut o.events);
        let tokens = std::mem::take(&mut o.tokens);
        let sessions: Vec<Session> = std::mem::take(&mut o.sessions).into_values().collect();
        let users: Vec<User> = std::mem::take(&mut o.users).into_values().collect();
        o.versions.clear();
        o.stream_max.clear();
        o.token_index.clear();
        let rows = Pending {
            events: &events,
            tokens: &tokens,
            sessions: &sessions,
            users: &users,
            read_sessions: &o.read_sessions,
        };
        self.backend.flush(rows, end).await?;
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

    /// The transaction's connection with every pending write sent: for the rarely written
    /// tables, whose statements run at once rather than in the batch's flush.
    async fn flushed(&mut self) -> Result<&mut <Db<B> as sqlx::Database>::Connection, StoreError> {
        self.flush(FlushEnd::Open).await?;
        self.backend.conn()
    }

    async fn flush_if_full(&mut self) -> Result<(), StoreError> {
        if self.overlay.full() {
            self.flush(FlushEnd::Open).await?;
        }
        Ok(())
    }

    fn remember_tokens(&mut self, keys: &[TokenKey], found: Vec<TokenRow>) {
        for k in keys {
            self.overlay.read_tokens.entry(k.hash).or_insert(None);
        }
        for (hash, record, session) in found {
            self.overlay.read_tokens.insert(hash, Some(record));
            self.overlay
                .read_sessions
                .entry(record.session_id)
                .or_insert(session);
        }
    }
}

impl<B: WriteBackend> crate::store::WriteSession for OverlaySession<B> {
    async fn begin(&mut self, prefetch: &[TokenKey]) -> Result<(), StoreError> {
        self.overlay = Overlay::default();
        self.head = self.committed;
        let found = self.backend.begin(prefetch).await?;
        self.remember_tokens(prefetch, found);
        // Another process (a second node, a CLI tool) may have appended since our last
        // commit: chain onto what is really there, under the lock we now hold.
        self.committed = tables::head::<Db<B>>(self.backend.conn()?).await?;
        self.head = self.committed;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        let appended =
            (self.head.position != self.committed.position).then_some(self.head.position);
        self.flush(FlushEnd::Commit { appended }).await?;
        self.overlay = Overlay::default();
        self.committed = self.head;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), StoreError> {
        self.overlay = Overlay::default();
        self.head = self.committed;
        self.backend.rollback().await;
        Ok(())
    }

    fn committed_position(&self) -> i64 {
        self.committed.position
    }

    async fn between_batches(&mut self) {
        self.backend.between_batches().await;
    }

    async fn clear_projections(&mut self) -> Result<(), StoreError> {
        // Pending events must reach the log; pending projection rows would be deleted anyway.
        self.flush(FlushEnd::Open).await?;
        let c = self.backend.conn()?;
        Db::<B>::script(&mut *c, tables::CLEAR_PROJECTIONS).await?;
        Db::<B>::script(&mut *c, registry::CLEAR_PROJECTIONS).await?;
        Db::<B>::script(c, oauth::CLEAR_PROJECTIONS).await?;
        self.overlay.read_tokens.clear();
        self.overlay.read_sessions.clear();
        self.overlay.read_users.clear();
        Ok(())
    }
}

impl<B: WriteBackend> UnitOfWork for OverlaySession<B> {
    async fn user_by_id(&mut self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        if let Some(known) = self.overlay.user(user_id) {
            return Ok(known);
        }
        let user = tables::user_by_id::<Db<B>>(self.backend.conn()?, user_id).await?;
        self.overlay.read_users.insert(user_id, user.clone());
        Ok(user)
    }

    async fn user_by_name(&mut self, username: &str) -> Result<Option<User>, StoreError> {
        if let Some(user) = self.overlay.user_named(username) {
            return Ok(Some(user));
        }
        let found = tables::user_by_name::<Db<B>>(self.backend.conn()?, username).await?;
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
        let session = tables::session::<Db<B>>(self.backend.conn()?, session_id).await?;
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
            let keys = std::slice::from_ref(key);
            let c = self.backend.conn()?;
            let found = tables::tokens_with_sessions::<Db<B>>(c, keys, "").await?;
            self.remember_tokens(keys, found);
        }
        Ok(self.overlay.read_tokens.get(&key.hash).copied().flatten())
    }

    async fn active_sessions_of(&mut self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        // A query over many rows: let the database answer it with the batch's writes applied.
        self.flush(FlushEnd::Open).await?;
        let c = self.backend.conn()?;
        let sessions = tables::active_sessions_of::<Db<B>>(c, user_id).await?;
        for s in &sessions {
            self.overlay
                .read_sessions
                .insert(s.session_id, Some(s.clone()));
        }
        Ok(sessions)
    }

    async fn active_user_count(&mut self) -> Result<u64, StoreError> {
        self.flush(FlushEnd::Open).await?;
        tables::active_user_count::<Db<B>>(self.backend.conn()?).await
    }

    async fn stream_version(&mut self, stream_id: &str) -> Result<i64, StoreError> {
        let stored = tables::stream_version::<Db<B>>(self.backend.conn()?, stream_id).await?;
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
        self.flush(FlushEnd::Open).await?;
        let [tokens, sessions] = Db::<B>::prune(cutoff);
        let c = self.backend.conn()?;
        let refresh_tokens = Db::<B>::execute(&mut *c, tokens).await?;
        let sessions = Db::<B>::execute(c, sessions).await?;
        self.overlay.read_sessions.clear();
        self.overlay.read_tokens.clear();
        Ok(PruneCounts {
            sessions,
            refresh_tokens,
        })
    }

    async fn signing_key_records(&mut self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        registry::signing_key_records::<Db<B>>(self.flushed().await?).await
    }

    async fn put_signing_key(&mut self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        registry::put_signing_key::<Db<B>>(self.flushed().await?, key).await
    }

    async fn api_key_record(&mut self, key_id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError> {
        registry::api_key_record::<Db<B>>(self.flushed().await?, key_id).await
    }

    async fn put_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        registry::put_api_key::<Db<B>>(self.flushed().await?, key).await
    }

    async fn webhook_record(&mut self, id: Uuid) -> Result<Option<SubscriptionRecord>, StoreError> {
        registry::webhook_record::<Db<B>>(self.flushed().await?, id).await
    }

    async fn put_webhook(&mut self, subscription: &SubscriptionRecord) -> Result<(), StoreError> {
        registry::put_webhook::<Db<B>>(self.flushed().await?, subscription).await
    }

    async fn delete_webhook(&mut self, id: Uuid) -> Result<(), StoreError> {
        registry::delete_webhook::<Db<B>>(self.flushed().await?, id).await
    }

    async fn put_login_failures(
        &mut self,
        keys: &[String],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        registry::put_login_failures::<Db<B>>(self.flushed().await?, keys, at).await
    }

    async fn put_secret(&mut self, owner: &str, material: &[u8]) -> Result<(), StoreError> {
        registry::put_secret::<Db<B>>(self.flushed().await?, owner, material).await
    }

    async fn delete_secret(&mut self, owner: &str) -> Result<(), StoreError> {
        registry::delete_secret::<Db<B>>(self.flushed().await?, owner).await
    }

    async fn start_webhook_delivery(&mut self, id: Uuid, after: i64) -> Result<(), StoreError> {
        registry::start_webhook_delivery::<Db<B>>(self.flushed().await?, id, after).await
    }

    async fn delete_webhook_delivery(&mut self, id: Uuid) -> Result<(), StoreError> {
        registry::delete_webhook_delivery::<Db<B>>(self.flushed().await?, id).await
    }

    async fn claim_dpop_jti(
        &mut self,
        jti: &[u8; 32],
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        // The table is no projection: the batch's pending writes need not go first.
        registry::claim_dpop_jti::<Db<B>>(self.backend.conn()?, jti, until).await
    }

    async fn client_record(
        &mut self,
        client_id: &str,
    ) -> Result<Option<crate::domain::client::Client>, StoreError> {
        oauth::client_record::<Db<B>>(self.flushed().await?, client_id).await
    }

    async fn put_client(
        &mut self,
        client: &crate::domain::client::Client,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        oauth::put_client::<Db<B>>(self.flushed().await?, client, at).await
    }

    async fn delete_client(&mut self, client_id: &str) -> Result<(), StoreError> {
        oauth::delete_client::<Db<B>>(self.flushed().await?, client_id).await
    }

    async fn authorization_code(
        &mut self,
        code_id: Uuid,
    ) -> Result<Option<crate::domain::authorization::AuthorizationCode>, StoreError> {
        oauth::authorization_code::<Db<B>>(self.flushed().await?, code_id).await
    }

    async fn put_authorization_code(
        &mut self,
        code: &crate::domain::authorization::AuthorizationCode,
    ) -> Result<(), StoreError> {
        oauth::put_authorization_code::<Db<B>>(self.flushed().await?, code).await
    }

    async fn prune_dpop_jtis(&mut self, before: Timestamp) -> Result<u64, StoreError> {
        registry::prune_dpop_jtis::<Db<B>>(self.backend.conn()?, before).await
    }
}
