//! Scheduled jobs: the expiry sweep, signing-key rotation and retention. Each has a cron
//! schedule in the configuration; every run, scheduled or by hand, goes through [`run_job`],
//! which keeps a job from overlapping itself, logs one line and records the job's metrics.
//! A cross-node lock belongs in `run_job` too.

use crate::domain::event::{Actor, EventMetadata};
use crate::domain::session::SessionStatus;
use crate::error::Error;
use crate::service::Sessiond;
use crate::store::commands::{Command, Reply};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    ExpirySweep,
    KeyRotation,
    Retention,
    /// GeoIP databases and rule files whose files changed.
    Reload,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        JobKind::ExpirySweep,
        JobKind::KeyRotation,
        JobKind::Retention,
        JobKind::Reload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobKind::ExpirySweep => "expiry_sweep",
            JobKind::KeyRotation => "key_rotation",
            JobKind::Retention => "retention",
            JobKind::Reload => "reload",
        }
    }

    fn schedule(self, app: &Sessiond) -> Option<&str> {
        let c = &app.config;
        match self {
            JobKind::ExpirySweep => c.expiry_sweep_schedule.as_deref(),
            JobKind::KeyRotation => c.key_rotation_schedule.as_deref(),
            JobKind::Retention => c.retention_schedule.as_deref(),
            JobKind::Reload => c.reload_schedule.as_deref(),
        }
    }

    /// Jobs that change the shared store run on one node at a time; a reload is every node's
    /// own (each holds its GeoIP databases and rules in memory).
    fn one_node_at_a_time(self) -> bool {
        !matches!(self, JobKind::Reload)
    }
}

/// One flag per job: set while a run is in progress.
#[derive(Debug, Default)]
pub struct JobGuards([AtomicBool; 4]);

/// Clears its job's flag when the run ends, however it ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl JobGuards {
    fn try_start(&self, job: JobKind) -> Option<Running<'_>> {
        let flag = &self.0[job as usize];
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Running(flag))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The run finished; what it did, in words.
    Done(String),
    /// The previous run of this job was still going.
    Skipped,
}

/// Runs one job now (the scheduler calls this on each tick).
pub async fn run_job(app: &Sessiond, job: JobKind) -> Result<JobOutcome, Error> {
    run(app, job, false).await
}

/// `sessiond keys rotate`: the key-rotation job, publishing the next key even if the active
/// one is not due yet.
pub async fn rotate_keys_now(app: &Sessiond) -> Result<JobOutcome, Error> {
    run(app, JobKind::KeyRotation, true).await
}

/// The one way a job runs, scheduled or by hand: no overlap with itself, one log line, the
/// job metrics. (A cross-node lock goes here.)
async fn run(app: &Sessiond, job: JobKind, start_rotation_now: bool) -> Result<JobOutcome, Error> {
    let name = job.name();
    let Some(_running) = app.job_guards.try_start(job) else {
        tracing::info!(job = name, "job skipped: the previous run is still going");
        metrics::counter!(crate::metrics::JOB_RUNS, "job" => name, "outcome" => "skipped")
            .increment(1);
        return Ok(JobOutcome::Skipped);
    };
    // One node at a time: on PostgreSQL the others skip this run (SQLite has one node).
    let lock = if job.one_node_at_a_time() {
        let Some(lock) = app.store.try_job_lock(name).await? else {
            tracing::info!(job = name, "job skipped: another node is running it");
            metrics::counter!(crate::metrics::JOB_RUNS, "job" => name, "outcome" => "skipped")
                .increment(1);
            return Ok(JobOutcome::Skipped);
        };
        Some(lock)
    } else {
        None
    };
    let started = Instant::now();
    let result = match job {
        JobKind::ExpirySweep => expiry_sweep(app).await,
        JobKind::KeyRotation => crate::tokens::rotation::rotate(app, start_rotation_now)
            .await
            .map(|r| r.to_string())
            .map_err(|e| Error::Internal(e.to_string())),
        JobKind::Retention => retention(app).await,
        JobKind::Reload => reload(app).await,
    };
    if let Some(lock) = lock {
        lock.release().await;
    }
    let elapsed = started.elapsed();
    let millis = elapsed.as_millis() as u64;
    metrics::histogram!(crate::metrics::JOB_DURATION, "job" => name).record(elapsed.as_secs_f64());
    match result {
        Ok(summary) => {
            tracing::info!(job = name, millis, %summary, "job done");
            metrics::counter!(crate::metrics::JOB_RUNS, "job" => name, "outcome" => "success")
                .increment(1);
            metrics::gauge!(crate::metrics::JOB_LAST_SUCCESS, "job" => name)
                .set(app.clock.now().timestamp_millis() as f64 / 1000.0);
            Ok(JobOutcome::Done(summary))
        }
        Err(e) => {
            tracing::warn!(job = name, millis, error = %e, "job failed");
            metrics::counter!(crate::metrics::JOB_RUNS, "job" => name, "outcome" => "failure")
                .increment(1);
            Err(e)
        }
    }
}

/// GeoIP databases and rule files that changed, and the signing keys another node rotated.
async fn reload(app: &Sessiond) -> Result<String, Error> {
    crate::tokens::rotation::refresh_key_ring(app)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(if crate::app::reload_if_changed(app) {
        "key ring refreshed; reloaded what changed".to_owned()
    } else {
        "key ring refreshed; no file changed".to_owned()
    })
}

/// Sessions swept per page; the sweep goes on until no session is due.
const SWEEP_PAGE: i64 = 500;

/// Records `session.expired` for every active session past its idle or absolute lifetime.
async fn expiry_sweep(app: &Sessiond) -> Result<String, Error> {
    let mut expired = 0usize;
    loop {
        let now = app.clock.now();
        let due = app.store.sessions_due(now, SWEEP_PAGE).await?;
        let mut ended_this_page = 0;
        for session_id in &due {
            let reply = app
                .writer
                .submit(
                    Command::ExpireIfDue {
                        session_id: *session_id,
                    },
                    EventMetadata::new(Actor::System, None),
                )
                .await?;
            if let Reply::SessionsEnded(ended) = reply
                && !ended.is_empty()
            {
                ended_this_page += 1;
                count_expiry(app, *session_id).await?;
            }
        }
        expired += ended_this_page;
        // A page where nothing ended (all raced to another end) would come back unchanged.
        if (due.len() as i64) < SWEEP_PAGE || ended_this_page == 0 {
            break;
        }
    }
    Ok(format!("{expired} sessions expired"))
}

async fn count_expiry(app: &Sessiond, session_id: uuid::Uuid) -> Result<(), Error> {
    let kind = match app.store.session(session_id).await? {
        Some(s) if s.status == SessionStatus::Expired => s.end_reason,
        _ => None,
    };
    match kind.as_deref() {
        Some("idle") => crate::metrics::observe_expiry(crate::domain::event::ExpiryKind::Idle),
        Some("absolute") => {
            crate::metrics::observe_expiry(crate::domain::event::ExpiryKind::Absolute)
        }
        _ => {}
    }
    Ok(())
}

/// Prunes the projection rows of sessions that ended more than `retention_period` ago.
async fn retention(app: &Sessiond) -> Result<String, Error> {
    let ended_before = app.clock.now() - app.config.retention_period;
    match app
        .writer
        .submit(
            Command::PruneEndedSessions { ended_before },
            EventMetadata::new(Actor::System, None),
        )
        .await?
    {
        Reply::Pruned(counts) => Ok(format!(
            "pruned {} sessions and {} refresh tokens that ended before {}",
            counts.sessions,
            counts.refresh_tokens,
            crate::domain::format_timestamp(ended_before)
        )),
        other => Err(Error::Internal(format!("unexpected reply {other:?}"))),
    }
}

/// Starts the scheduler with every job that has a schedule. The jobs hold the service weakly:
/// they never keep it (and so the writer) alive past shutdown.
pub async fn start_scheduler(app: &Arc<Sessiond>) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    for job in JobKind::ALL {
        let Some(schedule) = job.schedule(app) else {
            continue;
        };
        let weak: Weak<Sessiond> = Arc::downgrade(app);
        scheduler
            .add(Job::new_async(schedule, move |_, _| {
                let weak = weak.clone();
                Box::pin(async move {
                    if let Some(app) = weak.upgrade() {
                        let _ = run_job(&app, job).await;
                    }
                })
            })?)
            .await?;
    }
    scheduler.start().await?;
    Ok(scheduler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_cannot_overlap_itself_but_others_may_run() {
        let guards = JobGuards::default();
        let sweep = guards.try_start(JobKind::ExpirySweep).expect("free");
        assert!(guards.try_start(JobKind::ExpirySweep).is_none());
        assert!(guards.try_start(JobKind::Retention).is_some());
        drop(sweep);
        assert!(guards.try_start(JobKind::ExpirySweep).is_some());
    }
}
