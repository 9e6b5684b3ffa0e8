//! The one gate in front of every password check (login, the OAuth password grant,
//! re-authentication, password change): the throttle first, then the account's lock, then
//! argon2 in its bounded queue, then the failure recorded (which moves the throttle's
//! counters in the same transaction). No route checks a password any other way.

use super::{Sessiond, meta};
use crate::commands::{RecordLoginFailure, RecordLoginThrottled};
use crate::domain::context::RequestContext;
use crate::domain::event::{Actor, LoginFailure};
use crate::domain::throttle::{self, ThrottleScope};
use crate::domain::user::{self, User};
use crate::error::Error;
use crate::passwords;

impl Sessiond {
    /// [`Sessiond::check_password`] for a name as the caller typed it: normalized, its user
    /// loaded, and recorded as typed (cut to the longest name) when it is no valid name. The
    /// user it proved, for login, the sign-in page and a password change alike.
    pub(super) async fn check_password_of(
        &self,
        username: &str,
        password: String,
        ctx: &RequestContext,
    ) -> Result<User, Error> {
        let name = user::normalize_username(username).ok();
        let found = match &name {
            Some(n) => self.store.user_by_name(n).await?,
            None => None,
        };
        let recorded = name.unwrap_or_else(|| username.chars().take(user::USERNAME_MAX).collect());
        self.check_password(&recorded, found.as_ref(), password, ctx)
            .await?;
        Ok(found.expect("a proven password has a user"))
    }

    /// Checks `password` for `username` (the name as it is recorded; `user` when it names one).
    /// Throttled: 429 before anything else, whatever the password. Locked: 403 before any hash
    /// is computed, whatever the password. Unknown name or wrong password: the same argon2 work
    /// and the same 401.
    pub(super) async fn check_password(
        &self,
        username: &str,
        user: Option<&User>,
        password: String,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        self.throttle(username, user, ctx).await?;
        if let Some(u) = user.filter(|u| !u.can_log_in()) {
            self.record_failure(username, Some(u), LoginFailure::Locked, ctx)
                .await?;
            return Err(Error::AccountLocked);
        }
        let stored = user.map(|u| u.password_hash.clone());
        if self.passwords.verify(stored, password).await? {
            return Ok(());
        }
        let reason = match user {
            Some(_) => LoginFailure::BadPassword,
            None => LoginFailure::UnknownUser,
        };
        self.record_failure(username, user, reason, ctx).await?;
        Err(Error::InvalidCredentials)
    }

    async fn record_failure(
        &self,
        username: &str,
        user: Option<&User>,
        reason: LoginFailure,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        let actor = user.map_or(Actor::Anonymous, |u| Actor::User(u.user_id));
        let cmd = RecordLoginFailure {
            username: username.to_owned(),
            reason,
            context: ctx.clone(),
        };
        self.writer.submit(cmd, meta(actor, ctx)).await?;
        Ok(())
    }

    /// Refuses the attempt when any counter of its name and address has reached its limit in
    /// its window (counted in the store, so every node sees every node's failures), and records
    /// `login.throttled`. A refused attempt checks no password and counts no failure.
    async fn throttle(
        &self,
        username: &str,
        user: Option<&User>,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        let policy = &self.config.login_throttle;
        let now = self.now();
        let (limits, probes): (Vec<_>, Vec<_>) = throttle::throttle_keys(username, ctx.ip)
            .into_iter()
            .filter_map(|(scope, key)| {
                let limit = policy.limit(scope);
                let n = i64::from(limit.max_failures) - 1;
                (limit.max_failures > 0)
                    .then(|| ((scope, limit.window), (key, now - limit.window, n)))
            })
            .unzip();
        let mut scopes: Vec<ThrottleScope> = Vec::new();
        let mut wait = 0;
        let found = self.store.nth_login_failures(&probes).await?;
        for ((scope, window), at) in limits.into_iter().zip(found) {
            if let Some(at) = at {
                scopes.push(scope);
                wait = wait.max(throttle::retry_after(at, window, now));
            }
        }
        if scopes.is_empty() {
            return Ok(());
        }
        let actor = user.map_or(Actor::Anonymous, |u| Actor::User(u.user_id));
        let cmd = RecordLoginThrottled {
            username: username.to_owned(),
            scopes,
            retry_after_seconds: wait,
            context: ctx.clone(),
        };
        self.writer.submit(cmd, meta(actor, ctx)).await?;
        Err(Error::TooManyAttempts { retry_after: wait })
    }

    /// A new password must be strong enough (zxcvbn, with the username as a known word).
    pub(super) fn check_new_password(&self, password: &str, username: &str) -> Result<(), Error> {
        passwords::check_strength(password, username, self.config.password_min_score)
            .map_err(|why| Error::InvalidField("weak_password", why))
    }
}
