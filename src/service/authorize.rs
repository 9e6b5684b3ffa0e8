//! The authorization endpoint (RFC 6749 §4.1, OAuth 2.1, OpenID Connect Core §3.1.2): the
//! request's checks, the browser's sign-in (the same password gate, throttle, rules and login
//! events as `/v1/auth/login`), consent, and the code. Every decision of the flow is here; the
//! HTTP layer only reads the request, renders the pages and sets the cookies it is told to.
//!
//! Browser state: a sign-in cookie names the session the browser's last password sign-in
//! started (MAC'd with a key derived from the master key). While that session is alive, a new
//! authorization request signs in without a password (a new session for the new client, with
//! the original `auth_time`), unless `prompt=login` or `max_age` asks for a fresh one or a
//! rule stepped that session up (RFC 9470); the password then proven re-authenticates it.

use super::{Sessiond, meta};
use crate::commands::{IssueCode, StartRefusal, StartSession};
use crate::domain::Timestamp;
use crate::domain::authorization::{AuthorizationCode, CODE_LIFETIME_SECONDS, valid_challenge};
use crate::domain::client::Client;
use crate::domain::context::RequestContext;
use crate::domain::event::Actor;
use crate::domain::session::Session;
use crate::domain::token::AuthCode;
use crate::domain::user::User;
use crate::error::Error;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

/// Labels the key of the sign-in cookie and consent tickets, so it is used for nothing else.
const BROWSER_KEY_LABEL: &[u8] = b"sessiond oauth browser v1";
/// How long a consent page may be answered.
const TICKET_SECONDS: i64 = 600;
/// Longest `state`, `nonce`, `login_hint` or `acr_values` taken (they come back in URLs).
const MAX_PARAM: usize = 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prompt {
    pub none: bool,
    pub login: bool,
    pub consent: bool,
}

/// A checked authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client: Client,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    /// The granted scope, space-separated, in the order asked.
    pub scope: String,
    pub code_challenge: String,
    pub prompt: Prompt,
    pub max_age: Option<i64>,
    pub acr_values: Option<String>,
    pub login_hint: Option<String>,
    /// RFC 9449 §10: the thumbprint of the DPoP key the code will be bound to.
    pub dpop_jkt: Option<String>,
    /// The request's own parameters, carried through the sign-in and consent forms.
    pub params: Vec<(String, String)>,
}

/// Why an authorization request fails.
#[derive(Debug, Clone)]
pub enum AuthorizeError {
    /// The client or the redirect URI cannot be trusted: an error page, never a redirect.
    Page(String),
    /// Every other error goes back to the client (RFC 6749 §4.1.2.1).
    Redirect(String),
}

/// What the browser is shown next.
#[derive(Debug)]
pub enum AuthorizeStep {
    SignIn {
        request: Box<AuthorizationRequest>,
        /// Why the last attempt failed, for the page.
        error: Option<String>,
    },
    Consent {
        request: Box<AuthorizationRequest>,
        username: String,
        ticket: String,
    },
    /// Back to the client, with a code or an error; `signin` is a new sign-in cookie value.
    Redirect {
        location: String,
        signin: Option<SignInCookie>,
    },
}

#[derive(Debug, Clone)]
pub struct SignInCookie {
    pub value: String,
    pub max_age_seconds: i64,
}

/// What the browser sent along: its sign-in cookie, and whether its form's CSRF token matched
/// its CSRF cookie (checked by the HTTP layer, which owns the cookies).
#[derive(Debug, Default)]
pub struct Browser {
    pub signin: Option<String>,
    pub csrf_ok: bool,
}

/// A consent page's promise: this user proved this at `auth_time`, for this client and request.
#[derive(Debug, Serialize, Deserialize)]
struct Ticket {
    u: Uuid,
    c: String,
    /// The code challenge of the request it answers.
    ch: String,
    /// `auth_time` and expiry, epoch milliseconds.
    a: i64,
    e: i64,
    /// SHA-256 of the password hash proven (a password change in between voids the ticket).
    p: String,
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 3986 unreserved stay).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `uri` with the query parameters added (after any query it has; it has no fragment).
fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut out = uri.to_owned();
    let mut sep = if uri.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(&form_encode(v));
        sep = '&';
    }
    out
}

impl AuthorizationRequest {
    /// The redirect for an error (RFC 6749 §4.1.2.1, RFC 9207 `iss`).
    fn error(&self, issuer: &str, code: &str, description: &str) -> String {
        let mut p = vec![("error", code), ("error_description", description)];
        if let Some(s) = &self.state {
            p.push(("state", s));
        }
        p.push(("iss", issuer));
        with_query(&self.redirect_uri, &p)
    }

    fn needs_consent(&self) -> bool {
        self.prompt.consent || !self.client.first_party
    }

    /// The scopes granted, for the consent page.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ')
    }
}

impl Sessiond {
    /// The issuer clients see (`public_url` when set, as discovery and ID tokens say).
    pub fn oauth_issuer(&self) -> String {
        self.config.oidc_issuer()
    }

    fn browser_mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.master_key.derive(BROWSER_KEY_LABEL))
            .expect("HMAC takes any key length")
    }

    fn sign(&self, payload: &[u8]) -> String {
        let mut mac = self.browser_mac();
        mac.update(payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    fn unsign(&self, value: &str) -> Option<Vec<u8>> {
        let (body, tag) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(body).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = self.browser_mac();
        mac.update(&payload);
        mac.verify_slice(&tag).ok()?;
        Some(payload)
    }

    /// Checks an authorization request (query or form parameters, a repeated one refused).
    pub async fn authorization_request(
        &self,
        pairs: Vec<(String, String)>,
    ) -> Result<AuthorizationRequest, AuthorizeError> {
        let page = |m: &str| AuthorizeError::Page(m.to_owned());
        let mut map: HashMap<&str, &str> = HashMap::new();
        let mut repeated = None;
        for (k, v) in &pairs {
            if v.is_empty() {
                continue;
            }
            if map.insert(k.as_str(), v.as_str()).is_some() {
                repeated = Some(k.clone());
            }
        }
        let client_id = map
            .get("client_id")
            .ok_or_else(|| page("the request has no client_id"))?;
        let client = self
            .registered_client(client_id)
            .await
            .map_err(|_| page("the service is unavailable; try again shortly"))?
            .ok_or_else(|| page("this application is not registered here"))?;
        let redirect_uri = map
            .get("redirect_uri")
            .ok_or_else(|| page("the request has no redirect_uri"))?;
        if !client.has_redirect_uri(redirect_uri) {
            return Err(page(
                "the redirect_uri is not one registered for this application",
            ));
        }
        if repeated
            .as_deref()
            .is_some_and(|k| k == "redirect_uri" || k == "client_id")
        {
            return Err(page("client_id and redirect_uri may be sent only once"));
        }
        let state = map
            .get("state")
            .filter(|s| s.len() <= MAX_PARAM)
            .map(|s| s.to_string());
        let mut req = AuthorizationRequest {
            client: client.clone(),
            redirect_uri: redirect_uri.to_string(),
            state,
            nonce: None,
            scope: String::new(),
            code_challenge: String::new(),
            prompt: Prompt::default(),
            max_age: None,
            acr_values: None,
            login_hint: None,
            dpop_jkt: None,
            params: Vec::new(),
        };
        let issuer = self.oauth_issuer();
        let fail = |req: &AuthorizationRequest, code: &str, d: &str| {
            AuthorizeError::Redirect(req.error(&issuer, code, d))
        };
        if map.get("state").is_some_and(|s| s.len() > MAX_PARAM) {
            return Err(fail(&req, "invalid_request", "state is too long"));
        }
        if let Some(k) = repeated {
            return Err(fail(&req, "invalid_request", &format!("{k} is repeated")));
        }
        if map.contains_key("request") {
            return Err(fail(
                &req,
                "request_not_supported",
                "request objects are not supported",
            ));
        }
        if map.contains_key("request_uri") {
            return Err(fail(
                &req,
                "request_uri_not_supported",
                "request_uri is not supported",
            ));
        }
        match map.get("response_type") {
            Some(&"code") => {}
            None => return Err(fail(&req, "invalid_request", "response_type is required")),
            Some(_) => {
                return Err(fail(
                    &req,
                    "unsupported_response_type",
                    "only response_type=code is supported",
                ));
            }
        }
        if !client.allows_grant("authorization_code") {
            return Err(fail(
                &req,
                "unauthorized_client",
                "this client may not use the authorization code grant",
            ));
        }
        if let Some(mode) = map.get("response_mode")
            && *mode != "query"
        {
            return Err(fail(
                &req,
                "invalid_request",
                "only response_mode=query is supported",
            ));
        }
        // OAuth 2.1 §4.1.1: PKCE for every client, and S256 only ("plain" reveals the
        // verifier to whoever sees the request).
        let Some(challenge) = map.get("code_challenge") else {
            return Err(fail(
                &req,
                "invalid_request",
                "code_challenge (PKCE) is required",
            ));
        };
        if map.get("code_challenge_method") != Some(&"S256") {
            return Err(fail(
                &req,
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            ));
        }
        if !valid_challenge(challenge) {
            return Err(fail(
                &req,
                "invalid_request",
                "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
            ));
        }
        req.code_challenge = challenge.to_string();
        let scope = map.get("scope").copied().unwrap_or("openid");
        let mut granted: Vec<&str> = Vec::new();
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            if !client.allows_scope(s) {
                return Err(fail(
                    &req,
                    "invalid_scope",
                    &format!(
                        "scope {:?} is not allowed for this client",
                        s.chars().take(40).collect::<String>()
                    ),
                ));
            }
            if !granted.contains(&s) {
                granted.push(s);
            }
        }
        if granted.is_empty() {
            return Err(fail(&req, "invalid_scope", "scope is empty"));
        }
        req.scope = granted.join(" ");
        for name in ["nonce", "acr_values", "login_hint"] {
            if map.get(name).is_some_and(|v| v.len() > MAX_PARAM) {
                return Err(fail(
                    &req,
                    "invalid_request",
                    &format!("{name} is too long"),
                ));
            }
        }
        let text = |name: &str| map.get(name).map(|v| v.to_string());
        req.nonce = text("nonce");
        req.acr_values = text("acr_values");
        req.login_hint = text("login_hint");
        if let Some(jkt) = map.get("dpop_jkt") {
            // A JWK SHA-256 thumbprint (RFC 7638) is 43 base64url characters, as an S256
            // challenge is.
            if !valid_challenge(jkt) {
                return Err(fail(
                    &req,
                    "invalid_request",
                    "dpop_jkt must be the base64url SHA-256 JWK thumbprint of the DPoP key (43 characters)",
                ));
            }
            req.dpop_jkt = Some(jkt.to_string());
        }
        if let Some(prompt) = map.get("prompt") {
            for p in prompt.split(' ').filter(|p| !p.is_empty()) {
                match p {
                    "none" => req.prompt.none = true,
                    "login" => req.prompt.login = true,
                    "consent" => req.prompt.consent = true,
                    // No account chooser: one account per browser.
                    "select_account" => {}
                    _ => return Err(fail(&req, "invalid_request", "unknown prompt value")),
                }
            }
            if req.prompt.none && (req.prompt.login || req.prompt.consent) {
                return Err(fail(
                    &req,
                    "invalid_request",
                    "prompt=none cannot be combined with other values",
                ));
            }
        }
        if let Some(max_age) = map.get("max_age") {
            match max_age.parse::<i64>() {
                Ok(n) if n >= 0 => req.max_age = Some(n),
                _ => {
                    return Err(fail(
                        &req,
                        "invalid_request",
                        "max_age must be a non-negative number of seconds",
                    ));
                }
            }
        }
        req.params = pairs
            .into_iter()
            .filter(|(k, v)| {
                !v.is_empty()
                    && matches!(
                        k.as_str(),
                        "client_id"
                            | "redirect_uri"
                            | "response_type"
                            | "response_mode"
                            | "scope"
                            | "state"
                            | "nonce"
                            | "code_challenge"
                            | "code_challenge_method"
                            | "prompt"
                            | "max_age"
                            | "acr_values"
                            | "login_hint"
                            | "ui_locales"
                            | "display"
                            | "dpop_jkt"
                    )
            })
            .collect();
        Ok(req)
    }

    /// The live session a sign-in cookie names, if it is still alive.
    pub(super) async fn signed_in(
        &self,
        cookie: Option<&str>,
    ) -> Result<Option<(Session, User)>, Error> {
        let Some(payload) = cookie.and_then(|c| self.unsign(c)) else {
            return Ok(None);
        };
        let Ok(id) = Uuid::from_slice(&payload) else {
            return Ok(None);
        };
        let now = self.now();
        let Some(session) = self
            .store
            .session(id)
            .await?
            .filter(|s| s.is_active() && s.expiry_due(now).is_none())
        else {
            return Ok(None);
        };
        let Some(user) = self
            .store
            .user_by_id(session.user_id)
            .await?
            .filter(User::can_log_in)
        else {
            return Ok(None);
        };
        Ok(Some((session, user)))
    }

    /// `GET /oauth/authorize` (and a `POST` that is only the request): with a live sign-in,
    /// on to consent or the code; else the sign-in page, or `login_required` for
    /// `prompt=none`.
    pub async fn authorize(
        &self,
        pairs: Vec<(String, String)>,
        browser: &Browser,
        ctx: &RequestContext,
    ) -> Result<AuthorizeStep, AuthorizeError> {
        let req = self.authorization_request(pairs).await?;
        let issuer = self.oauth_issuer();
        let signed_in = self
            .signed_in(browser.signin.as_deref())
            .await
            .map_err(|e| self.server_error(&req, e))?;
        let now = self.now();
        let fresh_enough = |s: &Session| {
            req.max_age
                .is_none_or(|m| (now - s.auth_time).num_seconds() <= m)
        };
        match signed_in {
            // A session a rule stepped up (RFC 9470) signs in again only with the password.
            Some((session, user))
                if !session.reauth_required && !req.prompt.login && fresh_enough(&session) =>
            {
                if req.needs_consent() {
                    if req.prompt.none {
                        return Ok(redirect(req.error(
                            &issuer,
                            "consent_required",
                            "the user has not consented to this application",
                        )));
                    }
                    let ticket = self.ticket(&req, &user, session.auth_time);
                    return Ok(AuthorizeStep::Consent {
                        username: user.username.clone(),
                        request: Box::new(req),
                        ticket,
                    });
                }
                self.grant(req, &user, Some(session.auth_time), ctx).await
            }
            _ if req.prompt.none => Ok(redirect(req.error(
                &issuer,
                "login_required",
                "the user is not signed in",
            ))),
            _ => Ok(AuthorizeStep::SignIn {
                request: Box::new(req),
                error: None,
            }),
        }
    }

    /// `POST /oauth/authorize` from the sign-in form: the password through the one gate
    /// (throttle, lock, argon2, failures recorded), then consent or the code.
    pub async fn authorize_sign_in(
        &self,
        pairs: Vec<(String, String)>,
        username: &str,
        password: String,
        browser: &Browser,
        ctx: &RequestContext,
    ) -> Result<AuthorizeStep, AuthorizeError> {
        let req = self.authorization_request(pairs).await?;
        if !browser.csrf_ok {
            return Ok(AuthorizeStep::SignIn {
                request: Box::new(req),
                error: Some("the form expired; sign in again".into()),
            });
        }
        let user = match self.check_password_of(username, password, ctx).await {
            Ok(user) => user,
            Err(e) => {
                let message = match e {
                    Error::InvalidCredentials => "wrong username or password".to_owned(),
                    Error::AccountLocked => "this account is locked".to_owned(),
                    Error::TooManyAttempts { retry_after } => {
                        format!("too many failed attempts; try again in {retry_after} seconds")
                    }
                    Error::Overloaded | Error::Unavailable | Error::Timeout => {
                        "the service is busy; try again shortly".to_owned()
                    }
                    other => return Err(self.server_error(&req, other)),
                };
                return Ok(AuthorizeStep::SignIn {
                    request: Box::new(req),
                    error: Some(message),
                });
            }
        };
        self.step_up_browser_session(&req, &user, browser, ctx)
            .await?;
        if req.needs_consent() {
            let ticket = self.ticket(&req, &user, self.now());
            return Ok(AuthorizeStep::Consent {
                username: user.username.clone(),
                request: Box::new(req),
                ticket,
            });
        }
        self.grant(req, &user, None, ctx).await
    }

    /// `POST /oauth/authorize` from the consent page: allowed, the code; denied,
    /// `access_denied` back to the client.
    pub async fn authorize_consent(
        &self,
        pairs: Vec<(String, String)>,
        ticket: &str,
        allow: bool,
        browser: &Browser,
        ctx: &RequestContext,
    ) -> Result<AuthorizeStep, AuthorizeError> {
        let req = self.authorization_request(pairs).await?;
        let issuer = self.oauth_issuer();
        let again = || AuthorizeStep::SignIn {
            request: Box::new(req.clone()),
            error: Some("the page expired; sign in again".into()),
        };
        if !browser.csrf_ok {
            return Ok(again());
        }
        let Some(t) = self
            .unsign(ticket)
            .and_then(|p| serde_json::from_slice::<Ticket>(&p).ok())
        else {
            return Ok(again());
        };
        let now = self.now();
        if t.c != req.client.client_id || t.ch != req.code_challenge || now.timestamp_millis() > t.e
        {
            return Ok(again());
        }
        if !allow {
            return Ok(redirect(req.error(
                &issuer,
                "access_denied",
                "the user did not allow this application",
            )));
        }
        let user = self
            .store
            .user_by_id(t.u)
            .await
            .map_err(|e| self.server_error(&req, e.into()))?;
        let Some(user) = user.filter(|u| u.can_log_in() && password_digest(u) == t.p) else {
            return Ok(again());
        };
        let auth_time = chrono::DateTime::from_timestamp_millis(t.a);
        self.grant(req, &user, auth_time, ctx).await
    }

    /// RFC 9470 through the code flow: the password just proven (asked for by `prompt=login`,
    /// an exceeded `max_age` or a rule's step-up) re-authenticates the browser's own live
    /// session of that user too, which clears its `reauth_required` and moves its
    /// `auth_time`. A session of another user is left as it is.
    async fn step_up_browser_session(
        &self,
        req: &AuthorizationRequest,
        user: &User,
        browser: &Browser,
        ctx: &RequestContext,
    ) -> Result<(), AuthorizeError> {
        let signed_in = self
            .signed_in(browser.signin.as_deref())
            .await
            .map_err(|e| self.server_error(req, e))?;
        let Some((session, _)) = signed_in.filter(|(_, u)| u.user_id == user.user_id) else {
            return Ok(());
        };
        match self
            .reauthenticate_session(session.session_id, user.user_id, ctx)
            .await
        {
            // It ended meanwhile: nothing to clear.
            Ok(()) | Err(Error::SessionEnded) => Ok(()),
            Err(e) => Err(self.server_error(req, e)),
        }
    }

    fn ticket(&self, req: &AuthorizationRequest, user: &User, auth_time: Timestamp) -> String {
        let t = Ticket {
            u: user.user_id,
            c: req.client.client_id.clone(),
            ch: req.code_challenge.clone(),
            a: auth_time.timestamp_millis(),
            e: (self.now() + chrono::Duration::seconds(TICKET_SECONDS)).timestamp_millis(),
            p: password_digest(user),
        };
        self.sign(&serde_json::to_vec(&t).expect("a ticket serializes"))
    }

    fn server_error(&self, req: &AuthorizationRequest, e: Error) -> AuthorizeError {
        if let Error::Internal(detail) = &e {
            tracing::error!(%detail, "authorization failed");
        }
        let code = match e {
            Error::Unavailable | Error::Overloaded | Error::Timeout => "temporarily_unavailable",
            _ => "server_error",
        };
        AuthorizeError::Redirect(req.error(&self.oauth_issuer(), code, "try again later"))
    }

    /// Starts the client's session (rules and login events as any login) and issues its code.
    /// `auth_time` is the earlier sign-in's when one is reused.
    async fn grant(
        &self,
        req: AuthorizationRequest,
        user: &User,
        auth_time: Option<Timestamp>,
        ctx: &RequestContext,
    ) -> Result<AuthorizeStep, AuthorizeError> {
        let issuer = self.oauth_issuer();
        let token = self.refresh_tokens.fresh();
        let session_id = Uuid::now_v7();
        let cmd = StartSession {
            user_id: user.user_id,
            session_id,
            scope: req.scope.clone(),
            roles: user.roles.clone(),
            token: token.key(),
            context: ctx.clone(),
            verified_password_hash: user.password_hash.clone(),
            dpop: None,
            client_id: Some(req.client.client_id.clone()),
            auth_time,
            notice_window: self.config.notice_window,
        };
        let started = self
            .writer
            .submit(cmd, meta(Actor::User(user.user_id), ctx))
            .await
            .map_err(|e| self.server_error(&req, e.into()))?;
        let session = match started {
            Ok(s) => s,
            Err(StartRefusal::PasswordChangeRequired) => {
                return Ok(AuthorizeStep::SignIn {
                    request: Box::new(req),
                    error: Some(
                        "this account's password must be changed before it can sign in".into(),
                    ),
                });
            }
            Err(StartRefusal::Denied) => {
                return Ok(redirect(req.error(
                    &issuer,
                    "access_denied",
                    "this sign-in was refused by a security rule",
                )));
            }
            Err(_) => {
                return Ok(AuthorizeStep::SignIn {
                    request: Box::new(req),
                    error: Some("sign in again".into()),
                });
            }
        };
        let mut entropy = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut entropy);
        let code = AuthCode::new(Uuid::now_v7(), entropy);
        let record = AuthorizationCode {
            code_id: code.id(),
            code_hash: code.hash(),
            session_id,
            client_id: req.client.client_id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            code_challenge: req.code_challenge.clone(),
            nonce: req.nonce.clone(),
            scope: req.scope.clone(),
            expires_at: self.now() + chrono::Duration::seconds(CODE_LIFETIME_SECONDS),
            redeemed_at: None,
            dpop_jkt: req.dpop_jkt.clone(),
        };
        let issued = self
            .writer
            .submit(
                IssueCode { code: record },
                meta(Actor::User(user.user_id), ctx),
            )
            .await
            .map_err(|e| self.server_error(&req, e.into()))?;
        if issued.is_err() {
            return Ok(redirect(req.error(
                &issuer,
                "access_denied",
                "the session ended before the code was issued",
            )));
        }
        let mut p = vec![("code", code.expose())];
        if let Some(s) = &req.state {
            p.push(("state", s));
        }
        p.push(("iss", &issuer));
        // The browser's sign-in now names the newest session (it carries the same auth_time).
        let signin = Some(SignInCookie {
            value: self.sign(session_id.as_bytes()),
            max_age_seconds: (session.absolute_expires_at - self.now())
                .num_seconds()
                .max(0),
        });
        Ok(AuthorizeStep::Redirect {
            location: with_query(&req.redirect_uri, &p),
            signin,
        })
    }
}

fn redirect(location: String) -> AuthorizeStep {
    AuthorizeStep::Redirect {
        location,
        signin: None,
    }
}

fn password_digest(user: &User) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(user.password_hash.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_parameters_are_encoded_and_appended() {
        assert_eq!(
            with_query(
                "https://a.example/cb?x=1",
                &[("state", "a b&c=d"), ("iss", "https://i")]
            ),
            "https://a.example/cb?x=1&state=a%20b%26c%3Dd&iss=https%3A%2F%2Fi"
        );
        assert_eq!(
            with_query("https://a.example/cb", &[("code", "sdac_x")]),
            "https://a.example/cb?code=sdac_x"
        );
    }
}
