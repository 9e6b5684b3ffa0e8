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

            fn follows_password(&self) -> bool {
                match self {
                    $(Job::$name(_) => $name::FOLLOWS_PASSWORD,)*
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

/// Counters for the benchmark report and the tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub largest_batch: AtomicU64,
    /// Batches decided on top of the previous batch's commit in flight.
    pub pipelined: AtomicU64,
    /// Batches whose decisions on top were thrown away (the commit below failed, or they
    /// could not stand) and whose commands were decided again.
    pub redecided: AtomicU64,
    /// Lone batches of password-checked commands that waited for company (see [`Linger`]).
    pub lingered: AtomicU64,
}

/// When a batch of nothing but commands that follow a password check (a login, a failed
/// login) waits a moment for another command before it commits: only while further password
/// checks queue for argon2. The argon2 threads then have all the CPU they can use, and each
/// lone login's commit (its statements, its WAL write and fsync, the wake-ups between the
/// writer and its connection) takes CPU from them; two logins in one commit pay for one. The
/// next check ends within one argon2 time, far less than such a queue's wait. A refresh never
/// waits, and any command arriving ends the wait at once.
#[derive(Clone)]
pub struct Linger {
    /// The longest wait.
    pub max: std::time::Duration,
    /// Whether further password checks are queued now.
    pub checks_queued: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// A batch whose commit is in flight: its commands wait for its outcome.
struct InFlight {
    jobs: Vec<Job>,
    started: std::time::Instant,
}

impl InFlight {
    /// Traces and measures the batch, from its staging to its commit's outcome.
    fn observe(&self, head: i64) {
        let seconds = self.started.elapsed().as_secs_f64();
        tracing::trace!(
            size = self.jobs.len(),
            micros = (seconds * 1e6) as u64,
            "batch"
        );
        crate::metrics::observe_batch(self.jobs.len(), seconds, head);
    }
}

/// What became of the commands arriving while a commit is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnTop {
    /// None arrived yet.
    NotStarted,
    /// Decided on top of the commit in flight; committed once it has settled.
    Deciding,
    /// The batch in flight cannot be read through: they wait, undecided.
    Unavailable,
    /// Deciding them failed: they are decided again once the commit settles.
    Spoiled,
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
        linger: Option<Linger>,
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
            linger,
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
    linger: Option<Linger>,
}

impl<W: WriteSession> WriterTask<W> {
    /// The pipelined loop: while one batch's commit is in flight, the commands arriving are
    /// decided on top of it (see `store::overlay::session::pipeline`); each batch is answered
    /// once its own commit has returned, and only if every batch below it committed.
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        // A log appended to without a checkpoint (by a build before 0010, or by the data
        // migration that runs when the store opens) gets its head signed before any batch.
        if let Err(e) = self.try_batch(&mut []).await {
            tracing::warn!(error = %e, "cannot sign the log's head at start");
        }
        let mut flying: Option<InFlight> = None;
        let mut next: Vec<Job> = Vec::with_capacity(self.max_batch);
        let mut incoming: Vec<Job> = Vec::with_capacity(self.max_batch);
        let mut open = true;
        loop {
            let Some(mut below) = flying.take() else {
                // Nothing in flight: wait for work and stage it as a batch of its own.
                if next.is_empty() && (!open || rx.recv_many(&mut next, self.max_batch).await == 0)
                {
                    break;
                }
                if open {
                    open = self.wait_for_company(&mut rx, &mut next).await;
                }
                flying = self.stage(std::mem::take(&mut next)).await;
                continue;
            };
            // A commit is in flight: decide what arrives on top of it until it settles.
            let mut on_top = OnTop::NotStarted;
            let outcome = loop {
                let room = self.max_batch.saturating_sub(next.len());
                tokio::select! {
                    biased;
                    outcome = self.session.finish_commit() => break outcome,
                    n = rx.recv_many(&mut incoming, room.max(1)), if open && room > 0 => {
                        if n == 0 {
                            open = false;
                            continue;
                        }
                        on_top = self.decide_on_top(on_top, &mut incoming).await;
                        next.append(&mut incoming);
                    }
                }
            };
            below.observe(self.session.committed_position());
            match outcome {
                Ok(()) if on_top == OnTop::Deciding && !next.is_empty() => {
                    // The next batch is decided: its commit starts before this batch's answers
                    // go out, or its connection would wait while two dozen callers are woken.
                    // The commit task runs on this thread's runtime: the yield lets it hand its
                    // statements to the connection before the answers.
                    let head = self.session.committed_position();
                    self.stats.pipelined.fetch_add(1, Ordering::Relaxed);
                    flying = self.commit_decided(std::mem::take(&mut next)).await;
                    tokio::task::yield_now().await;
                    for job in below.jobs.drain(..) {
                        job.answer(Ok(()));
                    }
                    let _ = self.committed.send(head);
                    continue;
                }
                Ok(()) => {
                    for job in below.jobs.drain(..) {
                        job.answer(Ok(()));
                    }
                }
                Err(e) => {
                    // Nothing decided on top of a failed commit stands: drop it before the
                    // failed batch's commands run again, one by one.
                    if on_top != OnTop::NotStarted {
                        let _ = self.session.rollback().await;
                        self.stats.redecided.fetch_add(1, Ordering::Relaxed);
                    }
                    on_top = OnTop::NotStarted;
                    self.signed = None;
                    tracing::debug!(error = %e, size = below.jobs.len(), "batch failed; running its commands one by one");
                    self.one_by_one(std::mem::take(&mut below.jobs)).await;
                }
            }
            let head = self.session.committed_position();
            let _ = self.committed.send(head);
            if next.is_empty() {
                if on_top == OnTop::Deciding {
                    let _ = self.session.rollback().await;
                }
                continue;
            }
            let batch = std::mem::take(&mut next);
            flying = match on_top {
                OnTop::Deciding => {
                    self.stats.pipelined.fetch_add(1, Ordering::Relaxed);
                    self.commit_decided(batch).await
                }
                OnTop::Spoiled => {
                    let _ = self.session.rollback().await;
                    self.stats.redecided.fetch_add(1, Ordering::Relaxed);
                    self.stage(batch).await
                }
                OnTop::NotStarted | OnTop::Unavailable => self.stage(batch).await,
            };
        }
        // The last commit's connection comes back (its housekeeping done) before the end.
        let _ = self.session.rollback().await;
    }

    /// Waits (see [`Linger`]) for one more command to join `batch` when it holds nothing but
    /// commands that follow a password check and more checks are queued. False once the
    /// queue has closed.
    async fn wait_for_company(&self, rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) -> bool {
        let Some(linger) = &self.linger else {
            return true;
        };
        let room = self.max_batch.saturating_sub(batch.len());
        if room == 0 || !batch.iter().all(Job::follows_password) || !(linger.checks_queued)() {
            return true;
        }
        self.stats.lingered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::WRITER_LINGERED).increment(1);
        // `recv_many` is cancel-safe: at the deadline nothing received is lost.
        !matches!(
            tokio::time::timeout(linger.max, rx.recv_many(batch, room)).await,
            Ok(0)
        )
    }

    /// Decides `incoming` on top of the commit in flight, if it can be.
    async fn decide_on_top(&mut self, state: OnTop, incoming: &mut [Job]) -> OnTop {
        let tokens: Vec<TokenKey> = incoming
            .iter()
            .filter_map(Job::presented_token)
            .copied()
            .collect();
        let started = match state {
            OnTop::NotStarted => match self.session.begin_on_top(&tokens).await {
                Ok(true) => Ok(()),
                Ok(false) => return OnTop::Unavailable,
                Err(e) => Err(e),
            },
            OnTop::Deciding => self.session.prefetch(&tokens).await,
            other => return other,
        };
        if let Err(e) = started {
            tracing::debug!(error = %e, "deciding on top of the commit in flight failed");
            return OnTop::Spoiled;
        }
        for job in incoming.iter_mut() {
            let now = self.clock.now();
            if let Err(e) = job
                .run(&mut self.session, now, &self.policy, &self.rules)
                .await
            {
                tracing::debug!(error = %e, "a command decided on top failed; deciding again");
                return OnTop::Spoiled;
            }
        }
        OnTop::Deciding
    }

    /// Begins a batch of its own, decides it and starts its commit; `None` when it failed
    /// before its commit (its commands have then been run one by one and answered).
    async fn stage(&mut self, mut batch: Vec<Job>) -> Option<InFlight> {
        let tokens: Vec<TokenKey> = batch
            .iter()
            .filter_map(Job::presented_token)
            .copied()
            .collect();
        let mut decided = self.session.begin(&tokens).await;
        if decided.is_ok() {
            for job in batch.iter_mut() {
                let now = self.clock.now();
                if let Err(e) = job
                    .run(&mut self.session, now, &self.policy, &self.rules)
                    .await
                {
                    decided = Err(e);
                    break;
                }
            }
        }
        match decided {
            Ok(()) => self.commit_decided(batch).await,
            Err(e) => {
                let _ = self.session.rollback().await;
                self.signed = None;
                tracing::debug!(error = %e, size = batch.len(), "batch failed; running its commands one by one");
                self.one_by_one(batch).await;
                None
            }
        }
    }

    /// Signs the decided batch's head and starts its commit.
    async fn commit_decided(&mut self, batch: Vec<Job>) -> Option<InFlight> {
        let size = batch.len();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(size as u64, Ordering::Relaxed);
        self.stats
            .largest_batch
            .fetch_max(size as u64, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let staged = match self.sign_head().await {
            Ok(signed) => self.session.start_commit().await.map(|()| signed),
            Err(e) => Err(e),
        };
        match staged {
            Ok(signed) => {
                if signed.is_some() {
                    self.signed = signed;
                }
                Some(InFlight {
                    jobs: batch,
                    started,
                })
            }
            Err(e) => {
                let _ = self.session.rollback().await;
                self.signed = None;
                tracing::debug!(error = %e, size, "batch failed; running its commands one by one");
                self.one_by_one(batch).await;
                None
            }
        }
    }

    /// Runs each command in a transaction of its own, committed before the next, and answers it.
    async fn one_by_one(&mut self, batch: Vec<Job>) {
        for mut job in batch {
            let outcome = self.run_alone(&mut job).await;
            job.answer(outcome);
        }
        let _ = self.committed.send(self.session.committed_position());
    }

    /// Runs the batch in one transaction and waits for its commit; each job holds its reply
    /// once this returns `Ok`.
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
            self.signed = None;
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
