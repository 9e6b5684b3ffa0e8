//! User state: registration, password changes, locking, and the user-wide "log out everywhere".

use super::Timestamp;
use super::context::RequestContext;
use super::event::{
    Event, LoginFailed, LoginFailure, PasswordChanged, UserLockChanged, UserLoggedOutEverywhere,
    UserRegistered, UserRolesChanged,
};
use uuid::Uuid;

pub const USERNAME_MAX: usize = 64;
pub const PASSWORD_MIN: usize = 8;
/// argon2 accepts more, but nobody types this much and hashing a megabyte costs the server.
pub const PASSWORD_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    Locked,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Locked => "locked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(UserStatus::Active),
            "locked" => Some(UserStatus::Locked),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub user_id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub status: UserStatus,
    pub created_at: Timestamp,
    pub password_changed_at: Option<Timestamp>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("username must be 1 to {USERNAME_MAX} characters of letters, digits and . _ @ + -")]
    InvalidUsername,
    #[error("password must be {PASSWORD_MIN} to {PASSWORD_MAX} bytes")]
    InvalidPassword,
    #[error("that username is taken")]
    UsernameTaken,
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    #[error("give at least one role: {}", ROLES.join(", "))]
    NoRoles,
    #[error("email must be an address like name@example.com (at most {EMAIL_MAX} characters)")]
    InvalidEmail,
}

pub const EMAIL_MAX: usize = 254;

/// Checks an e-mail address (RFC 5321's limits, one `@`, a dotted domain, nothing that could
/// end a mail header line) and lower-cases its domain.
pub fn normalize_email(raw: &str) -> Result<String, UserError> {
    let raw = raw.trim();
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| {
                c.is_ascii_graphic()
                    && !matches!(
                        c,
                        '<' | '>' | '(' | ')' | ',' | ';' | ':' | '\\' | '"' | '[' | ']'
                    )
            })
    };
    match raw.split_once('@') {
        Some((local, domain))
            if raw.len() <= EMAIL_MAX
                && local.len() <= 64
                && ok(local)
                && ok(domain)
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.') =>
        {
            Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
        }
        _ => Err(UserError::InvalidEmail),
    }
}

pub const ROLES: &[&str] = &["user", "security"];

/// Usernames compare case-insensitively: `Alice` and `alice` are one account.
pub fn normalize_username(raw: &str) -> Result<String, UserError> {
    let name = raw.trim().to_lowercase();
    let ok_char = |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-');
    if name.is_empty() || name.chars().count() > USERNAME_MAX || !name.chars().all(ok_char) {
        return Err(UserError::InvalidUsername);
    }
    Ok(name)
}

pub fn validate_password(password: &str) -> Result<(), UserError> {
    if password.len() < PASSWORD_MIN || password.len() > PASSWORD_MAX {
        return Err(UserError::InvalidPassword);
    }
    Ok(())
}

pub struct Register {
    pub user_id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub context: RequestContext,
    pub email: Option<String>,
}

/// `username_taken` is the store's answer for the normalized name, read in the same transaction.
pub fn decide_register(cmd: Register, username_taken: bool) -> Result<Event, UserError> {
    let username = normalize_username(&cmd.username)?;
    if username_taken {
        return Err(UserError::UsernameTaken);
    }
    if let Some(bad) = cmd.roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
        return Err(UserError::UnknownRole(bad.clone()));
    }
    Ok(Event::UserRegistered(UserRegistered {
        user_id: cmd.user_id,
        username,
        password_hash: cmd.password_hash,
        roles: cmd.roles,
        context: cmd.context,
        email: cmd.email,
    }))
}

pub fn login_failed(
    username: &str,
    user: Option<&User>,
    reason: LoginFailure,
    context: &RequestContext,
) -> Event {
    Event::LoginFailed(LoginFailed {
        username: username.to_owned(),
        user_id: user.map(|u| u.user_id),
        reason,
        context: context.clone(),
    })
}

impl User {
    pub fn can_log_in(&self) -> bool {
        self.status == UserStatus::Active
    }

    /// Whether a password proven against `verified_hash` still proves who this user is: false
    /// once the password has changed since (each hash has its own salt, so a new password, even
    /// the same one again, is a new hash).
    pub fn still_has_password(&self, verified_hash: &str) -> bool {
        self.password_hash == verified_hash
    }

    pub fn decide_change_password(
        &self,
        password_hash: String,
        kept_session: Option<Uuid>,
        context: &RequestContext,
    ) -> Event {
        Event::PasswordChanged(PasswordChanged {
            user_id: self.user_id,
            password_hash,
            kept_session,
            context: context.clone(),
        })
    }

    /// `sessions` are the user's active sessions, ended by the same transaction.
    pub fn decide_logout_everywhere(
        &self,
        sessions: Vec<Uuid>,
        context: Option<&RequestContext>,
    ) -> Event {
        Event::UserLoggedOutEverywhere(UserLoggedOutEverywhere {
            user_id: self.user_id,
            sessions,
            context: context.cloned(),
        })
    }
}

impl User {
    /// Replaces the user's roles (checked as at registration); nothing when they are the same.
    /// Sessions keep the roles granted at their login.
    pub fn decide_set_roles(&self, roles: &[String]) -> Result<Vec<Event>, UserError> {
        let mut wanted: Vec<String> = Vec::new();
        for r in roles.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
            if !ROLES.contains(&r) {
                return Err(UserError::UnknownRole(r.to_owned()));
            }
            if !wanted.iter().any(|w| w == r) {
                wanted.push(r.to_owned());
            }
        }
        if wanted.is_empty() {
            return Err(UserError::NoRoles);
        }
        // Roles are a set: the same ones in another order are no change.
        let same =
            wanted.len() == self.roles.len() && wanted.iter().all(|r| self.roles.contains(r));
        if same {
            return Ok(Vec::new());
        }
        Ok(vec![Event::UserRolesChanged(UserRolesChanged {
            user_id: self.user_id,
            roles: wanted,
            previous: self.roles.clone(),
        })])
    }

    /// Locks or unlocks; nothing when the user is already so. Ending the sessions of a locked
    /// user is the caller's part (they are other streams).
    pub fn decide_lock(
        &self,
        lock: bool,
        reason: &str,
        context: Option<&RequestContext>,
    ) -> Vec<Event> {
        let change = UserLockChanged {
            user_id: self.user_id,
            reason: reason.to_owned(),
            context: context.cloned(),
        };
        match (lock, self.status) {
            (true, UserStatus::Active) => vec![Event::UserLocked(change)],
            (false, UserStatus::Locked) => vec![Event::UserUnlocked(change)],
            _ => Vec::new(),
        }
    }
}

/// Applies one event to the user state. Only events on the user's own stream change it.
pub fn evolve(state: Option<User>, event: &Event, occurred_at: Timestamp) -> Option<User> {
    if let Event::UserRegistered(e) = event {
        return Some(User {
            user_id: e.user_id,
            // An erased user's name reads as the marker: give it the erased user's unique name.
            username: if e.username == crate::domain::event::ERASED_MARKER {
                erased_username(e.user_id)
            } else {
                e.username.clone()
            },
            password_hash: e.password_hash.clone(),
            roles: e.roles.clone(),
            status: UserStatus::Active,
            created_at: occurred_at,
            password_changed_at: None,
            version: 1,
        });
    }
    let mut u = state?;
    match event {
        Event::PasswordChanged(e) => {
            u.password_hash = e.password_hash.clone();
            u.password_changed_at = Some(occurred_at);
        }
        Event::UserLocked(_) => u.status = UserStatus::Locked,
        Event::UserUnlocked(_) => u.status = UserStatus::Active,
        Event::UserRolesChanged(e) => u.roles = e.roles.clone(),
        Event::UserErased(e) => {
            // The name is free again; nothing can log in as this user any more.
            u.username = erased_username(e.user_id);
            u.password_hash = crate::domain::event::ERASED_MARKER.to_owned();
            u.status = UserStatus::Locked;
        }
        Event::LoginFailed(_)
        | Event::LoginThrottled(_)
        | Event::UserLoggedOutEverywhere(_)
        | Event::NoticeCreated(_)
        | Event::NoticeConfirmed(_)
        | Event::NoticeDenied(_)
        | Event::ExceptionAdded(_) => {}
        _ => return Some(u),
    }
    u.version += 1;
    Some(u)
}

/// The name an erased user's row keeps: unique (the users table's index), never a valid
/// username (brackets), so it can neither be registered nor logged in with.
pub fn erased_username(user_id: Uuid) -> String {
    format!("{}-{user_id}", crate::domain::event::ERASED_MARKER)
}

/// Whether this user was erased.
pub fn is_erased(user: &User) -> bool {
    user.username == erased_username(user.user_id)
}

/// The user whose stream an event is appended to, if any.
pub fn user_of(event: &Event) -> Option<Uuid> {
    match event {
        Event::UserRegistered(e) => Some(e.user_id),
        Event::PasswordChanged(e) => Some(e.user_id),
        Event::UserLocked(e) | Event::UserUnlocked(e) => Some(e.user_id),
        Event::UserLoggedOutEverywhere(e) => Some(e.user_id),
        Event::UserRolesChanged(e) => Some(e.user_id),
        Event::UserErased(e) => Some(e.user_id),
        Event::LoginFailed(e) => e.user_id,
        Event::LoginThrottled(e) => e.user_id,
        Event::NoticeCreated(e) => Some(e.user_id),
        Event::NoticeConfirmed(e) | Event::NoticeDenied(e) => Some(e.user_id),
        Event::ExceptionAdded(e) => Some(e.user_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalized_and_checked() {
        assert_eq!(
            normalize_username("  Alice@Example.com ").unwrap(),
            "alice@example.com"
        );
        assert!(normalize_username("").is_err());
        assert!(normalize_username("a b").is_err());
        assert!(normalize_username("<img src=x>").is_err());
        assert!(normalize_username(&"a".repeat(65)).is_err());
    }

    #[test]
    fn registering_a_taken_name_is_refused() {
        let cmd = || Register {
            user_id: Uuid::nil(),
            username: "bob".into(),
            password_hash: "$argon2id$...".into(),
            roles: vec!["user".into()],
            context: RequestContext::default(),
            email: None,
        };
        assert_eq!(decide_register(cmd(), true), Err(UserError::UsernameTaken));
        let e = decide_register(cmd(), false).unwrap();
        let u = evolve(None, &e, chrono::Utc::now()).unwrap();
        assert_eq!(u.username, "bob");
        assert!(u.can_log_in());

        let change = u.decide_set_roles(&["security".into(), "user".into(), "security".into()]);
        let change = change.unwrap();
        let v = evolve(Some(u.clone()), &change[0], chrono::Utc::now()).unwrap();
        assert_eq!(v.roles, ["security", "user"]);
        assert_eq!(v.version, u.version + 1);
        assert_eq!(
            v.decide_set_roles(&v.roles),
            Ok(vec![]),
            "no change, no event"
        );
        assert_eq!(
            u.decide_set_roles(&["root".into()]),
            Err(UserError::UnknownRole("root".into()))
        );
        assert_eq!(u.decide_set_roles(&[]), Err(UserError::NoRoles));
    }
}
