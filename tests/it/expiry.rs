//! Idle and absolute expiry, driven by the injected clock.

use crate::helpers::*;
use reqwest::StatusCode;
use sessiond::domain::Duration;

#[tokio::test]
async fn an_idle_session_expires_and_says_so() {
    let app = spawn_app().await;
    app.register("alice").await;
    let t = app.login("alice").await;
    app.clock.advance(Duration::days(6));
    let t = app.refresh_ok(&t.refresh).await;
    // Idle expiry moved with the rotation: six more days are fine...
    app.clock.advance(Duration::days(6));
    let t = app.refresh_ok(&t.refresh).await;
    // ...seven are not.
    app.clock.advance(Duration::days(7));
    assert_eq!(
        error_code(app.refresh(&t.refresh).await, StatusCode::UNAUTHORIZED).await,
        "invalid_grant"
    );
    let events = app.session_events(&t.session_id).await;
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "session.expired");
    assert_eq!(data(last)["kind"], "idle");
    let session = app
        .service
        .store
        .session(t.session_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.status.as_str(), "expired");
}

#[tokio::test]
async fn the_absolute_lifetime_never_moves() {
    let app = spawn_app().await;
    app.register("bob").await;
    let mut t = app.login("bob").await;
    for _ in 0..4 {
        app.clock.advance(Duration::days(6));
        t = app.refresh_ok(&t.refresh).await;
    }
    // Day 29: refreshing still works and issues a working access token...
    app.clock.advance(Duration::days(5));
    t = app.refresh_ok(&t.refresh).await;
    assert_eq!(app.me(&t.access).await.status(), StatusCode::OK);
    // ...day 30 ends the family however active it was.
    app.clock.advance(Duration::days(1));
    assert_eq!(
        app.refresh(&t.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let events = app.session_events(&t.session_id).await;
    assert_eq!(data(events.last().unwrap())["kind"], "absolute");
}

#[tokio::test]
async fn an_expired_access_token_is_refused() {
    let app = spawn_app().await;
    app.register("carol").await;
    let t = app.login("carol").await;
    app.clock.advance(Duration::minutes(11));
    assert_eq!(
        error_code(app.me(&t.access).await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn the_expiry_command_records_only_what_is_due() {
    use sessiond::commands::ExpireIfDue;
    use sessiond::domain::event::{Actor, EventMetadata};
    let app = spawn_app().await;
    app.register("dave").await;
    let t = app.login("dave").await;
    let session_id = t.session_id.parse().unwrap();
    let expire = || {
        app.service.writer.submit(
            ExpireIfDue { session_id },
            EventMetadata::new(Actor::System, None),
        )
    };
    assert_eq!(expire().await.unwrap(), Ok(false), "not due yet");
    app.clock.advance(Duration::days(7));
    assert_eq!(expire().await.unwrap(), Ok(true), "{session_id} expires");
    assert_eq!(expire().await.unwrap(), Ok(false), "recorded once");
    let events = app.session_events(&t.session_id).await;
    assert_eq!(types(&events), ["session.started", "session.expired"]);
    let session = app
        .service
        .store
        .session(session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.end_reason.as_deref(), Some("idle"));
}
