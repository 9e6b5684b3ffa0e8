//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): `id_token_hint`, `client_id`,
//! `post_logout_redirect_uri` (exactly one the client registered) and `state`. The sessions end
//! through the same revocation command as every logout; the browser's sign-in ends with them.

use super::authorize::{AuthorizeError, Browser, form_encode};
use super::{Sessiond, meta};
use crate::commands::EndSession;
use crate::domain::context::RequestContext;
use crate::domain::event::{Actor, RevokeReason};
use crate::error::Error;
use std::collections::HashMap;
use uuid::Uuid;

/// What the browser is shown after a logout request.
#[derive(Debug)]
pub enum EndSessionStep {
    /// Back to the client (the sign-in cookie is cleared).
    Redirect(String),
    /// Signed out, nowhere to go back to (the sign-in cookie is cleared).
    SignedOut,
    /// No `id_token_hint`: the user confirms with a form (CSRF-protected) before anything ends.
    Confirm { params: Vec<(String, String)> },
}

impl Sessiond {
    pub async fn end_session(
        &self,
        pairs: Vec<(String, String)>,
        browser: &Browser,
        confirmed: bool,
        ctx: &RequestContext,
    ) -> Result<EndSessionStep, AuthorizeError> {
        let page = |m: &str| AuthorizeError::Page(m.to_owned());
        let mut map: HashMap<&str, &str> = HashMap::new();
        for (k, v) in &pairs {
            if !matches!(
                k.as_str(),
                "id_token_hint"
                    | "client_id"
                    | "post_logout_redirect_uri"
                    | "state"
                    | "logout_hint"
                    | "ui_locales"
            ) {
                return Err(page("an unknown parameter was sent"));
            }
            if !v.is_empty() && map.insert(k.as_str(), v.as_str()).is_some() {
                return Err(page("a parameter is repeated"));
            }
        }
        let unavailable = |_: Error| page("the service is unavailable; try again shortly");
        let now = self.now();
        let hint = match map.get("id_token_hint") {
            Some(t) => Some(
                self.tokens
                    .verify_id_token_hint(t, now)
                    .map_err(|_| page("the id_token_hint is not an ID token of this server"))?,
            ),
            None => None,
        };
        let client_id = match (map.get("client_id"), &hint) {
            (Some(c), Some(h)) if *c != h.aud => {
                return Err(page("client_id is not the id_token_hint's audience"));
            }
            (Some(c), _) => Some(c.to_string()),
            (None, Some(h)) => Some(h.aud.clone()),
            (None, None) => None,
        };
        let client = match &client_id {
            Some(id) => Some(
                self.registered_client(id)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| page("this application is not registered here"))?,
            ),
            None => None,
        };
        let back = match map.get("post_logout_redirect_uri") {
            None => None,
            Some(uri) => match &client {
                Some(c) if c.has_post_logout_redirect_uri(uri) => Some(uri.to_string()),
                Some(_) => {
                    return Err(page(
                        "the post_logout_redirect_uri is not one registered for this application",
                    ));
                }
                None => {
                    return Err(page(
                        "post_logout_redirect_uri needs client_id or id_token_hint",
                    ));
                }
            },
        };
        let signed_in = self
            .signed_in(browser.signin.as_deref())
            .await
            .map_err(unavailable)?;
        // Which sessions end: the hint's (if it is still this user's, of this client), and
        // the browser's sign-in when it is the same user's (or there is no hint).
        let mut ending: Vec<(Uuid, Uuid)> = Vec::new();
        if let Some(h) = &hint
            && let Some(s) = self
                .store
                .session(h.sid)
                .await
                .map_err(|e| unavailable(e.into()))?
            && s.user_id.to_string() == h.sub
            && s.client_id.as_deref().is_none_or(|c| c == h.aud)
        {
            ending.push((s.session_id, s.user_id));
        }
        if hint.is_none() && !(confirmed && browser.csrf_ok) {
            let keep: Vec<(String, String)> = pairs
                .into_iter()
                .filter(|(k, v)| {
                    !v.is_empty()
                        && matches!(
                            k.as_str(),
                            "client_id" | "post_logout_redirect_uri" | "state"
                        )
                })
                .collect();
            return Ok(EndSessionStep::Confirm { params: keep });
        }
        if let Some((s, _)) = &signed_in
            && hint.as_ref().is_none_or(|h| h.sub == s.user_id.to_string())
            && !ending.iter().any(|(id, _)| *id == s.session_id)
        {
            ending.push((s.session_id, s.user_id));
        }
        for (session_id, user_id) in ending {
            let cmd = EndSession {
                session_id,
                owner: Some(user_id),
                reason: RevokeReason::Logout,
                context: Some(ctx.clone()),
            };
            self.writer
                .submit(cmd, meta(Actor::User(user_id), ctx))
                .await
                .map_err(|e| unavailable(e.into()))?
                .ok();
        }
        Ok(match back {
            Some(uri) => {
                let mut location = uri.clone();
                if let Some(state) = map.get("state") {
                    location.push(if uri.contains('?') { '&' } else { '?' });
                    location.push_str("state=");
                    location.push_str(&form_encode(state));
                }
                EndSessionStep::Redirect(location)
            }
            None => EndSessionStep::SignedOut,
        })
    }
}
