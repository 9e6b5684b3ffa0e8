//! Scheduled jobs: the expiry sweep, signing-key rotation, retention and reloads. Each has a
//! cron schedule in the configuration; every run, scheduled or by hand, goes through
//! [`Jobs::run`], which keeps a job from overlapping itself, takes the cross-node lock for a
//! shared job, logs one line and records the job's metrics. The work itself is the service's.

use crate::config::Config;
use crate::error::Error;
use crate::service::Sessiond;
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

    fn schedule(self, c: &Config) -> Option<&str> {
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
struct JobGuards([AtomicBool; 4]);

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

/// The jobs of one service: they hold it weakly, so they never keep it (and so the writer)
/// alive past shutdown.
pub struct Jobs {
    service: Weak<Sessiond>,
    guards: JobGuards,
}

impl Jobs {
    pub fn new(service: &Arc<Sessiond>) -> Arc<Jobs> {
        Arc::new(Jobs {
            service: Arc::downgrade(service),
            guards: JobGuards::default(),
        })
    }

    /// Runs one job now (the scheduler calls this on each tick).
    pub async fn run(&self, job: JobKind) -> Result<JobOutcome, Error> {
        self.run_with(job, false).await
    }

    /// `sessiond keys rotate`: the key-rotation job, publishing the next key even if the
    /// active one is not due yet.
    pub async fn rotate_keys_now(&self) -> Result<JobOutcome, Error> {
        self.run_with(JobKind::KeyRotation, true).await
    }

    /// The one way a job runs, scheduled or by hand: no overlap with itself, one node at a
    /// time for shared jobs, one log line, the job metrics.
    async fn run_with(&self, job: JobKind, start_rotation_now: bool) -> Result<JobOutcome, Error> {
        let Some(app) = self.service.upgrade() else {
            return Err(Error::Unavailable);
        };
        let name = job.name();
        let Some(_running) = self.guards.try_start(job) else {
            tracing::info!(job = name, "job skipped: the previous run is still going");
            metrics::counter!(crate::metrics::JOB_RUNS, "job" => name, "outcome" => "skipped")
                .increment(1);
            return Ok(JobOutcome::Skipped);
        };
        // One node at a time: on PostgreSQL the others skip this run (SQLite has one node).
        let lock = if job.one_node_at_a_time() {
            let Some(lock) = app.try_job_lock(name).await? else {
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
            JobKind::ExpirySweep => match app.expire_due_sessions().await {
                // Seen DPoP proofs past their window go with the same sweep.
                Ok(n) => app
                    .prune_dpop_proofs()
                    .await
                    .map(|p| format!("{n} sessions expired, {p} DPoP proofs forgotten")),
                Err(e) => Err(e),
            },
            JobKind::KeyRotation => app
                .rotate_signing_keys(start_rotation_now)
                .await
                .map(|r| r.to_string()),
            JobKind::Retention => app.prune_ended_sessions().await,
            JobKind::Reload => reload(&app).await,
        };
        if let Some(lock) = lock {
            lock.release().await;
        }
        let elapsed = started.elapsed();
        let millis = elapsed.as_millis() as u64;
        metrics::histogram!(crate::metrics::JOB_DURATION, "job" => name)
            .record(elapsed.as_secs_f64());
        match result {
            Ok(summary) => {
                tracing::info!(job = name, millis, %summary, "job done");
                metrics::counter!(crate::metrics::JOB_RUNS, "job" => name, "outcome" => "success")
                    .increment(1);
                metrics::gauge!(crate::metrics::JOB_LAST_SUCCESS, "job" => name)
                    .set(app.now().timestamp_millis() as f64 / 1000.0);
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

    /// Starts the scheduler with every job that has a schedule in `config`.
    pub async fn start_scheduler(
        self: &Arc<Self>,
        config: &Config,
    ) -> Result<JobScheduler, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        for job in JobKind::ALL {
            let Some(schedule) = job.schedule(config) else {
                continue;
            };
            let jobs = self.clone();
            scheduler
                .add(Job::new_async(schedule, move |_, _| {
                    let jobs = jobs.clone();
                    Box::pin(async move {
                        let _ = jobs.run(job).await;
                    })
                })?)
                .await?;
        }
        scheduler.start().await?;
        Ok(scheduler)
    }
}

/// GeoIP databases and rule files that changed, and the signing keys another node rotated.
async fn reload(app: &Sessiond) -> Result<String, Error> {
    app.refresh_key_ring().await?;
    Ok(if app.reload_if_changed() {
        "key ring refreshed; reloaded what changed".to_owned()
    } else {
        "key ring refreshed; no file changed".to_owned()
    })
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
