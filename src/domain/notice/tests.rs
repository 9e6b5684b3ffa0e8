use super::*;
use crate::domain::context::Geo;

fn ctx(country: &str, browser: &str) -> RequestContext {
    RequestContext {
        device: Some(Device {
            category: "pc".into(),
            os: "Windows 10".into(),
            browser: browser.into(),
            version: "120".into(),
            vendor: "Google".into(),
        }),
        geo: Some(Geo {
            country: Some(country.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn login<'a>(c: &'a RequestContext, now: Timestamp) -> Login<'a> {
    Login {
        user_id: Uuid::nil(),
        session_id: Uuid::nil(),
        notice_id: Uuid::nil(),
        context: c,
        networks: vec!["asn:64500".into(), "net:abc".into()],
        now,
    }
}

fn known_all() -> Known {
    Known {
        any: true,
        device: true,
        country: true,
    }
}

#[test]
fn a_first_login_starts_the_history_and_a_known_one_is_quiet() {
    let now = chrono::Utc::now();
    let c = ctx("FR", "Chrome");
    assert_eq!(
        decide_notice(login(&c, now), Known::default(), &[], &[]),
        Sighting::Known
    );
    assert_eq!(
        decide_notice(login(&c, now), known_all(), &[], &[]),
        Sighting::Known
    );
}

#[test]
fn a_new_country_is_noticed_once_per_window() {
    let now = chrono::Utc::now();
    let c = ctx("JP", "Chrome");
    let known = Known {
        country: false,
        ..known_all()
    };
    let Sighting::Notice(n) = decide_notice(login(&c, now), known, &[], &[]) else {
        panic!("a new country is news")
    };
    assert_eq!(n.reasons, [NoticeReason::NewCountry]);
    assert_eq!(n.country.as_deref(), Some("JP"));
    let stored = evolve_notice(None, &crate::domain::event::Event::NoticeCreated(n), now).unwrap();
    assert_eq!(
        decide_notice(login(&c, now), known, std::slice::from_ref(&stored), &[]),
        Sighting::AlreadyNoticed
    );
    // Another new country is news again.
    let d = ctx("BR", "Chrome");
    assert!(matches!(
        decide_notice(login(&d, now), known, &[stored], &[]),
        Sighting::Notice(_)
    ));
}

#[test]
fn an_exception_covers_its_device_and_network_until_it_expires() {
    let now = chrono::Utc::now();
    let c = ctx("JP", "Chrome");
    let e = ExceptionAdded {
        exception_id: Uuid::nil(),
        user_id: Uuid::nil(),
        rule_id: None,
        device: device_class(&c),
        networks: vec!["asn:64500".into()],
        expires_at: now + chrono::Duration::days(30),
        cause: ExceptionCause::Notice(Uuid::nil()),
    };
    let known = Known {
        country: false,
        ..known_all()
    };
    assert_eq!(
        decide_notice(login(&c, now), known, &[], std::slice::from_ref(&e)),
        Sighting::Excepted
    );
    assert!(e.covers(
        now,
        Some("any_rule"),
        device_class(&c).as_ref(),
        &["asn:64500".into()]
    ));
    // Another browser, another network, or after the expiry: not covered.
    let firefox = ctx("JP", "Firefox");
    assert!(!e.covers(
        now,
        None,
        device_class(&firefox).as_ref(),
        &["asn:64500".into()]
    ));
    assert!(!e.covers(
        now,
        None,
        device_class(&c).as_ref(),
        &["asn:1".into(), String::new()]
    ));
    let later = now + chrono::Duration::days(31);
    assert!(matches!(
        decide_notice(login(&c, later), known, &[], std::slice::from_ref(&e)),
        Sighting::Notice(_)
    ));
    // A rule's exception covers that rule only, never the notice.
    let scoped = ExceptionAdded {
        rule_id: Some("new_device".into()),
        ..e
    };
    let chrome = device_class(&c);
    assert!(scoped.covers(
        now,
        Some("new_device"),
        chrome.as_ref(),
        &["asn:64500".into()]
    ));
    assert!(!scoped.covers(
        now,
        Some("impossible_travel"),
        chrome.as_ref(),
        &["asn:64500".into()]
    ));
    assert!(!scoped.covers(now, None, device_class(&c).as_ref(), &["asn:64500".into()]));
}

#[test]
fn a_denial_requires_a_password_change_until_the_password_changes() {
    let t = chrono::Utc::now();
    assert!(!password_change_required(None, Some(t)));
    assert!(password_change_required(Some(t), None));
    assert!(password_change_required(
        Some(t),
        Some(t - chrono::Duration::days(1))
    ));
    assert!(!password_change_required(
        Some(t),
        Some(t + chrono::Duration::seconds(1))
    ));
    assert!(
        !password_change_required(Some(t), Some(t)),
        "changed right after"
    );
}
