//! Sign-in notices and exceptions (issue 15, point 4): a login from a device class or a country
//! the user has not signed in from before is told to the user, who answers "this was me"
//! (an exception for that device and network, until it expires) or "this wasn't me" (the
//! session ends, every session ends, and the password must change before the next login).
//!
//! Pure: the caller loads what the user is known by, the recent notices and the live
//! exceptions, and records the events decided here.

use super::Timestamp;
use super::context::{Device, RequestContext};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a device is for notices and exceptions: woothee's category, OS and browser name.
/// Versions are never compared (an update is the same device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClass {
    pub category: String,
    pub os: String,
    pub browser: String,
}

impl DeviceClass {
    pub fn of(d: &Device) -> Self {
        DeviceClass {
            category: d.category.clone(),
            os: d.os.clone(),
            browser: d.browser.clone(),
        }
    }

    /// One string for comparing and keyed hashing.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.category, self.os, self.browser)
    }

    /// How a person reads it: "Chrome on Windows 10 (pc)".
    pub fn describe(&self) -> String {
        format!("{} on {} ({})", self.browser, self.os, self.category)
    }
}

/// The device class of a request, when woothee recognised one.
pub fn device_class(ctx: &RequestContext) -> Option<DeviceClass> {
    ctx.device
        .as_ref()
        .filter(|d| !d.category.is_empty() && d.category != "UNKNOWN")
        .map(DeviceClass::of)
}

/// The country of a request (ISO code) where a GeoIP database gave one.
pub fn country(ctx: &RequestContext) -> Option<String> {
    ctx.geo
        .as_ref()
        .and_then(|g| g.country.clone())
        .filter(|c| !c.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeReason {
    NewDevice,
    NewCountry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeStatus {
    /// Not answered yet.
    Open,
    Confirmed,
    Denied,
}

impl NoticeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeStatus::Open => "open",
            NoticeStatus::Confirmed => "confirmed",
            NoticeStatus::Denied => "denied",
        }
    }
}

/// `notice.created`, on the user's stream. The request context (address, User-Agent, city) is
/// in `context`, which the vault seals; device class, country and the networks' keyed tags
/// stay clear, like in every other event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeCreated {
    pub notice_id: Uuid,
    pub user_id: Uuid,
    /// The session the login started.
    pub session_id: Uuid,
    pub reasons: Vec<NoticeReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The login's networks as the rules tag them (`asn:N`, `net:<keyed hash of the /24>`):
    /// what a "this was me" exception is for.
    pub networks: Vec<String>,
    pub context: RequestContext,
}

/// `notice.confirmed` ("this was me") and `notice.denied` ("this wasn't me"), on the user's
/// stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeAnswered {
    pub notice_id: Uuid,
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// The exception a confirmation added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_id: Option<Uuid>,
    /// The sessions a denial ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<Uuid>,
}

/// Why an exception exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum ExceptionCause {
    /// The user said "this was me" to this notice.
    Notice(Uuid),
    /// An analyst marked this rule receipt a false positive.
    Verdict(Uuid),
}

/// `exception.added`, on the user's stream: until `expires_at`, logins and refreshes of this
/// user that match (device class, one of the networks) are known: no notice, and the rule
/// (`rule_id`, or every rule when `None`) does not fire on them. Unset `device` or empty
/// `networks` match any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionAdded {
    pub exception_id: Uuid,
    pub user_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceClass>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    #[serde(with = "super::ts_format")]
    pub expires_at: Timestamp,
    pub cause: ExceptionCause,
}

/// One exception as stored (`exceptions` projection).
pub type Exception = ExceptionAdded;

impl ExceptionAdded {
    /// Whether this exception silences `rule` (`None`: the sign-in notice) for a request of
    /// `device` on `networks` at `now`. The one test of an exception, for notices and rules.
    pub fn covers(
        &self,
        now: Timestamp,
        rule: Option<&str>,
        device: Option<&DeviceClass>,
        networks: &[String],
    ) -> bool {
        if now >= self.expires_at {
            return false;
        }
        let scoped = match (&self.rule_id, rule) {
            (None, _) => true,
            (Some(mine), Some(r)) => mine == r,
            (Some(_), None) => false,
        };
        let same_device = self.device.as_ref().is_none_or(|d| device == Some(d));
        let same_network = self.networks.is_empty()
            || networks
                .iter()
                .any(|n| !n.is_empty() && self.networks.contains(n));
        scoped && same_device && same_network
    }
}

/// A notice as stored (`notices` projection) and listed to its user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub notice_id: Uuid,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub reasons: Vec<NoticeReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    pub networks: Vec<String>,
    #[serde(with = "super::ts_format")]
    pub created_at: Timestamp,
    pub status: NoticeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<Timestamp>,
}

/// What the store knows of the user for a login: whether the user has any sign-in history at
/// all, and whether this device class and this country are among it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    pub any: bool,
    pub device: bool,
    pub country: bool,
}

/// What a login means for notices.
#[derive(Debug, Clone, PartialEq)]
pub enum Sighting {
    /// Nothing new: its device class and country join what the user is known by.
    Known,
    /// A live exception covers it: quiet, and it teaches nothing (it is known only until the
    /// exception expires).
    Excepted,
    /// New, but a notice for the same device or place is still within the window.
    AlreadyNoticed,
    /// New: record this notice (boxed: the other answers carry nothing).
    Notice(Box<NoticeCreated>),
}

pub struct Login<'a> {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub notice_id: Uuid,
    pub context: &'a RequestContext,
    pub networks: Vec<String>,
    pub now: Timestamp,
}

/// Decides whether a login is news to its user. `recent` are the user's notices within the
/// de-duplication window; `exceptions` the user's exceptions (expired ones are ignored).
pub fn decide_notice(
    login: Login<'_>,
    known: Known,
    recent: &[Notice],
    exceptions: &[Exception],
) -> Sighting {
    let device = device_class(login.context);
    let country = country(login.context);
    if exceptions
        .iter()
        .any(|e| e.covers(login.now, None, device.as_ref(), &login.networks))
    {
        return Sighting::Excepted;
    }
    // A user's first login (or one by a user whose history is empty) starts the history.
    if !known.any {
        return Sighting::Known;
    }
    let mut reasons = Vec::new();
    if device.is_some() && !known.device {
        reasons.push(NoticeReason::NewDevice);
    }
    if country.is_some() && !known.country {
        reasons.push(NoticeReason::NewCountry);
    }
    if reasons.is_empty() {
        return Sighting::Known;
    }
    // One notice per new device or place per window: a reason already noticed for the same
    // value is not told again.
    reasons.retain(|r| {
        !recent.iter().any(|n| {
            n.reasons.contains(r)
                && match r {
                    NoticeReason::NewDevice => n.device == device,
                    NoticeReason::NewCountry => n.country == country,
                }
        })
    });
    if reasons.is_empty() {
        return Sighting::AlreadyNoticed;
    }
    Sighting::Notice(Box::new(NoticeCreated {
        notice_id: login.notice_id,
        user_id: login.user_id,
        session_id: login.session_id,
        reasons,
        device,
        country,
        networks: login.networks,
        context: login.context.clone(),
    }))
}

/// The notice a `notice.created` makes, and how an answer changes it.
pub fn evolve_notice(
    before: Option<Notice>,
    event: &super::event::Event,
    at: Timestamp,
) -> Option<Notice> {
    use super::event::Event;
    match event {
        Event::NoticeCreated(e) => Some(Notice {
            notice_id: e.notice_id,
            user_id: e.user_id,
            session_id: e.session_id,
            reasons: e.reasons.clone(),
            device: e.device.clone(),
            country: e.country.clone(),
            networks: e.networks.clone(),
            created_at: at,
            status: NoticeStatus::Open,
            answered_at: None,
        }),
        Event::NoticeConfirmed(_) => before.map(|n| Notice {
            status: NoticeStatus::Confirmed,
            answered_at: Some(at),
            ..n
        }),
        Event::NoticeDenied(_) => before.map(|n| Notice {
            status: NoticeStatus::Denied,
            answered_at: Some(at),
            ..n
        }),
        _ => before,
    }
}

/// The notice an event is about, if any.
pub fn notice_of(event: &super::event::Event) -> Option<Uuid> {
    use super::event::Event;
    match event {
        Event::NoticeCreated(e) => Some(e.notice_id),
        Event::NoticeConfirmed(e) | Event::NoticeDenied(e) => Some(e.notice_id),
        _ => None,
    }
}

/// Whether the user must change the password before logging in again: a notice was denied
/// after the password last changed (a change in the same millisecond as the denial follows
/// it: the change needs the denial's answer first).
pub fn password_change_required(
    denied_at: Option<Timestamp>,
    password_changed_at: Option<Timestamp>,
) -> bool {
    match (denied_at, password_changed_at) {
        (Some(d), Some(p)) => d > p,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests;
