//! Rule evaluation cost per event for the shipped pack (`rules/`), excluding I/O: the rule set
//! is loaded once, contexts (with GeoIP fields and a parsed device) are built once, and each
//! iteration runs what the writer runs per event — `evaluate` over every listening rule and,
//! when nothing fired, `remember` into the user's baseline. Run: `cargo bench --bench rules`.

use sessiond::domain::context::{Geo, RequestContext};
use sessiond::domain::{Duration, Timestamp};
use sessiond::rules::breaker::BreakerConfig;
use sessiond::rules::{Facts, RuleEngine, Trigger};
use std::path::Path;
use uuid::Uuid;

fn main() {
    divan::main();
}

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

fn engine() -> RuleEngine {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
    let set = sessiond::rules::file::load_dir(dir).expect("the shipped pack loads");
    RuleEngine::new(set, BreakerConfig::default())
}

fn context(ip: &str, city: &str, country: &str, lat: f64, lon: f64, asn: u32) -> RequestContext {
    RequestContext {
        ip: Some(ip.parse().unwrap()),
        user_agent: Some(CHROME.into()),
        device: sessiond::context::device(CHROME),
        geo: Some(Geo {
            country: Some(country.into()),
            region: None,
            city: Some(city.into()),
            latitude: Some(lat),
            longitude: Some(lon),
            accuracy_radius_km: Some(20),
            asn: Some(asn),
            asn_org: Some("Example Net".into()),
            city_build: Some(1_763_000_000),
            asn_build: Some(1_763_000_000),
            anonymizer: None,
            connection_type: Some("Cable/DSL".into()),
        }),
        request_id: None,
    }
}

fn t0() -> Timestamp {
    sessiond::domain::parse_timestamp("2026-01-01T12:00:00Z").unwrap()
}

fn facts<'a>(
    trigger: Trigger,
    user: Uuid,
    ctx: &'a RequestContext,
    login: &'a RequestContext,
    now: Timestamp,
) -> Facts<'a> {
    Facts {
        trigger,
        now,
        user_id: Some(user),
        username: Some("alice"),
        session_id: Some(user),
        context: ctx,
        session_login: Some(login),
        session_last: Some(login),
    }
}

/// Writer's path for one event: evaluate, and remember when nothing fired.
fn one_event(engine: &RuleEngine, f: &Facts) -> usize {
    let fired = engine.evaluate(f);
    if fired.is_empty() && f.trigger.builds_baseline() {
        engine.remember(f);
    }
    fired.len()
}

/// The common refresh: same place, same browser as the session's login (nothing fires).
#[divan::bench]
fn refresh_quiet(bencher: divan::Bencher) {
    let engine = engine();
    let paris = context("192.0.2.10", "Paris", "FR", 48.85, 2.35, 64501);
    let user = Uuid::now_v7();
    engine.remember(&facts(Trigger::SessionStarted, user, &paris, &paris, t0()));
    let mut minute = 0;
    bencher.bench_local(|| {
        minute += 1;
        let f = facts(
            Trigger::SessionRefreshed,
            user,
            &paris,
            &paris,
            t0() + Duration::minutes(minute),
        );
        divan::black_box(one_event(&engine, divan::black_box(&f)))
    });
}

/// A refresh from another continent ten minutes after the login: travel and context change fire.
#[divan::bench]
fn refresh_firing(bencher: divan::Bencher) {
    let engine = engine();
    let paris = context("192.0.2.10", "Paris", "FR", 48.85, 2.35, 64501);
    let new_york = context("198.51.100.7", "New York", "US", 40.71, -74.0, 64502);
    let user = Uuid::now_v7();
    engine.remember(&facts(Trigger::SessionStarted, user, &paris, &paris, t0()));
    let f = facts(
        Trigger::SessionRefreshed,
        user,
        &new_york,
        &paris,
        t0() + Duration::minutes(10),
    );
    bencher.bench_local(|| divan::black_box(one_event(&engine, divan::black_box(&f))));
}

/// A refresh from the carrier's network in the same city (home Wi-Fi to cellular): the
/// evidence rule weighs one weak signal and flags. (Whether the network is usual is read from
/// the store by the caller, outside this figure.)
#[divan::bench]
fn refresh_network_move(bencher: divan::Bencher) {
    let engine = engine();
    let home = context("192.0.2.10", "Seattle", "US", 47.61, -122.33, 7922);
    let mut cell = context("198.51.100.7", "Seattle", "US", 47.60, -122.34, 21928);
    if let Some(g) = cell.geo.as_mut() {
        g.connection_type = Some("Cellular".into());
    }
    let user = Uuid::now_v7();
    engine.remember(&facts(Trigger::SessionStarted, user, &home, &home, t0()));
    let mut minute = 0;
    bencher.bench_local(|| {
        minute += 1;
        let f = facts(
            Trigger::SessionRefreshed,
            user,
            &cell,
            &home,
            t0() + Duration::minutes(minute),
        );
        divan::black_box(one_event(&engine, divan::black_box(&f)))
    });
}

/// A login with a warm baseline: travel, new country and new device look at it.
#[divan::bench]
fn login_quiet(bencher: divan::Bencher) {
    let engine = engine();
    let paris = context("192.0.2.10", "Paris", "FR", 48.85, 2.35, 64501);
    let user = Uuid::now_v7();
    for i in 0..5 {
        engine.remember(&facts(
            Trigger::SessionStarted,
            user,
            &paris,
            &paris,
            t0() + Duration::minutes(i),
        ));
    }
    let mut minute = 10;
    bencher.bench_local(|| {
        minute += 1;
        let f = facts(
            Trigger::SessionStarted,
            user,
            &paris,
            &paris,
            t0() + Duration::minutes(minute),
        );
        divan::black_box(one_event(&engine, divan::black_box(&f)))
    });
}

/// A failed login: brute force and password spray count it in their windows.
#[divan::bench]
fn login_failed(bencher: divan::Bencher) {
    let engine = engine();
    let paris = context("192.0.2.10", "Paris", "FR", 48.85, 2.35, 64501);
    let user = Uuid::now_v7();
    let mut second = 0;
    bencher.bench_local(|| {
        second += 1;
        let f = facts(
            Trigger::LoginFailed,
            user,
            &paris,
            &paris,
            t0() + Duration::seconds(second),
        );
        divan::black_box(one_event(&engine, divan::black_box(&f)))
    });
}

/// Enrichment, for comparison (not rule evaluation): both GeoIP lookups of one request
/// against small generated databases (a real city database is a deeper tree).
#[divan::bench]
fn geoip_lookup_city_and_asn(bencher: divan::Bencher) {
    use maxminddb::geoip2;
    let dir = tempfile::tempdir().unwrap();
    let mut city = mmdb_writer::Writer::new("GeoIP2-City");
    let mut asn = mmdb_writer::Writer::new("GeoLite2-ASN");
    let mut record = geoip2::City::default();
    record.city.names.english = Some("Paris");
    record.country.iso_code = Some("FR");
    record.location.latitude = Some(48.85);
    record.location.longitude = Some(2.35);
    record.location.accuracy_radius = Some(20);
    let net: ipnet::IpNet = "192.0.2.0/24".parse().unwrap();
    city.insert(net, &record).unwrap();
    let a = geoip2::Asn {
        autonomous_system_number: Some(64501),
        autonomous_system_organization: Some("Example Net"),
    };
    asn.insert(net, &a).unwrap();
    let (c, s) = (dir.path().join("c.mmdb"), dir.path().join("a.mmdb"));
    std::fs::write(&c, city.to_bytes().unwrap()).unwrap();
    std::fs::write(&s, asn.to_bytes().unwrap()).unwrap();
    let geo = sessiond::context::geoip::GeoIp::open(Some(&c), Some(&s)).unwrap();
    let ip: std::net::IpAddr = "192.0.2.10".parse().unwrap();
    bencher.bench_local(|| divan::black_box(geo.lookup(divan::black_box(ip))));
}
