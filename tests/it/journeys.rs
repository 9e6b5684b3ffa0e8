//! Journeys (issue 15): the shipped rule pack switched to enforce, against generated city, ASN,
//! anonymous-IP and connection-type databases whose records follow real ones (coordinates and
//! accuracy radii as MaxMind gives them, real ASNs and the ranges they announce). Ordinary
//! users on the move keep their sessions; a stolen refresh token replayed from elsewhere is
//! stopped. Requests come "from" their addresses through `X-Forwarded-For` behind a trusted
//! 127.0.0.1; time moves on the injected clock.

use crate::helpers::*;
use crate::rules::receipts;
use maxminddb::geoip2;
use reqwest::StatusCode;
use serde_json::Value;
use sessiond::domain::Duration;
use std::path::Path;

pub const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
pub const MAC_CHROME: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
pub const SCRIPT: &str = "python-requests/2.31.0";

/// Home Wi-Fi in Seattle: Comcast (AS7922), Cable/DSL.
pub const SEATTLE_COMCAST: &str = "73.97.12.40";
/// The same phone on T-Mobile USA's cellular network (AS21928) in Seattle, a wider radius.
pub const SEATTLE_TMOBILE: &str = "172.56.20.9";
/// Amazon (AS16509) in Seattle: a hosting provider.
pub const SEATTLE_AWS: &str = "52.94.133.131";
/// CenturyLink (AS209) in Seattle: another consumer network.
pub const SEATTLE_CENTURYLINK: &str = "97.113.5.77";
/// A US address MaxMind knows only at country level: the centre of the US, radius 1000 km.
pub const US_COUNTRY_LEVEL: &str = "73.200.9.14";
/// AT&T (AS7018) in Kansas City, ~330 km from that centre: inside its radius.
pub const KANSAS_CITY_ATT: &str = "99.61.40.8";
/// An M247 (AS9009) VPN exit in Los Angeles.
pub const LA_VPN: &str = "146.70.45.10";
/// EE (AS12576) cellular in London.
pub const LONDON_EE: &str = "31.94.70.3";
/// Deutsche Telekom (AS3320) Cable/DSL in Berlin.
pub const BERLIN_TELEKOM: &str = "79.192.33.5";

struct Place {
    net: &'static str,
    country: &'static str,
    city: Option<&'static str>,
    lat: f64,
    lon: f64,
    radius: u16,
    asn: u32,
    org: &'static str,
    connection: Option<&'static str>,
    /// is_anonymous_vpn / is_hosting_provider.
    vpn: bool,
    hosting: bool,
}

const PLACES: &[Place] = &[
    Place {
        net: "73.97.12.0/24",
        country: "US",
        city: Some("Seattle"),
        lat: 47.6062,
        lon: -122.3321,
        radius: 5,
        asn: 7922,
        org: "COMCAST-7922",
        connection: Some("Cable/DSL"),
        vpn: false,
        hosting: false,
    },
    Place {
        net: "172.56.20.0/24",
        country: "US",
        city: Some("Seattle"),
        lat: 47.6034,
        lon: -122.3414,
        radius: 50,
        asn: 21928,
        org: "T-MOBILE-AS21928",
        connection: Some("Cellular"),
        vpn: false,
        hosting: false,
    },
    Place {
        net: "52.94.133.0/24",
        country: "US",
        city: Some("Seattle"),
        lat: 47.6062,
        lon: -122.3321,
        radius: 20,
        asn: 16509,
        org: "AMAZON-02",
        connection: Some("Corporate"),
        vpn: false,
        hosting: true,
    },
    Place {
        net: "97.113.5.0/24",
        country: "US",
        city: Some("Seattle"),
        lat: 47.6101,
        lon: -122.3420,
        radius: 10,
        asn: 209,
        org: "CENTURYLINK-US-LEGACY-QWEST",
        connection: Some("Cable/DSL"),
        vpn: false,
        hosting: false,
    },
    Place {
        net: "73.200.9.0/24",
        country: "US",
        city: None,
        lat: 37.751,
        lon: -97.822,
        radius: 1000,
        asn: 7922,
        org: "COMCAST-7922",
        connection: Some("Cable/DSL"),
        vpn: false,
        hosting: false,
    },
    Place {
        net: "99.61.40.0/24",
        country: "US",
        city: Some("Kansas City"),
        lat: 39.0997,
        lon: -94.5786,
        radius: 20,
        asn: 7018,
        org: "ATT-INTERNET4",
        connection: Some("Cable/DSL"),
        vpn: false,
        hosting: false,
    },
    Place {
        net: "146.70.45.0/24",
        country: "US",
        city: Some("Los Angeles"),
        lat: 34.0522,
        lon: -118.2437,
        radius: 20,
        asn: 9009,
        org: "M247 Europe SRL",
        connection: Some("Corporate"),
        vpn: true,
        hosting: true,
    },
    Place {
        net: "31.94.70.0/24",
        country: "GB",
        city: Some("London"),
        lat: 51.5074,
        lon: -0.1278,
        radius: 20,
        asn: 12576,
        org: "EE Limited",
        connection: Some("Cellular"),
        vpn: false,
        hosting: false,
    },
    Place {
        net: "79.192.33.0/24",
        country: "DE",
        city: Some("Berlin"),
        lat: 52.5200,
        lon: 13.4050,
        radius: 20,
        asn: 3320,
        org: "Deutsche Telekom AG",
        connection: Some("Cable/DSL"),
        vpn: false,
        hosting: false,
    },
];

/// Writes the four databases into `dir`: (city, asn, anonymous-IP, connection-type).
pub fn write_databases(dir: &Path) -> [std::path::PathBuf; 4] {
    let build = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000);
    let writer = |kind: &str| {
        mmdb_writer::Writer::builder(kind)
            .build_epoch(build)
            .build()
    };
    let (mut city, mut asn, mut anon, mut conn) = (
        writer("GeoIP2-City"),
        writer("GeoLite2-ASN"),
        writer("GeoIP2-Anonymous-IP"),
        writer("GeoIP2-Connection-Type"),
    );
    for p in PLACES {
        let net: ipnet::IpNet = p.net.parse().unwrap();
        let mut record = geoip2::City::default();
        record.city.names.english = p.city;
        record.country.iso_code = Some(p.country);
        record.location.latitude = Some(p.lat);
        record.location.longitude = Some(p.lon);
        record.location.accuracy_radius = Some(p.radius);
        city.insert(net, &record).unwrap();
        let a = geoip2::Asn {
            autonomous_system_number: Some(p.asn),
            autonomous_system_organization: Some(p.org),
        };
        asn.insert(net, &a).unwrap();
        if p.vpn || p.hosting {
            let r = geoip2::AnonymousIp {
                is_anonymous: Some(true),
                is_anonymous_vpn: p.vpn.then_some(true),
                is_hosting_provider: p.hosting.then_some(true),
                is_public_proxy: None,
                is_residential_proxy: None,
                is_tor_exit_node: None,
            };
            anon.insert(net, &r).unwrap();
        }
        if let Some(c) = p.connection {
            conn.insert(
                net,
                &geoip2::ConnectionType {
                    connection_type: Some(c),
                },
            )
            .unwrap();
        }
    }
    let paths = ["city", "asn", "anonymous", "connection"].map(|n| dir.join(format!("{n}.mmdb")));
    for (path, w) in paths.iter().zip([city, asn, anon, conn]) {
        std::fs::write(path, w.to_bytes().unwrap()).unwrap();
    }
    paths
}

/// The shipped pack (`rules/*.toml`) with every rule switched to enforce.
pub fn shipped_pack_enforced(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("rules");
    std::fs::create_dir_all(&out).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    for entry in std::fs::read_dir(shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.replace("mode = \"shadow\"", "mode = \"enforce\"");
            std::fs::write(out.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    out
}

async fn journey_app() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let [city, asn, anon, conn] = write_databases(dir.path());
    let rules = shipped_pack_enforced(dir.path());
    let app = spawn_app_with(|c| {
        c.geoip_city = Some(city);
        c.geoip_asn = Some(asn);
        c.geoip_anonymous_ip = Some(anon);
        c.geoip_connection_type = Some(conn);
        c.rules = Some(rules);
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    (app, dir)
}

/// Refreshes from `ip` with `ua`; the new tokens, or the refusal's status and code.
async fn refresh(
    app: &TestApp,
    token: &str,
    ip: &str,
    ua: &str,
) -> Result<Tokens, (StatusCode, String)> {
    let r = refresh_from(app, token, ip, ua).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    if status == StatusCode::OK {
        Ok(Tokens::from_json(&body))
    } else {
        Err((status, body["error"].as_str().unwrap_or("").to_owned()))
    }
}

async fn session_receipts(app: &TestApp, session_id: &str) -> Vec<Value> {
    receipts(app)
        .await
        .into_iter()
        .filter(|r| r["session_id"] == session_id)
        .collect()
}

async fn assert_active(app: &TestApp, tokens: &Tokens) {
    let me = app.me(&tokens.access).await;
    assert_eq!(me.status(), StatusCode::OK, "the session is still active");
}

/// Nothing stronger than a low-severity flag was asked for on this session.
async fn assert_at_most_a_low_flag(app: &TestApp, session_id: &str) {
    for r in session_receipts(app, session_id).await {
        assert!(
            r["action"] == "flag" && r["severity"] == "low"
                || r["action"] == "notify"
                || r["action"] == "none",
            "{r}"
        );
        assert_ne!(r["rule_id"], "impossible_travel", "{r}");
    }
}

async fn assert_stopped(
    app: &TestApp,
    session_id: &str,
    refused: Result<Tokens, (StatusCode, String)>,
) {
    let (status, _) = refused.expect_err("the replay is refused");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let revoked = app
        .session_events(session_id)
        .await
        .into_iter()
        .filter(|e| e.event_type == "session.revoked")
        .map(|e| data(&e))
        .collect::<Vec<_>>();
    assert_eq!(revoked.len(), 1, "the session is revoked");
    assert_eq!(revoked[0]["reason"], "rule");
}

#[tokio::test]
async fn a_phone_moving_between_wifi_and_cellular_in_one_city_keeps_its_session() {
    let (app, _dir) = journey_app().await;
    app.register("maya").await;
    let mut t = login_from(&app, "maya", SEATTLE_COMCAST, IPHONE).await;
    // Leaves home: the carrier's network. Back home, and out again, many times a day.
    for (minutes, ip) in [
        (10, SEATTLE_TMOBILE),
        (30, SEATTLE_COMCAST),
        (50, SEATTLE_TMOBILE),
        (70, SEATTLE_COMCAST),
    ] {
        app.clock.advance(Duration::minutes(minutes));
        t = refresh(&app, &t.refresh, ip, IPHONE)
            .await
            .expect("the phone keeps its session");
    }
    assert_active(&app, &t).await;
    assert_at_most_a_low_flag(&app, &t.session_id).await;
    let receipts = session_receipts(&app, &t.session_id).await;
    // The first move to the carrier is news (one weak signal, flagged low); the second is not:
    // the carrier is among the user's usual networks by then.
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    let signals = receipts[0]["inputs"]["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0]["signal"], "new_network");
    assert_eq!(signals[0]["weight"], 1);
}

#[tokio::test]
async fn a_laptop_on_a_country_level_record_then_a_city_inside_its_radius_keeps_its_session() {
    let (app, _dir) = journey_app().await;
    app.register("omar").await;
    let t = login_from(&app, "omar", US_COUNTRY_LEVEL, MAC_CHROME).await;
    app.clock.advance(Duration::minutes(20));
    // Kansas City is ~330 km from the centre of a 1000 km radius: no distance at all.
    let t = refresh(&app, &t.refresh, KANSAS_CITY_ATT, MAC_CHROME)
        .await
        .expect("kept");
    assert_active(&app, &t).await;
    assert_at_most_a_low_flag(&app, &t.session_id).await;
}

#[tokio::test]
async fn a_vpn_reconnect_within_the_users_usual_networks_keeps_its_session() {
    let (app, _dir) = journey_app().await;
    app.register("lena").await;
    // Lena works through her VPN: it becomes one of her usual networks.
    let vpn = login_from(&app, "lena", LA_VPN, MAC_CHROME).await;
    app.clock.advance(Duration::hours(3));
    let vpn = refresh(&app, &vpn.refresh, LA_VPN, MAC_CHROME)
        .await
        .expect("kept");
    // Later, at home, then her VPN reconnects mid-session.
    app.clock.advance(Duration::days(2));
    let t = login_from(&app, "lena", SEATTLE_COMCAST, MAC_CHROME).await;
    app.clock.advance(Duration::minutes(15));
    let t = refresh(&app, &t.refresh, LA_VPN, MAC_CHROME)
        .await
        .expect("kept");
    assert_active(&app, &t).await;
    let ended: Vec<_> = app
        .session_events(&vpn.session_id)
        .await
        .into_iter()
        .filter(|e| e.event_type == "session.revoked")
        .collect();
    assert!(ended.is_empty());
    assert!(
        session_receipts(&app, &t.session_id).await.is_empty(),
        "{:?}",
        session_receipts(&app, &t.session_id).await
    );
}

#[tokio::test]
async fn a_flight_at_airliner_speed_keeps_its_session() {
    let (app, _dir) = journey_app().await;
    app.register("ravi").await;
    let t = login_from(&app, "ravi", SEATTLE_TMOBILE, IPHONE).await;
    app.clock.advance(Duration::minutes(30));
    let t = refresh(&app, &t.refresh, SEATTLE_TMOBILE, IPHONE)
        .await
        .expect("kept");
    // Seattle to London, ~7,700 km, lands ten hours later (~770 km/h).
    app.clock.advance(Duration::hours(10));
    let t = refresh(&app, &t.refresh, LONDON_EE, IPHONE)
        .await
        .expect("the traveller keeps the session");
    assert_active(&app, &t).await;
    assert_at_most_a_low_flag(&app, &t.session_id).await;
}

#[tokio::test]
async fn a_replay_from_a_hosting_provider_in_the_same_city_with_the_same_browser_string_is_stopped()
{
    let (app, _dir) = journey_app().await;
    app.register("nina").await;
    let t = login_from(&app, "nina", SEATTLE_COMCAST, MAC_CHROME).await;
    app.clock.advance(Duration::minutes(5));
    // The attacker copies the refresh token and the User-Agent, and runs from a cloud VM.
    let replay = refresh(&app, &t.refresh, SEATTLE_AWS, MAC_CHROME).await;
    assert_stopped(&app, &t.session_id, replay).await;
    let r = session_receipts(&app, &t.session_id)
        .await
        .into_iter()
        .find(|r| r["rule_id"] == "session_context_change")
        .unwrap();
    assert_eq!(r["action"], "revoke_session");
    let names: Vec<&str> = r["inputs"]["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"anonymising_network"), "{r}");
    assert!(
        r["explanation"]
            .as_str()
            .unwrap()
            .contains("anonymising_network (3)"),
        "{r}"
    );
}

#[tokio::test]
async fn a_replay_from_another_continent_is_stopped() {
    let (app, _dir) = journey_app().await;
    app.register("tom").await;
    let t = login_from(&app, "tom", SEATTLE_COMCAST, MAC_CHROME).await;
    app.clock.advance(Duration::minutes(8));
    let replay = refresh(&app, &t.refresh, BERLIN_TELEKOM, MAC_CHROME).await;
    assert_stopped(&app, &t.session_id, replay).await;
    let r = session_receipts(&app, &t.session_id)
        .await
        .into_iter()
        .find(|r| r["rule_id"] == "session_context_change")
        .unwrap();
    let names: Vec<&str> = r["inputs"]["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["new_network", "other_country"], "{r}");
}

#[tokio::test]
async fn a_script_on_another_network_is_stopped() {
    let (app, _dir) = journey_app().await;
    app.register("ines").await;
    let t = login_from(&app, "ines", SEATTLE_COMCAST, MAC_CHROME).await;
    app.clock.advance(Duration::minutes(3));
    let replay = refresh(&app, &t.refresh, SEATTLE_CENTURYLINK, SCRIPT).await;
    assert_stopped(&app, &t.session_id, replay).await;
    let r = session_receipts(&app, &t.session_id)
        .await
        .into_iter()
        .find(|r| r["rule_id"] == "session_context_change")
        .unwrap();
    let names: Vec<&str> = r["inputs"]["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["new_network", "other_device"], "{r}");
    assert_eq!(r["inputs"]["score"], 4);
}
