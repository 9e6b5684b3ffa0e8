//! Group commit: one task owns the write connection, takes commands from a channel, applies as
//! many as are waiting (up to a cap) in one transaction, and answers each caller only after the
//! commit is durable. One fsync serves the whole batch.
//!
//! If a batch fails as a whole (a conflicting append from another process, a database error),
//! it is rolled back and its commands are run again one per transaction, each reloading its state
//! and deciding afresh, so one bad command never takes others down with it.

use super::commands::{Command, Reply, execute};
use super::{StoreError, UnitOfWork};
use crate::clock::Clock;
use crate::domain::event::EventMetadata;
use crate::domain::session::SessionPolicy;
use crate::domain::token::TokenKey;
use crate::rules::RuleEngine;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};

/// The writer's transaction control over its unit of work.
pub trait WriteSession: UnitOfWork + 'static {
    /// Starts a transaction and reads ahead, in the same go, the refresh tokens the batch will
    /// look up (and their sessions).
    fn begin(
        &mut self,
        prefetch: &[TokenKey],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn commit(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn rollback(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn committed_position(&self) -> i64;
    /// Housekeeping that must not run inside a batch, called after its callers are answered.
    fn between_batches(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Empties the inline projections (for a rebuild), inside the current transaction.
    fn clear_projections(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

struct Job {
    command: Command,
    metadata: EventMetadata,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
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
    pub async fn submit(
        &self,
        command: Command,
        metadata: EventMetadata,
    ) -> Result<Reply, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                command,
                metadata,
                reply,
            })
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
}

impl<W: WriteSession> WriterTask<W> {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // Ends when every `Writer` handle is dropped and the queue is drained.
        while rx.recv_many(&mut batch, self.max_batch).await > 0 {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats
                .commands
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.stats
                .largest_batch
                .fetch_max(batch.len() as u64, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let result = self.try_batch(&batch).await;
            tracing::trace!(
                size = batch.len(),
                micros = started.elapsed().as_micros() as u64,
                "batch"
            );
            let size = batch.len();
            match result {
                Ok(replies) => {
                    for (job, reply) in batch.drain(..).zip(replies) {
                        crate::metrics::observe_command(&job.command, &reply);
                        let _ = job.reply.send(Ok(reply));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, size = batch.len(), "batch failed; running its commands one by one");
                    for job in batch.drain(..) {
                        let result = self.run_alone(&job).await;
                        if let Ok(reply) = &result {
                            crate::metrics::observe_command(&job.command, reply);
                        }
                        let _ = job.reply.send(result);
                    }
                }
            }
            let head = self.session.committed_position();
            crate::metrics::observe_batch(size, started.elapsed().as_secs_f64(), head);
            let _ = self.committed.send(head);
            self.session.between_batches().await;
        }
    }

    async fn try_batch(&mut self, batch: &[Job]) -> Result<Vec<Reply>, StoreError> {
        let tokens: Vec<TokenKey> = batch
            .iter()
            .filter_map(|j| j.command.presented_token())
            .copied()
            .collect();
        if let Err(e) = self.session.begin(&tokens).await {
            self.session.rollback().await?;
            return Err(e);
        }
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            let now = self.clock.now();
            match execute(
                &mut self.session,
                job.command.clone(),
                &job.metadata,
                now,
                &self.policy,
                &self.rules,
            )
            .await
            {
                Ok(r) => replies.push(r),
                Err(e) => {
                    self.session.rollback().await?;
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.session.commit().await {
            self.session.rollback().await?;
            return Err(e);
        }
        Ok(replies)
    }

    async fn run_alone(&mut self, job: &Job) -> Result<Reply, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_batch(std::slice::from_ref(job)).await {
                Ok(mut replies) => return Ok(replies.remove(0)),
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "command failed");
                    return Err(e);
                }
            }
        }
    }
}
