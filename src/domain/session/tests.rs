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
    );
    assert_eq!(d.outcome, Err(Refusal::Expired(ExpiryKind::Absolute)));
}

#[test]
fn the_previous_token_within_grace_from_the_same_client_is_a_bounded_retry() {
    let s = started();
    let c = ctx("198.51.100.4", "Firefox");
    let d = s.decide_refresh(presented(1, 1), token(2), &c, t0(), &policy());
    let mut s = apply(Some(s), &d.events, t0()).unwrap();
    let near = t0() + Duration::seconds(5);
    for retry in 1..=3 {
        // A neighbour on the same /24 is the same network.
        let d = s.decide_refresh(
            presented(1, 1),
            token(10 + retry as u8),
            &ctx("198.51.100.77", "Firefox"),
            near,
            &policy(),
        );
        assert_eq!(
            d.outcome,
            Ok(RefreshGrant::Retried {
                generation: 2,
                retry
            })
        );
        s = apply(Some(s), &d.events, near).unwrap();
    }
    let d = s.decide_refresh(presented(1, 1), token(20), &c, near, &policy());
    assert_eq!(d.outcome, Err(Refusal::RetryLimit));
    assert!(d.events.is_empty(), "the family survives a retry storm");
}

#[test]
fn reuse_is_classified_and_revokes_the_family() {
    let c = ctx("198.51.100.4", "Firefox");
    let s = started();
    let d = s.decide_refresh(presented(1, 1), token(2), &c, t0(), &policy());
    let s = apply(Some(s), &d.events, t0()).unwrap();

    let after_grace = t0() + Duration::seconds(31);
    let d = s.decide_refresh(presented(1, 1), token(9), &c, after_grace, &policy());
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousAfterGrace))
    );
    let dead = apply(Some(s.clone()), &d.events, after_grace).unwrap();
    assert_eq!(dead.status, SessionStatus::Revoked);
    assert_eq!(dead.end_reason.as_deref(), Some("reuse"));
    // The newest token is dead too.
    let d = dead.decide_refresh(presented(2, 2), token(9), &c, after_grace, &policy());
    assert_eq!(d.outcome, Err(Refusal::SessionEnded));

    let elsewhere = ctx("203.0.113.9", "Firefox");
    let d = s.decide_refresh(presented(1, 1), token(9), &elsewhere, t0(), &policy());
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousOtherContext))
    );
    let other_browser = ctx("198.51.100.4", "Chrome");
    let d = s.decide_refresh(presented(1, 1), token(9), &other_browser, t0(), &policy());
    assert_eq!(
        d.outcome,
        Err(Refusal::Reuse(ReuseClass::PreviousOtherContext))
    );

    let d = s.decide_refresh(presented(2, 2), token(3), &c, t0(), &policy());
    let s3 = apply(Some(s), &d.events, t0()).unwrap();
    let d = s3.decide_refresh(presented(1, 1), token(9), &c, t0(), &policy());
    assert_eq!(d.outcome, Err(Refusal::Reuse(ReuseClass::OlderGeneration)));
}

#[test]
fn a_sibling_left_behind_is_a_displaced_branch() {
    let c = ctx("198.51.100.4", "Firefox");
    let s = started();
    let d = s.decide_refresh(presented(1, 1), token(2), &c, t0(), &policy());
    let s = apply(Some(s), &d.events, t0()).unwrap();
    let d = s.decide_refresh(presented(1, 1), token(3), &c, t0(), &policy());
    assert!(matches!(d.outcome, Ok(RefreshGrant::Retried { .. })));
    let s = apply(Some(s), &d.events, t0()).unwrap();
    // Generation 2 now has tokens 2 and 3; token 3 moves on, token 2 is left behind.
    let d = s.decide_refresh(presented(3, 2), token(4), &c, t0(), &policy());
    let s = apply(Some(s), &d.events, t0()).unwrap();
    let later = t0() + Duration::minutes(5);
    let d = s.decide_refresh(presented(2, 2), token(5), &c, later, &policy());
    assert_eq!(d.outcome, Err(Refusal::Reuse(ReuseClass::DisplacedBranch)));
}

#[test]
fn idle_and_absolute_expiry_are_recorded_when_noticed() {
    let c = ctx("198.51.100.4", "Firefox");
    let s = started();
    let idle = t0() + Duration::days(7);
    let d = s.decide_refresh(presented(1, 1), token(2), &c, idle, &policy());
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
        );
        assert_eq!(d.outcome, Err(Refusal::DpopProof(fault)));
        let [Event::DpopMismatch(m)] = &d.events[..] else {
            panic!("one mismatch and nothing else: {:?}", d.events);
        };
        assert_eq!(m.fault, fault);
        assert_eq!(m.presented_jkt.as_deref(), possession.jkt());
    }
    let key = Possession::Key("key-a".into());
    let d = s.decide_bound_refresh(presented(1, 1), token(2), &c, &key, false, t0(), &policy());
    assert_eq!(d.outcome, Ok(RefreshGrant::Rotated { generation: 2 }));
    // The binding survives a rotation.
    assert_eq!(
        apply(Some(s), &d.events, t0()).unwrap().dpop_jkt.as_deref(),
        Some("key-a")
    );
}

#[test]
fn a_bound_familys_retry_is_judged_by_the_key_not_the_network() {
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
    );
    let s = apply(Some(s), &d.events, t0()).unwrap();
    let cellular = ctx("203.0.113.9", "Firefox");
    let near = t0() + Duration::seconds(5);
    let d = s.decide_bound_refresh(
        presented(1, 1),
        token(3),
        &cellular,
        &key,
        false,
        near,
        &policy(),
    );
    assert!(
        matches!(d.outcome, Ok(RefreshGrant::Retried { .. })),
        "{:?}",
        d.outcome
    );
    // The same move without a binding is another client.
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
    );
    assert_eq!((d.outcome, d.events.len()), (Err(Refusal::DpopRequired), 0));
    let bad = Possession::Invalid(DpopFault::Invalid);
    let d = s.decide_bound_refresh(presented(1, 1), token(2), &c, &bad, false, t0(), &policy());
    assert_eq!(
        (d.outcome, d.events.len()),
        (Err(Refusal::DpopProof(DpopFault::Invalid)), 0)
    );
}
