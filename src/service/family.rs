//! A refresh family's lineage, read off its session's events: each generation with the one it
//! was rotated from, who presented the token that got it (address, device, place, time), its
//! grace retries (the same successor answered again), the reuse detections and the family's end.
//! The session detail and the console's lineage diagram both take it from here.

use super::Sessiond;
use crate::domain::context::RequestContext;
use crate::domain::event::Event;
use crate::error::Error;
use crate::store::{EventFilter, RecordedEvent};
use serde::Serialize;
use serde_json::{Value, json};
use std::net::IpAddr;
use uuid::Uuid;

/// One generation of a refresh family: when its token was issued, retried and rotated away.
#[derive(Debug, Serialize)]
pub struct Generation {
    pub generation: u32,
    /// The generation whose token was presented to get this one; `null` for the login's.
    pub parent: Option<u32>,
    pub issued_at: String,
    /// First 12 hex digits of the token's SHA-256: enough to tell tokens apart.
    pub token: String,
    pub rotated_at: Option<String>,
    /// The request this generation was issued to: the login, or the refresh that presented
    /// the parent's token.
    pub presented: Presenter,
    pub retries: Vec<Retry>,
}

/// Who made a request: when, and its context (address, device, place).
#[derive(Debug, Serialize)]
pub struct Presenter {
    pub at: String,
    pub context: RequestContext,
}

/// A grace-window retry: the parent's token presented again before its successor was, answered
/// with this same generation (never a second live token).
#[derive(Debug, Serialize)]
pub struct Retry {
    pub at: String,
    pub retry: u32,
    pub late: bool,
    pub token: String,
    pub ip: Option<IpAddr>,
    pub presented: Presenter,
}

/// A family's whole lineage, for `GET /v1/admin/sessions/{id}/lineage`.
#[derive(Debug, Serialize)]
pub struct Lineage {
    pub session_id: Uuid,
    pub status: &'static str,
    pub generations: Vec<Generation>,
    /// Each spent token that came back: its class, the generation presented, who presented it.
    pub reuse: Vec<Value>,
    /// How the family ended, if it did: `{at, reason}` of `session.revoked`.
    pub revoked: Option<Value>,
}

/// Generations, reuse detections and the revocation.
pub(super) type Parts = (Vec<Generation>, Vec<Value>, Option<Value>);

/// The lineage's parts, in the order of `events` (one session's).
pub(super) fn lineage(events: &[RecordedEvent]) -> Result<Parts, Error> {
    let mut generations: Vec<Generation> = Vec::new();
    let mut reuse = Vec::new();
    let mut revoked = None;
    for e in events {
        let at = e.occurred_at.clone();
        match e.decode()? {
            Event::SessionStarted(s) => generations.push(Generation {
                generation: s.generation,
                parent: None,
                issued_at: at.clone(),
                token: s.token_hash.short(),
                rotated_at: None,
                presented: Presenter {
                    at,
                    context: s.context,
                },
                retries: Vec::new(),
            }),
            Event::SessionRefreshed(r) => {
                let mut parent = None;
                if let Some(prev) = generations.last_mut() {
                    prev.rotated_at = Some(at.clone());
                    parent = Some(prev.generation);
                }
                generations.push(Generation {
                    generation: r.generation,
                    parent,
                    issued_at: at.clone(),
                    token: r.token_hash.short(),
                    rotated_at: None,
                    presented: Presenter {
                        at,
                        context: r.context,
                    },
                    retries: Vec::new(),
                });
            }
            Event::RefreshRetried(r) => {
                if let Some(g) = generations
                    .iter_mut()
                    .rfind(|g| g.generation == r.generation)
                {
                    g.retries.push(Retry {
                        at: at.clone(),
                        retry: r.retry,
                        late: r.late,
                        token: r.token_hash.short(),
                        ip: r.context.ip,
                        presented: Presenter {
                            at,
                            context: r.context,
                        },
                    });
                }
            }
            Event::ReuseDetected(r) => reuse.push(json!({
                "at": at,
                "class": r.class,
                "presented": r.presented_hash.short(),
                "presented_generation": r.presented_generation,
                "current_generation": r.current_generation,
                "since_rotation_ms": r.since_rotation_ms,
                "context": r.context,
            })),
            Event::SessionRevoked(r) => revoked = Some(json!({ "at": at, "reason": r.reason })),
            _ => {}
        }
    }
    Ok((generations, reuse, revoked))
}

impl Sessiond {
    /// A session's refresh-family lineage (the console's lineage diagram).
    pub async fn session_lineage(&self, session_id: Uuid) -> Result<Lineage, Error> {
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
        let (generations, reuse, revoked) = lineage(&events)?;
        Ok(Lineage {
            session_id,
            status: session.status.as_str(),
            generations,
            reuse,
            revoked,
        })
    }
}
