//! One typed configuration: built-in defaults, then a TOML file (`--config`), then `SESSIOND_*`
//! environment variables, then command-line flags. Every value is checked at start; a bad one
//! stops the start with a message naming its key.

use crate::domain::Duration;
use crate::domain::parse::{parse_duration, parse_net};
use crate::domain::session::SessionPolicy;
use crate::domain::throttle::{Limit, ThrottlePolicy};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL (several nodes may share it); unset, SQLite in
    /// `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    pub issuer: String,
    pub audience: String,
    pub access_token_lifetime: Duration,
    /// How long an ID token is valid (`exp` - `iat`).
    pub id_token_lifetime: Duration,
    pub refresh_idle_lifetime: Duration,
    pub refresh_absolute_lifetime: Duration,
    pub refresh_grace_window: Duration,
    pub refresh_max_grace_retries: u32,
    /// After the grace window and up to this long after a rotation, a retry of the replaced
    /// token from the same device gets its successor (the answer was lost); 0 turns it off.
    pub refresh_late_retry_window: Duration,
    pub registration_enabled: bool,
    pub trusted_proxies: Vec<IpNet>,
    /// Origins allowed to refresh by cookie; empty means "the origin this server is reached at".
    pub cookie_allowed_origins: Vec<String>,
    /// Commands the writer may commit in one transaction.
    pub writer_max_batch: usize,
    /// How long a lone login waits in the writer for another to share its commit, while
    /// password checks queue (`commands::writer::Linger`); zero: never.
    pub writer_login_linger: Duration,
    pub log_format: LogFormat,
    /// Cron schedules (six fields, seconds first; `off` disables the job).
    pub expiry_sweep_schedule: Option<String>,
    pub key_rotation_schedule: Option<String>,
    pub retention_schedule: Option<String>,
    /// How often GeoIP databases and rule files are checked for changes (also on SIGHUP) and
    /// the key ring is refreshed from the store (keys another node rotated).
    pub reload_schedule: Option<String>,
    /// How long a signing key signs before the next one takes over.
    pub signing_key_rotation_interval: Duration,
    /// How long a new key is published in the JWKS before it signs (default: one access-token
    /// lifetime, so verifiers that cache the JWKS have it before they see a token of it).
    pub signing_key_publish_ahead: Option<Duration>,
    /// Projection rows of sessions that ended longer ago than this are pruned.
    pub retention_period: Duration,
    /// Request context (addresses, User-Agents, places) older than this can no longer be read:
    /// the retention job destroys the data keys of the periods past it.
    pub personal_data_retention: Duration,
    /// First retry delay of a failed webhook delivery; it doubles up to `webhook_retry_max`.
    pub webhook_retry_initial: Duration,
    pub webhook_retry_max: Duration,
    /// How often delivery looks for new events when no commit woke it.
    pub webhook_poll_interval: Duration,
    pub webhook_timeout: Duration,
    /// The URL clients reach this server at, for absolute links (OAuth metadata); `None` means
    /// `http://` + the listen address.
    pub public_url: Option<String>,
    /// Whether `/oauth/token` accepts `grant_type=password` (first-party clients).
    pub oauth_password_grant: bool,
    /// DPoP (RFC 9449) for every session: logins and token requests need a proof, and
    /// refreshes of families that are not bound are refused. Per-client requirement comes with
    /// registered OAuth clients (see `service::dpop::dpop_required`).
    pub require_dpop: bool,
    /// How far a DPoP proof's `iat` may be from the server's clock, either way.
    pub dpop_proof_window: Duration,
    /// Require a server nonce in DPoP proofs (`DPoP-Nonce`, `use_dpop_nonce`).
    pub dpop_nonce: bool,
    /// MaxMind-format city database (and optional ASN database) for request locations.
    pub geoip_city: Option<PathBuf>,
    pub geoip_asn: Option<PathBuf>,
    /// Optional GeoIP2-Anonymous-IP and GeoIP2-Connection-Type databases (network kinds).
    pub geoip_anonymous_ip: Option<PathBuf>,
    pub geoip_connection_type: Option<PathBuf>,
    /// The operator's own lists of hosting and VPN networks, by ASN.
    pub hosting_asns: Vec<u32>,
    pub vpn_asns: Vec<u32>,
    /// Directory of rule files (`*.toml`); none means no rules.
    pub rules: Option<PathBuf>,
    /// Cap on revoking rule actions: this share of active users per window, at least the floor.
    pub rules_breaker_fraction: f64,
    pub rules_breaker_floor: u32,
    pub rules_breaker_window: Duration,
    /// How often a live admin stream checks that its caller still holds the security role
    /// (session live, user not locked, API key not revoked).
    pub admin_stream_recheck_interval: Duration,
    /// Live admin streams one caller (user or API key) may hold open at once on a node.
    pub admin_stream_max_per_caller: usize,
    /// Networks webhook deliveries may reach although they are loopback, private, link-local
    /// or metadata addresses (refused by default).
    pub webhook_allow_networks: Vec<IpNet>,
    /// Whether plain `http://` webhook URLs are accepted (off: `https://` only).
    pub webhook_allow_http: bool,
    /// PEM file of extra CA certificates trusted for webhook TLS (a private CA), beside the
    /// built-in public roots.
    pub webhook_ca_file: Option<PathBuf>,
    /// Login throttling (on by default, whatever the rules): failed password checks allowed
    /// per window for one account from one address, for one /24 (/64) network, and for one
    /// account from anywhere. A limit of 0 turns that counter off.
    pub login_throttle: ThrottlePolicy,
    /// Password checks that may wait for an argon2 slot; more are refused at once (503).
    pub password_queue: usize,
    /// The zxcvbn score (0–4) a new password needs.
    pub password_min_score: u8,
    /// How long a connection may take to send a request's head, counted from when the server
    /// starts waiting for it: on a new connection and between requests of a kept-alive one
    /// (so it is also the idle timeout).
    pub http_header_read_timeout: Duration,
    /// How long a request may take until its answer starts.
    pub http_request_timeout: Duration,
    /// Requests served at once; more are answered 503 `overloaded` at once.
    pub http_max_in_flight: usize,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// When set, `/metrics` is served on this address only (and not on `listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// Sign-in notices: at most one per new device class or country per user in this window.
    pub notice_window: Duration,
    /// How long a "this was me" exception keeps that device and network quiet.
    pub notice_exception_lifetime: Duration,
    /// Where sign-in notices are mailed from (`smtp://host:port`, `smtps://…`, or
    /// `smtp://…?tls=required` for STARTTLS; user and password in the URL). No mail without it.
    pub smtp_url: Option<SmtpUrl>,
    /// The notices' `From:` address (needed with `smtp_url`).
    pub smtp_from: Option<String>,
}

/// An SMTP URL. It may carry a password, so it is never printed: `Debug` shows the scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl(String);

impl SmtpUrl {
    pub fn parse(url: &str) -> Option<SmtpUrl> {
        let url = url.trim();
        (url.starts_with("smtp://") || url.starts_with("smtps://")).then(|| SmtpUrl(url.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.0.split("://").next().unwrap_or("");
        write!(f, "SmtpUrl({scheme}://…)")
    }
}

/// A database URL. It may carry a password, so it is never printed: `Debug` shows the scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn parse(url: &str) -> Option<DatabaseUrl> {
        let url = url.trim();
        (url.starts_with("postgres://") || url.starts_with("postgresql://"))
            .then(|| DatabaseUrl(url.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.0.split("://").next().unwrap_or("");
        write!(f, "DatabaseUrl({scheme}://…)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Every key a config file or the environment may set (env: `SESSIOND_` + upper case).
pub const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "issuer",
    "audience",
    "access_token_lifetime",
    "id_token_lifetime",
    "refresh_idle_lifetime",
    "refresh_absolute_lifetime",
    "refresh_grace_window",
    "refresh_max_grace_retries",
    "refresh_late_retry_window",
    "registration_enabled",
    "trusted_proxies",
    "cookie_allowed_origins",
    "writer_max_batch",
    "writer_login_linger",
    "log_format",
    "expiry_sweep_schedule",
    "key_rotation_schedule",
    "retention_schedule",
    "reload_schedule",
    "signing_key_rotation_interval",
    "signing_key_publish_ahead",
    "retention_period",
    "personal_data_retention",
    "webhook_retry_initial",
    "webhook_retry_max",
    "webhook_poll_interval",
    "webhook_timeout",
    "public_url",
    "oauth_password_grant",
    "require_dpop",
    "dpop_proof_window",
    "dpop_nonce",
    "geoip_city",
    "geoip_asn",
    "geoip_anonymous_ip",
    "geoip_connection_type",
    "hosting_asns",
    "vpn_asns",
    "rules",
    "rules_breaker_fraction",
    "rules_breaker_floor",
    "rules_breaker_window",
    "admin_stream_recheck_interval",
    "admin_stream_max_per_caller",
    "webhook_allow_networks",
    "webhook_allow_http",
    "webhook_ca_file",
    "login_throttle_address_limit",
    "login_throttle_address_window",
    "login_throttle_network_limit",
    "login_throttle_network_window",
    "login_throttle_account_limit",
    "login_throttle_account_window",
    "password_queue",
    "password_min_score",
    "http_header_read_timeout",
    "http_request_timeout",
    "http_max_in_flight",
    "metrics_token",
    "metrics_listen",
    "notice_window",
    "notice_exception_lifetime",
    "smtp_url",
    "smtp_from",
];

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            issuer: "sessiond".into(),
            audience: "sessiond".into(),
            access_token_lifetime: Duration::minutes(10),
            id_token_lifetime: Duration::minutes(10),
            refresh_idle_lifetime: Duration::days(7),
            refresh_absolute_lifetime: Duration::days(30),
            refresh_grace_window: Duration::seconds(30),
            refresh_max_grace_retries: 3,
            refresh_late_retry_window: Duration::minutes(10),
            registration_enabled: true,
            trusted_proxies: Vec::new(),
            cookie_allowed_origins: Vec::new(),
            writer_max_batch: 256,
            writer_login_linger: Duration::milliseconds(20),
            log_format: LogFormat::Text,
            expiry_sweep_schedule: Some("0 * * * * *".into()),
            key_rotation_schedule: Some("30 * * * * *".into()),
            retention_schedule: Some("0 17 3 * * *".into()),
            reload_schedule: Some("*/30 * * * * *".into()),
            signing_key_rotation_interval: Duration::days(30),
            signing_key_publish_ahead: None,
            retention_period: Duration::days(90),
            personal_data_retention: Duration::days(90),
            webhook_retry_initial: Duration::seconds(1),
            webhook_retry_max: Duration::minutes(10),
            webhook_poll_interval: Duration::seconds(5),
            webhook_timeout: Duration::seconds(10),
            public_url: None,
            oauth_password_grant: false,
            require_dpop: false,
            dpop_proof_window: Duration::seconds(60),
            dpop_nonce: false,
            geoip_city: None,
            geoip_asn: None,
            geoip_anonymous_ip: None,
            geoip_connection_type: None,
            hosting_asns: Vec::new(),
            vpn_asns: Vec::new(),
            rules: None,
            rules_breaker_fraction: 0.005,
            rules_breaker_floor: 20,
            rules_breaker_window: Duration::minutes(10),
            admin_stream_recheck_interval: Duration::seconds(5),
            admin_stream_max_per_caller: 4,
            webhook_allow_networks: Vec::new(),
            webhook_allow_http: false,
            webhook_ca_file: None,
            notice_window: Duration::hours(24),
            notice_exception_lifetime: Duration::days(30),
            smtp_url: None,
            smtp_from: None,
            login_throttle: ThrottlePolicy {
                account_address: Limit {
                    max_failures: 5,
                    window: Duration::minutes(15),
                },
                network: Limit {
                    max_failures: 100,
                    window: Duration::minutes(15),
                },
                account: Limit {
                    max_failures: 20,
                    window: Duration::minutes(15),
                },
            },
            password_queue: 32,
            password_min_score: 3,
            http_header_read_timeout: Duration::seconds(10),
            http_request_timeout: Duration::seconds(30),
            http_max_in_flight: 1024,
            metrics_token: None,
            metrics_listen: None,
        }
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub geoip_city: Option<PathBuf>,
    pub geoip_asn: Option<PathBuf>,
    pub geoip_anonymous_ip: Option<PathBuf>,
    pub geoip_connection_type: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    /// Comma-separated, as the environment gives it.
    pub trusted_proxies: Option<String>,
}

impl Config {
    /// Where webhook deliveries may go.
    pub fn destination_policy(&self) -> crate::domain::destination::DestinationPolicy {
        crate::domain::destination::DestinationPolicy {
            allow_networks: self.webhook_allow_networks.clone(),
            allow_http: self.webhook_allow_http,
        }
    }

    /// Defaults, then the file, then `env` (pass `std::env::vars()`), then `overrides`.
    pub fn load(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut raw: BTreeMap<String, toml::Value> = BTreeMap::new();
        if let Some(path) = &overrides.config_file {
            raw.extend(read_file(path)?);
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix("SESSIOND_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if KEYS.contains(&key.as_str()) {
                raw.insert(key, toml::Value::String(value));
            }
        }
        if let Some(listen) = &overrides.listen {
            raw.insert("listen".into(), toml::Value::String(listen.clone()));
        }
        for (key, path) in [
            ("geoip_city", &overrides.geoip_city),
            ("geoip_asn", &overrides.geoip_asn),
            ("geoip_anonymous_ip", &overrides.geoip_anonymous_ip),
            ("geoip_connection_type", &overrides.geoip_connection_type),
            ("rules", &overrides.rules),
        ] {
            if let Some(p) = path {
                raw.insert(key.into(), toml::Value::String(p.display().to_string()));
            }
        }
        if let Some(nets) = &overrides.trusted_proxies {
            raw.insert("trusted_proxies".into(), toml::Value::String(nets.clone()));
        }
        if let Some(dir) = &overrides.data_dir {
            raw.insert(
                "data_dir".into(),
                toml::Value::String(dir.display().to_string()),
            );
        }
        if let Some(url) = &overrides.database_url {
            raw.insert("database_url".into(), toml::Value::String(url.clone()));
        }
        Config::from_values(raw)
    }

    fn from_values(raw: BTreeMap<String, toml::Value>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        for (key, value) in &raw {
            let k = key.as_str();
            match k {
                "listen" => {
                    c.listen = string(k, value)?
                        .parse()
                        .map_err(|_| err(k, "expected an address like 127.0.0.1:8080"))?
                }
                "data_dir" => c.data_dir = PathBuf::from(non_empty(k, value)?),
                // The value is not echoed back: it may hold a password.
                "database_url" => {
                    c.database_url = Some(DatabaseUrl::parse(&string(k, value)?).ok_or_else(
                        || err(k, "expected postgres://user@host:port/database (SQLite needs no URL: it lives in data_dir)"),
                    )?)
                }
                "issuer" => c.issuer = non_empty(k, value)?,
                "audience" => c.audience = non_empty(k, value)?,
                "access_token_lifetime" => c.access_token_lifetime = duration(k, value)?,
                "id_token_lifetime" => c.id_token_lifetime = duration(k, value)?,
                "refresh_idle_lifetime" => c.refresh_idle_lifetime = duration(k, value)?,
                "refresh_absolute_lifetime" => c.refresh_absolute_lifetime = duration(k, value)?,
                "refresh_grace_window" => c.refresh_grace_window = duration(k, value)?,
                "refresh_late_retry_window" => c.refresh_late_retry_window = duration(k, value)?,
                "refresh_max_grace_retries" => {
                    c.refresh_max_grace_retries = integer(k, value, 0, 100)? as u32
                }
                "registration_enabled" => c.registration_enabled = boolean(k, value)?,
                "trusted_proxies" => {
                    c.trusted_proxies = list(k, value)?
                        .iter()
                        .map(|s| {
                            parse_net(s)
                                .ok_or_else(|| err(k, format!("{s:?} is not an address or CIDR")))
                        })
                        .collect::<Result<_, _>>()?
                }
                "cookie_allowed_origins" => c.cookie_allowed_origins = list(k, value)?,
                "writer_max_batch" => c.writer_max_batch = integer(k, value, 1, 10_000)? as usize,
                "writer_login_linger" => {
                    c.writer_login_linger = duration_ms(k, value)?;
                    if c.writer_login_linger > Duration::seconds(1) {
                        return Err(err(k, "at most 1s"));
                    }
                }
                "log_format" => {
                    c.log_format = match string(k, value)?.as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => return Err(err(k, "expected \"text\" or \"json\"")),
                    }
                }
                "expiry_sweep_schedule" => c.expiry_sweep_schedule = schedule(k, value)?,
                "key_rotation_schedule" => c.key_rotation_schedule = schedule(k, value)?,
                "retention_schedule" => c.retention_schedule = schedule(k, value)?,
                "reload_schedule" => c.reload_schedule = schedule(k, value)?,
                "signing_key_rotation_interval" => {
                    c.signing_key_rotation_interval = duration(k, value)?
                }
                "signing_key_publish_ahead" => {
                    c.signing_key_publish_ahead = Some(duration(k, value)?)
                }
                "retention_period" => c.retention_period = duration(k, value)?,
                "personal_data_retention" => c.personal_data_retention = duration(k, value)?,
                "webhook_retry_initial" => c.webhook_retry_initial = duration_ms(k, value)?,
                "webhook_retry_max" => c.webhook_retry_max = duration_ms(k, value)?,
                "webhook_poll_interval" => c.webhook_poll_interval = duration_ms(k, value)?,
                "webhook_timeout" => c.webhook_timeout = duration_ms(k, value)?,
                "public_url" => {
                    let url = non_empty(k, value)?;
                    if !(url.starts_with("https://") || url.starts_with("http://"))
                        || url.contains(['?', '#'])
                    {
                        return Err(err(k, "expected an http(s) URL without query or fragment"));
                    }
                    c.public_url = Some(url.trim_end_matches('/').to_owned());
                }
                "oauth_password_grant" => c.oauth_password_grant = boolean(k, value)?,
                "admin_stream_recheck_interval" => {
                    c.admin_stream_recheck_interval = duration_ms(k, value)?
                }
                "admin_stream_max_per_caller" => {
                    c.admin_stream_max_per_caller = integer(k, value, 1, 1000)? as usize
                }
                "webhook_allow_networks" => {
                    c.webhook_allow_networks = list(k, value)?
                        .iter()
                        .map(|s| {
                            parse_net(s)
                                .ok_or_else(|| err(k, format!("{s:?} is not an address or CIDR")))
                        })
                        .collect::<Result<_, _>>()?
                }
                "webhook_allow_http" => c.webhook_allow_http = boolean(k, value)?,
                "webhook_ca_file" => c.webhook_ca_file = Some(PathBuf::from(non_empty(k, value)?)),
                "notice_window" => c.notice_window = duration(k, value)?,
                "notice_exception_lifetime" => c.notice_exception_lifetime = duration(k, value)?,
                "smtp_url" => {
                    c.smtp_url = Some(
                        SmtpUrl::parse(&non_empty(k, value)?)
                            .ok_or_else(|| err(k, "expected an smtp:// or smtps:// URL"))?,
                    )
                }
                "smtp_from" => {
                    let from = non_empty(k, value)?;
                    crate::domain::user::normalize_email(&from)
                        .map_err(|_| err(k, "expected an address like sessiond@example.com"))?;
                    c.smtp_from = Some(from)
                }
                "require_dpop" => c.require_dpop = boolean(k, value)?,
                "dpop_proof_window" => c.dpop_proof_window = duration(k, value)?,
                "dpop_nonce" => c.dpop_nonce = boolean(k, value)?,
                "geoip_city" => c.geoip_city = Some(PathBuf::from(non_empty(k, value)?)),
                "geoip_asn" => c.geoip_asn = Some(PathBuf::from(non_empty(k, value)?)),
                "geoip_anonymous_ip" => {
                    c.geoip_anonymous_ip = Some(PathBuf::from(non_empty(k, value)?))
                }
                "geoip_connection_type" => {
                    c.geoip_connection_type = Some(PathBuf::from(non_empty(k, value)?))
                }
                "hosting_asns" => c.hosting_asns = asns(k, value)?,
                "vpn_asns" => c.vpn_asns = asns(k, value)?,
                "rules" => c.rules = Some(PathBuf::from(non_empty(k, value)?)),
                "rules_breaker_fraction" => {
                    let f = match value {
                        toml::Value::Float(f) => *f,
                        toml::Value::Integer(n) => *n as f64,
                        toml::Value::String(s) => s
                            .trim()
                            .parse()
                            .map_err(|_| err(k, "expected a number like 0.005"))?,
                        _ => return Err(err(k, "expected a number like 0.005")),
                    };
                    if !(0.0..=1.0).contains(&f) {
                        return Err(err(k, "must be between 0 and 1"));
                    }
                    c.rules_breaker_fraction = f;
                }
                "rules_breaker_floor" => {
                    c.rules_breaker_floor = integer(k, value, 0, 1_000_000)? as u32
                }
                "rules_breaker_window" => c.rules_breaker_window = duration(k, value)?,
                "login_throttle_address_limit" => {
                    c.login_throttle.account_address.max_failures =
                        integer(k, value, 0, 1_000_000)? as u32
                }
                "login_throttle_address_window" => {
                    c.login_throttle.account_address.window = duration(k, value)?
                }
                "login_throttle_network_limit" => {
                    c.login_throttle.network.max_failures = integer(k, value, 0, 1_000_000)? as u32
                }
                "login_throttle_network_window" => {
                    c.login_throttle.network.window = duration(k, value)?
                }
                "login_throttle_account_limit" => {
                    c.login_throttle.account.max_failures = integer(k, value, 0, 1_000_000)? as u32
                }
                "login_throttle_account_window" => {
                    c.login_throttle.account.window = duration(k, value)?
                }
                "password_queue" => c.password_queue = integer(k, value, 0, 100_000)? as usize,
                "password_min_score" => c.password_min_score = integer(k, value, 0, 4)? as u8,
                "http_header_read_timeout" => c.http_header_read_timeout = duration_ms(k, value)?,
                "http_request_timeout" => c.http_request_timeout = duration_ms(k, value)?,
                "http_max_in_flight" => {
                    c.http_max_in_flight = integer(k, value, 1, 1_000_000)? as usize
                }
                "metrics_token" => {
                    let token = non_empty(k, value)?;
                    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(err(k, "must be at least 16 printable characters"));
                    }
                    c.metrics_token = Some(token)
                }
                "metrics_listen" => {
                    c.metrics_listen = Some(
                        string(k, value)?
                            .parse()
                            .map_err(|_| err(k, "expected an address like 127.0.0.1:9090"))?,
                    )
                }
                other => {
                    return Err(err(
                        other,
                        format!("unknown key (known keys: {})", KEYS.join(", ")),
                    ));
                }
            }
        }
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |k: &str, d: Duration| {
            if d <= Duration::zero() {
                Err(err(k, "must be longer than zero"))
            } else {
                Ok(())
            }
        };
        positive("access_token_lifetime", self.access_token_lifetime)?;
        positive("id_token_lifetime", self.id_token_lifetime)?;
        positive("refresh_idle_lifetime", self.refresh_idle_lifetime)?;
        positive("refresh_absolute_lifetime", self.refresh_absolute_lifetime)?;
        if self.access_token_lifetime > Duration::days(1) {
            return Err(err(
                "access_token_lifetime",
                "must be at most 1d: access tokens cannot be recalled",
            ));
        }
        if self.refresh_idle_lifetime > self.refresh_absolute_lifetime {
            return Err(err(
                "refresh_idle_lifetime",
                "must not exceed refresh_absolute_lifetime",
            ));
        }
        if self.dpop_proof_window < Duration::seconds(1)
            || self.dpop_proof_window > Duration::minutes(10)
        {
            return Err(err("dpop_proof_window", "must be between 1s and 10m"));
        }
        if self.refresh_grace_window < Duration::zero()
            || self.refresh_grace_window > Duration::minutes(5)
        {
            return Err(err("refresh_grace_window", "must be between 0s and 5m"));
        }
        let late = self.refresh_late_retry_window;
        if late != Duration::zero()
            && (late < self.refresh_grace_window || late > Duration::hours(1))
        {
            return Err(err(
                "refresh_late_retry_window",
                "must be 0s (off) or between refresh_grace_window and 1h",
            ));
        }
        if self.signing_key_rotation_interval < Duration::hours(1) {
            return Err(err("signing_key_rotation_interval", "must be at least 1h"));
        }
        if self.publish_ahead() >= self.signing_key_rotation_interval {
            return Err(err(
                "signing_key_publish_ahead",
                "must be shorter than signing_key_rotation_interval",
            ));
        }
        positive("retention_period", self.retention_period)?;
        positive("personal_data_retention", self.personal_data_retention)?;
        positive("webhook_retry_initial", self.webhook_retry_initial)?;
        positive("webhook_poll_interval", self.webhook_poll_interval)?;
        positive("webhook_timeout", self.webhook_timeout)?;
        positive(
            "admin_stream_recheck_interval",
            self.admin_stream_recheck_interval,
        )?;
        if self.admin_stream_recheck_interval > Duration::minutes(1) {
            return Err(err(
                "admin_stream_recheck_interval",
                "must be at most 1m: a stream must end soon after its caller loses the role",
            ));
        }
        positive("http_header_read_timeout", self.http_header_read_timeout)?;
        positive("http_request_timeout", self.http_request_timeout)?;
        for (k, limit) in [
            (
                "login_throttle_address_window",
                self.login_throttle.account_address,
            ),
            ("login_throttle_network_window", self.login_throttle.network),
            ("login_throttle_account_window", self.login_throttle.account),
        ] {
            positive(k, limit.window)?;
            if limit.window > Duration::days(1) {
                return Err(err(k, "must be at most 1d"));
            }
        }
        positive("notice_window", self.notice_window)?;
        positive("notice_exception_lifetime", self.notice_exception_lifetime)?;
        if self.smtp_url.is_some() && self.smtp_from.is_none() {
            return Err(err("smtp_from", "must be set when smtp_url is"));
        }
        if self.webhook_retry_max < self.webhook_retry_initial {
            return Err(err(
                "webhook_retry_max",
                "must not be shorter than webhook_retry_initial",
            ));
        }
        Ok(())
    }

    /// How long a new signing key is published before it signs.
    pub fn publish_ahead(&self) -> Duration {
        self.signing_key_publish_ahead
            .unwrap_or(self.access_token_lifetime)
    }

    pub fn session_policy(&self) -> SessionPolicy {
        SessionPolicy {
            idle_lifetime: self.refresh_idle_lifetime,
            absolute_lifetime: self.refresh_absolute_lifetime,
            grace_window: self.refresh_grace_window,
            max_grace_retries: self.refresh_max_grace_retries,
            late_retry_window: self.refresh_late_retry_window,
        }
    }

    /// The OpenID Provider's issuer identifier (OIDC Discovery §3, RFC 8414 §2): the base URL,
    /// which is exactly `public_url` when it is set. ID tokens, logout tokens and both metadata
    /// documents say this; access tokens keep `issuer`, what first-party resource servers check.
    pub fn oidc_issuer(&self) -> String {
        self.base_url()
    }

    /// The base of this server's absolute URLs, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("sessiond.db")
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, toml::Value>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        err("config", format!("{}: {}", path.display(), e.message()))
    })?;
    Ok(table.into_iter().collect())
}

fn string(k: &str, v: &toml::Value) -> Result<String, ConfigError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| err(k, "expected a string"))
}

fn non_empty(k: &str, v: &toml::Value) -> Result<String, ConfigError> {
    let s = string(k, v)?;
    if s.trim().is_empty() {
        Err(err(k, "must not be empty"))
    } else {
        Ok(s)
    }
}

fn integer(k: &str, v: &toml::Value, min: i64, max: i64) -> Result<i64, ConfigError> {
    let n = match v {
        toml::Value::Integer(n) => *n,
        toml::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| err(k, "expected a whole number"))?,
        _ => return Err(err(k, "expected a whole number")),
    };
    if n < min || n > max {
        return Err(err(k, format!("must be between {min} and {max}")));
    }
    Ok(n)
}

fn boolean(k: &str, v: &toml::Value) -> Result<bool, ConfigError> {
    match v {
        toml::Value::Boolean(b) => Ok(*b),
        toml::Value::String(s) => match s.trim() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(err(k, "expected true or false")),
        },
        _ => Err(err(k, "expected true or false")),
    }
}

/// A TOML array of strings, or one comma-separated string (the environment's form).
fn list(k: &str, v: &toml::Value) -> Result<Vec<String>, ConfigError> {
    match v {
        toml::Value::Array(items) => items.iter().map(|i| string(k, i)).collect(),
        toml::Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        _ => Err(err(k, "expected a list of strings")),
    }
}

/// A list of AS numbers: `[16509, 14061]`, or `"16509,AS14061"` from the environment.
fn asns(k: &str, v: &toml::Value) -> Result<Vec<u32>, ConfigError> {
    let items: Vec<String> = match v {
        toml::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                toml::Value::Integer(n) => Ok(n.to_string()),
                other => string(k, other),
            })
            .collect::<Result<_, _>>()?,
        other => list(k, other)?,
    };
    items
        .iter()
        .map(|s| {
            let digits = s.trim().trim_start_matches("AS").trim_start_matches("as");
            digits
                .parse::<u32>()
                .map_err(|_| err(k, format!("{s:?} is not an AS number")))
        })
        .collect()
}

/// A six-field cron expression (seconds first), or `off`.
fn schedule(k: &str, v: &toml::Value) -> Result<Option<String>, ConfigError> {
    let text = string(k, v)?.trim().to_owned();
    if text == "off" {
        return Ok(None);
    }
    tokio_cron_scheduler::Job::new_async(text.as_str(), |_, _| Box::pin(async {}))
        .map_err(|_| {
            err(
                k,
                format!("{text:?} is not a cron schedule like \"0 * * * * *\" (seconds first) or \"off\""),
            )
        })?;
    Ok(Some(text))
}

/// A duration that may also be given in milliseconds (`250ms`), for retry timings.
fn duration_ms(k: &str, v: &toml::Value) -> Result<Duration, ConfigError> {
    if let Some(ms) = v.as_str().and_then(|s| s.trim().strip_suffix("ms")) {
        return ms
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Duration::milliseconds)
            .ok_or_else(|| err(k, format!("{ms:?} is not a number of milliseconds")));
    }
    duration(k, v)
}

fn duration(k: &str, v: &toml::Value) -> Result<Duration, ConfigError> {
    let text = match v {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::String(s) => s.clone(),
        _ => return Err(err(k, "expected a duration like \"30s\", \"10m\", \"7d\"")),
    };
    parse_duration(&text).ok_or_else(|| {
        err(
            k,
            format!("{text:?} is not a duration like \"30s\", \"10m\", \"7d\""),
        )
    })
}

#[cfg(test)]
mod tests;
