//! The writer's unit of work, written once: the [`Overlay`] in front of one backend's write
//! connection. Every read looks at the overlay first; every write waits in it for the flush.
//! What differs between the backends (how a transaction starts and what it locks, how pending
//! rows become statements, how a commit is announced) is the small [`WriteBackend`] trait.

use super::Overlay;
use crate::domain::Timestamp;
use crate::domain::checkpoint::Checkpoint;
use crate::domain::event::Event;
use crate::domain::keys::{ApiKeyRecord, SigningKeyRecord};
use crate::domain::session::{self, Session};
use crate::domain::token::{TokenHash, TokenKey};
use crate::domain::user::User;
use crate::domain::webhook::SubscriptionRecord;
use crate::store::dispatch::dialect::Dialect;
use crate::store::dispatch::tables::VaultSlot;
use crate::store::dispatch::{data_keys, integrity, notices, oauth, registry, tables, verdicts};
use crate::store::vault::{self, KeyState, Vault};
use crate::store::{
    ChainHead, EventFilter, NewEvent, PruneCounts, RecordedEvent, ReplayedEvent, Resealed,
    StoreError, TokenRecord, UnitOfWork,
};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use uuid::Uuid;

/// A refresh token found for a presented key: its hash, its row, and its session's row.
pub type TokenRow = (TokenHash, TokenRecord, Option<Session>);

/// The rows a flush sends.
pub struct Pending<'a> {
    /// The transaction is not open yet: the flush starts it (a batch decided on top of the
    /// previous one's commit, see `pipeline`).
    pub begin: bool,
    pub events: &'a [RecordedEvent],
    pub tokens: &'a [(TokenKey, TokenRecord, Timestamp)],
    pub sessions: &'a [Session],
    pub users: &'a [User],
    /// Sessions as the database holds them, so a backend may leave unchanged columns alone.
    pub read_sessions: &'a HashMap<Uuid, Option<Session>>,
    /// The signed checkpoint of the transaction's head.
    pub checkpoint: Option<&'a Checkpoint>,
    pub address_tags: &'a [super::AddressTag],
}

impl Pending<'_> {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.tokens.is_empty()
            && self.sessions.is_empty()
            && self.users.is_empty()
            && self.address_tags.is_empty()
            && self.checkpoint.is_none()
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
    /// their sessions and the chain head under that lock (in as few round trips as the
    /// database allows).
    fn begin(
        &mut self,
        prefetch: &[TokenKey],
    ) -> impl Future<Output = Result<(Vec<TokenRow>, ChainHead), StoreError>> + Send;

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
pub struct OverlaySession<B: WriteBackend> {
    /// The write connection; `None` while a commit task holds it (see `pipeline`).
    backend: Option<B>,
    /// Where the open transaction stands; see [`Mode`].
    mode: Mode,
    /// The commit in flight, if any, and what the batch decided on top of it reads through.
    pipe: pipeline::Pipe<B>,
    /// The chain head the next transaction appends after: the last committed one, or that of
    /// the batch whose commit is in flight.
    committed: ChainHead,
    head: ChainHead,
    overlay: Overlay,
    /// The personal-data vault, when installed: appends seal personal fields with it.
    vault: VaultSlot,
    /// Data keys created in the open transaction: cached only once it commits.
    new_keys: HashMap<String, [u8; 32]>,
    /// Keys destroyed in the open transaction (subject, or periods before): dropped from the
    /// cache when it commits.
    forget: Vec<(Option<String>, Option<i64>)>,
    /// The open transaction sent rows or statements outside the overlay before its commit:
    /// a batch on top of it could not read through it.
    opaque: bool,
}

/// Where the unit of work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No transaction.
    Idle,
    /// A transaction is open on the write connection.
    Open,
    /// Deciding on top of the commit in flight: reads come from the overlay, the in-flight
    /// batch's rows and a pooled read connection; the transaction opens at the flush (or when
    /// a command needs the write connection, once the commit in flight has settled).
    OnTop,
}

type Db<B> = <B as WriteBackend>::Db;

mod pipeline;

impl<B: WriteBackend> OverlaySession<B> {
    pub(crate) fn new(backend: B, head: ChainHead) -> Self {
        OverlaySession {
            backend: Some(backend),
            mode: Mode::Idle,
            pipe: pipeline::Pipe::new(head.position),
            committed: head,
            head,
            overlay: Overlay::default(),
            vault: VaultSlot::default(),
            new_keys: HashMap::new(),
            forget: Vec::new(),
            opaque: false,
        }
    }

    /// A pool for the reads of a batch decided on top of a commit in flight.
    pub(crate) fn with_reads(mut self, pool: sqlx::Pool<Db<B>>) -> Self {
        self.pipe.reads = Some(pool);
        self
    }

    /// Shares the store's vault slot (see `Store::install_vault`).
    pub(crate) fn with_vault(mut self, vault: VaultSlot) -> Self {
        self.vault = vault;
        self
    }

    /// The event's data as it enters the log: personal fields sealed under its subject's data
    /// keys (created here, in this transaction, when the event is the first to need them).
    async fn sealed_data(&mut self, new: &NewEvent, position: i64) -> Result<String, StoreError> {
        let mut data = new.event.data();
        let Some(vault) = self.vault.get().cloned() else {
            return Ok(data.to_string());
        };
        self.index_value(
            &vault,
            &data,
            &new.event,
            &new.stream_id,
            position,
            new.occurred_at,
        )
        .await?;
        let version = new.expected_version + 1;
        self.seal_value(&vault, &mut data, &new.stream_id, version, new.occurred_at)
            .await?;
        Ok(data.to_string())
    }

    /// Indexes an event's request-context address (still clear in `data`) under its keyed
    /// hashes, in this transaction.
    ///
    /// An event that moves its session's last context adds no row when the session was last
    /// seen at the same address in the same period: the session's stream is already indexed
    /// there, and a search for an address reads the whole stream of every session indexed
    /// under it (`tables::raw_events`). So a steady rotation writes no index rows, and each
    /// period that retention destroys leaves a row in every later period the session was seen
    /// in. The last place is kept per transaction and otherwise read from the session row,
    /// which holds the same (the index runs before the event's projection), so the live rows
    /// and a replay's are equal.
    async fn index_value(
        &mut self,
        vault: &Vault,
        data: &Value,
        event: &Event,
        stream_id: &str,
        position: i64,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let ip = data
            .get("context")
            .and_then(|c| c.get("ip"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<std::net::IpAddr>().ok());
        let period = vault::period_of(at);
        if let Some(id) = session::moved_context(event).and(session::session_of(event)) {
            // A session's first event has nothing before it (a replay of old events that
            // projects nothing, as `reseal_history`, must not read the session's last row).
            let last = match (event, self.overlay.last_seen.get(&id)) {
                (Event::SessionStarted(_), _) => None,
                (_, Some(known)) => Some(*known),
                _ => UnitOfWork::session(self, id)
                    .await?
                    .map(|s| (s.last_context.ip, vault::period_of(s.last_seen_at))),
            };
            self.overlay.last_seen.insert(id, (ip, period));
            if ip.is_some() && last == Some((ip, period)) {
                return Ok(());
            }
        }
        let Some(ip) = ip else { return Ok(()) };
        let subject = self.subject_of(stream_id, data).await?;
        self.overlay
            .address_tags
            .extend(
                vault
                    .address_tags(ip)
                    .into_iter()
                    .map(|tag| super::AddressTag {
                        tag,
                        position,
                        subject: subject.clone(),
                        period,
                    }),
            );
        self.flush_if_full().await
    }

    /// Seals the personal fields of one event's data in place; false if it had none.
    async fn seal_value(
        &mut self,
        vault: &Vault,
        data: &mut Value,
        stream_id: &str,
        version: i64,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let fields = vault::personal_fields(data);
        if fields.is_empty() {
            return Ok(false);
        }
        let subject = self.subject_of(stream_id, data).await?;
        let user = subject != vault::SERVICE_SUBJECT;
        let mut identity = None;
        let mut period = None;
        if user && fields.iter().any(|(_, id)| *id) {
            let id = vault::identity_key_id(&subject);
            identity = Some((
                id.clone(),
                self.data_key(vault, &id, &subject, None, at).await?,
            ));
        }
        if fields.iter().any(|(_, id)| !*id || !user) {
            let p = vault::period_of(at);
            let id = vault::period_key_id(&subject, p);
            period = Some((
                id.clone(),
                self.data_key(vault, &id, &subject, Some(p), at).await?,
            ));
        }
        vault::seal_event(data, stream_id, version, |is_identity| {
            let (id, key) = if is_identity && user {
                identity.as_ref()
            } else {
                period.as_ref()
            }?;
            key.map(|k| (id.clone(), k))
        });
        Ok(true)
    }

    /// Whose keys seal an event: the user it names, the user of its stream (a session's
    /// user), or the service for events of no known user.
    async fn subject_of(&mut self, stream_id: &str, data: &Value) -> Result<String, StoreError> {
        if let Some(user) = data.get("user_id").and_then(Value::as_str) {
            return Ok(user.to_owned());
        }
        if let Some(user) = stream_id.strip_prefix("user-") {
            return Ok(user.to_owned());
        }
        if let Some(id) = stream_id
            .strip_prefix("session-")
            .and_then(|s| Uuid::parse_str(s).ok())
            && let Some(s) = UnitOfWork::session(self, id).await?
        {
            return Ok(s.user_id.to_string());
        }
        Ok(vault::SERVICE_SUBJECT.to_owned())
    }

    /// The open data key `key_id`, created if it does not exist yet; `None` if it was
    /// destroyed (nothing more is recorded readable under an erased subject).
    async fn data_key(
        &mut self,
        vault: &Vault,
        key_id: &str,
        subject: &str,
        period: Option<i64>,
        at: Timestamp,
    ) -> Result<Option<[u8; 32]>, StoreError> {
        if let Some(k) = self.new_keys.get(key_id).or(vault.cached(key_id).as_ref()) {
            return Ok(Some(*k));
        }
        // Waits for the commit in flight, if any: a key it created is cached once it settles.
        self.conn().await?;
        if let Some(k) = vault.cached(key_id) {
            return Ok(Some(k));
        }
        let ids = [key_id.to_owned()];
        let found = data_keys::find::<Db<B>>(self.conn().await?, vault, &ids, true).await?;
        match found.get(key_id) {
            Some(KeyState::Open(k)) => return Ok(Some(*k)),
            Some(_) => return Ok(None),
            None => {}
        }
        let (key, wrapped) = vault.new_key(key_id);
        let c = self.conn().await?;
        if data_keys::create::<Db<B>>(c, key_id, subject, period, &wrapped, at).await? {
            self.new_keys.insert(key_id.to_owned(), key);
            return Ok(Some(key));
        }
        // Another node created it first (its insert committed while ours waited): use that one.
        let found = data_keys::find::<Db<B>>(self.conn().await?, vault, &ids, true).await?;
        Ok(match found.get(key_id) {
            Some(KeyState::Open(k)) => Some(*k),
            _ => None,
        })
    }

    /// Sends every pending write (inside the open transaction), and commits with `end`. Reads
    /// stay cached: they now match what the database holds.
    async fn flush(&mut self, end: FlushEnd) -> Result<(), StoreError> {
        if self.overlay.pending() == 0 && end == FlushEnd::Open {
            return Ok(());
        }
        if end == FlushEnd::Open {
            // Rows reach the database before the commit: the next batch cannot read through.
            self.opaque = true;
        }
        self.ensure_open().await?;
        let o = &mut self.overlay;
        let checkpoint = o.checkpoint.take();
        let events = std::mem::take(&mut o.events);
        let tokens = std::mem::take(&mut o.tokens);
        let sessions: Vec<Session> = std::mem::take(&mut o.sessions).into_values().collect();
        let users: Vec<User> = std::mem::take(&mut o.users).into_values().collect();
        let address_tags = std::mem::take(&mut o.address_tags);
        o.versions.clear();
        o.stream_max.clear();
        o.token_index.clear();
        let rows = Pending {
            begin: false,
            events: &events,
            tokens: &tokens,
            sessions: &sessions,
            users: &users,
            read_sessions: &o.read_sessions,
            checkpoint: checkpoint.as_ref(),
            address_tags: &address_tags,
        };
        let backend = self.backend.as_mut().ok_or_else(pipeline::no_connection)?;
        backend.flush(rows, end).await?;
        // A full overlay's early flush (a long batch, a rebuild) does not keep its tokens: no
        // replay reads a token back, a rebuild would hold every token of the log, and a read
        // now finds the row in the transaction anyway.
        if end != FlushEnd::Open {
            for (key, t, _) in tokens {
                o.read_tokens.insert(key.hash, Some(t));
            }
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
        // Written outside the overlay: the next batch cannot read through this one.
        self.opaque = true;
        self.conn().await
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
        // A transaction of its own: the commit in flight (if any) settles first.
        let settled = self.settle().await;
        self.reset();
        settled?;
        // Open before BEGIN returns: a BEGIN that failed half-way is rolled back too.
        self.mode = Mode::Open;
        // Another process (a second node, a CLI tool) may have appended since our last
        // commit: chain onto what is really there, read under the lock `begin` took.
        let (found, head) = self.reclaim().await?.begin(prefetch).await?;
        self.remember_tokens(prefetch, found);
        self.committed = head;
        self.head = self.committed;
        self.pipe.durable = self.committed.position;
        Ok(())
    }

    async fn begin_on_top(&mut self, prefetch: &[TokenKey]) -> Result<bool, StoreError> {
        pipeline::begin_on_top(self, prefetch).await
    }

    async fn prefetch(&mut self, keys: &[TokenKey]) -> Result<(), StoreError> {
        let wanted: Vec<TokenKey> = keys
            .iter()
            .filter(|k| {
                !self.overlay.read_tokens.contains_key(&k.hash)
                    && !self.overlay.token_index.contains_key(&k.hash)
            })
            .copied()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let c = self.reader().await?;
        let found = tables::tokens_with_sessions::<Db<B>>(c, &wanted, "").await?;
        self.remember_tokens(&wanted, found);
        Ok(())
    }

    async fn start_commit(&mut self) -> Result<(), StoreError> {
        pipeline::start_commit(self).await
    }

    async fn finish_commit(&mut self) -> Result<(), StoreError> {
        self.settle().await
    }

    async fn rollback(&mut self) -> Result<(), StoreError> {
        let open = self.mode == Mode::Open;
        self.reset();
        self.head = self.committed;
        if open && let Some(backend) = self.backend.as_mut() {
            backend.rollback().await;
        }
        Ok(())
    }

    fn committed_position(&self) -> i64 {
        self.pipe.durable
    }

    async fn clear_projections(&mut self) -> Result<(), StoreError> {
        // Pending events must reach the log; pending projection rows would be deleted anyway.
        self.flush(FlushEnd::Open).await?;
        self.opaque = true;
        let c = self.conn().await?;
        // DELETE, not TRUNCATE: readers keep seeing the old rows until the rebuild commits.
        let clear: String = integrity::PROJECTED_TABLES
            .iter()
            .map(|(table, _)| format!("DELETE FROM {table};"))
            .collect();
        Db::<B>::script(c, &clear).await?;
        self.overlay.read_tokens.clear();
        self.overlay.read_sessions.clear();
        self.overlay.read_users.clear();
        Ok(())
    }

    fn head(&self) -> ChainHead {
        self.head
    }

    async fn put_checkpoint(
        &mut self,
        checkpoint: &crate::domain::checkpoint::Checkpoint,
    ) -> Result<(), StoreError> {
        // Written with the batch's rows, in the flush's statement.
        self.overlay.checkpoint = Some(checkpoint.clone());
        Ok(())
    }
}

impl<B: WriteBackend> UnitOfWork for OverlaySession<B> {
    async fn user_by_id(&mut self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        if let Some(known) = self.overlay.user(user_id) {
            return Ok(known);
        }
        let user = tables::user_by_id::<Db<B>>(self.reader().await?, user_id).await?;
        self.overlay.read_users.insert(user_id, user.clone());
        Ok(user)
    }

    async fn user_by_name(&mut self, username: &str) -> Result<Option<User>, StoreError> {
        if let Some(user) = self.overlay.user_named(username) {
            return Ok(Some(user));
        }
        let found = tables::user_by_name::<Db<B>>(self.reader().await?, username).await?;
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
        let session = tables::session::<Db<B>>(self.reader().await?, session_id).await?;
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
            let c = self.reader().await?;
            let found = tables::tokens_with_sessions::<Db<B>>(c, keys, "").await?;
            self.remember_tokens(keys, found);
        }
        Ok(self.overlay.read_tokens.get(&key.hash).copied().flatten())
    }

    async fn active_sessions_of(&mut self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        // A query over many rows: let the database answer it with the batch's writes applied.
        self.flush(FlushEnd::Open).await?;
        let c = self.conn().await?;
        let sessions = tables::active_sessions_of::<Db<B>>(c, user_id).await?;
        for s in &sessions {
            self.overlay
                .read_sessions
                .insert(s.session_id, Some(s.clone()));
        }
        Ok(sessions)
    }

    async fn last_seen_session_of(
        &mut self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> Result<Option<Session>, StoreError> {
        // Ordered over every row of the user: the database answers with the batch applied.
        self.flush(FlushEnd::Open).await?;
        let c = self.conn().await?;
        let session = tables::last_seen_session_of::<Db<B>>(c, user_id, except).await?;
        if let Some(s) = &session {
            self.overlay
                .read_sessions
                .insert(s.session_id, Some(s.clone()));
        }
        Ok(session)
    }

    async fn active_user_count(&mut self) -> Result<u64, StoreError> {
        self.flush(FlushEnd::Open).await?;
        tables::active_user_count::<Db<B>>(self.conn().await?).await
    }

    async fn stream_version(&mut self, stream_id: &str) -> Result<i64, StoreError> {
        let stored = tables::stream_version::<Db<B>>(self.reader().await?, stream_id).await?;
        let pending = self.overlay.stream_max.get(stream_id).copied();
        Ok(stored.max(pending.unwrap_or(0)))
    }

    async fn append(&mut self, new: NewEvent) -> Result<RecordedEvent, StoreError> {
        let data = self.sealed_data(&new, self.head.position + 1).await?;
        let e = self.overlay.append(new, data, &mut self.head)?;
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
        self.opaque = true;
        let [tokens, sessions] = Db::<B>::prune(cutoff);
        let c = self.conn().await?;
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
        // Stored as keyed hashes (see `Vault::throttle_key`) once the vault is installed.
        let stored: Vec<String> = match self.vault.get() {
            Some(v) => keys.iter().map(|k| v.throttle_key(k)).collect(),
            None => keys.to_vec(),
        };
        registry::put_login_failures::<Db<B>>(self.flushed().await?, &stored, at).await
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
        registry::claim_dpop_jti::<Db<B>>(self.conn().await?, jti, until).await
    }

    async fn erase_personal_data(
        &mut self,
        user_id: Uuid,
        username: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.flush(FlushEnd::Open).await?;
        self.opaque = true;
        let subject = user_id.to_string();
        let c = self.conn().await?;
        let destroyed = data_keys::destroy_subject::<Db<B>>(&mut *c, &subject, now).await?;
        let acct = format!("acct:{username}");
        let (acct, pairs) = match self.vault.get() {
            Some(v) => {
                let acct = v.throttle_key(&acct);
                let pairs = format!("acct_addr:{}|", &acct["acct:".len()..]);
                (acct, pairs)
            }
            None => (acct, format!("acct_addr:{username}|")),
        };
        let c = self.conn().await?;
        data_keys::delete_login_failures::<Db<B>>(&mut *c, &acct, &pairs).await?;
        data_keys::delete_usual_networks::<Db<B>>(&mut *c, user_id).await?;
        data_keys::delete_address_tags::<Db<B>>(&mut *c, Some(&subject), None).await?;
        let ids = tables::session_ids_of::<Db<B>>(c, user_id).await?;
        for id in ids {
            if let Some(mut s) = UnitOfWork::session(self, id).await? {
                s.login_context = s.login_context.redacted(vault::ERASED);
                s.last_context = s.last_context.redacted(vault::ERASED);
                // A statement of its own: the batch's upsert never rewrites login_context.
                data_keys::redact_session::<Db<B>>(self.conn().await?, &s).await?;
                self.overlay.read_sessions.insert(s.session_id, Some(s));
            }
        }
        let prefix = format!("{subject}/");
        self.new_keys.retain(|id, _| !id.starts_with(&prefix));
        self.forget.push((Some(subject), None));
        Ok(destroyed)
    }

    async fn reseal_history(&mut self) -> Result<Option<Resealed>, StoreError> {
        let Some(vault) = self.vault.get().cloned() else {
            return Ok(None);
        };
        self.flush(FlushEnd::Open).await?;
        self.opaque = true;
        // Throttle rows an older build wrote with names and networks in clear.
        data_keys::rehash_login_failures::<Db<B>>(self.conn().await?, &vault).await?;
        let old_head = tables::head::<Db<B>>(self.conn().await?).await?;
        let (mut after, mut sealed, mut from) = (0, 0, None);
        let mut prev_hash = [0u8; 32];
        loop {
            let filter = EventFilter {
                after_position: after,
                limit: Some(500),
                ..Default::default()
            };
            let page = tables::raw_events::<Db<B>>(self.conn().await?, &filter).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for mut e in page {
                let corrupt =
                    |why: String| StoreError::Corrupt(format!("position {}: {why}", e.position));
                let mut data: Value =
                    serde_json::from_str(&e.data).map_err(|x| corrupt(x.to_string()))?;
                let at = e.occurred_at()?;
                // An event still in clear was never indexed (it predates the address index).
                if !e.data.contains("\"sealed\"") {
                    let event = e.decode_data(&data)?;
                    self.index_value(&vault, &data, &event, &e.stream_id, e.position, at)
                        .await?;
                }
                let changed = self
                    .seal_value(&vault, &mut data, &e.stream_id, e.stream_version, at)
                    .await?;
                if changed {
                    e.data = data.to_string();
                    sealed += 1;
                }
                // From the first changed event on, every hash is recomputed.
                if changed || from.is_some() {
                    from.get_or_insert(e.position);
                    e.prev_hash = prev_hash.to_vec();
                    e.hash = crate::store::chain::event_hash(&e).to_vec();
                    data_keys::rewrite_event::<Db<B>>(self.conn().await?, &e).await?;
                }
                prev_hash = <[u8; 32]>::try_from(e.hash.as_slice())
                    .map_err(|_| StoreError::Corrupt("hash length".into()))?;
            }
        }
        let Some(from_position) = from else {
            return Ok(None);
        };
        integrity::drop_checkpoints_from::<Db<B>>(self.conn().await?, from_position).await?;
        // Appends from here chain onto the recomputed head.
        self.head = ChainHead {
            position: old_head.position,
            hash: prev_hash,
        };
        Ok(Some(Resealed {
            from_position,
            old_head,
            events: sealed,
        }))
    }

    async fn index_address(&mut self, e: &ReplayedEvent) -> Result<(), StoreError> {
        let Some(vault) = self.vault.get().cloned() else {
            return Ok(());
        };
        self.index_value(&vault, &e.data, &e.event, &e.stream_id, e.position, e.at)
            .await
    }

    async fn expire_personal_data(
        &mut self,
        before_period: i64,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.flush(FlushEnd::Open).await?;
        self.opaque = true;
        let c = self.conn().await?;
        let oldest = data_keys::oldest_live_period_before::<Db<B>>(&mut *c, before_period).await?;
        let destroyed = data_keys::destroy_before::<Db<B>>(&mut *c, before_period, now).await?;
        data_keys::delete_address_tags::<Db<B>>(c, None, Some(before_period)).await?;
        // The session rows keep request contexts too: those recorded in the periods destroyed
        // now read as expired, exactly as a rebuild from the log (whose fields now open as
        // `[expired]`) yields them. Earlier periods were redacted by an earlier run.
        if let Some(oldest) = oldest {
            let (from, to) = (
                vault::period_start(oldest),
                vault::period_start(before_period),
            );
            let c = self.conn().await?;
            let ids = data_keys::sessions_seen_between::<Db<B>>(c, from, to).await?;
            for id in ids {
                if let Some(mut s) = UnitOfWork::session(self, id).await? {
                    let old = |t: Timestamp| t >= from && t < to;
                    // A context an erasure redacted stays `[erased]`, as its keys read.
                    let expire = |c: &crate::domain::context::RequestContext| {
                        let erased = [&c.user_agent, &c.request_id]
                            .iter()
                            .any(|f| f.as_deref() == Some(vault::ERASED));
                        if erased {
                            c.clone()
                        } else {
                            c.redacted(vault::EXPIRED)
                        }
                    };
                    if old(s.created_at) {
                        s.login_context = expire(&s.login_context);
                    }
                    if old(s.last_seen_at) {
                        s.last_context = expire(&s.last_context);
                    }
                    data_keys::redact_session::<Db<B>>(self.conn().await?, &s).await?;
                    self.overlay.read_sessions.insert(s.session_id, Some(s));
                }
            }
        }
        self.new_keys.retain(|id, _| {
            id.rsplit_once('/')
                .and_then(|(_, p)| p.parse::<i64>().ok())
                .is_none_or(|p| p >= before_period)
        });
        self.forget.push((None, Some(before_period)));
        Ok(destroyed)
    }

    // Notices and exceptions are never held in the overlay: their reads need nothing of it
    // flushed (a flush here would cost a round trip and make the batch opaque).
    async fn notice(
        &mut self,
        notice_id: Uuid,
    ) -> Result<Option<crate::domain::notice::Notice>, StoreError> {
        notices::notice::<Db<B>>(self.conn().await?, notice_id).await
    }

    async fn put_notice(
        &mut self,
        notice: &crate::domain::notice::Notice,
    ) -> Result<(), StoreError> {
        notices::put_notice::<Db<B>>(self.flushed().await?, notice).await
    }

    async fn recent_notices(
        &mut self,
        user_id: Uuid,
        since: Timestamp,
    ) -> Result<Vec<crate::domain::notice::Notice>, StoreError> {
        notices::notices_of::<Db<B>>(self.conn().await?, user_id, Some(since), 100).await
    }

    async fn last_denial(&mut self, user_id: Uuid) -> Result<Option<Timestamp>, StoreError> {
        notices::last_denial::<Db<B>>(self.conn().await?, user_id).await
    }

    async fn put_exception(
        &mut self,
        exception: &crate::domain::notice::Exception,
    ) -> Result<(), StoreError> {
        notices::put_exception::<Db<B>>(self.flushed().await?, exception).await
    }

    async fn live_exceptions(
        &mut self,
        user_id: Uuid,
        now: Timestamp,
    ) -> Result<Vec<crate::domain::notice::Exception>, StoreError> {
        notices::live_exceptions::<Db<B>>(self.conn().await?, user_id, now).await
    }

    async fn alert_at(
        &mut self,
        position: i64,
    ) -> Result<Option<crate::domain::verdict::Alert>, StoreError> {
        verdicts::alert_at::<Db<B>>(self.flushed().await?, position).await
    }

    async fn put_alert(&mut self, alert: &crate::domain::verdict::Alert) -> Result<(), StoreError> {
        verdicts::put_alert::<Db<B>>(self.flushed().await?, alert).await
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
        registry::prune_dpop_jtis::<Db<B>>(self.conn().await?, before).await
    }

    // Detector memory is no projection: run at once, the batch's pending writes need not go
    // first. A later command of the same batch sees what an earlier one wrote (one connection).
    async fn window_counts(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        since: Timestamp,
    ) -> Result<(i64, i64, i64), StoreError> {
        registry::window_counts::<Db<B>>(self.conn().await?, rule_id, key_tag, name_tag, since)
            .await
    }

    async fn put_window_count(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        registry::put_window_count::<Db<B>>(self.conn().await?, rule_id, key_tag, name_tag, at)
            .await
    }

    async fn breaker_spent(
        &mut self,
        rule_id: &str,
        since: Timestamp,
    ) -> Result<(i64, Option<Timestamp>), StoreError> {
        registry::breaker_spent::<Db<B>>(self.conn().await?, rule_id, since).await
    }

    async fn put_breaker_spend(
        &mut self,
        rule_id: &str,
        at: Timestamp,
        tripped_until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        registry::put_breaker_spend::<Db<B>>(self.conn().await?, rule_id, at, tripped_until).await
    }

    async fn usual_networks_seen(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        since: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        registry::usual_networks_seen::<Db<B>>(self.conn().await?, user_id, networks, since).await
    }

    async fn put_usual_networks(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        registry::put_usual_networks::<Db<B>>(self.conn().await?, user_id, networks, at).await
    }
}
