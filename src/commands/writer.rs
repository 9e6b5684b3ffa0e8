//! Group commit: one task owns the write connection, takes commands from a channel, applies as
//! many as are waiting (up to a cap) in one transaction, and answers each caller only after the
//! commit is durable. One fsync serves the whole batch.
//!
//! If a batch fails as a whole (a conflicting append from another process, a database error),
//! it is rolled back and its commands are run again one per transaction, each reloading its state
//! and deciding afresh, so one bad command never takes others down with it.

use super::RecordVerdict;
use super::{
    AdoptUnloggedWebhooks, ChangePassword, ClaimProof, CreateApiKey, CreateFirstSigningKey,
    DeleteClient, EndSession, EndSessionByToken, EraseUser, ExpireIfDue, ExpirePersonalData,
    IssueCode, LogoutEverywhere, PruneEndedSessions, PruneProofs, Reauthenticate,
    ReauthenticateSession, RecordLoginFailure, RecordLoginThrottled, RedeemCode, Refresh, Register,
    RegisterClient, RequireReauth, ResealHistory, RevokeApiKey, RotateSigningKeys, SetLock,
    SetRoles, StartSession, Subscribe, Unsubscribe,
};
use super::{Command, Context};
use super::{ConfirmNotice, DenyNotice};
use crate::clock::Clock;
use crate::domain::event::EventMetadata;
use crate::domain::session::SessionPolicy;
use crate::domain::token::TokenKey;
use crate::rules::RuleEngine;
use crate::store::{StoreError, UnitOfWork, WriteSession};
use crate::tokens::checkpoint::CheckpointKey;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};

/// A command in the queue: the command, its metadata, the channel its typed reply goes to, and
/// the reply decided in the current transaction (sent only once that transaction commits).
pub struct Pending<C: Command> {
    command: C,
    metadata: EventMetadata,
    reply: oneshot::Sender<Result<C::Reply, StoreError>>,
    decided: Option<C::Reply>,
}

impl<C: Command> Pending<C> {
    async fn run<U: UnitOfWork>(
        &mut self,
        uow: &mut U,
        now: crate::domain::Timestamp,
        policy: &SessionPolicy,
        rules: &RuleEngine,
    ) -> Result<(), StoreError> {
        let cx = Context {
            now,
            meta: &self.metadata,
            policy,
            rules,
        };
        let reply = self.command.clone().handle(uow, &cx).await?;
        self.decided = Some(reply);
        Ok(())
    }

    /// Sends the decided reply (the batch committed) or the error (it did not).
    fn answer(self, outcome: Result<(), StoreError>) {
        let reply = outcome.and_then(|()| {
            self.decided
                .ok_or_else(|| StoreError::Corrupt("a committed command has no reply".into()))
        });
        if let Ok(r) = &reply {
            self.command.observe(r);
        }
        let _ = self.reply.send(reply);
    }
}

/// Declares the queue's one enum over every command, so each keeps its own reply type.
macro_rules! queue {
    ($($name:ident),* $(,)?) => {
        /// Any command waiting for the writer.
        pub enum Job {
            $($name(Pending<$name>),)*
        }

        $(impl From<Pending<$name>> for Job {
            fn from(p: Pending<$name>) -> Job {
                Job::$name(p)
            }
        })*

        impl Job {
            fn presented_token(&self) -> Option<&TokenKey> {
                match self {
                    $(Job::$name(p) => p.command.presented_token(),)*
                }
            }

            async fn run<U: UnitOfWork>(
                &mut self,
                uow: &mut U,
                now: crate::domain::Timestamp,
                policy: &SessionPolicy,
                rules: &RuleEngine,
            ) -> Result<(), StoreError> {
                match self {
                    $(Job::$name(p) => p.run(uow, now, policy, rules).await,)*
                }
            }

            fn answer(self, outcome: Result<(), StoreError>) {
                match self {
                    $(Job::$name(p) => p.answer(outcome),)*
                }
            }
        }
    };
}

queue!(
    Register,
    StartSession,
    RecordLoginFailure,
    RecordLoginThrottled,
    Refresh,
    Reauthenticate,
    ReauthenticateSession,
    EndSession,
    EndSessionByToken,
    LogoutEverywhere,
    SetLock,
    ChangePassword,
    RequireReauth,
    ExpireIfDue,
    PruneEndedSessions,
    CreateFirstSigningKey,
    RotateSigningKeys,
    CreateApiKey,
    RevokeApiKey,
    Subscribe,
    Unsubscribe,
    AdoptUnloggedWebhooks,
    SetRoles,
    ClaimProof,
    PruneProofs,
    EraseUser,
    ExpirePersonalData,
    ResealHistory,
    RegisterClient,
    DeleteClient,
    IssueCode,
    RedeemCode,
    ConfirmNotice,
    DenyNotice,
    RecordVerdict,
);

/// Runs one command in a transaction of its own on `ws`, outside the writer: for the data
/// migration that runs when the store is opened, before any writer exists. Only for commands
/// that neither judge requests nor touch sessions (the rules are off, the policy is empty).
pub async fn run_once<W: WriteSession, C: Command>(
    ws: &mut W,
    command: C,
    meta: &EventMetadata,
    now: crate::domain::Timestamp,
) -> Result<C::Reply, StoreError> {
    run_once_signed(ws, command, meta, now, None).await
}

/// [`run_once`], and when `key` is given the transaction's head is signed in it (a command
/// that rewrites the chain, run with no writer, leaves a covered head like a batch does).
pub async fn run_once_signed<W: WriteSession, C: Command>(
    ws: &mut W,
    command: C,
    meta: &EventMetadata,
    now: crate::domain::Timestamp,
    key: Option<&CheckpointKey>,
) -> Result<C::Reply, StoreError> {
    let policy = SessionPolicy {
        idle_lifetime: crate::domain::Duration::zero(),
        absolute_lifetime: crate::domain::Duration::zero(),
        grace_window: crate::domain::Duration::zero(),
        max_grace_retries: 0,
        late_retry_window: crate::domain::Duration::zero(),
    };
    let rules = RuleEngine::disabled();
    let cx = Context {
        now,
        meta,
        policy: &policy,
        rules: &rules,
    };
    ws.begin(&[]).await?;
    let mut outcome = command.handle(ws, &cx).await;
    if let (Ok(_), Some(key)) = (&outcome, key) {
        let head = ws.head();
        if head.position > 0
            && let Err(e) = ws
                .put_checkpoint(&key.sign(head.position, head.hash, now))
                .await
        {
            outcome = Err(e);
        }
    }
    match outcome {
        Ok(reply) => {
            if let Err(e) = ws.commit().await {
                ws.rollback().await?;
                return Err(e);
            }
            Ok(reply)
        }
        Err(e) => {
            ws.rollback().await?;
            Err(e)
        }
    }
}

/// Counters for the benchmark report and, later, metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub largest_batch: AtomicU64,
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    committed: watch::Receiver<i64>,
    pub stats: Arc<WriterStats>,
}

/// How many times a command is decided again after losing a race for its stream.
const CONFLICT_RETRIES: usize = 5;

impl Writer {
    pub fn spawn<W: WriteSession>(
        session: W,
        clock: Arc<dyn Clock>,
        policy: SessionPolicy,
        rules: Arc<RuleEngine>,
        max_batch: usize,
        checkpoint_key: Option<Arc<CheckpointKey>>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(max_batch * 8);
        let (committed_tx, committed) = watch::channel(session.committed_position());
        let stats = Arc::new(WriterStats::default());
        let task = WriterTask {
            session,
            clock,
            policy,
            rules,
            max_batch: max_batch.max(1),
            committed: committed_tx,
            stats: stats.clone(),
            checkpoint_key,
            signed: None,
        };
        // The writer gets a thread of its own: it is the one serial path of the service, and
        // on a shared runtime every statement's wake-up would queue behind HTTP work.
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("sessiond-writer".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the writer runtime starts");
                runtime.block_on(task.run(rx));
                let _ = done_tx.send(());
            })
            .expect("the writer thread starts");
        let handle = tokio::spawn(async move {
            let _ = done_rx.await;
        });
        (
            Writer {
                jobs,
                committed,
                stats,
            },
            handle,
        )
    }

    /// Runs `command` in the next batch and returns its reply once the batch is durable.
    pub async fn submit<C: Command>(
        &self,
        command: C,
        metadata: EventMetadata,
    ) -> Result<C::Reply, StoreError>
    where
        Job: From<Pending<C>>,
    {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            command,
            metadata,
            reply,
            decided: None,
        };
        self.jobs
            .send(Job::from(pending))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// False once the writer task has ended (its queue is closed).
    pub fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// The position of the last committed event; followers wait on its changes.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }
}

struct WriterTask<W> {
    session: W,
    clock: Arc<dyn Clock>,
    policy: SessionPolicy,
    rules: Arc<RuleEngine>,
    max_batch: usize,
    committed: watch::Sender<i64>,
    stats: Arc<WriterStats>,
    /// Signs the head of every batch that moved it; `None` only where nothing is appended.
    checkpoint_key: Option<Arc<CheckpointKey>>,
    /// The position this writer last signed (`None`: not yet in this run).
    signed: Option<i64>,
}

impl<W: WriteSession> WriterTask<W> {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        // A log appended to without a checkpoint (by a build before 0010, or by the data
        // migration that runs when the store opens) gets its head signed before any batch.
        if let Err(e) = self.try_batch(&mut []).await {
            tracing::warn!(error = %e, "cannot sign the log's head at start");
        }
        let mut batch = Vec::with_capacity(self.max_batch);
        // Ends when every `Writer` handle is dropped and the queue is drained.
        while rx.recv_many(&mut batch, self.max_batch).await > 0 {
            let size = batch.len();
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats
                .commands
                .fetch_add(size as u64, Ordering::Relaxed);
            self.stats
                .largest_batch
                .fetch_max(size as u64, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let result = self.try_batch(&mut batch).await;
            tracing::trace!(size, micros = started.elapsed().as_micros() as u64, "batch");
            match result {
                Ok(()) => {
                    for job in batch.drain(..) {
                        job.answer(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, size, "batch failed; running its commands one by one");
                    for mut job in batch.drain(..) {
                        let outcome = self.run_alone(&mut job).await;
                        job.answer(outcome);
                    }
                }
            }
            let head = self.session.committed_position();
            crate::metrics::observe_batch(size, started.elapsed().as_secs_f64(), head);
            let _ = self.committed.send(head);
            self.session.between_batches().await;
        }
    }

    /// Runs the batch in one transaction; each job holds its reply once this returns `Ok`.
    async fn try_batch(&mut self, batch: &mut [Job]) -> Result<(), StoreError> {
        let tokens: Vec<TokenKey> = batch
            .iter()
            .filter_map(Job::presented_token)
            .copied()
            .collect();
        if let Err(e) = self.session.begin(&tokens).await {
            self.session.rollback().await?;
            return Err(e);
        }
        for job in batch.iter_mut() {
            let now = self.clock.now();
            if let Err(e) = job
                .run(&mut self.session, now, &self.policy, &self.rules)
                .await
            {
                self.session.rollback().await?;
                return Err(e);
            }
        }
        let signed = match self.sign_head().await {
            Ok(signed) => signed,
            Err(e) => {
                self.session.rollback().await?;
                return Err(e);
            }
        };
        if let Err(e) = self.session.commit().await {
            self.session.rollback().await?;
            return Err(e);
        }
        if signed.is_some() {
            self.signed = signed;
        }
        Ok(())
    }

    /// Signs the transaction's head if this writer has not signed it yet (one Ed25519
    /// signature per batch that appended, never one per event), and stores the checkpoint in
    /// the same transaction: a committed head is always covered by a signature.
    async fn sign_head(&mut self) -> Result<Option<i64>, StoreError> {
        let Some(key) = &self.checkpoint_key else {
            return Ok(None);
        };
        let head = self.session.head();
        if head.position == 0 || self.signed == Some(head.position) {
            return Ok(None);
        }
        let checkpoint = key.sign(head.position, head.hash, self.clock.now());
        self.session.put_checkpoint(&checkpoint).await?;
        Ok(Some(head.position))
    }

    async fn run_alone(&mut self, job: &mut Job) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_batch(std::slice::from_mut(job)).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "command failed");
                    return Err(e);
                }
            }
        }
    }
}
