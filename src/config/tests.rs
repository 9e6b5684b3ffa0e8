use super::*;

fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.toml");
    let overrides = Overrides {
        config_file: file.map(|text| {
            std::fs::write(&path, text).unwrap();
            path.clone()
        }),
        ..Default::default()
    };
    Config::load(
        &overrides,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = load(None, &[]).unwrap();
    assert_eq!(c.access_token_lifetime, Duration::minutes(10));
    assert_eq!(c.refresh_idle_lifetime, Duration::days(7));
    assert_eq!(c.refresh_absolute_lifetime, Duration::days(30));
    assert_eq!(c.refresh_grace_window, Duration::seconds(30));
    assert_eq!(c.refresh_max_grace_retries, 3);
    assert_eq!(c.refresh_late_retry_window, Duration::minutes(10));
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
}

#[test]
fn environment_beats_file_and_bad_values_name_their_key() {
    let c = load(
        Some("refresh_grace_window = \"10s\"\n"),
        &[("SESSIOND_REFRESH_GRACE_WINDOW", "20s")],
    )
    .unwrap();
    assert_eq!(c.refresh_grace_window, Duration::seconds(20));
    let e = load(Some("access_token_lifetime = \"ten minutes\"\n"), &[]).unwrap_err();
    assert_eq!(e.key, "access_token_lifetime");
    let e = load(Some("acess_token_lifetime = \"10m\"\n"), &[]).unwrap_err();
    assert_eq!(e.key, "acess_token_lifetime");
    let e = load(None, &[("SESSIOND_REFRESH_IDLE_LIFETIME", "60d")]).unwrap_err();
    assert_eq!(e.key, "refresh_idle_lifetime");
    let e = load(None, &[("SESSIOND_TRUSTED_PROXIES", "10.0.0.0/8,nonsense")]).unwrap_err();
    assert_eq!(e.key, "trusted_proxies");
    let e = load(None, &[("SESSIOND_LISTEN", "localhost")]).unwrap_err();
    assert_eq!(e.key, "listen");
}

#[test]
fn the_late_retry_window_is_off_or_between_the_grace_window_and_an_hour() {
    let c = load(None, &[("SESSIOND_REFRESH_LATE_RETRY_WINDOW", "0s")]).unwrap();
    assert_eq!(c.refresh_late_retry_window, Duration::zero());
    let c = load(Some("refresh_late_retry_window = \"5m\"\n"), &[]).unwrap();
    assert_eq!(c.session_policy().late_retry_window, Duration::minutes(5));
    for bad in ["10s", "2h", "soon"] {
        let e = load(None, &[("SESSIOND_REFRESH_LATE_RETRY_WINDOW", bad)]).unwrap_err();
        assert_eq!(e.key, "refresh_late_retry_window", "{bad}");
    }
}

#[test]
fn operations_keys_parse_and_bad_ones_name_their_key() {
    let c = load(
        Some(
            "expiry_sweep_schedule = \"off\"\nretention_schedule = \"0 0 4 * * *\"\n\
             webhook_retry_initial = \"250ms\"\nsigning_key_publish_ahead = \"1h\"\n",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c.expiry_sweep_schedule, None);
    assert_eq!(c.retention_schedule.as_deref(), Some("0 0 4 * * *"));
    assert_eq!(c.webhook_retry_initial, Duration::milliseconds(250));
    assert_eq!(c.publish_ahead(), Duration::hours(1));
    assert_eq!(
        load(None, &[]).unwrap().publish_ahead(),
        Duration::minutes(10)
    );
    for (key, value) in [
        ("SESSIOND_EXPIRY_SWEEP_SCHEDULE", "every minute"),
        ("SESSIOND_KEY_ROTATION_SCHEDULE", "* * * * *"),
        ("SESSIOND_SIGNING_KEY_PUBLISH_AHEAD", "30d"),
        ("SESSIOND_SIGNING_KEY_ROTATION_INTERVAL", "10m"),
        ("SESSIOND_WEBHOOK_RETRY_MAX", "0s"),
        ("SESSIOND_WEBHOOK_TIMEOUT", "xms"),
    ] {
        let e = load(None, &[(key, value)]).unwrap_err();
        assert_eq!(
            e.key,
            key.strip_prefix("SESSIOND_").unwrap().to_ascii_lowercase(),
            "{value}"
        );
    }
}

#[test]
fn a_postgres_url_chooses_postgres_and_is_never_printed() {
    assert_eq!(load(None, &[]).unwrap().database_url, None);
    let url = "postgres://sessiond:hunter22@db:5432/sessiond";
    let c = load(None, &[("SESSIOND_DATABASE_URL", url)]).unwrap();
    assert_eq!(c.database_url.as_ref().unwrap().as_str(), url);
    assert!(!format!("{c:?}").contains("hunter22"));
    let c = load(Some("database_url = \"postgresql://db/s\"\n"), &[]).unwrap();
    assert!(c.database_url.is_some());
    let e = load(
        None,
        &[("SESSIOND_DATABASE_URL", "mysql://u:hunter22@db/s")],
    )
    .unwrap_err();
    assert_eq!(e.key, "database_url");
    assert!(!e.to_string().contains("hunter22"));
}

#[test]
fn context_and_rule_keys_come_from_file_and_environment() {
    let c = load(
        Some("geoip_city = \"/geo/city.mmdb\"\nrules_breaker_fraction = 0.01\n"),
        &[
            ("SESSIOND_RULES", "/etc/sessiond/rules"),
            ("SESSIOND_GEOIP_ASN", "/geo/asn.mmdb"),
            ("SESSIOND_RULES_BREAKER_WINDOW", "5m"),
        ],
    )
    .unwrap();
    assert_eq!(c.geoip_city, Some(PathBuf::from("/geo/city.mmdb")));
    assert_eq!(c.geoip_asn, Some(PathBuf::from("/geo/asn.mmdb")));
    assert_eq!(c.rules, Some(PathBuf::from("/etc/sessiond/rules")));
    assert_eq!(c.rules_breaker_fraction, 0.01);
    assert_eq!(c.rules_breaker_window, Duration::minutes(5));
    let e = load(None, &[("SESSIOND_RULES_BREAKER_FRACTION", "2")]).unwrap_err();
    assert_eq!(e.key, "rules_breaker_fraction");
}

#[test]
fn the_login_linger_is_in_milliseconds_off_at_zero_and_at_most_a_second() {
    assert_eq!(
        load(None, &[]).unwrap().writer_login_linger,
        Duration::milliseconds(20)
    );
    let c = load(Some("writer_login_linger = \"5ms\"\n"), &[]).unwrap();
    assert_eq!(c.writer_login_linger, Duration::milliseconds(5));
    let c = load(Some("writer_login_linger = \"0ms\"\n"), &[]).unwrap();
    assert_eq!(c.writer_login_linger, Duration::zero());
    let e = load(Some("writer_login_linger = \"2s\"\n"), &[]).unwrap_err();
    assert!(e.to_string().contains("writer_login_linger"), "{e}");
}
