//! "Your devices": the end user's own sessions, listed and revoked.

use super::{Principal, Sessiond, meta};
use crate::commands::{EndSession, LogoutEverywhere};
use crate::domain::context::RequestContext;
use crate::domain::event::{Actor, RevokeReason};
use crate::domain::format_timestamp;
use crate::domain::session::Session;
use crate::error::Error;
use serde::Serialize;
use uuid::Uuid;

/// One device as its owner sees it: where and what it last was.
#[derive(Debug, Serialize)]
pub struct DeviceSession {
    pub session_id: Uuid,
    pub current: bool,
    pub device: DeviceView,
    pub location: LocationView,
    pub ip: Option<String>,
    /// The raw User-Agent of the latest request, for what the parsed device leaves out.
    pub user_agent: Option<String>,
    pub created_at: String,
    pub last_seen_at: String,
    pub status: &'static str,
    /// The application the session was started for (`/oauth/authorize`), by its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    #[serde(skip)]
    client_id: Option<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct DeviceView {
    pub category: Option<String>,
    pub os: Option<String>,
    pub browser: Option<String>,
    pub browser_version: Option<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct LocationView {
    pub city: Option<String>,
    pub region: Option<String>,
    pub country: Option<String>,
}

impl DeviceSession {
    fn of(session: &Session, current: Uuid) -> Self {
        // The latest request tells where the device is now; the login told what it is.
        let ctx: &RequestContext = &session.last_context;
        let device = ctx
            .device
            .as_ref()
            .or(session.login_context.device.as_ref());
        let geo = ctx.geo.as_ref();
        DeviceSession {
            session_id: session.session_id,
            current: session.session_id == current,
            device: device
                .map(|d| DeviceView {
                    category: known(&d.category),
                    os: known(&d.os),
                    browser: known(&d.browser),
                    browser_version: known(&d.version),
                })
                .unwrap_or_default(),
            location: geo
                .map(|g| LocationView {
                    city: g.city.clone(),
                    region: g.region.clone(),
                    country: g.country.clone(),
                })
                .unwrap_or_default(),
            ip: ctx.ip.map(|ip| ip.to_string()),
            user_agent: ctx.user_agent.clone(),
            created_at: format_timestamp(session.created_at),
            last_seen_at: format_timestamp(session.last_seen_at),
            status: session.status.as_str(),
            application: None,
            client_id: session.client_id.clone(),
        }
    }
}

/// woothee answers "UNKNOWN" for what it cannot tell; the API says null.
fn known(s: &str) -> Option<String> {
    (!s.is_empty() && s != "UNKNOWN").then(|| s.to_owned())
}

impl Sessiond {
    /// The caller's live sessions, newest activity first, the caller's own marked `current`.
    pub async fn my_sessions(&self, principal: &Principal) -> Result<Vec<DeviceSession>, Error> {
        self.require_current_authentication(principal)?;
        let now = self.now();
        let current = principal.session.session_id;
        let mut sessions: Vec<DeviceSession> = self
            .store
            .active_sessions_of(principal.user_id())
            .await?
            .iter()
            // Past its lifetime but not yet swept: gone as far as its owner is concerned.
            .filter(|s| s.expiry_due(now).is_none())
            .map(|s| DeviceSession::of(s, current))
            .collect();
        sessions.sort_by(|a, b| b.last_seen_at.cmp(&a.last_seen_at));
        for d in sessions.iter_mut() {
            if let Some(client_id) = d.client_id.take() {
                d.application = self.registered_client(&client_id).await?.map(|c| c.name);
            }
        }
        Ok(sessions)
    }

    /// Ends one of the caller's sessions. Another user's session is as unknown as a made-up id.
    pub async fn revoke_my_session(
        &self,
        principal: &Principal,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        // Ending the caller's own session (signing out) never needs a step-up.
        if session_id != principal.session.session_id {
            self.require_current_authentication(principal)?;
        }
        let cmd = EndSession {
            session_id,
            owner: Some(principal.user_id()),
            reason: RevokeReason::User,
            context: Some(ctx.clone()),
        };
        match self
            .writer
            .submit(cmd, meta(Actor::User(principal.user_id()), ctx))
            .await?
        {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::NotFound),
        }
    }

    /// Ends every session of the caller but the one making the request.
    pub async fn revoke_my_other_sessions(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
    ) -> Result<usize, Error> {
        self.require_current_authentication(principal)?;
        let cmd = LogoutEverywhere {
            user_id: principal.user_id(),
            except: Some(principal.session.session_id),
            context: Some(ctx.clone()),
        };
        match self
            .writer
            .submit(cmd, meta(Actor::User(principal.user_id()), ctx))
            .await?
        {
            Ok(ended) => Ok(ended.len()),
            Err(_) => Err(Error::SessionEnded),
        }
    }
}
