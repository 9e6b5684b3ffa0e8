//! The writer's pipeline: batch N+1 is decided while batch N's COMMIT and its fsync are in
//! flight, and answered only after its own COMMIT.
//!
//! [`start_commit`] hands batch N's rows and the write connection to a task that sends them
//! with the COMMIT (one multi-row statement), reports the outcome, and only then does the
//! housekeeping between batches (SQLite's WAL checkpoint). Batch N+1 is decided meanwhile
//! ([`begin_on_top`]): it reads through its own overlay, then batch N's rows (every row N
//! wrote, as N left it), then a pooled read connection; nothing of it reaches the database
//! before N has committed, since its own flush is queued behind N's on the one connection. A
//! command that needs the write connection itself (a key never used before, a table outside
//! the overlay) waits for N to settle and then opens N+1's transaction, under the lock, as an
//! ordinary one.
//!
//! What guards it: if N fails, N+1 was decided on a state that never existed, so the writer
//! throws its decisions away and decides its commands again (none was answered). If another
//! process appended in between, N+1's first event takes a position already taken and its
//! flush fails as a conflict (the same unique constraints as always), and again its commands
//! are decided afresh. A batch that wrote outside the overlay (a mid-batch flush, a prune, an
//! erasure) is never read through: the next one waits for its commit.

use super::{Db, Mode, OverlaySession, Pending, WriteBackend};
use crate::domain::session::Session;
use crate::domain::token::TokenKey;
use crate::store::overlay::{FlushEnd, Overlay};
use crate::store::{ChainHead, StoreError, WriteSession};
use std::collections::HashMap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The commit in flight and what a batch on top of it reads through.
pub(in crate::store::overlay) struct Pipe<B: WriteBackend> {
    /// Reads of a batch decided on top of a commit in flight.
    pub reads: Option<sqlx::Pool<Db<B>>>,
    reader: Option<sqlx::pool::PoolConnection<Db<B>>>,
    /// The outcome of the commit in flight, sent by its task as soon as COMMIT returned.
    outcome: Option<oneshot::Receiver<Result<(), StoreError>>>,
    /// The commit task; it hands the connection back after its housekeeping.
    task: Option<JoinHandle<B>>,
    /// What becomes true when the commit in flight succeeds.
    flight: Option<Flight>,
    /// The in-flight batch's rows, as a batch on top starts from (`None`: not readable
    /// through, see [`OverlaySession::opaque`]).
    seed: Option<Overlay>,
    /// The outcome of the last commit, once collected and not yet asked for.
    settled: Option<Result<(), StoreError>>,
    /// The last position known durable.
    pub durable: i64,
}

struct Flight {
    head: ChainHead,
    new_keys: HashMap<String, [u8; 32]>,
    forget: Vec<(Option<String>, Option<i64>)>,
}

impl<B: WriteBackend> Pipe<B> {
    pub fn new(durable: i64) -> Self {
        Pipe {
            reads: None,
            reader: None,
            outcome: None,
            task: None,
            flight: None,
            seed: None,
            settled: None,
            durable,
        }
    }
}

pub(super) fn no_connection() -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(
        "the write session has no connection".into(),
    ))
}

/// The error of a batch decided on a state that did not come to be: its commands are decided
/// again (it is never a reply).
fn superseded(head: ChainHead) -> StoreError {
    StoreError::Conflict {
        stream_id: "events".into(),
        expected: head.position,
    }
}

impl<B: WriteBackend> OverlaySession<B> {
    /// Collects the outcome of the commit in flight (waiting for it), keeping it for
    /// [`settle`](Self::settle). Cancel-safe: the writer waits on it beside its queue.
    async fn settle_outcome(&mut self) {
        let Some(rx) = self.pipe.outcome.as_mut() else {
            return;
        };
        // A task that ended without a word panicked: nothing of its batch can be trusted.
        let outcome = rx.await.unwrap_or(Err(StoreError::WriterStopped));
        self.pipe.outcome = None;
        let flight = self.pipe.flight.take();
        match (&outcome, flight) {
            (Ok(()), Some(f)) => {
                self.pipe.durable = f.head.position;
                if let Some(vault) = self.vault.get() {
                    for (id, key) in f.new_keys {
                        vault.remember(&id, key);
                    }
                    for (subject, before) in f.forget {
                        vault.forget(subject.as_deref(), before);
                    }
                }
            }
            _ => self.pipe.seed = None,
        }
        self.pipe.settled = Some(outcome);
    }

    /// Waits for the commit in flight and returns its outcome (`Ok` when there was none).
    pub(super) async fn settle(&mut self) -> Result<(), StoreError> {
        self.settle_outcome().await;
        self.pipe.settled.take().unwrap_or(Ok(()))
    }

    /// The write connection, back from the commit task if it has it.
    pub(super) async fn reclaim(&mut self) -> Result<&mut B, StoreError> {
        if let Some(task) = self.pipe.task.take() {
            match task.await {
                Ok(backend) => self.backend = Some(backend),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Err(no_connection()),
            }
        }
        self.backend.as_mut().ok_or_else(no_connection)
    }

    /// Makes sure statements can run in this unit of work's transaction: a batch decided on
    /// top of a commit waits for it and opens its own transaction here.
    pub(super) async fn ensure_open(&mut self) -> Result<(), StoreError> {
        if self.mode != Mode::OnTop {
            self.reclaim().await?;
            return Ok(());
        }
        self.settle_outcome().await;
        if matches!(self.pipe.settled, Some(Err(_))) {
            return Err(superseded(self.committed));
        }
        self.pipe.reader = None;
        // Open before BEGIN returns: a BEGIN that failed half-way is rolled back too.
        self.mode = Mode::Open;
        let (_, head) = self.reclaim().await?.begin(&[]).await?;
        // Another process appended after the batch below: this one chained onto a stale head.
        if head != self.committed {
            return Err(superseded(self.committed));
        }
        Ok(())
    }

    /// The connection inside the open transaction.
    pub(super) async fn conn(
        &mut self,
    ) -> Result<&mut <Db<B> as sqlx::Database>::Connection, StoreError> {
        self.ensure_open().await?;
        self.backend.as_mut().ok_or_else(no_connection)?.conn()
    }

    /// Where reads of overlay-kept rows go: a pooled connection while deciding on top of a
    /// commit in flight (the overlay holds what that commit will add), else the transaction.
    pub(super) async fn reader(
        &mut self,
    ) -> Result<&mut <Db<B> as sqlx::Database>::Connection, StoreError> {
        if self.mode == Mode::OnTop && self.pipe.reads.is_some() {
            if self.pipe.reader.is_none()
                && let Some(pool) = &self.pipe.reads
            {
                self.pipe.reader = Some(pool.acquire().await?);
            }
            return self.pipe.reader.as_deref_mut().ok_or_else(no_connection);
        }
        self.conn().await
    }

    /// Forgets the open transaction's overlay and state (not the commit in flight).
    pub(super) fn reset(&mut self) {
        self.overlay = Overlay::default();
        self.new_keys.clear();
        self.forget.clear();
        self.opaque = false;
        self.mode = Mode::Idle;
        self.pipe.reader = None;
    }
}

/// Starts deciding a batch on top of the commit in flight; `false` (nothing started) when no
/// commit is in flight or the batch in flight cannot be read through.
pub(super) async fn begin_on_top<B: WriteBackend>(
    s: &mut OverlaySession<B>,
    prefetch: &[TokenKey],
) -> Result<bool, StoreError> {
    if s.pipe.outcome.is_none() {
        return Ok(false);
    }
    let Some(seed) = s.pipe.seed.take() else {
        return Ok(false);
    };
    s.reset();
    s.overlay = seed;
    s.mode = Mode::OnTop;
    s.head = s.committed;
    s.prefetch(prefetch).await?;
    Ok(true)
}

/// Hands the transaction's rows to a commit task (queued behind the commit in flight, whose
/// outcome the caller has already seen) and returns at once; [`OverlaySession::settle`]
/// gives the outcome.
pub(super) async fn start_commit<B: WriteBackend>(
    s: &mut OverlaySession<B>,
) -> Result<(), StoreError> {
    let appended = (s.head.position != s.committed.position).then_some(s.head.position);
    let begin = s.mode == Mode::OnTop;
    let Overlay {
        events,
        tokens,
        sessions,
        users,
        read_sessions,
        stream_max,
        checkpoint,
        address_tags,
        ..
    } = std::mem::take(&mut s.overlay);
    let sessions: Vec<Session> = sessions.into_values().collect();
    let users: Vec<_> = users.into_values().collect();
    let before: HashMap<Uuid, Option<Session>> = sessions
        .iter()
        .filter_map(|x| {
            read_sessions
                .get(&x.session_id)
                .map(|b| (x.session_id, b.clone()))
        })
        .collect();
    // What the next batch reads through: every row this one wrote, as it wrote it.
    let seed = (!s.opaque).then(|| {
        let mut seed = Overlay {
            stream_max,
            ..Overlay::default()
        };
        for (key, t, _) in &tokens {
            seed.read_tokens.insert(key.hash, Some(*t));
        }
        for x in &sessions {
            seed.read_sessions.insert(x.session_id, Some(x.clone()));
        }
        for u in &users {
            seed.read_users.insert(u.user_id, Some(u.clone()));
        }
        seed
    });
    let previous = s.pipe.task.take();
    let backend = match previous {
        Some(_) => None,
        None => Some(s.backend.take().ok_or_else(no_connection)?),
    };
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut backend = match (backend, previous) {
            (Some(b), _) => b,
            (None, Some(task)) => match task.await {
                Ok(b) => b,
                Err(e) => std::panic::resume_unwind(
                    e.try_into_panic()
                        .unwrap_or_else(|_| Box::new("the commit task was cancelled")),
                ),
            },
            (None, None) => unreachable!("a connection or a task holding it"),
        };
        let rows = Pending {
            begin,
            events: &events,
            tokens: &tokens,
            sessions: &sessions,
            users: &users,
            read_sessions: &before,
            checkpoint: checkpoint.as_ref(),
            address_tags: &address_tags,
        };
        let outcome = if begin && rows.is_empty() {
            Ok(())
        } else {
            backend.flush(rows, FlushEnd::Commit { appended }).await
        };
        if outcome.is_err() {
            backend.rollback().await;
        }
        let ok = outcome.is_ok();
        let _ = tx.send(outcome);
        // After the answer: a batch decided meanwhile waits for this, never a reply.
        if ok {
            backend.between_batches().await;
        }
        backend
    });
    s.pipe.outcome = Some(rx);
    s.pipe.task = Some(task);
    s.pipe.flight = Some(Flight {
        head: s.head,
        new_keys: std::mem::take(&mut s.new_keys),
        forget: std::mem::take(&mut s.forget),
    });
    s.pipe.seed = seed;
    s.committed = s.head;
    s.reset();
    Ok(())
}
