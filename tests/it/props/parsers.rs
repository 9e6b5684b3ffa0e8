//! The parsers, called directly: they never panic, what they make they read back, and what
//! they refuse comes back as their typed error.

use super::config;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use sessiond::config::{Config, ConfigError, KEYS, Overrides};
use sessiond::domain::parse_timestamp;
use sessiond::domain::token::{ApiKey, RefreshToken};
use sessiond::rules::file::{RuleError, parse as parse_rules};
use sessiond::tokens::keys::MasterKey;
use sessiond::tokens::{AccessGrant, TokenService};
use std::path::Path;
use uuid::Uuid;

fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(config());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

// --- refresh tokens -------------------------------------------------------------------------

#[test]
fn refresh_tokens_round_trip_and_nothing_else_parses_as_one() {
    // What the server makes, it reads back: the same id and the same hash.
    run((any::<[u8; 16]>(), any::<[u8; 32]>()), |(id, entropy)| {
        let token = RefreshToken::new(Uuid::from_bytes(id), entropy);
        let parsed = RefreshToken::parse(token.expose()).expect("a made token parses");
        prop_assert_eq!(parsed.id(), Uuid::from_bytes(id));
        prop_assert_eq!(parsed.key(), token.key());
        // An API key with the same body is not a refresh token, and the other way round.
        let key = ApiKey::new(Uuid::from_bytes(id), entropy);
        prop_assert!(RefreshToken::parse(key.expose()).is_err());
        prop_assert!(ApiKey::parse(token.expose()).is_err());
        Ok(())
    });
    // Any text: a typed refusal or a token whose text is exactly the input, never a panic.
    run(
        prop_oneof![
            any::<String>(),
            "sdrt_[A-Za-z0-9_-]{0,80}",
            "sdrt_[A-Za-z0-9_-]{64}",
            "sdrt_.{0,70}",
        ],
        |text| {
            if let Ok(t) = RefreshToken::parse(&text) {
                prop_assert_eq!(t.expose(), text.as_str());
                prop_assert_eq!(text.len(), "sdrt_".len() + 64);
            }
            Ok(())
        },
    );
    // One character changed: refused, or another token (another key) altogether.
    run(
        (
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            0usize..64,
            proptest::char::any(),
        ),
        |(id, entropy, at, c)| {
            let token = RefreshToken::new(Uuid::from_bytes(id), entropy);
            let mut chars: Vec<char> = token.expose().chars().collect();
            let at = "sdrt_".len() + at;
            prop_assume!(chars[at] != c);
            chars[at] = c;
            let edited: String = chars.into_iter().collect();
            if let Ok(t) = RefreshToken::parse(&edited) {
                prop_assert_ne!(t.key(), token.key());
            }
            Ok(())
        },
    );
}

// --- access tokens --------------------------------------------------------------------------

fn token_service(dir: &Path) -> TokenService {
    let master = MasterKey::load(None, dir).unwrap();
    let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
    let loaded = sessiond::tokens::load_keys(&[], &master, now).unwrap();
    TokenService::new(
        "https://issuer.test".into(),
        "api".into(),
        sessiond::domain::Duration::minutes(10),
        sessiond::tokens::OidcSettings {
            issuer: "https://issuer.test".into(),
            id_token_lifetime: sessiond::domain::Duration::minutes(10),
        },
        loaded.keys,
    )
}

/// A JSON value for a header field: the types a forger would try.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("none"),
            Just("EdDSA"),
            Just("HS256"),
            Just("ES256"),
            Just("RS256"),
            Just("JWT"),
            Just("at+jwt"),
            Just("secevent+jwt"),
            Just("../../etc/passwd"),
        ]
        .prop_map(|s| Value::from(s.to_owned())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn the_access_token_verifier_refuses_every_forgery_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_service(dir.path());
    let now = parse_timestamp("2026-01-01T00:00:10.000Z").unwrap();
    let roles = vec!["user".to_owned()];
    let grant = |sid: Uuid| AccessGrant {
        user_id: Uuid::nil(),
        session_id: sid,
        scope: "openid",
        roles: &roles,
        auth_time: now,
        acr: "urn:sessiond:acr:pwd",
        amr: &["pwd"],
        dpop_jkt: None,
    };

    // What the server signs, it verifies, with the claims it put in.
    run(any::<[u8; 16]>(), |sid| {
        let sid = Uuid::from_bytes(sid);
        let (jwt, _) = tokens.issue(&grant(sid), now);
        let claims = tokens.verify(&jwt, now).expect("its own token verifies");
        prop_assert_eq!(claims.sid, sid);
        Ok(())
    });

    // Any text, or three base64url segments of anything: a TokenError, never a panic.
    run(
        prop_oneof![
            any::<String>(),
            (
                prop::collection::vec(any::<u8>(), 0..200),
                prop::collection::vec(any::<u8>(), 0..200),
                prop::collection::vec(any::<u8>(), 0..80),
            )
                .prop_map(|(h, c, s)| format!(
                    "{}.{}.{}",
                    URL_SAFE_NO_PAD.encode(h),
                    URL_SAFE_NO_PAD.encode(c),
                    URL_SAFE_NO_PAD.encode(s)
                )),
        ],
        |text| {
            prop_assert!(tokens.verify(&text, now).is_err());
            Ok(())
        },
    );

    // The real claims and signature under any other header: refused.
    let (jwt, _) = tokens.issue(&grant(Uuid::nil()), now);
    let (header, rest) = jwt.split_once('.').unwrap();
    let original: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    run(
        prop::collection::btree_map(
            prop_oneof![
                Just("alg".to_owned()),
                Just("typ".to_owned()),
                Just("kid".to_owned()),
                Just("crit".to_owned()),
                Just("jku".to_owned()),
                Just("b64".to_owned()),
                ".{0,5}",
            ],
            json_value(),
            1..5,
        ),
        |changes| {
            let mut edited = original.clone();
            for (k, v) in changes {
                edited.insert(k, v);
            }
            prop_assume!(edited != original);
            let forged = format!(
                "{}.{rest}",
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&edited).unwrap())
            );
            prop_assert!(tokens.verify(&forged, now).is_err());
            Ok(())
        },
    );

    // Any byte of the signed part or the signature changed: refused.
    run((0..jwt.len(), 0x21u8..0x7f), |(at, b)| {
        let mut bytes = jwt.clone().into_bytes();
        prop_assume!(bytes[at] != b && bytes[at] != b'.');
        bytes[at] = b;
        if let Ok(edited) = String::from_utf8(bytes) {
            // base64url has two spellings of the last character's unused bits; a change
            // that only flips those decodes to the same bytes and is the same token.
            let same = edited
                .split('.')
                .zip(jwt.split('.'))
                .all(|(a, b)| URL_SAFE_NO_PAD.decode(a).ok() == URL_SAFE_NO_PAD.decode(b).ok());
            if !same {
                prop_assert!(tokens.verify(&edited, now).is_err());
            }
        }
        Ok(())
    });
}

// --- rule files -----------------------------------------------------------------------------

fn shipped_rules() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.display().to_string(), text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

/// A refusal names the file and a line of it.
fn check_rule_error(e: &RuleError, file: &str, text: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.file.display().to_string(), file);
    prop_assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e}");
    prop_assert!(!e.reason.is_empty());
    Ok(())
}

#[test]
fn the_rule_loader_never_panics_and_names_the_line_it_refuses() {
    let shipped = shipped_rules();
    for (file, text) in &shipped {
        parse_rules(Path::new(file), text).unwrap_or_else(|e| panic!("shipped: {e}"));
    }
    // Any text at all.
    run(any::<String>(), |text| {
        if let Err(e) = parse_rules(Path::new("any.toml"), &text) {
            check_rule_error(&e, "any.toml", &text)?;
        }
        Ok(())
    });
    // A shipped file with one line removed, doubled, replaced, or cut short.
    let n = shipped.len();
    run(
        (0..n, any::<prop::sample::Index>(), 0u8..4, ".{0,40}"),
        |(f, line, how, junk)| {
            let (file, text) = &shipped[f];
            let mut lines: Vec<&str> = text.lines().collect();
            let at = line.index(lines.len());
            match how {
                0 => {
                    lines.remove(at);
                }
                1 => lines.insert(at, lines[at]),
                2 => lines[at] = &junk,
                _ => lines.truncate(at),
            }
            let edited = lines.join("\n");
            if let Err(e) = parse_rules(Path::new(file), &edited) {
                check_rule_error(&e, file, &edited)?;
            }
            Ok(())
        },
    );
    // A rule table of plausible keys with values of any TOML type.
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        ".{0,12}".prop_map(|s| toml::Value::String(s).to_string()),
        Just("[\"login.succeeded\", \"nope\"]".to_owned()),
        Just("{ type = \"threshold\", limit = -1, window = \"99999999999d\" }".to_owned()),
        Just("{ type = \"impossible_travel\", max_speed_kmh = 1e309 }".to_owned()),
        Just("[]".to_owned()),
    ];
    let key = prop_oneof![
        Just("id"),
        Just("version"),
        Just("severity"),
        Just("mode"),
        Just("on"),
        Just("actions"),
        Just("explanation"),
        Just("detector"),
        Just("exception"),
        Just("test"),
    ];
    run(prop::collection::vec((key, value), 0..12), |pairs| {
        let mut text = String::from("[[rule]]\n");
        for (k, v) in &pairs {
            text.push_str(&format!("{k} = {v}\n"));
        }
        if let Err(e) = parse_rules(Path::new("gen.toml"), &text) {
            check_rule_error(&e, "gen.toml", &text)?;
        }
        Ok(())
    });
}

// --- configuration --------------------------------------------------------------------------

fn load(file: Option<&str>, env: Vec<(String, String)>) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.toml");
    let overrides = Overrides {
        config_file: file.map(|text| {
            std::fs::write(&path, text).unwrap();
            path.clone()
        }),
        ..Default::default()
    };
    Config::load(&overrides, env)
}

/// A refusal names a key the caller gave (or `config`, for a file that is not TOML).
fn check_config_error(e: &ConfigError, given: &[String]) -> Result<(), TestCaseError> {
    prop_assert!(
        e.key == "config" || given.contains(&e.key) || KEYS.contains(&e.key.as_str()),
        "{e}"
    );
    prop_assert!(!e.reason.is_empty());
    Ok(())
}

fn known_key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS).prop_map(str::to_owned)
}

#[test]
fn the_config_parser_never_panics_and_names_the_key_it_refuses() {
    // The start runs inside the runtime (cron schedules are checked there).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let value = prop_oneof![
        ".{0,16}",
        "[0-9]{1,25}[smhd]?",
        "-?[0-9]{1,3}(ms|s|m)",
        "[0-9*/, -]{0,20}",
        "(true|false|yes|off|1|0)",
        "[0-9.:\\[\\]a-f]{0,30}",
        Just("0 * * * * *".to_owned()),
        Just("https://x.example/".to_owned()),
        Just("postgres://u:secret@h/db".to_owned()),
    ];
    // The environment: SESSIOND_<KEY> with any text.
    run(
        prop::collection::vec((known_key(), value.clone()), 0..6),
        |pairs| {
            let given: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
            let env = pairs
                .into_iter()
                .map(|(k, v)| (format!("SESSIOND_{}", k.to_uppercase()), v))
                .collect();
            if let Err(e) = load(None, env) {
                check_config_error(&e, &given)?;
                // A database URL may hold a password: never in its message.
                if e.key == "database_url" {
                    prop_assert!(!e.to_string().contains("secret"), "{e}");
                }
            }
            Ok(())
        },
    );
    // A file: known and unknown keys, values of any TOML type.
    let toml_value = prop_oneof![
        value.prop_map(toml::Value::String),
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        prop::collection::vec(".{0,8}".prop_map(toml::Value::String), 0..3)
            .prop_map(toml::Value::Array),
    ];
    let key = prop_oneof![4 => known_key(), 1 => "[a-z_]{1,12}"];
    run(
        prop::collection::btree_map(key, toml_value, 0..6),
        |table| {
            let given: Vec<String> = table.keys().cloned().collect();
            let text = toml::to_string(&table.into_iter().collect::<toml::Table>()).unwrap();
            if let Err(e) = load(Some(&text), vec![]) {
                check_config_error(&e, &given)?;
            }
            Ok(())
        },
    );
    // Not TOML at all.
    run(any::<String>(), |text| {
        if let Err(e) = load(Some(&text), vec![]) {
            check_config_error(&e, &[])?;
        }
        Ok(())
    });
    // What is given is what is read: durations, counts and addresses.
    run(
        (
            0i64..=300,
            1i64..=1440,
            0u32..=100,
            any::<std::net::SocketAddrV4>(),
        ),
        |(grace, access_minutes, retries, listen)| {
            let c = load(
                Some(&format!(
                    "refresh_grace_window = \"{grace}s\"\naccess_token_lifetime = \"{access_minutes}m\"\n"
                )),
                vec![
                    ("SESSIOND_REFRESH_MAX_GRACE_RETRIES".into(), retries.to_string()),
                    ("SESSIOND_LISTEN".into(), listen.to_string()),
                ],
            )
            .unwrap();
            prop_assert_eq!(c.refresh_grace_window.num_seconds(), grace);
            prop_assert_eq!(c.access_token_lifetime.num_minutes(), access_minutes);
            prop_assert_eq!(c.refresh_max_grace_retries, retries);
            prop_assert_eq!(c.listen, std::net::SocketAddr::V4(listen));
            Ok(())
        },
    );
}
