//! The analyst in the loop (issue 15, point 5): verdicts on alerts, the alerts listing with
//! them, and per-rule stats.

use super::Sessiond;
use super::admin::{EventQuery, EventView};
use super::api_keys::Caller;
use crate::commands::RecordVerdict;
use crate::domain::context::RequestContext;
use crate::domain::event::{Event, EventMetadata};
use crate::domain::parse::parse_duration;
use crate::domain::verdict::{Judged, MAX_EXCEPTION, MAX_NOTE, RuleStats, Verdict, VerdictRefusal};
use crate::domain::{Duration, format_timestamp};
use crate::error::Error;
use crate::store::EventFilter;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The body of `POST /v1/admin/alerts/{id}/verdict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictRequest {
    pub verdict: String,
    #[serde(default)]
    pub exception: Option<ExceptionRequest>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionRequest {
    pub expires_in: String,
}

/// An alert as listed: the receipt and its verdict (`null` while unjudged).
#[derive(Debug, Serialize)]
pub struct AlertView {
    #[serde(flatten)]
    pub event: EventView,
    pub verdict: Option<Judged>,
}

#[derive(Debug, Serialize)]
pub struct AlertPage {
    pub events: Vec<AlertView>,
    pub next_cursor: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct RuleStatsView {
    pub rules: Vec<RuleStats>,
}

fn invalid(message: &str) -> Error {
    Error::InvalidRequest(message.to_owned())
}

/// Checks the request: the verdict's name, the exception's lifetime (1 s to 365 days, only
/// with a false positive) and the note's length.
fn parse_request(
    req: VerdictRequest,
) -> Result<(Verdict, Option<Duration>, Option<String>), Error> {
    let verdict = Verdict::parse(req.verdict.trim())
        .ok_or_else(|| invalid("verdict must be \"true_positive\" or \"false_positive\""))?;
    let exception = match req.exception {
        None => None,
        Some(_) if verdict == Verdict::TruePositive => {
            return Err(invalid("an exception goes only with a false_positive verdict"));
        }
        Some(e) => Some(
            parse_duration(&e.expires_in)
                .filter(|d| *d > Duration::zero() && *d <= Duration::days(MAX_EXCEPTION))
                .ok_or_else(|| {
                    invalid("exception.expires_in must be a duration such as \"30d\", \"12h\" (at most 365d)")
                })?,
        ),
    };
    let note = req
        .note
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if note.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTE) {
        return Err(invalid("note must be at most 500 characters"));
    }
    Ok((verdict, exception, note))
}

impl Sessiond {
    /// Records an analyst's verdict on the alert at log position `position` (and, for a false
    /// positive with `exception`, an exception for that rule and user) as the caller.
    pub async fn record_verdict(
        &self,
        caller: &Caller,
        position: i64,
        req: VerdictRequest,
        ctx: &RequestContext,
    ) -> Result<Value, Error> {
        let (verdict, exception, note) = parse_request(req)?;
        // The request context the rule judged, opened: what the exception is for.
        let receipt = if position > 0 {
            self.store
                .events(&EventFilter {
                    after_position: position - 1,
                    event_types: vec!["rule.fired".into()],
                    limit: Some(1),
                    ..Default::default()
                })
                .await?
                .into_iter()
                .find(|e| e.position == position)
        } else {
            None
        };
        let Some(receipt) = receipt else {
            return Err(Error::NotFound);
        };
        // A context whose personal fields expired or were erased no longer decodes: then there
        // is no network to scope an exception to, and none is added.
        let context = match receipt.decode() {
            Ok(Event::RuleFired(r)) => r.context,
            _ => None,
        };
        let cmd = RecordVerdict {
            position,
            verdict,
            exception,
            note,
            context,
        };
        let meta = EventMetadata::new(caller.actor(), ctx.request_id.clone());
        match self.writer.submit(cmd, meta).await? {
            Ok(added) => Ok(json!({
                "position": position,
                "verdict": verdict,
                "exception": added.map(|e| json!({
                    "exception_id": e.exception_id,
                    "rule_id": e.rule_id,
                    "user_id": e.user_id,
                    "expires_at": format_timestamp(e.expires_at),
                })),
            })),
            Err(VerdictRefusal::UnknownAlert) => Err(Error::NotFound),
            Err(VerdictRefusal::AlreadyJudged) => Err(Error::Conflict(
                "verdict_recorded",
                "this alert has a verdict already; a verdict is recorded once".into(),
            )),
            Err(VerdictRefusal::NoUser) => Err(invalid(
                "this alert is about no user: an exception needs one",
            )),
            Err(VerdictRefusal::NoNetwork) => Err(invalid(
                "this alert's request context is gone (expired or erased): no exception can be scoped to it",
            )),
        }
    }

    /// Rule firings with their receipts and verdicts, newest first.
    pub async fn alerts(&self, q: &EventQuery) -> Result<AlertPage, Error> {
        let page = self.search_events(q).await?;
        let positions: Vec<i64> = page.events.iter().map(|e| e.position).collect();
        let mut judged: HashMap<i64, Judged> = self
            .store
            .alerts_at(&positions)
            .await?
            .into_iter()
            .filter_map(|a| a.judged.map(|j| (a.position, j)))
            .collect();
        Ok(AlertPage {
            events: page
                .events
                .into_iter()
                .map(|event| AlertView {
                    verdict: judged.remove(&event.position),
                    event,
                })
                .collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// Per rule that fired: alerts, verdicts each way and the share judged false.
    pub async fn rule_stats(&self) -> Result<RuleStatsView, Error> {
        Ok(RuleStatsView {
            rules: self.store.rule_stats().await?,
        })
    }
}
