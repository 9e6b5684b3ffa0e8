//! The security team's reads and actions: event search and timelines, a session's refresh-family
//! lineage, and revoking on someone else's behalf. Every action is recorded with the caller as
//! its actor.

use super::Sessiond;
use super::api_keys::Caller;
use super::family::Generation;
use crate::commands::{EndSession, LogoutEverywhere, SetLock};
use crate::domain::context::RequestContext;
use crate::domain::event::{EventMetadata, RevokeReason};
use crate::domain::format_timestamp;
use crate::domain::session::Session;
use crate::domain::user::User;
use crate::error::Error;
use crate::store::{EventFilter, RecordedEvent};
use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Value, json};
use std::net::IpAddr;
use uuid::Uuid;

/// Rows read from the log per round while filtering on fields inside the events.
const SCAN_PAGE: i64 = 500;
/// Rows one search request may read before it answers with a cursor to continue from.
const SCAN_BUDGET: usize = 20_000;
/// Rows per chunk of a streamed export: memory stays at one chunk whatever the export's size.
/// A few hundred: an opened page holds both the sealed and the opened text.
const EXPORT_PAGE: i64 = 250;

/// A search over the log. Stream, type and time narrow the read in the database; address,
/// country and rule are fields inside the events, checked as rows go by.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub user: Option<Uuid>,
    pub session: Option<Uuid>,
    pub types: Vec<String>,
    pub ip: Option<IpNet>,
    pub country: Option<String>,
    pub rule: Option<String>,
    pub severity: Option<String>,
    pub mode: Option<String>,
    /// Events about this session or user wherever they are stored (rule receipts).
    pub subject: Option<Uuid>,
    pub since: Option<crate::domain::Timestamp>,
    pub until: Option<crate::domain::Timestamp>,
    /// Newest first: only events before this position.
    pub before: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Serialize)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `before` for the next (older) page; `null` when the log has nothing older.
    pub next_cursor: Option<i64>,
}

/// An event as the security API shows it: the stored payload minus password hashes.
#[derive(Debug, Serialize)]
pub struct EventView {
    pub position: i64,
    pub stream_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: String,
    pub actor: Value,
    pub request_id: Option<String>,
    pub data: Value,
}

impl EventView {
    pub fn of(e: &RecordedEvent) -> EventView {
        let mut data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        // Needed to rebuild the users table, useless to an analyst, valuable to a cracker.
        crate::domain::event::strip_secrets(&mut data);
        let meta: Option<EventMetadata> = serde_json::from_str(&e.metadata).ok();
        EventView {
            position: e.position,
            stream_id: e.stream_id.clone(),
            event_type: e.event_type.clone(),
            occurred_at: e.occurred_at.clone(),
            actor: meta
                .as_ref()
                .and_then(|m| serde_json::to_value(&m.actor).ok())
                .unwrap_or(Value::Null),
            request_id: meta.and_then(|m| m.request_id),
            data,
        }
    }
}

impl EventQuery {
    /// No filter at all: the whole log.
    pub fn is_unfiltered(&self) -> bool {
        self.user.is_none()
            && self.session.is_none()
            && self.types.is_empty()
            && self.ip.is_none()
            && self.country.is_none()
            && self.rule.is_none()
            && self.severity.is_none()
            && self.mode.is_none()
            && self.subject.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.before.is_none()
    }

    /// Whether an event's own fields match the filters the database could not apply.
    fn matches(&self, view: &EventView) -> bool {
        let ctx = &view.data["context"];
        if let Some(net) = &self.ip {
            let ip = ctx["ip"].as_str().and_then(|s| s.parse::<IpAddr>().ok());
            if !ip.is_some_and(|ip| net.contains(&ip)) {
                return false;
            }
        }
        let country = ctx["geo"]["country"].as_str();
        if self
            .country
            .as_ref()
            .is_some_and(|want| !country.is_some_and(|c| c.eq_ignore_ascii_case(want)))
        {
            return false;
        }
        for (want, field) in [(&self.severity, "severity"), (&self.mode, "mode")] {
            if want
                .as_ref()
                .is_some_and(|w| view.data[field].as_str() != Some(w.as_str()))
            {
                return false;
            }
        }
        if let Some(rule) = &self.rule {
            let id = view.data["rule_id"]
                .as_str()
                .or_else(|| view.data["rule"]["id"].as_str());
            if id != Some(rule.as_str()) {
                return false;
            }
        }
        true
    }
}

/// A user as the console finds them, with every session they had.
#[derive(Debug, Serialize)]
pub struct UserDetail {
    pub user_id: Uuid,
    pub username: String,
    pub roles: Vec<String>,
    pub status: String,
    pub created_at: String,
    pub sessions: Vec<SessionSummary>,
}

#[derive(Debug, Serialize)]
pub struct SessionSummary {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub status: &'static str,
    pub created_at: String,
    pub last_seen_at: String,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub generation: u32,
    pub login_context: RequestContext,
    pub last_context: RequestContext,
    pub reauth_required: bool,
}

impl SessionSummary {
    fn of(s: &Session) -> Self {
        SessionSummary {
            session_id: s.session_id,
            user_id: s.user_id,
            status: s.status.as_str(),
            created_at: format_timestamp(s.created_at),
            last_seen_at: format_timestamp(s.last_seen_at),
            ended_at: s.ended_at.map(format_timestamp),
            end_reason: s.end_reason.clone(),
            generation: s.generation,
            login_context: s.login_context.clone(),
            last_context: s.last_context.clone(),
            reauth_required: s.reauth_required,
        }
    }
}

/// One session with its whole stream and the refresh family's lineage read from it.
#[derive(Debug, Serialize)]
pub struct SessionDetail {
    pub session: SessionSummary,
    pub lineage: Vec<Generation>,
    pub reuse: Vec<Value>,
    pub timeline: Vec<EventView>,
}

impl Sessiond {
    /// What the database can filter on for `q`.
    async fn store_filter(&self, q: &EventQuery) -> Result<EventFilter, Error> {
        let mut filter = EventFilter {
            event_types: q.types.clone(),
            since: q.since,
            until: q.until,
            subject: q.subject,
            // Narrowed in the database by the address index; the exact address or prefix is
            // then matched on the opened values.
            address_tag: q.ip.as_ref().and_then(|net| self.store.address_tag(net)),
            ..Default::default()
        };
        if let Some(session) = q.session {
            filter.stream_ids = vec![format!("session-{session}")];
        } else if let Some(user) = q.user {
            filter.stream_ids = self.streams_of_user(user).await?;
        }
        Ok(filter)
    }

    /// One page of a search, newest first.
    pub async fn search_events(&self, q: &EventQuery) -> Result<EventPage, Error> {
        let mut filter = EventFilter {
            before_position: q.before,
            newest_first: true,
            limit: Some(SCAN_PAGE),
            ..self.store_filter(q).await?
        };
        let mut events = Vec::new();
        let mut scanned = 0;
        loop {
            let page = self.store.events(&filter).await?;
            let Some(last) = page.last() else {
                return Ok(EventPage {
                    events,
                    next_cursor: None,
                });
            };
            filter.before_position = Some(last.position);
            for e in &page {
                scanned += 1;
                let view = EventView::of(e);
                if q.matches(&view) {
                    events.push(view);
                    if events.len() == q.limit {
                        return Ok(EventPage {
                            next_cursor: Some(e.position),
                            events,
                        });
                    }
                }
            }
            if scanned >= SCAN_BUDGET {
                // Enough reading for one request: the caller continues from here.
                return Ok(EventPage {
                    events,
                    next_cursor: Some(last.position),
                });
            }
        }
    }

    /// The matches among the next `page` events after `after`, oldest first, as NDJSON lines,
    /// and where to go on from (`None` at the end). For streaming an export: each line is the
    /// event as the chain covers it (`service::integrity::export_line`) with the view's
    /// `type`, `actor` and `request_id`.
    pub async fn export_chunk(
        &self,
        plan: &super::integrity::ExportPlan,
        after: i64,
    ) -> Result<(Vec<u8>, Option<i64>), Error> {
        let mut filter = EventFilter {
            after_position: after,
            limit: Some(EXPORT_PAGE),
            ..plan.filter.clone()
        };
        let stored = self.store.raw_events(&filter).await?;
        let Some(last) = stored.last() else {
            return Ok((Vec::new(), None));
        };
        // The same rows opened (an append since the first read is left for the next page).
        filter.before_position = Some(last.position + 1);
        let opened = self.store.events(&filter).await?;
        let by_position: std::collections::HashMap<i64, &RecordedEvent> =
            stored.iter().map(|e| (e.position, e)).collect();
        let mut out = Vec::new();
        for e in &opened {
            let Some(raw) = by_position.get(&e.position) else {
                continue;
            };
            let view = EventView::of(e);
            if plan.query.matches(&view) {
                let extra = [
                    ("type", Value::String(view.event_type)),
                    ("actor", view.actor),
                    ("request_id", json!(view.request_id)),
                ];
                let line = super::integrity::export_line(raw, Some(e), &extra)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        Ok((out, Some(last.position)))
    }

    /// The store filter of an export: stream, type and time, oldest first.
    /// The next events of the log after `after`, in order (the live stream).
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventView>, Error> {
        let filter = EventFilter {
            after_position: after,
            limit: Some(limit),
            ..Default::default()
        };
        let page = self.store.events(&filter).await?;
        Ok(page.iter().map(EventView::of).collect())
    }

    /// The position of the last event in the log.
    pub async fn head_position(&self) -> Result<i64, Error> {
        Ok(self.store.head().await?.position)
    }

    /// The last committed position, moved by every node's commits: what followers wait on.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<i64> {
        self.commits.clone()
    }

    pub async fn export_filter(&self, q: &EventQuery) -> Result<EventFilter, Error> {
        self.store_filter(q).await
    }

    /// The user's own stream and every one of their sessions' streams.
    pub async fn streams_of_user(&self, user_id: Uuid) -> Result<Vec<String>, Error> {
        let mut streams = vec![format!("user-{user_id}")];
        streams.extend(
            self.store
                .session_ids_of(user_id)
                .await?
                .into_iter()
                .map(|s| format!("session-{s}")),
        );
        Ok(streams)
    }

    /// A user by id or by name, with all their sessions, newest first.
    pub async fn user_detail(&self, id_or_name: &str) -> Result<UserDetail, Error> {
        let user: Option<User> = match Uuid::parse_str(id_or_name) {
            Ok(id) => self.store.user_by_id(id).await?,
            Err(_) => match crate::domain::user::normalize_username(id_or_name) {
                Ok(name) => self.store.user_by_name(&name).await?,
                Err(_) => None,
            },
        };
        let user = user.ok_or(Error::NotFound)?;
        let mut sessions = Vec::new();
        for id in self.store.session_ids_of(user.user_id).await? {
            if let Some(s) = self.store.session(id).await? {
                sessions.push(SessionSummary::of(&s));
            }
        }
        Ok(UserDetail {
            user_id: user.user_id,
            username: user.username.clone(),
            roles: user.roles.clone(),
            status: user.status.as_str().to_owned(),
            created_at: format_timestamp(user.created_at),
            sessions,
        })
    }

    pub async fn session_detail(&self, session_id: Uuid) -> Result<SessionDetail, Error> {
        let session = self
            .store
            .session(session_id)
            .await?
            .ok_or(Error::NotFound)?;
        let events = self
            .store
            .events(&EventFilter {
                stream_id: Some(format!("session-{session_id}")),
                ..Default::default()
            })
            .await?;
        let (lineage, reuse, _) = super::family::lineage(&events)?;
        // Rule receipts about the session live in streams of their own: merge them in.
        let receipts = self
            .store
            .events(&EventFilter {
                event_types: vec!["rule.fired".into()],
                subject: Some(session_id),
                after_position: events.first().map_or(0, |e| e.position - 1),
                ..Default::default()
            })
            .await?;
        let mut timeline: Vec<EventView> =
            events.iter().chain(&receipts).map(EventView::of).collect();
        timeline.sort_by_key(|e| e.position);
        Ok(SessionDetail {
            session: SessionSummary::of(&session),
            lineage,
            reuse,
            timeline,
        })
    }

    /// Revokes any user's session on behalf of the security team.
    pub async fn admin_revoke_session(
        &self,
        caller: &Caller,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        let cmd = EndSession {
            session_id,
            owner: None,
            reason: RevokeReason::Admin,
            context: Some(ctx.clone()),
        };
        let meta = EventMetadata::new(caller.actor(), ctx.request_id.clone());
        match self.writer.submit(cmd, meta).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::NotFound),
        }
    }

    /// Logs a user out of every session on behalf of the security team.
    pub async fn admin_logout_everywhere(
        &self,
        caller: &Caller,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<usize, Error> {
        let cmd = LogoutEverywhere {
            user_id,
            except: None,
            context: Some(ctx.clone()),
        };
        let meta = EventMetadata::new(caller.actor(), ctx.request_id.clone());
        match self.writer.submit(cmd, meta).await? {
            Ok(ended) => Ok(ended.len()),
            Err(_) => Err(Error::NotFound),
        }
    }

    /// Locks a user (no login; every session ends) or unlocks one, as the security team.
    pub async fn admin_set_lock(
        &self,
        caller: &Caller,
        user_id: Uuid,
        lock: bool,
        reason: &str,
        ctx: &RequestContext,
    ) -> Result<usize, Error> {
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(Error::InvalidField(
                "invalid_reason",
                "give a reason of 1 to 500 characters; it goes into the log".into(),
            ));
        }
        let cmd = SetLock {
            user_id,
            lock,
            reason: reason.to_owned(),
            context: Some(ctx.clone()),
        };
        let meta = EventMetadata::new(caller.actor(), ctx.request_id.clone());
        match self.writer.submit(cmd, meta).await? {
            Ok(ended) => Ok(ended.len()),
            Err(_) => Err(Error::NotFound),
        }
    }
}
