//! A backtest: the log replayed, event by event in log order, through a rule set, judged by the
//! same code as the live writer (`judge::judge`) over an in-process replica of the memory the
//! live judge keeps in the store (migration 0013: threshold windows, the breaker's spend, usual
//! networks) and of the sessions it reads (the same `evolve` as the projection). So a journey
//! that spans hours and sessions is judged as it was live, and with the live rules the firings
//! are the live `rule.fired` receipts. Writes nothing anywhere.
//!
//! The events come from whoever reads them: the store (`rules backtest`) or an export file
//! (`rules backtest --input`, see [`ExportLine`]). A request whose grant a rule refused (a
//! refresh revoked) left no event of its own, only its receipts, which carry the request's
//! context: such a request is replayed from its first receipt.

use super::judge::{JudgeMemory, judge, session_facts};
use crate::domain::context::RequestContext;
use crate::domain::event::{Event, RuleFired};
use crate::domain::notice::Exception;
use crate::domain::session::{self, Session, SessionStatus};
use crate::domain::user::{self, User};
use crate::domain::{Timestamp, parse_timestamp, truncate_to_millis};
use crate::rules::backtest::{BacktestReport, FiringLine};
use crate::rules::breaker::BreakerConfig;
use crate::rules::{Facts, Mode, RuleEngine, RuleSet, Trigger};
use crate::store::StoreError;
use serde_json::Value;
use std::collections::HashMap;
use uuid::Uuid;

/// One event as read from the log or an export, with what the replay needs besides its payload.
pub struct Replayed<'a> {
    pub position: i64,
    pub stream_id: &'a str,
    pub occurred_at: Timestamp,
    /// The request that made it: groups a request's receipts with its event.
    pub request_id: Option<&'a str>,
    pub event: Event,
}

/// The request last judged: its receipts that follow in the log are not judged again.
#[derive(PartialEq)]
struct Judged {
    trigger: Trigger,
    session_id: Option<Uuid>,
    user_id: Option<Uuid>,
    at: Timestamp,
    request_id: Option<String>,
}

/// A replay in progress.
pub struct Replay {
    engine: RuleEngine,
    memory: ReplayMemory,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    last: Option<Judged>,
    report: BacktestReport,
}

impl Replay {
    /// Reports firings in `[since, until)`; earlier events still build the memory.
    pub fn new(
        set: RuleSet,
        breaker: BreakerConfig,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Replay {
        let report = BacktestReport::for_rules(
            set.rules
                .iter()
                .filter(|r| r.mode != Mode::Off)
                .map(|r| r.id.clone()),
        );
        Replay {
            engine: RuleEngine::new(set, breaker),
            memory: ReplayMemory::default(),
            since,
            until,
            last: None,
            report,
        }
    }

    pub fn finish(self) -> BacktestReport {
        self.report.finish()
    }

    /// Whether an event at `at` is past `until` (the replay can stop).
    pub fn past_until(&self, at: Timestamp) -> bool {
        self.until.is_some_and(|u| at >= u)
    }

    /// Replays the next event of the log; returns the firings it produced (in range or not,
    /// as the caller may stream them).
    pub async fn replay(&mut self, e: Replayed<'_>) -> Result<Vec<FiringLine>, StoreError> {
        self.report.events_replayed += 1;
        let mut lines = Vec::new();
        if let Some(judged) = self.facts_of(&e) {
            let (judged, context, username, from_session) = judged;
            let before = judged
                .session_id
                .and_then(|id| self.memory.sessions.get(&id))
                .filter(|_| from_session)
                .cloned();
            let facts = match &before {
                Some(s) => session_facts(judged.trigger, s, &context, judged.at),
                None => Facts {
                    trigger: judged.trigger,
                    now: judged.at,
                    user_id: judged.user_id,
                    username: username.as_deref(),
                    session_id: judged.session_id,
                    context: &context,
                    session_login: None,
                    session_last: None,
                },
            };
            let judgement = judge(&mut self.memory, &self.engine, &facts).await?;
            let in_range = self.since.is_none_or(|s| judged.at >= s) && !self.past_until(judged.at);
            for receipt in judgement.iter().flat_map(|j| &j.receipts) {
                if let Event::RuleFired(f) = receipt {
                    let line = FiringLine::of(f, e.position, judged.at);
                    if in_range {
                        self.report.count(&line);
                        lines.push(line);
                    }
                }
            }
            self.report.events_judged += 1;
            self.last = Some(judged);
        }
        self.apply(&e);
        Ok(lines)
    }

    /// The request an event asks the rules about, if any: (what was judged, its context, its
    /// username, whether the session's state before it is the facts' session).
    fn facts_of(&self, e: &Replayed<'_>) -> Option<(Judged, RequestContext, Option<String>, bool)> {
        let session_user = |id: Uuid| self.memory.sessions.get(&id).map(|s| s.user_id);
        let judged = |trigger, session_id, user_id| Judged {
            trigger,
            session_id,
            user_id,
            at: e.occurred_at,
            request_id: e.request_id.map(str::to_owned),
        };
        Some(match &e.event {
            Event::SessionStarted(s) => {
                let name = self
                    .memory
                    .users
                    .get(&s.user_id)
                    .map(|u| u.username.clone());
                (
                    judged(Trigger::SessionStarted, Some(s.session_id), Some(s.user_id)),
                    s.context.clone(),
                    name,
                    false,
                )
            }
            Event::SessionRefreshed(s) => (
                judged(
                    Trigger::SessionRefreshed,
                    Some(s.session_id),
                    session_user(s.session_id),
                ),
                s.context.clone(),
                None,
                true,
            ),
            Event::RefreshRetried(s) => (
                judged(
                    Trigger::RefreshRetried,
                    Some(s.session_id),
                    session_user(s.session_id),
                ),
                s.context.clone(),
                None,
                true,
            ),
            Event::ReuseDetected(s) => (
                judged(
                    Trigger::ReuseDetected,
                    Some(s.session_id),
                    session_user(s.session_id),
                ),
                s.context.clone(),
                None,
                true,
            ),
            Event::DpopMismatch(s) => (
                judged(
                    Trigger::DpopMismatch,
                    Some(s.session_id),
                    session_user(s.session_id),
                ),
                s.context.clone(),
                None,
                true,
            ),
            Event::LoginFailed(s) => (
                judged(Trigger::LoginFailed, None, s.user_id),
                s.context.clone(),
                Some(s.username.clone()),
                false,
            ),
            Event::RuleFired(f) => return self.refused_request(f, e),
            _ => return None,
        })
    }

    /// A receipt whose request was not judged yet: a grant the rules refused, which left no
    /// event of its own. Judged again from the receipt's context (receipts of older builds have
    /// none and are passed over).
    fn refused_request(
        &self,
        f: &RuleFired,
        e: &Replayed<'_>,
    ) -> Option<(Judged, RequestContext, Option<String>, bool)> {
        let trigger = Trigger::parse(&f.trigger)?;
        let judged = Judged {
            trigger,
            session_id: f.session_id,
            user_id: f.user_id,
            at: e.occurred_at,
            request_id: e.request_id.map(str::to_owned),
        };
        if self.last.as_ref() == Some(&judged) {
            return None;
        }
        let context = f.context.clone()?;
        let from_session = trigger != Trigger::SessionStarted && trigger != Trigger::LoginFailed;
        Some((judged, context, f.username.clone(), from_session))
    }

    /// What the event changes in the sessions and users the judge reads.
    fn apply(&mut self, e: &Replayed<'_>) {
        let m = &mut self.memory;
        if let Some(id) = session::session_of(&e.event) {
            let before = m.sessions.remove(&id);
            if let Event::SessionReauthenticated(r) = &e.event
                && let Some(s) = &before
            {
                // The password was proven from here: trusted from now on (as the live command).
                let facts = session_facts(Trigger::SessionRefreshed, s, &r.context, e.occurred_at);
                self.engine.remember(&facts);
            }
            if let Some(after) = session::evolve(before, &e.event, e.occurred_at) {
                if matches!(e.event, Event::SessionStarted(_)) {
                    m.by_user.entry(after.user_id).or_default().push(id);
                }
                m.sessions.insert(id, after);
            }
        }
        if let Some(id) = e
            .stream_id
            .strip_prefix("user-")
            .and_then(|u| Uuid::parse_str(u).ok())
        {
            if let Event::ExceptionAdded(x) = &e.event {
                m.exceptions.entry(x.user_id).or_default().push(x.clone());
            }
            let before = m.users.remove(&id);
            if let Some(after) = user::evolve(before, &e.event, e.occurred_at) {
                m.users.insert(id, after);
            }
        }
    }
}

/// The store-kept memory of the live judge, in process: what `detector_counts`,
/// `breaker_spend`, `usual_networks` and the sessions table answer live. Times are kept at the
/// store's millisecond precision, so comparisons fall as the SQL ones do.
#[derive(Default)]
struct ReplayMemory {
    sessions: HashMap<Uuid, Session>,
    /// Each user's sessions, oldest first.
    by_user: HashMap<Uuid, Vec<Uuid>>,
    users: HashMap<Uuid, User>,
    /// (rule, key tag) -> (name tag, seen at).
    windows: HashMap<(String, String), Vec<(String, Timestamp)>>,
    /// rule -> (spent at, tripped until).
    breaker: HashMap<String, Vec<(Timestamp, Option<Timestamp>)>>,
    usual: HashMap<(Uuid, String), Timestamp>,
    /// Each user's exceptions, as the `exceptions` table holds them live.
    exceptions: HashMap<Uuid, Vec<Exception>>,
}

impl JudgeMemory for ReplayMemory {
    async fn active_sessions_of(&mut self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        let Some(ids) = self.by_user.get_mut(&user_id) else {
            return Ok(Vec::new());
        };
        let sessions = &self.sessions;
        ids.retain(|id| {
            sessions
                .get(id)
                .is_some_and(|s| s.status == SessionStatus::Active)
        });
        Ok(ids
            .iter()
            .filter_map(|id| sessions.get(id).cloned())
            .collect())
    }

    async fn last_seen_session_of(
        &mut self,
        user_id: Uuid,
        except: Option<Uuid>,
    ) -> Result<Option<Session>, StoreError> {
        // As the SQL orders: the latest last sighting, the later login on a tie.
        Ok(self
            .active_sessions_of(user_id)
            .await?
            .into_iter()
            .filter(|s| !s.reauth_required && Some(s.session_id) != except)
            .max_by_key(|s| (s.last_seen_at, s.created_at)))
    }

    async fn active_user_count(&mut self) -> Result<u64, StoreError> {
        let sessions = &self.sessions;
        Ok(self
            .by_user
            .values()
            .filter(|ids| {
                ids.iter().any(|id| {
                    sessions
                        .get(id)
                        .is_some_and(|s| s.status == SessionStatus::Active)
                })
            })
            .count() as u64)
    }

    async fn window_counts(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        since: Timestamp,
    ) -> Result<(i64, i64, i64), StoreError> {
        let since = truncate_to_millis(since);
        let Some(rows) = self
            .windows
            .get_mut(&(rule_id.to_owned(), key_tag.to_owned()))
        else {
            return Ok((0, 0, 0));
        };
        rows.retain(|(_, at)| *at > since);
        let mut names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mine = rows.iter().filter(|(n, _)| n == name_tag).count();
        Ok((rows.len() as i64, names.len() as i64, mine as i64))
    }

    async fn put_window_count(
        &mut self,
        rule_id: &str,
        key_tag: &str,
        name_tag: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.windows
            .entry((rule_id.to_owned(), key_tag.to_owned()))
            .or_default()
            .push((name_tag.to_owned(), truncate_to_millis(at)));
        Ok(())
    }

    async fn breaker_spent(
        &mut self,
        rule_id: &str,
        since: Timestamp,
    ) -> Result<(i64, Option<Timestamp>), StoreError> {
        let since = truncate_to_millis(since);
        let Some(rows) = self.breaker.get_mut(rule_id) else {
            return Ok((0, None));
        };
        rows.retain(|(at, _)| *at > since);
        let taken = rows.iter().filter(|(_, until)| until.is_none()).count();
        Ok((taken as i64, rows.iter().filter_map(|(_, u)| *u).max()))
    }

    async fn put_breaker_spend(
        &mut self,
        rule_id: &str,
        at: Timestamp,
        tripped_until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.breaker.entry(rule_id.to_owned()).or_default().push((
            truncate_to_millis(at),
            tripped_until.map(truncate_to_millis),
        ));
        Ok(())
    }

    async fn usual_networks_seen(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        since: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        let since = truncate_to_millis(since);
        Ok(networks
            .iter()
            .filter(|n| {
                self.usual
                    .get(&(user_id, (**n).to_owned()))
                    .is_some_and(|at| *at > since)
            })
            .map(|n| (*n).to_owned())
            .collect())
    }

    async fn put_usual_networks(
        &mut self,
        user_id: Uuid,
        networks: &[&str],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        for n in networks {
            self.usual
                .insert((user_id, (*n).to_owned()), truncate_to_millis(at));
        }
        Ok(())
    }

    async fn live_exceptions(
        &mut self,
        user_id: Uuid,
        now: Timestamp,
    ) -> Result<Vec<Exception>, StoreError> {
        let now = truncate_to_millis(now);
        Ok(self
            .exceptions
            .get(&user_id)
            .map(|all| {
                all.iter()
                    .filter(|e| truncate_to_millis(e.expires_at) > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// One line of an export, in either form: `sessiond events export` (`event_type`,
/// `schema_version`, `metadata`) or `GET /v1/admin/events/export` (`type`, `request_id`).
/// Lines that are no event (the checkpoint trailer) have no type.
#[derive(serde::Deserialize)]
pub struct ExportLine {
    #[serde(default)]
    pub position: i64,
    #[serde(default)]
    pub stream_id: String,
    pub event_type: Option<String>,
    /// The API's name for `event_type` (its lines carry both since they gained the CLI's form).
    #[serde(rename = "type")]
    pub api_type: Option<String>,
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub metadata: Value,
    pub request_id: Option<String>,
    pub occurred_at: Option<String>,
}

/// Why a line of an export cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("no occurred_at time")]
    Time,
    #[error(
        "its personal fields are sealed (an export made with --sealed): export with the master key at hand to backtest"
    )]
    Sealed,
    #[error("{0}")]
    Decode(String),
}

impl ExportLine {
    /// Parses a line: `Ok(None)` for a line that is no event (blank, the checkpoint trailer).
    pub fn parse(text: &str) -> Result<Option<ExportLine>, LineError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let mut line: ExportLine =
            serde_json::from_str(text).map_err(|e| LineError::Json(e.to_string()))?;
        if line.event_type.is_none() {
            line.event_type = line.api_type.take();
        }
        Ok(line.event_type.is_some().then_some(line))
    }

    /// The event, decoded at the line's schema version (the current one when the line does not
    /// say, as the API's export does not).
    pub fn decode(&self) -> Result<(Event, Timestamp), LineError> {
        let event_type = self.event_type.as_deref().unwrap_or("");
        let at = self
            .occurred_at
            .as_deref()
            .and_then(parse_timestamp)
            .ok_or(LineError::Time)?;
        if has_sealed(&self.data) {
            return Err(LineError::Sealed);
        }
        let mut data = self.data.clone();
        // Exports leave password hashes out; the replay needs none.
        if matches!(event_type, "user.registered" | "user.password_changed")
            && let Some(fields) = data.as_object_mut()
        {
            fields
                .entry("password_hash")
                .or_insert_with(|| Value::String(String::new()));
        }
        let version = self
            .schema_version
            .or_else(|| Event::current_schema_version(event_type))
            .unwrap_or(1);
        let event = Event::decode(event_type, version, &data)
            .map_err(|e| LineError::Decode(e.to_string()))?;
        Ok((event, at))
    }

    /// The request id, from either form.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id
            .as_deref()
            .or_else(|| self.metadata.get("request_id").and_then(Value::as_str))
    }
}

fn has_sealed(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            (m.contains_key("sealed") && m.contains_key("key") && m.len() == 2)
                || m.values().any(has_sealed)
        }
        Value::Array(a) => a.iter().any(has_sealed),
        _ => false,
    }
}
