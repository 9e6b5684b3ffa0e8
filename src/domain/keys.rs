//! Signing keys and API keys as the log records them: their states, how events move them
//! (`evolve`, for the projections, live and in a rebuild) and the rotation decision.
//!
//! Neither holds secret material: a signing key's sealed private half and an API key's hash
//! are kept outside the log (the store's `secrets` table), next to the rows these describe.

use super::event::{Event, SigningKeyChanged, SigningKeyCreated};
use super::{Duration, Timestamp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// A signing key's life: `published` (in the JWKS, not signing yet), `active` (signs),
/// `retired` (still in the JWKS until the last token it signed has expired), `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningKeyStatus {
    Published,
    Active,
    Retired,
    Expired,
}

impl SigningKeyStatus {
    pub const ALL: [SigningKeyStatus; 4] = [
        SigningKeyStatus::Published,
        SigningKeyStatus::Active,
        SigningKeyStatus::Retired,
        SigningKeyStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SigningKeyStatus::Published => "published",
            SigningKeyStatus::Active => "active",
            SigningKeyStatus::Retired => "retired",
            SigningKeyStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for SigningKeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signing key as projected from its stream (`signing_key-{kid}`): everything but the
/// private half.
#[derive(Debug, Clone, PartialEq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub algorithm: String,
    pub public_key: Vec<u8>,
    pub status: SigningKeyStatus,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub retired_at: Option<Timestamp>,
}

/// The key an event is about, if it is a signing-key event.
pub fn signing_key_of(event: &Event) -> Option<&str> {
    match event {
        Event::SigningKeyCreated(e) => Some(&e.kid),
        Event::SigningKeyActivated(e)
        | Event::SigningKeyRetired(e)
        | Event::SigningKeyExpired(e) => Some(&e.kid),
        _ => None,
    }
}

/// Applies one event of a key's stream. Times are the events' `occurred_at`, so the live row
/// and a rebuilt one are the same.
pub fn evolve_signing_key(
    state: Option<SigningKeyRecord>,
    event: &Event,
    at: Timestamp,
) -> Option<SigningKeyRecord> {
    if let Event::SigningKeyCreated(e) = event {
        return Some(SigningKeyRecord {
            kid: e.kid.clone(),
            algorithm: e.algorithm.clone(),
            // Written by `SigningKey::public_key_b64`; a payload that is not base64url would be
            // a damaged log, and a key without its public half verifies nothing.
            public_key: URL_SAFE_NO_PAD.decode(&e.public_key).unwrap_or_default(),
            status: SigningKeyStatus::Published,
            created_at: at,
            activated_at: None,
            retired_at: None,
        });
    }
    let mut k = state?;
    match event {
        Event::SigningKeyActivated(_) => {
            k.status = SigningKeyStatus::Active;
            k.activated_at = Some(at);
        }
        Event::SigningKeyRetired(_) => {
            k.status = SigningKeyStatus::Retired;
            k.retired_at = Some(at);
        }
        Event::SigningKeyExpired(_) => k.status = SigningKeyStatus::Expired,
        _ => {}
    }
    Some(k)
}

/// The events that create a key: `created`, and `activated` too for the first key (which signs
/// at once; later keys are published ahead and activated by a rotation).
pub fn created_events(record: &SigningKeyRecord, active: bool) -> Vec<Event> {
    let mut events = vec![Event::SigningKeyCreated(SigningKeyCreated {
        kid: record.kid.clone(),
        algorithm: record.algorithm.clone(),
        public_key: URL_SAFE_NO_PAD.encode(&record.public_key),
    })];
    if active {
        events.push(Event::SigningKeyActivated(changed(&record.kid)));
    }
    events
}

fn changed(kid: &str) -> SigningKeyChanged {
    SigningKeyChanged {
        kid: kid.to_owned(),
    }
}

/// How keys move along their life.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// How long a key signs.
    pub rotation_interval: Duration,
    /// How long a new key is in the JWKS before it signs.
    pub publish_ahead: Duration,
    /// How long after it stopped signing a retired key leaves the JWKS (the access-token
    /// lifetime and a margin).
    pub retired_for: Duration,
}

/// What one rotation run changed, by kid. A run moves each kind of key (algorithm) along its
/// own life; the lists hold them in the order the kinds were decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub published: Vec<String>,
    pub activated: Vec<String>,
    pub retired: Vec<String>,
    pub expired: Vec<String>,
    /// A key is due to be published but no candidate was given (a dry run, or a caller that
    /// generates costly keys only when needed): nothing was published for it.
    pub needs_candidate: bool,
}

impl RotationReport {
    /// Adds another kind's run to this one.
    pub fn merge(&mut self, other: RotationReport) {
        self.published.extend(other.published);
        self.activated.extend(other.activated);
        self.retired.extend(other.retired);
        self.expired.extend(other.expired);
        self.needs_candidate |= other.needs_candidate;
    }
}

impl std::fmt::Display for RotationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for k in &self.published {
            parts.push(format!("published {k}"));
        }
        for k in &self.activated {
            parts.push(format!("activated {k}"));
        }
        for k in &self.retired {
            parts.push(format!("retired {k}"));
        }
        for k in &self.expired {
            parts.push(format!("expired {k}"));
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// One rotation run over the keys of one kind, decided on them as stored (oldest first): the
/// events to record, in order, each with the key it is about, and the report. `candidate` is
/// the key to publish if one is due (its `created` event only: it signs after a later run
/// activates it); with `start_now` it is published even if the active key is not due for
/// rotation. Without a candidate, a due publication is only reported (`needs_candidate`).
pub fn decide_rotation(
    keys: &[SigningKeyRecord],
    candidate: Option<&SigningKeyRecord>,
    now: Timestamp,
    policy: &RotationPolicy,
    start_now: bool,
) -> (Vec<(String, Event)>, RotationReport) {
    let mut keys = keys.to_vec();
    let mut events = Vec::new();
    let mut report = RotationReport::default();

    // Retired keys whose last token has surely expired leave the JWKS.
    for k in keys
        .iter_mut()
        .filter(|k| k.status == SigningKeyStatus::Retired)
    {
        if k.retired_at.is_none_or(|at| at + policy.retired_for <= now) {
            k.status = SigningKeyStatus::Expired;
            events.push((k.kid.clone(), Event::SigningKeyExpired(changed(&k.kid))));
            report.expired.push(k.kid.clone());
        }
    }

    // A key published long enough takes over; the one it replaces retires.
    let due = keys
        .iter()
        .filter(|k| {
            k.status == SigningKeyStatus::Published && k.created_at + policy.publish_ahead <= now
        })
        .map(|k| k.kid.clone())
        .next_back();
    if let Some(kid) = due {
        let mut retired = Vec::new();
        for k in keys.iter_mut() {
            if k.status == SigningKeyStatus::Active {
                k.status = SigningKeyStatus::Retired;
                k.retired_at = Some(now);
                retired.push(k.kid.clone());
            } else if k.kid == kid {
                k.status = SigningKeyStatus::Active;
                k.activated_at = Some(now);
            }
        }
        events.push((kid.clone(), Event::SigningKeyActivated(changed(&kid))));
        for old in &retired {
            events.push((old.clone(), Event::SigningKeyRetired(changed(old))));
        }
        report.retired.extend(retired);
        report.activated.push(kid);
    }

    // The next key is published one publish-ahead before the active one is due to hand over.
    let pending = keys.iter().any(|k| k.status == SigningKeyStatus::Published);
    let active_since = keys
        .iter()
        .filter(|k| k.status == SigningKeyStatus::Active)
        .filter_map(|k| k.activated_at)
        .max();
    let rotation_due = active_since
        .is_none_or(|since| since + policy.rotation_interval - policy.publish_ahead <= now);
    if !pending && (start_now || rotation_due) {
        match candidate {
            Some(candidate) => {
                for e in created_events(candidate, false) {
                    events.push((candidate.kid.clone(), e));
                }
                report.published.push(candidate.kid.clone());
            }
            None => report.needs_candidate = true,
        }
    }
    (events, report)
}

/// An API key as projected from its stream (`api_key-{id}`): everything but its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub key_id: Uuid,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// The key an event is about, if it is an API-key event.
pub fn api_key_of(event: &Event) -> Option<Uuid> {
    match event {
        Event::ApiKeyCreated(e) => Some(e.key_id),
        Event::ApiKeyRevoked(e) => Some(e.key_id),
        _ => None,
    }
}

pub fn evolve_api_key(
    state: Option<ApiKeyRecord>,
    event: &Event,
    at: Timestamp,
) -> Option<ApiKeyRecord> {
    match event {
        Event::ApiKeyCreated(e) => Some(ApiKeyRecord {
            key_id: e.key_id,
            name: e.name.clone(),
            roles: e.roles.clone(),
            created_at: at,
            revoked_at: None,
        }),
        Event::ApiKeyRevoked(_) => state.map(|mut k| {
            k.revoked_at.get_or_insert(at);
            k
        }),
        _ => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_timestamp;

    fn at(minutes: i64) -> Timestamp {
        parse_timestamp("2026-01-01T00:00:00.000Z").unwrap() + Duration::minutes(minutes)
    }

    fn key(kid: &str, status: SigningKeyStatus, created: i64) -> SigningKeyRecord {
        SigningKeyRecord {
            kid: kid.into(),
            algorithm: "EdDSA".into(),
            public_key: vec![1; 32],
            status,
            created_at: at(created),
            activated_at: (status != SigningKeyStatus::Published).then(|| at(created)),
            retired_at: None,
        }
    }

    #[test]
    fn a_rotation_publishes_then_hands_over_then_expires() {
        let policy = RotationPolicy {
            rotation_interval: Duration::hours(1),
            publish_ahead: Duration::minutes(10),
            retired_for: Duration::minutes(11),
        };
        let first = key("a", SigningKeyStatus::Active, 0);
        let next = key("b", SigningKeyStatus::Published, 50);
        let candidate = Some(&next);
        let (events, report) = decide_rotation(
            std::slice::from_ref(&first),
            candidate,
            at(49),
            &policy,
            false,
        );
        assert!(events.is_empty(), "{report}");
        let (events, report) =
            decide_rotation(std::slice::from_ref(&first), None, at(50), &policy, false);
        assert!(events.is_empty() && report.needs_candidate, "{report}");
        let (events, report) = decide_rotation(
            std::slice::from_ref(&first),
            candidate,
            at(50),
            &policy,
            false,
        );
        assert_eq!(report.published, ["b"]);
        assert!(!report.needs_candidate);
        assert_eq!(events.len(), 1);

        let (events, report) = decide_rotation(
            &[first.clone(), next.clone()],
            candidate,
            at(60),
            &policy,
            false,
        );
        assert_eq!(report.to_string(), "activated b, retired a");
        let kinds: Vec<_> = events
            .iter()
            .map(|(k, e)| (k.as_str(), e.event_type()))
            .collect();
        assert_eq!(
            kinds,
            [("b", "signing_key.activated"), ("a", "signing_key.retired")]
        );

        // Replaying the events gives the rows the next run decides on.
        let mut rows = vec![first, next.clone()];
        for (kid, e) in &events {
            let i = rows.iter().position(|r| &r.kid == kid).unwrap();
            rows[i] = evolve_signing_key(Some(rows[i].clone()), e, at(60)).unwrap();
        }
        let (_, report) = decide_rotation(&rows, candidate, at(70), &policy, false);
        assert_eq!(report.to_string(), "no change");
        let (_, report) = decide_rotation(&rows, candidate, at(71), &policy, false);
        assert_eq!(report.expired, ["a"]);
    }

    #[test]
    fn statuses_keep_their_stored_text() {
        for s in SigningKeyStatus::ALL {
            assert_eq!(SigningKeyStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(SigningKeyStatus::parse("revoked"), None);
    }
}
