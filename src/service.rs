//! The session service: what each auth endpoint does, independent of HTTP. Each function checks
//! its input, asks the writer to run one command, and turns the reply into an answer.

use crate::clock::Clock;
use crate::commands::{
    ChangePassword, EndSession, EndSessionByToken, LogoutEverywhere, Reauthenticate, Refresh,
    RefreshRefusal, Register, SetRoles, SetRolesRefusal, StartRefusal, StartSession, Writer,
};
use crate::config::Config;
use crate::domain::Timestamp;
use crate::domain::context::RequestContext;
use crate::domain::event::DpopFault;
use crate::domain::event::{Actor, EventMetadata, RevokeReason};
use crate::domain::session::{RefreshGrant, Refusal, Session};
use crate::domain::token::RefreshToken;
use crate::domain::user::{self, User, UserError};
use crate::error::Error;
use crate::passwords;
use crate::store::Store;
use crate::tokens::keys::MasterKey;
use crate::tokens::refresh::RefreshTokens;
use crate::tokens::{AccessClaims, AccessGrant, TokenService};
use dpop::{Dpop, fault_message};
use std::sync::Arc;
use uuid::Uuid;

pub mod admin;
pub mod api_keys;
pub mod authorize;
pub mod clients;
pub mod code_grant;
mod credentials;
pub mod devices;
pub mod discovery;
pub mod dpop;
pub mod end_session;
pub mod family;
pub mod integrity;
pub mod maintenance;
pub mod notices;
pub mod oauth;
pub mod places;
mod privacy;
pub mod signing_keys;
pub mod verdicts;
pub mod webhooks;

pub const DEFAULT_SCOPE: &str = "session";

pub struct Sessiond {
    pub config: Arc<Config>,
    pub store: Store,
    pub writer: Writer,
    pub tokens: Arc<TokenService>,
    /// Mints refresh tokens from their ids, so a retry gets the same successor on any node.
    pub refresh_tokens: Arc<RefreshTokens>,
    pub clock: Arc<dyn Clock>,
    /// Seals signing keys and webhook secrets at rest.
    pub master_key: Arc<MasterKey>,
    /// The last committed position, moved by this node's writer and (on PostgreSQL) by every
    /// other node's commits: what followers of the log wait on.
    pub commits: tokio::sync::watch::Receiver<i64>,
    pub geoip: Arc<crate::context::geoip::GeoIp>,
    pub rules: Arc<crate::rules::RuleEngine>,
    /// Live admin streams per caller on this node (the per-caller cap).
    pub streams: api_keys::StreamSlots,
    /// argon2 within its concurrency limit and bounded queue.
    pub passwords: Arc<passwords::PasswordGate>,
    /// Checks DPoP proofs (RFC 9449) and makes the server nonces.
    pub dpop: crate::tokens::dpop::DpopVerifier,
}

/// What login and refresh hand back.
#[derive(Debug)]
pub struct IssuedTokens {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: RefreshToken,
    pub session_id: Uuid,
    /// When the refresh token's family ends at the latest (the cookie's lifetime).
    pub absolute_expires_at: Timestamp,
    /// Seconds until this refresh token stops working unless used: the family's idle expiry,
    /// which never passes the absolute one (`refresh_token_expires_in` of a token answer).
    pub refresh_token_expires_in: i64,
    /// `DPoP` for a session bound to a key (its access token carries `cnf.jkt`), else `Bearer`.
    pub token_type: &'static str,
    /// The session's scope (`session` for a first-party login).
    pub scope: String,
    /// An OpenID Connect ID token, for a code exchange with `openid` in scope.
    pub id_token: Option<String>,
}

/// The caller behind a valid access token of a live session.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: AccessClaims,
    pub session: Session,
}

impl Principal {
    pub fn user_id(&self) -> Uuid {
        self.claims.sub
    }
}

fn meta(actor: Actor, ctx: &RequestContext) -> EventMetadata {
    EventMetadata::new(actor, ctx.request_id.clone())
}

/// The answer to a login after "this wasn't me": the password is right but must change first.
pub(crate) fn password_change_required() -> Error {
    Error::Forbidden(
        "password_change_required",
        "this account's password must be changed before it can sign in: POST /v1/auth/password \
         with username, current_password and new_password"
            .into(),
    )
}

fn user_error(e: UserError) -> Error {
    match e {
        UserError::InvalidUsername => Error::InvalidField("invalid_username", e.to_string()),
        UserError::InvalidPassword => Error::InvalidField("invalid_password", e.to_string()),
        UserError::UsernameTaken => Error::Conflict("username_taken", e.to_string()),
        UserError::UnknownRole(_) | UserError::NoRoles => {
            Error::InvalidField("invalid_role", e.to_string())
        }
        UserError::InvalidEmail => Error::InvalidField("invalid_email", e.to_string()),
    }
}

impl Sessiond {
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub async fn register(
        &self,
        username: &str,
        password: String,
        roles: Vec<String>,
        ctx: &RequestContext,
    ) -> Result<User, Error> {
        self.register_with_email(username, password, None, roles, ctx)
            .await
    }

    /// Registration with an optional e-mail address for sign-in notices.
    pub async fn register_with_email(
        &self,
        username: &str,
        password: String,
        email: Option<&str>,
        roles: Vec<String>,
        ctx: &RequestContext,
    ) -> Result<User, Error> {
        let email = email
            .map(user::normalize_email)
            .transpose()
            .map_err(user_error)?;
        let username = user::normalize_username(username).map_err(user_error)?;
        user::validate_password(&password).map_err(user_error)?;
        self.check_new_password(&password, &username)?;
        let password_hash = self.passwords.hash(password).await?;
        let user_id = Uuid::new_v4();
        let cmd = Register {
            user_id,
            username,
            password_hash,
            roles,
            context: ctx.clone(),
            email,
        };
        let reply = self.writer.submit(cmd, meta(Actor::Anonymous, ctx)).await?;
        reply.map_err(user_error)
    }

    /// Replaces a user's roles (from the command line: the system acts); they apply from the
    /// user's next login.
    pub async fn set_roles(&self, username: &str, roles: Vec<String>) -> Result<User, Error> {
        let command = SetRoles {
            username: username.to_owned(),
            roles,
        };
        let reply = self
            .writer
            .submit(command, EventMetadata::new(Actor::System, None))
            .await?;
        reply.map_err(|e| match e {
            SetRolesRefusal::UnknownUser => Error::NotFound,
            SetRolesRefusal::Invalid(e) => user_error(e),
        })
    }

    /// Checks the password and starts a session. An unknown name costs the same argon2
    /// verification as a wrong password and gets the same answer.
    pub async fn login(
        &self,
        username: &str,
        password: String,
        ctx: &RequestContext,
        dpop: &Dpop,
    ) -> Result<IssuedTokens, Error> {
        // The proof first: a bad one costs no password check and records nothing.
        let proof = self.login_proof(dpop)?;
        let user = self.check_password_of(username, password, ctx).await?;
        let token = self.refresh_tokens.fresh();
        let cmd = StartSession {
            user_id: user.user_id,
            session_id: Uuid::now_v7(),
            scope: DEFAULT_SCOPE.to_owned(),
            roles: user.roles.clone(),
            token: token.key(),
            context: ctx.clone(),
            verified_password_hash: user.password_hash.clone(),
            dpop: proof,
            client_id: None,
            auth_time: None,
            notice_window: self.config.notice_window,
        };
        match self
            .writer
            .submit(cmd, meta(Actor::User(user.user_id), ctx))
            .await?
        {
            Ok(session) => Ok(self.issue(&session, token)),
            Err(StartRefusal::PasswordChangeRequired) => Err(password_change_required()),
            Err(StartRefusal::ProofReplayed) => Err(Error::InvalidDpopProof(
                fault_message(DpopFault::Replayed).into(),
            )),
            Err(StartRefusal::Locked) => Err(Error::AccountLocked),
            // The password it proved is no longer the password.
            Err(StartRefusal::StalePassword) => Err(Error::InvalidCredentials),
            Err(StartRefusal::Denied) => Err(Error::Denied),
            Err(StartRefusal::UnknownUser) => Err(Error::InvalidCredentials),
        }
    }

    /// A first-party refresh (no client authentication): a family a registered client holds
    /// needs that client to authenticate (`code_grant::refresh_for_client`).
    pub async fn refresh(
        &self,
        presented: &str,
        ctx: &RequestContext,
        dpop: &Dpop,
    ) -> Result<IssuedTokens, Error> {
        self.refresh_family(presented, ctx, dpop, None).await
    }

    /// The refresh itself: rotation, retries, reuse, rules.
    pub(crate) async fn refresh_family(
        &self,
        presented: &str,
        ctx: &RequestContext,
        dpop: &Dpop,
        client_id: Option<&str>,
    ) -> Result<IssuedTokens, Error> {
        let presented = RefreshToken::parse(presented).map_err(|_| Error::InvalidGrant)?;
        let (proof, proof_error) = self.refresh_proof(dpop)?;
        let token = self.refresh_tokens.fresh();
        let cmd = Refresh {
            presented: presented.key(),
            new_token: token.key(),
            context: ctx.clone(),
            minter: self.refresh_tokens.clone(),
            proof,
            require_dpop: self.dpop_required(),
            client_id: client_id.map(str::to_owned),
        };
        match self.writer.submit(cmd, meta(Actor::Anonymous, ctx)).await? {
            Ok(refreshed) => {
                let (session, grant) = (refreshed.session, refreshed.grant);
                tracing::debug!(session_id = %session.session_id, ?grant, "refresh granted");
                let token = match grant {
                    RefreshGrant::Rotated { .. } => token,
                    // The successor the rotation issued, minted again from its id (the
                    // handler checked that it can be).
                    RefreshGrant::Retried { successor, .. } => {
                        self.refresh_tokens.mint(successor.id)
                    }
                };
                Ok(self.issue(&session, token))
            }
            Err(RefreshRefusal::Refused(Refusal::ReauthRequired)) => Err(Error::ReauthRequired),
            Err(RefreshRefusal::Refused(Refusal::Denied)) => Err(Error::Denied),
            Err(RefreshRefusal::Refused(Refusal::DpopProof(fault))) => {
                Err(Error::InvalidDpopProof(match (fault, proof_error) {
                    (DpopFault::Invalid, Some(e)) => e.to_string(),
                    _ => fault_message(fault).to_owned(),
                }))
            }
            Err(RefreshRefusal::Refused(Refusal::DpopRequired)) => Err(Error::InvalidDpopProof(
                "this server requires DPoP-bound sessions: sign in again with a DPoP proof".into(),
            )),
            Err(RefreshRefusal::OtherClient) => {
                tracing::info!(
                    client_id,
                    "refresh token of another client (or first-party) refused"
                );
                Err(Error::InvalidGrant)
            }
            Err(rejection) => {
                tracing::info!(?rejection, "refresh refused");
                Err(Error::InvalidGrant)
            }
        }
    }

    pub(crate) fn issue(&self, session: &Session, refresh_token: RefreshToken) -> IssuedTokens {
        let (acr, amr) = session.authentication();
        let grant = AccessGrant {
            user_id: session.user_id,
            session_id: session.session_id,
            scope: &session.scope,
            roles: &session.roles,
            auth_time: session.auth_time,
            acr,
            amr,
            dpop_jkt: session.dpop_jkt.as_deref(),
        };
        let now = self.now();
        let (access_token, expires_in) = self.tokens.issue(&grant, now);
        let refresh_expires_at = session.idle_expires_at.min(session.absolute_expires_at);
        IssuedTokens {
            access_token,
            expires_in,
            refresh_token,
            session_id: session.session_id,
            absolute_expires_at: session.absolute_expires_at,
            refresh_token_expires_in: (refresh_expires_at - now).num_seconds().max(0),
            token_type: if session.dpop_jkt.is_some() {
                "DPoP"
            } else {
                "Bearer"
            },
            scope: session.scope.clone(),
            id_token: None,
        }
    }

    /// A valid `Authorization: Bearer` access token of a session that is still alive: a revoked
    /// session's token is refused here even before it expires, and so is a DPoP-bound token
    /// (RFC 9449 §7.2: it is only good with a proof).
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, Error> {
        let principal = self.principal(bearer).await?;
        if principal.claims.cnf.is_some() {
            return Err(Error::InvalidToken(crate::tokens::TokenError::DpopBound));
        }
        Ok(principal)
    }

    /// `Authorization: DPoP <token>` with its proof: the token must be bound, the proof by its
    /// key, for this request, with the token's hash (`ath`), and never seen before.
    pub async fn authenticate_dpop(&self, token: &str, dpop: &Dpop) -> Result<Principal, Error> {
        let principal = self.principal(token).await?;
        let Some(cnf) = &principal.claims.cnf else {
            return Err(Error::InvalidToken(crate::tokens::TokenError::NotDpopBound));
        };
        self.resource_proof(dpop, token, &cnf.jkt).await?;
        Ok(principal)
    }

    async fn principal(&self, token: &str) -> Result<Principal, Error> {
        let now = self.now();
        let claims = self.tokens.verify(token, now)?;
        let session = self
            .store
            .session(claims.sid)
            .await?
            .ok_or(Error::SessionEnded)?;
        if session.user_id != claims.sub
            || session.dpop_jkt.as_deref() != claims.cnf.as_ref().map(|c| c.jkt.as_str())
            || !session.is_active()
            || session.expiry_due(now).is_some()
        {
            return Err(Error::SessionEnded);
        }
        Ok(Principal { claims, session })
    }

    pub async fn logout(&self, principal: &Principal, ctx: &RequestContext) -> Result<(), Error> {
        let cmd = EndSession {
            session_id: principal.session.session_id,
            owner: Some(principal.user_id()),
            reason: RevokeReason::Logout,
            context: Some(ctx.clone()),
        };
        let actor = Actor::User(principal.user_id());
        match self.writer.submit(cmd, meta(actor, ctx)).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::SessionEnded),
        }
    }

    pub async fn logout_by_refresh_token(
        &self,
        presented: &str,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        let presented = RefreshToken::parse(presented).map_err(|_| Error::InvalidGrant)?;
        let cmd = EndSessionByToken {
            presented: presented.key(),
            context: ctx.clone(),
        };
        match self.writer.submit(cmd, meta(Actor::Anonymous, ctx)).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::InvalidGrant),
        }
    }

    pub async fn logout_everywhere(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        let cmd = LogoutEverywhere {
            user_id: principal.user_id(),
            except: None,
            context: Some(ctx.clone()),
        };
        let actor = Actor::User(principal.user_id());
        match self.writer.submit(cmd, meta(actor, ctx)).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::SessionEnded),
        }
    }

    /// Changes the password after checking the current one; every other session of the user ends.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: String,
        new: String,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        user::validate_password(&new).map_err(user_error)?;
        let user = self
            .store
            .user_by_id(principal.user_id())
            .await?
            .ok_or(Error::SessionEnded)?;
        self.check_new_password(&new, &user.username)?;
        self.check_password(&user.username, Some(&user), current, ctx)
            .await?;
        let password_hash = self.passwords.hash(new).await?;
        let cmd = ChangePassword {
            user_id: user.user_id,
            password_hash,
            keep_session: Some(principal.session.session_id),
            context: ctx.clone(),
        };
        match self
            .writer
            .submit(cmd, meta(Actor::User(user.user_id), ctx))
            .await?
        {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::SessionEnded),
        }
    }

    /// Changes the password with the current one and no session: the way back in after "this
    /// wasn't me" ended every session. Every session of the user ends (there is none to keep).
    pub async fn change_password_with_credentials(
        &self,
        username: &str,
        current: String,
        new: String,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        user::validate_password(&new).map_err(user_error)?;
        // The same checks, throttle and failure records as a login.
        let user = self.check_password_of(username, current, ctx).await?;
        self.check_new_password(&new, &user.username)?;
        let password_hash = self.passwords.hash(new).await?;
        let cmd = ChangePassword {
            user_id: user.user_id,
            password_hash,
            keep_session: None,
            context: ctx.clone(),
        };
        match self
            .writer
            .submit(cmd, meta(Actor::User(user.user_id), ctx))
            .await?
        {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::InvalidCredentials),
        }
    }

    /// Proves the password again for the session of a refresh token (its current one), which
    /// clears a rule's `reauth_required`. A wrong password is a failed login of that user.
    pub async fn reauthenticate(
        &self,
        presented: &str,
        password: String,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        let presented = RefreshToken::parse(presented).map_err(|_| Error::InvalidGrant)?;
        let key = presented.key();
        let token = self.store.token(&key).await?.ok_or(Error::InvalidGrant)?;
        let session = self
            .store
            .session(token.session_id)
            .await?
            .ok_or(Error::InvalidGrant)?;
        let user = self.user(session.user_id).await?;
        self.check_password(&user.username, Some(&user), password, ctx)
            .await?;
        let cmd = Reauthenticate {
            presented: key,
            context: ctx.clone(),
        };
        match self
            .writer
            .submit(cmd, meta(Actor::User(user.user_id), ctx))
            .await?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::InvalidGrant),
        }
    }

    /// RFC 9470: a session a rule stepped up may not use its access tokens for the account's
    /// own resources until it re-authenticates (`/v1/auth/reauth`, or an authorization
    /// request with `prompt=login` or `max_age`). The one place that decides it.
    pub fn require_current_authentication(&self, principal: &Principal) -> Result<(), Error> {
        if principal.session.reauth_required {
            return Err(Error::InsufficientUserAuthentication {
                dpop: principal.claims.cnf.is_some(),
            });
        }
        Ok(())
    }

    /// The caller's user, for `/v1/me` (refused while the session must step up).
    pub async fn current_user(&self, principal: &Principal) -> Result<User, Error> {
        self.require_current_authentication(principal)?;
        self.user(principal.user_id()).await
    }

    /// Step-up through an authorization request (`prompt=login` or `max_age`, RFC 9470): the
    /// caller has just checked `user_id`'s password (with the login throttle, rules and events
    /// of a login); session `session_id` of that user no longer needs to re-authenticate and
    /// its `auth_time` moves (`session.reauthenticated`, actor the user). A session that has
    /// ended, or is another user's, is `SessionEnded`.
    pub async fn reauthenticate_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        let cmd = crate::commands::ReauthenticateSession {
            session_id,
            user_id,
            context: ctx.clone(),
        };
        match self
            .writer
            .submit(cmd, meta(Actor::User(user_id), ctx))
            .await?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::SessionEnded),
        }
    }

    pub async fn user(&self, user_id: Uuid) -> Result<User, Error> {
        self.store
            .user_by_id(user_id)
            .await?
            .ok_or(Error::SessionEnded)
    }
}
