//! Token introspection (RFC 7662), revocation (RFC 7009) and the revocation feed for resource
//! servers that verify access tokens locally.

use super::{Sessiond, meta};
use crate::commands::EndSession;
use crate::domain::context::RequestContext;
use crate::domain::event::{Actor, Event, RevokeReason};
use crate::domain::session::Session;
use crate::domain::token::RefreshToken;
use crate::error::Error;
use crate::store::EventFilter;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

/// A page of the revocation feed.
#[derive(Debug, Serialize)]
pub struct RevocationPage {
    pub revocations: Vec<Revocation>,
    /// Pass as `after` to get what follows; unchanged when nothing new was revoked.
    pub next_cursor: i64,
    /// How long an entry matters: an access token lives at most this long.
    pub window_seconds: i64,
}

#[derive(Debug, Serialize)]
pub struct Revocation {
    pub session_id: Uuid,
    pub reason: RevokeReason,
    pub revoked_at: String,
    pub position: i64,
}

/// Allowed clock difference between sessiond and a resource server, added to the window.
const FEED_LEEWAY_SECONDS: i64 = 60;

impl Sessiond {
    /// RFC 7662: what a token is, or `{"active": false}` for anything not live (unknown,
    /// expired, spent, or of a session that has ended), without saying which.
    pub async fn introspect(&self, token: &str) -> Result<Value, Error> {
        let now = self.now();
        if let Ok(refresh) = RefreshToken::parse(token) {
            let Some(record) = self.store.token(&refresh.key()).await? else {
                return Ok(inactive());
            };
            let Some(session) = self.live_session(record.session_id).await? else {
                return Ok(inactive());
            };
            // Only the current generation can still be used; an older one would be reuse.
            if record.generation != session.generation {
                return Ok(inactive());
            }
            let exp = session.idle_expires_at.min(session.absolute_expires_at);
            let answer = json!({
                "active": true,
                "token_type": "refresh_token",
                "scope": session.scope,
                "sub": session.user_id,
                "sid": session.session_id,
                "iss": self.config.issuer,
                "exp": exp.timestamp(),
                "iat": session.rotated_at.unwrap_or(session.created_at).timestamp(),
            });
            return Ok(with_cnf(answer, session.dpop_jkt.as_deref()));
        }
        let Ok(claims) = self.tokens.verify(token, now) else {
            return Ok(inactive());
        };
        match self.live_session(claims.sid).await? {
            Some(s) if s.user_id == claims.sub => Ok(with_cnf(
                json!({
                    "active": true,
                    "token_type": if claims.cnf.is_some() { "DPoP" } else { "Bearer" },
                    "scope": claims.scope,
                    "sub": claims.sub,
                    "sid": claims.sid,
                    "aud": claims.aud,
                    "iss": claims.iss,
                    "exp": claims.exp,
                    "iat": claims.iat,
                    "nbf": claims.nbf,
                    "jti": claims.jti,
                    "auth_time": claims.auth_time,
                    "roles": claims.roles,
                }),
                claims.cnf.as_ref().map(|c| c.jkt.as_str()),
            )),
            _ => Ok(inactive()),
        }
    }

    async fn live_session(&self, session_id: Uuid) -> Result<Option<Session>, Error> {
        let now = self.now();
        Ok(self
            .store
            .session(session_id)
            .await?
            .filter(|s| s.is_active() && s.expiry_due(now).is_none()))
    }

    /// RFC 7009: ends the session of a refresh or access token. An unknown, expired or
    /// already revoked token is not an error: the client's goal is reached either way.
    pub async fn revoke_token(&self, token: &str, ctx: &RequestContext) -> Result<(), Error> {
        if RefreshToken::parse(token).is_ok() {
            return match self.logout_by_refresh_token(token, ctx).await {
                Ok(()) | Err(Error::InvalidGrant | Error::SessionEnded) => Ok(()),
                Err(e) => Err(e),
            };
        }
        // An expired access token's session may still be alive: revoking it is still wanted,
        // so the signature is what counts here, not the expiry.
        let Ok(claims) = self.tokens.verify_signature_only(token) else {
            return Ok(());
        };
        let cmd = EndSession {
            session_id: claims.sid,
            owner: Some(claims.sub),
            reason: RevokeReason::Logout,
            context: Some(ctx.clone()),
        };
        // An unknown session is as revoked as can be (RFC 7009: 200 either way).
        let _ended = self
            .writer
            .submit(cmd, meta(Actor::User(claims.sub), ctx))
            .await?;
        Ok(())
    }

    /// Sessions revoked after `after` (a log position) whose access tokens may still be in use.
    pub async fn revocations(&self, after: i64, limit: i64) -> Result<RevocationPage, Error> {
        let window = self.config.access_token_lifetime.num_seconds() + FEED_LEEWAY_SECONDS;
        let since = self.now() - chrono::Duration::seconds(window);
        let events = self
            .store
            .events(&EventFilter {
                event_types: vec!["session.revoked".into()],
                since: Some(since),
                after_position: after,
                limit: Some(limit),
                ..Default::default()
            })
            .await?;
        let mut next_cursor = after;
        let mut revocations = Vec::with_capacity(events.len());
        for e in &events {
            next_cursor = e.position;
            if let Event::SessionRevoked(r) = e.decode()? {
                revocations.push(Revocation {
                    session_id: r.session_id,
                    reason: r.reason,
                    revoked_at: e.occurred_at.clone(),
                    position: e.position,
                });
            }
        }
        Ok(RevocationPage {
            revocations,
            next_cursor,
            window_seconds: window,
        })
    }
}

/// RFC 9449 §6.2: a bound token's key, as the access token states it (absent for bearer).
fn with_cnf(mut answer: Value, jkt: Option<&str>) -> Value {
    if let Some(jkt) = jkt {
        answer["cnf"] = json!({ "jkt": jkt });
    }
    answer
}

fn inactive() -> Value {
    json!({ "active": false })
}

/// RFC 8414 metadata for this server, with absolute endpoint URLs under `base`; `issuer` is
/// `Config::oidc_issuer` (OIDC discovery extends this document, so the two agree).
pub fn authorization_server_metadata(issuer: &str, base: &str, password_grant: bool) -> Value {
    let mut grants = vec!["refresh_token", "authorization_code", "client_credentials"];
    if password_grant {
        grants.push("password");
    }
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}{}", super::discovery::AUTHORIZATION_PATH),
        "token_endpoint": format!("{base}/oauth/token"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": grants,
        // OAuth 2.1: the authorization code flow only, with PKCE S256 (never `plain`).
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "scopes_supported": super::discovery::SCOPES,
        // RFC 9207: authorization responses carry `iss`, against mix-up attacks.
        "authorization_response_iss_parameter_supported": true,
        // RFC 9449 §5.1: the algorithms DPoP proofs may be signed with.
        "dpop_signing_alg_values_supported": crate::tokens::dpop::SIGNING_ALGS,
        "service_documentation": format!("{base}/openapi.json"),
    })
}
