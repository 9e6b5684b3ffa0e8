//! OpenID Connect Back-Channel Logout 1.0: when a session ends, for any reason, each client
//! that received tokens for it and registered a `backchannel_logout_uri` is sent a logout
//! token (`typ: logout+jwt`, signed with the client's ID-token algorithm), POSTed as
//! `application/x-www-form-urlencoded` `logout_token=...` (§2.5), through the same transport
//! and destination checks as webhooks.
//!
//! This module is the pure part and the one request: which events end a session, the token
//! for a receiver, and the POST. (The worker that follows the log from a checkpoint and the
//! lookup of a session's clients in the registry come with the client registry.)

use super::transport;
use crate::domain::Timestamp;
use crate::domain::destination::DestinationPolicy;
use crate::domain::event::Event;
use crate::tokens::TokenService;
use crate::tokens::oidc::IdTokenAlg;
use uuid::Uuid;

/// A client to tell that a session ended: its id (the token's `aud`), its registered
/// back-channel logout URI and the algorithm it registered for ID tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutReceiver {
    pub client_id: String,
    pub backchannel_logout_uri: String,
    pub alg: IdTokenAlg,
}

/// The session an event ends, if it ends one: a revocation for any reason (logout, user,
/// admin, reuse, rule, password change, logout everywhere) or an expiry.
pub fn ended_session(event: &Event) -> Option<Uuid> {
    match event {
        Event::SessionRevoked(e) => Some(e.session_id),
        Event::SessionExpired(e) => Some(e.session_id),
        _ => None,
    }
}

/// The logout token for `receiver` about session `session_id` of user `user_id` (the ID
/// tokens' `sub`). Signed afresh for every attempt: its `exp` is short.
pub fn logout_token(
    tokens: &TokenService,
    receiver: &LogoutReceiver,
    user_id: Uuid,
    session_id: Uuid,
    now: Timestamp,
) -> String {
    tokens.issue_logout_token(
        &receiver.client_id,
        &user_id.to_string(),
        session_id,
        receiver.alg,
        now,
    )
}

/// One attempt (§2.5): 2xx is delivered; anything else is a failure to retry. The error says
/// what went wrong without the URL or the token.
pub async fn send(
    http: &reqwest::Client,
    policy: &DestinationPolicy,
    receiver: &LogoutReceiver,
    token: &str,
) -> Result<(), String> {
    if let Some(why) = transport::refusal(&receiver.backchannel_logout_uri, policy) {
        return Err(why.into());
    }
    let response = http
        .post(&receiver.backchannel_logout_uri)
        .form(&[("logout_token", token)])
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("the client answered HTTP {}", r.status().as_u16())),
        Err(e) if transport::was_refused(&e) => Err(transport::REFUSED.into()),
        Err(e) if e.is_timeout() => Err("the client did not answer in time".into()),
        Err(e) if e.is_connect() => Err("cannot connect to the client".into()),
        Err(_) => Err("the request to the client failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{ExpiryKind, RevokeReason, SessionExpired, SessionRevoked};
    use crate::domain::parse_timestamp;
    use std::sync::{Arc, Mutex};

    fn now() -> Timestamp {
        parse_timestamp("2026-01-01T00:00:00.000Z").unwrap()
    }

    #[test]
    fn every_way_a_session_ends_is_a_logout() {
        let sid = Uuid::new_v4();
        for reason in [
            RevokeReason::Logout,
            RevokeReason::User,
            RevokeReason::Admin,
            RevokeReason::Reuse,
            RevokeReason::Rule,
            RevokeReason::PasswordChange,
            RevokeReason::LogoutEverywhere,
        ] {
            let e = Event::SessionRevoked(SessionRevoked {
                session_id: sid,
                reason,
                context: None,
            });
            assert_eq!(ended_session(&e), Some(sid), "{reason:?}");
        }
        for kind in [ExpiryKind::Idle, ExpiryKind::Absolute] {
            let e = Event::SessionExpired(SessionExpired {
                session_id: sid,
                kind,
                expired_at: now(),
            });
            assert_eq!(ended_session(&e), Some(sid));
        }
        let e = Event::ReauthRequired(crate::domain::event::ReauthRequired {
            session_id: sid,
            reason: "rule".into(),
        });
        assert_eq!(ended_session(&e), None);
    }

    /// A stub client (the registry's lookup is not needed for the request itself) and a local
    /// receiver: the POST is form-encoded and its token is a logout token for that client.
    #[tokio::test]
    async fn the_logout_token_is_posted_form_encoded_to_the_client() {
        use axum::routing::post;
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/bcl",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let ct = headers[axum::http::header::CONTENT_TYPE]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    record
                        .lock()
                        .unwrap()
                        .push((ct, String::from_utf8(body.to_vec()).unwrap()));
                    axum::http::StatusCode::OK
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let tokens = crate::tokens::tests::service();
        let receiver = LogoutReceiver {
            client_id: "rp-1".into(),
            backchannel_logout_uri: format!("http://{addr}/bcl"),
            alg: IdTokenAlg::Rs256,
        };
        let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let jwt = logout_token(&tokens, &receiver, user, sid, now());

        // The webhook policy refuses loopback and plain http unless allowed.
        let strict = DestinationPolicy {
            allow_networks: vec![],
            allow_http: false,
        };
        let http = reqwest::Client::new();
        assert_eq!(
            send(&http, &strict, &receiver, &jwt).await,
            Err(transport::REFUSED.into())
        );
        assert!(seen.lock().unwrap().is_empty(), "nothing was sent");

        let local = DestinationPolicy {
            allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
            allow_http: true,
        };
        send(&http, &local, &receiver, &jwt).await.unwrap();
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "application/x-www-form-urlencoded");
        assert_eq!(got[0].1, format!("logout_token={jwt}"));

        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
        let payload: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                jwt.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["aud"], "rp-1");
        assert_eq!(payload["sub"], user.to_string());
        assert_eq!(payload["sid"], sid.to_string());
        assert!(payload.get("nonce").is_none());
    }
}
