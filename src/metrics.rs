//! Prometheus metrics: the process-wide recorder, the names and their descriptions. What a
//! committed command did is counted by the command itself (`commands`), after its batch.
//!
//! The recorder is global to the process (the `metrics` crate has one), so it is installed once
//! and every `App` in the process shares its handle; counters therefore add up across apps run
//! in one process, and tests assert on deltas.

use crate::domain::event::{ExpiryKind, RevokeReason};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const HTTP_REQUESTS: &str = "sessiond_http_requests_total";
pub const HTTP_DURATION: &str = "sessiond_http_request_duration_seconds";
/// Successful logins by the country GeoIP placed them in (`unknown` without a database).
pub const LOGIN_COUNTRIES: &str = "sessiond_login_countries_total";
pub const LOGINS: &str = "sessiond_logins_total";
pub const LOGIN_THROTTLED: &str = "sessiond_login_throttled_total";
/// Sign-in notices by event (created, confirmed, denied, mailed, mail_failed).
pub const NOTICES: &str = "sessiond_notices_total";
pub const REFRESHES: &str = "sessiond_refreshes_total";
pub const GRACE_RETRIES: &str = "sessiond_refresh_grace_retries_total";
pub const REUSE: &str = "sessiond_refresh_reuse_total";
pub const REVOCATIONS: &str = "sessiond_session_revocations_total";
pub const EXPIRATIONS: &str = "sessiond_session_expirations_total";
pub const ACTIVE_SESSIONS: &str = "sessiond_active_sessions";
pub const WRITER_BATCH: &str = "sessiond_writer_batch_size";
pub const WRITER_LINGERED: &str = "sessiond_writer_lingered_total";
pub const WRITER_COMMIT: &str = "sessiond_writer_commit_duration_seconds";
pub const LOG_HEAD: &str = "sessiond_event_log_head_position";
pub const WEBHOOK_LAG: &str = "sessiond_webhook_lag_events";
pub const WEBHOOK_DELIVERIES: &str = "sessiond_webhook_deliveries_total";
pub const JOB_RUNS: &str = "sessiond_job_runs_total";
pub const JOB_LAST_SUCCESS: &str = "sessiond_job_last_success_timestamp_seconds";
pub const JOB_DURATION: &str = "sessiond_job_duration_seconds";
pub const SIGNING_KEYS: &str = "sessiond_signing_keys";
pub const RULE_FIRINGS: &str = "sessiond_rule_firings_total";
pub const RULE_BREAKER_TRIPS: &str = "sessiond_rule_breaker_trips_total";

/// Latency buckets, in seconds: sub-millisecond commits up to slow password hashes.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder the first time (later calls share it) and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(WRITER_BATCH.into()), BATCH_BUCKETS)
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// Counts a notice mailed or a failed attempt.
pub fn notice_mail(outcome: &'static str) {
    metrics::counter!(NOTICES, "event" => outcome).increment(1)
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        "HTTP request latency by route template, method and status"
    );
    describe_counter!(LOGINS, "Login attempts by outcome");
    describe_counter!(
        LOGIN_THROTTLED,
        "Password checks refused by the login throttle, by the counter over its limit"
    );
    describe_counter!(
        LOGIN_COUNTRIES,
        "Successful logins by GeoIP country (unknown without a database)"
    );
    describe_counter!(
        NOTICES,
        "Sign-in notices by event (created, confirmed, denied, mailed, mail_failed)"
    );
    describe_counter!(REFRESHES, "Refresh attempts by outcome");
    describe_counter!(
        GRACE_RETRIES,
        "Retries of the replaced refresh token answered with its successor, by kind (early: within the grace window, late: after it)"
    );
    describe_counter!(REUSE, "Refresh-token reuse detected, by class");
    describe_counter!(REVOCATIONS, "Sessions revoked, by reason");
    describe_counter!(EXPIRATIONS, "Sessions expired, by kind (idle, absolute)");
    describe_gauge!(
        ACTIVE_SESSIONS,
        "Sessions currently active (as of the last scrape)"
    );
    describe_histogram!(WRITER_BATCH, "Commands per group commit");
    describe_counter!(
        WRITER_LINGERED,
        "Commits of only logins that waited for another command while password checks queued"
    );
    describe_histogram!(WRITER_COMMIT, "Time to apply and commit one batch");
    describe_gauge!(LOG_HEAD, "Position of the last committed event");
    describe_gauge!(
        WEBHOOK_LAG,
        "Events between the log head and a subscription's checkpoint"
    );
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook delivery attempts by outcome");
    describe_counter!(JOB_RUNS, "Scheduled job runs by job and outcome");
    describe_gauge!(
        JOB_LAST_SUCCESS,
        "Unix time of each job's last successful run"
    );
    describe_histogram!(JOB_DURATION, "Scheduled job run time");
    describe_gauge!(SIGNING_KEYS, "Signing keys in the key ring, by status");
}

/// The Prometheus text exposition of every metric recorded in this process.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// A request's method as a label: the standard ones by name, anything else `other`, so that
/// made-up method names (any token is a valid method) cannot each make a series.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

pub fn observe_request(route: &str, method: &str, status: u16, seconds: f64) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method_label(method).to_owned()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(seconds);
}

/// Every family the dashboards query, exported from the start with a zero-valued series for
/// each label value known up front (outcomes, reasons, classes, jobs, the loaded rules), so a
/// panel shows 0 rather than "no data" and alerts on absent series do not fire on a quiet
/// server. Counters are only ever touched with `increment(0)`: a value already counted stays.
pub fn seed(rules: &[(String, &'static str)], jobs: &[&'static str]) {
    use crate::domain::throttle::ThrottleScope;
    for outcome in [
        "success",
        "unknown_user",
        "bad_password",
        "locked",
        "stale_password",
        "throttled",
    ] {
        counter!(LOGINS, "outcome" => outcome).increment(0);
    }
    for scope in ThrottleScope::ALL {
        counter!(LOGIN_THROTTLED, "scope" => scope.as_str()).increment(0);
    }
    counter!(LOGIN_COUNTRIES, "country" => "unknown").increment(0);
    for outcome in [
        "rotated",
        "grace_retry",
        "late_retry",
        "reuse",
        "expired",
        "retry_limit",
        "successor_unavailable",
        "reauth_required",
        "session_ended",
        "denied",
        "dpop_invalid",
        "dpop_required",
        "unknown_token",
    ] {
        counter!(REFRESHES, "outcome" => outcome).increment(0);
    }
    for kind in ["early", "late"] {
        counter!(GRACE_RETRIES, "kind" => kind).increment(0);
    }
    for class in [
        "previous_after_grace",
        "previous_other_context",
        "displaced_branch",
        "older_generation",
        "repeated_late_retry",
    ] {
        counter!(REUSE, "class" => class).increment(0);
    }
    for reason in RevokeReason::ALL {
        counter!(REVOCATIONS, "reason" => reason.as_str()).increment(0);
    }
    for kind in [ExpiryKind::Idle, ExpiryKind::Absolute] {
        counter!(EXPIRATIONS, "kind" => expiry_kind(kind)).increment(0);
    }
    for outcome in ["delivered", "failed"] {
        counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(0);
    }
    for job in jobs {
        for outcome in ["success", "failure", "skipped"] {
            counter!(JOB_RUNS, "job" => *job, "outcome" => outcome).increment(0);
        }
    }
    for (rule, mode) in rules {
        counter!(RULE_FIRINGS, "rule" => rule.clone(), "mode" => *mode, "action" => "none")
            .increment(0);
        counter!(RULE_BREAKER_TRIPS, "rule" => rule.clone()).increment(0);
    }
    for job in jobs {
        // Registered without a sample, a histogram is exported with zero counts.
        let _ = histogram!(JOB_DURATION, "job" => *job);
    }
    counter!(WRITER_LINGERED).increment(0);
    for route in ["/v1/auth/login", "/v1/auth/refresh"] {
        let labels = [("route", route), ("method", "POST"), ("status", "200")];
        counter!(HTTP_REQUESTS, &labels).increment(0);
        let _ = histogram!(HTTP_DURATION, &labels);
    }
    let _ = histogram!(WRITER_BATCH);
    let _ = histogram!(WRITER_COMMIT);
    gauge!(ACTIVE_SESSIONS).increment(0.0);
}

pub fn observe_batch(size: usize, seconds: f64, head: i64) {
    histogram!(WRITER_BATCH).record(size as f64);
    histogram!(WRITER_COMMIT).record(seconds);
    gauge!(LOG_HEAD).set(head as f64);
}

pub fn observe_expiry(kind: ExpiryKind) {
    counter!(EXPIRATIONS, "kind" => expiry_kind(kind)).increment(1);
}

fn expiry_kind(kind: ExpiryKind) -> &'static str {
    match kind {
        ExpiryKind::Idle => "idle",
        ExpiryKind::Absolute => "absolute",
    }
}

/// Counts `sessions` revocations for `reason`.
pub fn count_revocations(reason: RevokeReason, sessions: usize) {
    if sessions > 0 {
        counter!(REVOCATIONS, "reason" => reason.as_str()).increment(sessions as u64);
    }
}
