//! Session revocations as OpenID Shared Signals CAEP `session-revoked` events, each a Security
//! Event Token (RFC 8417): a JWT of type `secevent+jwt` signed with the service's signing key,
//! verifiable through its JWKS.

use crate::domain::event::{Event, RevokeReason};
use crate::store::{RecordedEvent, StoreError};
use serde_json::{Value, json};

pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const SET_TYPE: &str = "secevent+jwt";
pub const CONTENT_TYPE: &str = "application/secevent+jwt";

/// The SET for a `session.revoked` event; `None` for any other event.
pub async fn security_event_token(
    app: &super::Deliverer,
    audience: &str,
    subscription: uuid::Uuid,
    event: &RecordedEvent,
) -> Result<Option<String>, StoreError> {
    let Event::SessionRevoked(revoked) = event.decode()? else {
        return Ok(None);
    };
    let occurred = event.occurred_at()?;
    let mut subject = json!({
        "format": "complex",
        "session": { "format": "opaque", "id": revoked.session_id.to_string() },
    });
    // The user, when the session's row is still there (retention may have pruned it).
    if let Some(session) = app.store.session(revoked.session_id).await? {
        subject["user"] = json!({ "format": "opaque", "id": session.user_id.to_string() });
    }
    let claims = json!({
        "iss": app.tokens.issuer(),
        "aud": audience,
        "iat": app.clock.now().timestamp(),
        // Stable across retries, so a receiver can drop a duplicate.
        "jti": format!("{subscription}-{}", event.position),
        "sub_id": subject,
        "events": {
            SESSION_REVOKED: {
                "event_timestamp": occurred.timestamp(),
                "initiating_entity": initiating_entity(revoked.reason),
                "reason_admin": { "en": revoked.reason.as_str() },
            }
        },
    });
    Ok(Some(app.tokens.sign_typed(SET_TYPE, &claims)))
}

fn initiating_entity(reason: RevokeReason) -> Value {
    let entity = match reason {
        RevokeReason::Logout
        | RevokeReason::User
        | RevokeReason::PasswordChange
        | RevokeReason::LogoutEverywhere => "user",
        RevokeReason::Admin => "admin",
        RevokeReason::Reuse | RevokeReason::Rule => "policy",
    };
    Value::String(entity.to_owned())
}
