//! OpenID Connect Back-Channel Logout 1.0: when a session ends, for any reason, each client
//! that received tokens for it and registered a `backchannel_logout_uri` is sent a logout
//! token (`typ: logout+jwt`, signed with the client's ID-token algorithm), POSTed as
//! `application/x-www-form-urlencoded` `logout_token=...` (§2.5), through the same transport
//! and destination checks as webhooks.
//!
//! One worker per client with a `backchannel_logout_uri` follows the log from that client's
//! checkpoint (`backchannel_progress`), like the webhook workers: for each event that ends a
//! session started for the client (`client_id` in the sessions projection), the token is sent
//! until the client answers 2xx (retried with the webhook backoff), and only then does the
//! checkpoint move past it. A client that was down gets its logouts afterwards.

use super::transport;
use super::{Deliverer, PAGE, to_std};
use crate::domain::Timestamp;
use crate::domain::client::client_stream;
use crate::domain::destination::DestinationPolicy;
use crate::domain::event::Event;
use crate::store::{EventFilter, RecordedEvent, StoreError};
use crate::tokens::TokenService;
use crate::tokens::oidc::IdTokenAlg;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
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

/// Keeps one worker running per client that registered a back-channel logout URI, until
/// `stop` turns true.
pub(super) async fn supervise(app: Arc<Deliverer>, mut stop: watch::Receiver<bool>) {
    let poll = to_std(app.config.webhook_poll_interval);
    let mut workers: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        match app.store.clients().await {
            Ok(clients) => {
                workers.retain(|_, w| !w.is_finished());
                for c in clients {
                    if c.backchannel_logout_uri.is_some() && !workers.contains_key(&c.client_id) {
                        let worker = tokio::spawn(deliver_loop(
                            app.clone(),
                            c.client_id.clone(),
                            stop.clone(),
                        ));
                        workers.insert(c.client_id, worker);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "back-channel logout: cannot list clients"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    for (_, w) in workers {
        let _ = w.await;
    }
}

/// The client as a receiver; `None` once it is deleted or has no back-channel logout URI.
async fn load_receiver(
    app: &Deliverer,
    client_id: &str,
) -> Result<Option<LogoutReceiver>, StoreError> {
    Ok(app.store.client(client_id).await?.and_then(|(c, _)| {
        Some(LogoutReceiver {
            alg: IdTokenAlg::parse(&c.id_token_signed_response_alg).unwrap_or_default(),
            backchannel_logout_uri: c.backchannel_logout_uri?,
            client_id: c.client_id,
        })
    }))
}

/// Where a client's delivery starts: its checkpoint, or just before its registration (no
/// session can name it earlier).
async fn start_position(app: &Deliverer, client_id: &str) -> Result<i64, StoreError> {
    if let Some(p) = app.store.backchannel_checkpoint(client_id).await? {
        return Ok(p);
    }
    let first = app
        .store
        .events(&EventFilter {
            stream_id: Some(client_stream(client_id)),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    Ok(first.first().map_or(0, |e| e.position - 1))
}

/// The session this event ends, with its user, when the session was started for `client_id`.
async fn logout_for(
    app: &Deliverer,
    client_id: &str,
    event: &RecordedEvent,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    let Ok(decoded) = event.decode() else {
        return Ok(None);
    };
    let Some(sid) = ended_session(&decoded) else {
        return Ok(None);
    };
    // A session no longer in the projection leaves nothing to name in a token.
    Ok(app
        .store
        .session(sid)
        .await?
        .filter(|s| s.client_id.as_deref() == Some(client_id))
        .map(|s| (s.user_id, sid)))
}

async fn deliver_loop(app: Arc<Deliverer>, client_id: String, mut stop: watch::Receiver<bool>) {
    let mut committed = app.commits.clone();
    let mut writer_alive = true;
    let poll = to_std(app.config.webhook_poll_interval);
    let mut checkpoint = match start_position(&app, &client_id).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(client_id = %client_id, error = %e, "back-channel logout: cannot load the checkpoint");
            return;
        }
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let page = app
            .store
            .events(&EventFilter {
                after_position: checkpoint,
                limit: Some(PAGE),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(client_id = %client_id, error = %e, "back-channel logout: cannot read the log");
                Vec::new()
            });
        if page.is_empty() {
            let woken_by_commit = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = committed.changed(), if writer_alive => {
                    writer_alive = r.is_ok();
                    writer_alive
                }
                _ = tokio::time::sleep(poll) => false,
            };
            // A deleted client (or one whose URI is gone) ends its worker.
            if !woken_by_commit && matches!(load_receiver(&app, &client_id).await, Ok(None)) {
                return;
            }
            continue;
        }
        let last = page.last().map_or(checkpoint, |e| e.position);
        for event in &page {
            let logout = match logout_for(&app, &client_id, event).await {
                Ok(l) => l,
                Err(e) => {
                    // Read again from the checkpoint after a pause rather than skip a logout.
                    tracing::warn!(client_id = %client_id, error = %e, "back-channel logout: cannot read the session");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(poll) => {}
                    }
                    break;
                }
            };
            if let Some((user_id, sid)) = logout {
                let sent = deliver_with_retries(
                    &app, &client_id, user_id, sid, event, checkpoint, &mut stop,
                );
                match sent.await {
                    Some(()) => {}
                    None => return,
                }
            }
            checkpoint = event.position;
        }
        if checkpoint == last {
            let now = app.clock.now();
            if let Err(e) = app
                .store
                .record_backchannel_attempt(&client_id, checkpoint, None, now)
                .await
            {
                tracing::warn!(client_id = %client_id, error = %e, "back-channel logout: cannot save the checkpoint");
            }
        }
    }
}

/// Sends one logout until the client accepts it (`Some`) or delivery is stopped, or the client
/// is gone (`None`).
async fn deliver_with_retries(
    app: &Deliverer,
    client_id: &str,
    user_id: Uuid,
    session_id: Uuid,
    event: &RecordedEvent,
    checkpoint: i64,
    stop: &mut watch::Receiver<bool>,
) -> Option<()> {
    let mut delay = to_std(app.config.webhook_retry_initial);
    let max = to_std(app.config.webhook_retry_max);
    let mut attempt = 1u32;
    loop {
        let receiver = match load_receiver(app, client_id).await {
            Ok(Some(r)) => Some(r),
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(client_id = %client_id, error = %e, "back-channel logout: cannot load the client");
                None
            }
        };
        let result = match receiver {
            Some(receiver) => {
                let token =
                    logout_token(&app.tokens, &receiver, user_id, session_id, app.clock.now());
                tokio::select! {
                    r = send(&app.http, &app.policy, &receiver, &token) => r,
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
            None => Err("cannot load the client".to_owned()),
        };
        let now = app.clock.now();
        match result {
            Ok(()) => {
                if let Err(e) = app
                    .store
                    .record_backchannel_attempt(client_id, event.position, None, now)
                    .await
                {
                    tracing::warn!(client_id = %client_id, error = %e, "back-channel logout: cannot save the checkpoint");
                }
                tracing::debug!(client_id = %client_id, position = event.position, attempt, "back-channel logout delivered");
                return Some(());
            }
            Err(why) => {
                tracing::warn!(client_id = %client_id, position = event.position, attempt, error = %why, retry_in_ms = delay.as_millis() as u64, "back-channel logout failed");
                if let Err(e) = app
                    .store
                    .record_backchannel_attempt(client_id, checkpoint, Some(&why), now)
                    .await
                {
                    tracing::warn!(client_id = %client_id, error = %e, "back-channel logout: cannot record the failure");
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(max);
        attempt = attempt.saturating_add(1);
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
