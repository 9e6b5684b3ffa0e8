//! A login checks the password outside the writer (argon2 is slow) and starts its session in
//! the writer. A password change that commits in between must win: the writer refuses a start
//! whose checked password is no longer the user's, so the change's "every other session ends"
//! holds for logins in flight too.

use crate::helpers::*;
use crate::pg::fresh_database;
use reqwest::StatusCode;
use serde_json::json;
use sessiond::commands::{ChangePassword, StartRefusal, StartSession};
use sessiond::domain::context::RequestContext;
use sessiond::domain::event::{Actor, EventMetadata};
use sessiond::domain::token::RefreshToken;
use uuid::Uuid;

const NEW_PASSWORD: &str = "Quartz-Lantern-Orbit-93";

/// The command a login sends once its password check has passed against `verified` (the
/// stored hash it read before checking).
fn start_after_check(user_id: Uuid, verified: &str) -> StartSession {
    StartSession {
        user_id,
        session_id: Uuid::now_v7(),
        scope: "session".into(),
        roles: vec!["user".into()],
        token: RefreshToken::new(Uuid::now_v7(), [7; 32]).key(),
        context: RequestContext::default(),
        verified_password_hash: verified.to_owned(),
        dpop: None,
        client_id: None,
        auth_time: None,
        notice_window: sessiond::domain::Duration::hours(24),
    }
}

async fn live_sessions(app: &TestApp, user_id: Uuid) -> usize {
    app.service
        .store
        .active_sessions_of(user_id)
        .await
        .unwrap()
        .len()
}

async fn the_password_change_wins(app: TestApp) {
    let user_id: Uuid = app.register("erin").await.parse().unwrap();
    let here = app.login("erin").await;
    // Two logins check the current password; their starts have not reached the writer yet.
    let checked = app
        .service
        .store
        .user_by_name("erin")
        .await
        .unwrap()
        .unwrap()
        .password_hash;

    // Ordering 1: the change commits first (through the server), then a login's start arrives.
    let r = app
        .http
        .post(app.url("/v1/auth/password"))
        .bearer_auth(&here.access)
        .json(&json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let late = app
        .service
        .writer
        .submit(
            start_after_check(user_id, &checked),
            EventMetadata::new(Actor::User(user_id), None),
        )
        .await
        .unwrap();
    assert_eq!(late.unwrap_err(), StartRefusal::StalePassword);
    assert_eq!(live_sessions(&app, user_id).await, 1, "only the changer's");

    // Ordering 2: the change and a start in the same writer batch, the change queued first.
    let now = app
        .service
        .store
        .user_by_id(user_id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    let change = ChangePassword {
        user_id,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c3RhbmQtaW4$c3RhbmQtaW4".into(),
        keep_session: Some(here.session_id.parse().unwrap()),
        context: RequestContext::default(),
    };
    let meta = || EventMetadata::new(Actor::User(user_id), None);
    let writer = &app.service.writer;
    // join! polls in order: the change is in the writer's queue before the start.
    let (changed, started) = tokio::join!(
        writer.submit(change, meta()),
        writer.submit(start_after_check(user_id, &now), meta()),
    );
    assert!(changed.unwrap().is_ok());
    assert_eq!(started.unwrap().unwrap_err(), StartRefusal::StalePassword);
    assert_eq!(live_sessions(&app, user_id).await, 1);

    // A start whose check is current goes through (the refusal is about staleness only).
    let current = app
        .service
        .store
        .user_by_id(user_id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    let fresh = writer
        .submit(start_after_check(user_id, &current), meta())
        .await
        .unwrap();
    assert!(fresh.is_ok());
    assert_eq!(live_sessions(&app, user_id).await, 2);
    // And through the server, the old password is simply wrong now.
    let r = app.login_as("erin", PASSWORD).await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
}

#[tokio::test]
async fn a_login_that_checked_the_old_password_does_not_survive_a_password_change() {
    the_password_change_wins(spawn_app().await).await;
    if let Some(db) = fresh_database("password_change_race").await {
        let url = db.url.clone();
        let app = spawn_app_with(move |c| {
            c.database_url = sessiond::config::DatabaseUrl::parse(&url);
        })
        .await;
        the_password_change_wins(app).await;
    }
}
