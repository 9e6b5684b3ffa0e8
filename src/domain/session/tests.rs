use super::*;
use crate::domain::context::Device;
use crate::domain::token::RefreshToken;
use chrono::TimeZone;

fn policy() -> SessionPolicy {
    SessionPolicy {
        idle_lifetime: Duration::days(7),
        absolute_lifetime: Duration::days(30),
        grace_window: Duration::seconds(30),
        max_grace_retries: 3,
        late_retry_window: Duration::minutes(10),
    }
}

fn t0() -> Timestamp {
    chrono::Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn ctx(ip: &str, browser: &str) -> RequestContext {
    RequestContext {
        ip: Some(ip.parse().unwrap()),
        user_agent: Some(format!("{browser}/1.0")),
        device: Some(Device {
            category: "pc".into(),
            os: "Linux".into(),
            browser: browser.into(),
            version: "1.0".into(),
            vendor: "".into(),
        }),
        ..Default::default()
    }
}

fn token(n: u8) -> TokenKey {
    RefreshToken::new(Uuid::from_u128(u128::from(n)), [n; 32]).key()
}

fn apply(state: Option<Session>, events: &[Event], at: Timestamp) -> Option<Session> {
    events.iter().fold(state, |s, e| evolve(s, e, at))
}

fn started() -> Session {
    let e = start(
        StartSession {
            session_id: Uuid::nil(),
            user_id: Uuid::nil(),
            scope: "session".into(),
            roles: vec!["user".into()],
            token: token(1),
            context: ctx("198.51.100.4", "Firefox"),
            dpop_jkt: None,
            client_id: None,
            auth_time: None,
        },
        t0(),
        &policy(),
    );
    evolve(None, &e, t0()).unwrap()
}

fn presented(n: u8, generation: u32) -> PresentedToken {
    PresentedToken {
        hash: token(n).hash,
        generation,
    }
}

#[test]
fn rotation_moves_idle_expiry_but_never_the_absolute_one() {
    let s = started();
    let now = t0() + Duration::days(3);
    let d = s.decide_refresh(
        presented(1, 1),
        token(2),
        &ctx("198.51.100.4", "Firefox"),
        now,
        &policy(),
        true,
    );
    assert_eq!(d.outcome, Ok(RefreshGrant::Rotated { generation: 2 }));
    let s2 = apply(Some(s.clone()), &d.events, now).unwrap();
    assert_eq!(s2.generation, 2);
    assert_eq!(s2.idle_expires_at, now + Duration::days(7));
    assert_eq!(s2.absolute_expires_at, s.absolute_expires_at);
    // Refreshing every 6 days keeps the session alive, until the absolute lifetime caps it.
    let mut s = s2;
    for (i, day) in [9, 15, 21, 27].into_iter().enumerate() {
        let at = t0() + Duration::days(day);
        let n = i as u8 + 2;
        let d = s.decide_refresh(
            presented(n, s.generation),
            token(n + 1),
            &ctx("198.51.100.4", "Firefox"),
            at,
            &policy(),
            true,
        );
        assert!(d.outcome.is_ok(), "day {day}: {:?}", d.outcome);
        s = apply(Some(s), &d.events, at).unwrap();
    }
    assert_eq!(s.idle_expires_at, s.absolute_expires_at);
    let d = s.decide_refresh(
        presented(6, s.generation),
        token(7),
        &ctx("198.51.100.4", "Firefox"),
        t0() + Duration::days(30),
        &policy(),
        true,
    );
    assert_eq!(d.outcome, Err(Refusal::Expired(ExpiryKind::Absolute)));
}

/// Decides a refresh of `s` with a successor that can be handed out again.
fn refresh(
    s: &Session,
    p: PresentedToken,
    n: u8,
    c: &RequestContext,
    at: Timestamp,
) -> Decision<RefreshGrant> {
    s.decide_refresh(p, token(n), c, at, &policy(), true)
}

/// A session rotated once, at t0, from token 1 to token 2.
fn rotated() -> Session {
    let s = started();
    let d = refresh(
        &s,
        presented(1, 1),
        2,
        &ctx("198.51.100.4", "Firefox"),
        t0(),
    );
    apply(Some(s), &d.events, t0()).unwrap()
}

fn retried(
    generation: u32,
    retry: u32,
    late: bool,
    successor: u8,
) -> Result<RefreshGrant, Refusal> {
    Ok(RefreshGrant::Retried {
        generation,
        retry,
        late,
        successor: token(successor),
    })
}

#[test]
fn a_retry_of_the_replaced_token_gets_the_same_successor_within_the_bound() {
    let mut s = rotated();
    assert_eq!(s.current_token, Some(token(2)));
    let near = t0() + Duration::seconds(5);
    for retry in 1..=3 {
        // Another network (Wi-Fi to cellular), the same device: still the same client.
        let d = refresh(
            &s,
            presented(1, 1),
            10 + retry as u8,
            &ctx("203.0.113.77", "Firefox"),
            near,
        );
        assert_eq!(d.outcome, retried(2, retry, false, 2), "never a sibling");
        s = apply(Some(s), &d.events, near).unwrap();
        assert_eq!(s.current_token, Some(token(2)), "still one live token");
        assert_eq!(s.generation, 2);
        assert!(
            issued_token(&d.events[0]).is_none(),
            "a retry mints no token"
        );
    }
    let d = refresh(
        &s,
        presented(1, 1),
        20,
        &ctx("198.51.100.4", "Firefox"),
        near,
    );
    assert_eq!(d.outcome, Err(Refusal::RetryLimit));
    assert!(d.events.is_empty(), "the family survives a retry storm");
    // The successor itself still rotates.
    let d = refresh(
        &s,
        presented(2, 2),
        21,
        &ctx("198.51.100.4", "Firefox"),
        near,
    );
    assert_eq!(d.outcome, Ok(RefreshGrant::Rotated { generation: 3 }));
}

#[test]
fn a_late_retry_of_an_unused_successor_gets_it_from_the_same_device_only() {
    let s = rotated();
    let late = t0() + Duration::minutes(4);
    let cellular = ctx("203.0.113.9", "Firefox");
    let d = refresh(&s, presented(1, 1), 9, &cellular, late);
    assert_eq!(d.outcome, retried(2, 1, true, 2));
    let Event::RefreshRetried(e) = &d.events[0] else {
        panic!("{:?}", d.events)
    };
    assert!(e.late && !e.sibling);
    let after = apply(Some(s.clone()), &d.events, late).unwrap();
    assert_eq!(after.late_retry_generation, Some(2));

    let other_device = ctx("198.51.100.4", "Chrome");
    let d = refresh(&s, presented(1, 1), 9, &other_device, late);
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousOtherContext))
    );
    let too_late = t0() + Duration::minutes(10) + Duration::seconds(1);
    let d = refresh(&s, presented(1, 1), 9, &cellular, too_late);
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousAfterGrace))
    );
    // Without late retries, past the grace window is reuse.
    let off = SessionPolicy {
        late_retry_window: Duration::zero(),
        ..policy()
    };
    let d = s.decide_refresh(
        presented(1, 1),
        token(9),
        &cellular,
        t0() + Duration::seconds(31),
        &off,
        true,
    );
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousAfterGrace))
    );
}

#[test]
fn late_retries_on_two_consecutive_generations_are_reuse() {
    let c = ctx("198.51.100.4", "Firefox");
    let s = rotated();
    let t1 = t0() + Duration::minutes(3);
    let d = refresh(&s, presented(1, 1), 9, &c, t1);
    assert!(d.outcome.is_ok());
    let s = apply(Some(s), &d.events, t1).unwrap();
    // The client got token 2 at last and uses it; then loses that answer too.
    let d = refresh(&s, presented(2, 2), 3, &c, t1);
    assert_eq!(d.outcome, Ok(RefreshGrant::Rotated { generation: 3 }));
    let s = apply(Some(s), &d.events, t1).unwrap();
    let early = t1 + Duration::seconds(10);
    assert_eq!(
        refresh(&s, presented(2, 2), 9, &c, early).outcome,
        retried(3, 1, false, 3),
        "an early retry is no sign of alternation"
    );
    let t2 = t1 + Duration::minutes(3);
    let d = refresh(&s, presented(2, 2), 9, &c, t2);
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::RepeatedLateRetry))
    );
    assert!(matches!(d.events[1], Event::SessionRevoked(_)));
}

#[test]
fn reuse_is_classified_and_revokes_the_family() {
    let c = ctx("198.51.100.4", "Firefox");
    let s = rotated();
    let after_window = t0() + Duration::minutes(11);
    let d = refresh(&s, presented(1, 1), 9, &c, after_window);
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousAfterGrace))
    );
    let dead = apply(Some(s.clone()), &d.events, after_window).unwrap();
    assert_eq!(dead.status, SessionStatus::Revoked);
    assert_eq!(dead.end_reason.as_deref(), Some("reuse"));
    // The newest token is dead too.
    let d = refresh(&dead, presented(2, 2), 9, &c, after_window);
    assert_eq!(d.outcome, Err(Refusal::SessionEnded));

    let other_browser = ctx("198.51.100.4", "Chrome");
    let d = refresh(&s, presented(1, 1), 9, &other_browser, t0());
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousOtherContext))
    );

    // Once the successor has been used, the token before it is reuse, however soon.
    let d = refresh(&s, presented(2, 2), 3, &c, t0());
    let s3 = apply(Some(s), &d.events, t0()).unwrap();
    let d = refresh(&s3, presented(1, 1), 9, &c, t0());
    assert_eq!(d.outcome, Err(Refusal::Reuse(ReuseClass::OlderGeneration)));
}

#[test]
fn a_successor_that_cannot_be_minted_again_is_refused_without_harm() {
    let s = rotated();
    let c = ctx("198.51.100.4", "Firefox");
    let d = s.decide_refresh(presented(1, 1), token(9), &c, t0(), &policy(), false);
    assert_eq!(d.outcome, Err(Refusal::SuccessorUnavailable));
    assert!(d.events.is_empty(), "the family and its successor stay");
}

#[test]
fn a_sibling_left_behind_by_an_older_build_is_a_displaced_branch() {
    let c = ctx("198.51.100.4", "Firefox");
    let s = rotated();
    // A version 1 retry minted token 3 as a sibling of token 2 in generation 2.
    let v1 = serde_json::json!({
        "session_id": s.session_id, "generation": 2, "token_id": token(3).id,
        "token_hash": token(3).hash, "presented_hash": token(1).hash, "retry": 1,
        "idle_expires_at": "2026-01-08T12:00:00.000Z", "context": c,
    });
    let sibling = Event::decode("session.refresh_retried", 1, &v1).unwrap();
    assert_eq!(
        issued_token(&sibling).map(|t| t.1),
        Some(token(3)),
        "indexed on replay"
    );
    let s = apply(Some(s), &[sibling], t0()).unwrap();
    assert_eq!(s.current_token, Some(token(2)));
    // Token 3 moves on, token 2 is left behind.
    let d = refresh(&s, presented(3, 2), 4, &c, t0());
    let s = apply(Some(s), &d.events, t0()).unwrap();
    let later = t0() + Duration::minutes(5);
    let d = refresh(&s, presented(2, 2), 5, &c, later);
    assert_eq!(d.outcome, Err(Refusal::Reuse(ReuseClass::DisplacedBranch)));
}

#[test]
fn idle_and_absolute_expiry_are_recorded_when_noticed() {
    let c = ctx("198.51.100.4", "Firefox");
    let s = started();
    let idle = t0() + Duration::days(7);
    let d = refresh(&s, presented(1, 1), 2, &c, idle);
    assert_eq!(d.outcome, Err(Refusal::Expired(ExpiryKind::Idle)));
    let ended = apply(Some(s.clone()), &d.events, idle).unwrap();
    assert_eq!(ended.status, SessionStatus::Expired);
    assert_eq!(ended.ended_at, Some(s.idle_expires_at));
    assert_eq!(
        s.expiry_due(t0() + Duration::days(31)).map(|x| x.0),
        Some(ExpiryKind::Absolute)
    );
}

#[test]
fn reauth_blocks_refresh_until_cleared() {
    let s = started();
    let events = s.decide_require_reauth("rule: new country");
    let s = apply(Some(s), &events, t0()).unwrap();
    let d = s.decide_refresh(
        presented(1, 1),
        token(2),
        &ctx("198.51.100.4", "Firefox"),
        t0(),
        &policy(),
        true,
    );
    assert_eq!(d.outcome, Err(Refusal::ReauthRequired));
    assert!(d.events.is_empty());
}

#[test]
fn revoking_twice_records_once() {
    let s = started();
    let events = s.decide_revoke(RevokeReason::Logout, None);
    assert_eq!(events.len(), 1);
    let s = apply(Some(s), &events, t0()).unwrap();
    assert!(s.decide_revoke(RevokeReason::Logout, None).is_empty());
    assert_eq!(s.version, 2);
}

fn bound() -> Session {
    let mut s = started();
    s.dpop_jkt = Some("key-a".into());
    s
}

#[test]
fn a_bound_family_refreshes_only_with_its_key_and_records_every_mismatch() {
    let s = bound();
    let c = ctx("198.51.100.4", "Firefox");
    for (possession, fault) in [
        (Possession::Absent, DpopFault::Missing),
        (Possession::Key("key-b".into()), DpopFault::OtherKey),
        (
            Possession::Invalid(DpopFault::Replayed),
            DpopFault::Replayed,
        ),
        (Possession::Invalid(DpopFault::Invalid), DpopFault::Invalid),
    ] {
        let d = s.decide_bound_refresh(
            presented(1, 1),
            token(2),
            &c,
            &possession,
            false,
            t0(),
            &policy(),
            true,
        );
        assert_eq!(d.outcome, Err(Refusal::DpopProof(fault)));
        let [Event::DpopMismatch(m)] = &d.events[..] else {
            panic!("one mismatch and nothing else: {:?}", d.events);
        };
        assert_eq!(m.fault, fault);
        assert_eq!(m.presented_jkt.as_deref(), possession.jkt());
    }
    let key = Possession::Key("key-a".into());
    let d = s.decide_bound_refresh(
        presented(1, 1),
        token(2),
        &c,
        &key,
        false,
        t0(),
        &policy(),
        true,
    );
    assert_eq!(d.outcome, Ok(RefreshGrant::Rotated { generation: 2 }));
    // The binding survives a rotation.
    assert_eq!(
        apply(Some(s), &d.events, t0()).unwrap().dpop_jkt.as_deref(),
        Some("key-a")
    );
}

#[test]
fn a_bound_familys_retry_is_judged_by_the_key_not_the_network_or_device() {
    let s = bound();
    let key = Possession::Key("key-a".into());
    let wifi = ctx("198.51.100.4", "Firefox");
    let d = s.decide_bound_refresh(
        presented(1, 1),
        token(2),
        &wifi,
        &key,
        false,
        t0(),
        &policy(),
        true,
    );
    let s = apply(Some(s), &d.events, t0()).unwrap();
    // Another network and another user agent: an unbound family would call this another
    // device; the key says it is the same client.
    let cellular = ctx("203.0.113.9", "Chrome");
    let near = t0() + Duration::seconds(5);
    let d = s.decide_bound_refresh(
        presented(1, 1),
        token(3),
        &cellular,
        &key,
        false,
        near,
        &policy(),
        true,
    );
    assert!(
        matches!(d.outcome, Ok(RefreshGrant::Retried { .. })),
        "{:?}",
        d.outcome
    );
    // The same move without a binding is another device.
    let mut unbound = s.clone();
    unbound.dpop_jkt = None;
    let d = unbound.decide_bound_refresh(
        presented(1, 1),
        token(3),
        &cellular,
        &Possession::Absent,
        false,
        near,
        &policy(),
        true,
    );
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousOtherContext))
    );
}

#[test]
fn require_dpop_refuses_unbound_families_and_bad_proofs_refuse_without_a_record() {
    let s = started();
    let c = ctx("198.51.100.4", "Firefox");
    let d = s.decide_bound_refresh(
        presented(1, 1),
        token(2),
        &c,
        &Possession::Absent,
        true,
        t0(),
        &policy(),
        true,
    );
    assert_eq!((d.outcome, d.events.len()), (Err(Refusal::DpopRequired), 0));
    let bad = Possession::Invalid(DpopFault::Invalid);
    let d = s.decide_bound_refresh(
        presented(1, 1),
        token(2),
        &c,
        &bad,
        false,
        t0(),
        &policy(),
        true,
    );
    assert_eq!(
        (d.outcome, d.events.len()),
        (Err(Refusal::DpopProof(DpopFault::Invalid)), 0)
    );
}

#[test]
fn moved_context_names_exactly_the_events_that_move_the_last_context() {
    // The address index skips an event by what `moved_context` says it leaves as the last
    // context; `evolve` must agree, event by event.
    let s = started();
    let later = t0() + Duration::minutes(5);
    let moved = refresh(&s, presented(1, 1), 2, &ctx("203.0.113.7", "Chrome"), later);
    let revoked = s.decide_revoke(RevokeReason::User, Some(&ctx("192.0.2.1", "Safari")));
    for e in moved.events.iter().chain(revoked.iter()) {
        let after = evolve(Some(s.clone()), e, later).unwrap();
        match moved_context(e) {
            Some(c) => {
                assert_eq!(&after.last_context, c, "{e:?}");
                assert_eq!(after.last_seen_at, later, "{e:?}");
            }
            None => {
                assert_eq!(after.last_context, s.last_context, "{e:?}");
                assert_eq!(after.last_seen_at, s.last_seen_at, "{e:?}");
            }
        }
    }
    assert!(moved.events.iter().any(|e| moved_context(e).is_some()));
    assert!(revoked.iter().all(|e| moved_context(e).is_none()));
}
