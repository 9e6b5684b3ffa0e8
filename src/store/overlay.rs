//! The writer's batch-local overlay: rows read are remembered, and appends and projection
//! writes are held in memory and sent to the database as a few multi-row statements at commit
//! (or earlier, see [`Overlay::full`]). Reads look at the overlay first, so a command sees the
//! writes of the commands before it in the batch. [`OverlaySession`] is the writer's unit of
//! work built on it, once for both backends.

mod session;

pub use session::{FlushEnd, OverlaySession, Pending, TokenRow, WriteBackend};

use crate::domain::Timestamp;
use crate::domain::session::Session;
use crate::domain::token::{TokenHash, TokenKey};
use crate::domain::user::User;
use crate::store::{ChainHead, NewEvent, RecordedEvent, StoreError, TokenRecord};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use uuid::Uuid;

/// Writes not yet sent to the database, and rows already read, for the current transaction
/// only: another process may write between our transactions, so nothing survives commit or
/// rollback.
#[derive(Default)]
pub(crate) struct Overlay {
    pub events: Vec<RecordedEvent>,
    /// (stream, version) of every event in `events`: the in-memory side of the UNIQUE guard.
    pub versions: HashSet<(String, i64)>,
    pub stream_max: HashMap<String, i64>,
    pub tokens: Vec<(TokenKey, TokenRecord, Timestamp)>,
    pub token_index: HashMap<TokenHash, TokenRecord>,
    pub sessions: HashMap<Uuid, Session>,
    pub users: HashMap<Uuid, User>,
    /// Rows as the database holds them now (`None`: known to be absent). Tokens are remembered by
    /// hash, which also fixes the id (it is part of the hashed text).
    pub read_tokens: HashMap<TokenHash, Option<TokenRecord>>,
    pub read_sessions: HashMap<Uuid, Option<Session>>,
    pub read_users: HashMap<Uuid, Option<User>>,
    /// The signed checkpoint of the batch's head, written with the batch's rows.
    pub checkpoint: Option<crate::domain::checkpoint::Checkpoint>,
    /// Keyed hashes of the appended events' addresses, written with the batch's rows (one
    /// multi-row statement, not one per event).
    pub address_tags: Vec<AddressTag>,
    /// Where each session was last seen in this transaction, as the address index reads it:
    /// its last context's address and the period it was seen in (see `index_value`).
    pub last_seen: HashMap<Uuid, (Option<IpAddr>, i64)>,
}

/// One keyed hash of an event's address (or of one of its networks), as `address_tags` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressTag {
    pub tag: String,
    pub position: i64,
    pub subject: String,
    pub period: i64,
}

/// Pending rows after which the overlay is flushed early, so a rebuild of a long log does not
/// hold every projection row in memory.
pub(crate) const OVERLAY_FLUSH_ROWS: usize = 4096;

impl Overlay {
    pub fn pending(&self) -> usize {
        self.events.len()
            + self.tokens.len()
            + self.sessions.len()
            + self.users.len()
            + self.address_tags.len()
            + usize::from(self.checkpoint.is_some())
    }

    pub fn full(&self) -> bool {
        self.pending() >= OVERLAY_FLUSH_ROWS
    }

    pub fn session(&self, id: Uuid) -> Option<Option<Session>> {
        self.sessions
            .get(&id)
            .map(|s| Some(s.clone()))
            .or_else(|| self.read_sessions.get(&id).cloned())
    }

    pub fn user(&self, id: Uuid) -> Option<Option<User>> {
        self.users
            .get(&id)
            .map(|u| Some(u.clone()))
            .or_else(|| self.read_users.get(&id).cloned())
    }

    pub fn user_named(&self, name: &str) -> Option<User> {
        self.users
            .values()
            .chain(self.read_users.values().flatten())
            .find(|u| u.username == name)
            .cloned()
    }

    /// Seals `new` (its data as stored: `data`) after `head` (which moves on) and holds it for the flush. A second append at
    /// one stream version within the batch is a conflict here; across transactions the
    /// database's unique constraint says so at the flush.
    pub fn append(
        &mut self,
        new: NewEvent,
        data: String,
        head: &mut ChainHead,
    ) -> Result<RecordedEvent, StoreError> {
        let version = new.expected_version + 1;
        if self.versions.contains(&(new.stream_id.clone(), version)) {
            return Err(StoreError::Conflict {
                stream_id: new.stream_id,
                expected: new.expected_version,
            });
        }
        let recorded_at = new.occurred_at;
        let e = RecordedEvent::seal(&new, data, head.position + 1, head.hash, recorded_at);
        *head = ChainHead {
            position: e.position,
            hash: <[u8; 32]>::try_from(e.hash.as_slice())
                .map_err(|_| StoreError::Corrupt("hash length".into()))?,
        };
        self.versions.insert((new.stream_id.clone(), version));
        let max = self.stream_max.entry(new.stream_id).or_insert(version);
        *max = (*max).max(version);
        self.events.push(e.clone());
        Ok(e)
    }
}
