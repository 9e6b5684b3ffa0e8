use super::*;

#[test]
fn every_event_round_trips_through_its_stored_form() {
    let e = Event::SessionRevoked(SessionRevoked {
        session_id: Uuid::nil(),
        reason: RevokeReason::PasswordChange,
        context: None,
    });
    let back = Event::decode(e.event_type(), e.schema_version(), &e.data()).unwrap();
    assert_eq!(back, e);
    assert_eq!(e.data()["reason"], "password_change");
}

#[test]
fn unknown_and_future_events_are_named_errors() {
    assert!(matches!(
        Event::decode("session.teleported", 1, &serde_json::json!({})),
        Err(DecodeError::UnknownType(_))
    ));
    assert!(matches!(
        Event::decode("session.revoked", 9, &serde_json::json!({})),
        Err(DecodeError::FutureVersion { .. })
    ));
}

#[test]
fn a_version_1_retry_upcasts_to_an_early_sibling() {
    let v1 = serde_json::json!({
        "session_id": Uuid::nil(), "generation": 2, "token_id": Uuid::nil(),
        "token_hash": "00".repeat(32), "presented_hash": "11".repeat(32), "retry": 1,
        "idle_expires_at": "2026-01-01T00:00:00.000Z", "context": {}
    });
    let Event::RefreshRetried(r) = Event::decode("session.refresh_retried", 1, &v1).unwrap() else {
        panic!("not a retry")
    };
    assert!(r.sibling && !r.late);
    let v2 = Event::RefreshRetried(RefreshRetried {
        sibling: false,
        late: true,
        ..r
    });
    assert_eq!(v2.schema_version(), 2);
    assert!(
        v2.data().get("sibling").is_none(),
        "new retries mint nothing"
    );
    assert_eq!(v2.data()["late"], true);
    let back = Event::decode(v2.event_type(), 2, &v2.data()).unwrap();
    assert_eq!(back, v2);
}

#[test]
fn catalogue_names_are_unique() {
    let mut names = Event::TYPES.to_vec();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Event::TYPES.len());
}
