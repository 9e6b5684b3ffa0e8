//! Upgrading a database of the build before signing keys, API keys and webhook subscriptions
//! were projections (migrations 0001–0004): migration 0005 moves the private keys, webhook
//! secrets and API-key hashes into the secrets table and the delivery state into
//! webhook_progress; opening the store records the existing subscriptions in the log, so a
//! rebuild keeps every row, secret and checkpoint.

use crate::pg::fresh_database;
use sessiond::commands::adopt_unlogged_webhooks;
use sessiond::domain::event::{
    Actor, ApiKeyCreated, Event, EventMetadata, SigningKeyChanged, SigningKeyCreated,
};
use sessiond::domain::keys::SigningKeyStatus;
use sessiond::domain::token::{ApiKey, hex};
use sessiond::domain::webhook::WebhookFormat;
use sessiond::domain::{Timestamp, format_timestamp, parse_timestamp};
use sessiond::store::{EventFilter, NewEvent, PostgresStore, SqliteStore, Store, WriteSession};
use sessiond::tokens::keys::{MasterKey, SigningKey};
use std::path::Path;
use uuid::Uuid;

fn t0() -> Timestamp {
    parse_timestamp("2025-11-01T08:00:00.000Z").unwrap()
}

/// The migrations of the build before (0001–0004) of `backend`, as a directory of their own.
async fn old_migrator(backend: &str, dir: &Path) -> sqlx::migrate::Migrator {
    let old = dir.join(format!("old-{backend}"));
    std::fs::create_dir_all(&old).unwrap();
    for entry in std::fs::read_dir(format!("migrations/{backend}")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0005" {
            std::fs::copy(&path, old.join(name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(old.as_path()).await.unwrap()
}

struct Legacy {
    key: sessiond::store::StoredSigningKey,
    api_key: ApiKey,
    hook: Uuid,
    hook_sealed: Vec<u8>,
}

fn legacy(master: &MasterKey) -> Legacy {
    let (_, key) = SigningKey::generate(master, t0());
    let hook = Uuid::from_u128(0x5ab5);
    Legacy {
        key,
        api_key: ApiKey::new(Uuid::from_u128(0xa91), [4; 32]),
        hook,
        hook_sealed: master.seal(&hook.to_string(), b"whsec_legacy"),
    }
}

/// The rows a build before 0005 wrote, as SQL (`blob` spells a byte string for the backend).
fn legacy_rows(l: &Legacy, blob: impl Fn(&[u8]) -> String) -> Vec<String> {
    let at = format_timestamp(t0());
    vec![
        format!(
            "INSERT INTO signing_keys (kid, algorithm, public_key, private_key_sealed, status, \
             created_at, activated_at) VALUES ('{}', 'EdDSA', {}, {}, 'active', '{at}', '{at}')",
            l.key.kid,
            blob(&l.key.public_key),
            blob(&l.key.private_key_sealed)
        ),
        format!(
            "INSERT INTO api_keys (key_id, name, key_hash, roles, created_at) \
             VALUES ('{}', 'gateway', {}, '[\"resource_server\"]', '{at}')",
            l.api_key.id(),
            blob(&l.api_key.hash().0)
        ),
        format!(
            "INSERT INTO webhook_subscriptions (subscription_id, url, secret_sealed, event_types, \
             format, created_at, delivered_position, failures, last_error, last_attempt_at) \
             VALUES ('{}', 'https://siem.example.test/in', {}, '[\"session.revoked\"]', 'json', \
             '{at}', 2, 3, 'the subscriber answered HTTP 503', '{at}')",
            l.hook,
            blob(&l.hook_sealed)
        ),
    ]
}

/// The events that build recorded for its key and API key (it recorded none for webhooks).
async fn legacy_events<W: WriteSession>(ws: &mut W, l: &Legacy) {
    let meta = EventMetadata::new(Actor::System, None);
    let events = [
        (
            format!("signing_key-{}", l.key.kid),
            Event::SigningKeyCreated(SigningKeyCreated {
                kid: l.key.kid.clone(),
                algorithm: "EdDSA".into(),
                public_key: SigningKey::unseal(&l.key, &master())
                    .unwrap()
                    .public_key_b64(),
            }),
        ),
        (
            format!("signing_key-{}", l.key.kid),
            Event::SigningKeyActivated(SigningKeyChanged {
                kid: l.key.kid.clone(),
            }),
        ),
        (
            format!("api_key-{}", l.api_key.id()),
            Event::ApiKeyCreated(ApiKeyCreated {
                key_id: l.api_key.id(),
                name: "gateway".into(),
                roles: vec!["resource_server".into()],
            }),
        ),
    ];
    ws.begin(&[]).await.unwrap();
    for (stream, event) in events {
        let expected_version = ws.stream_version(&stream).await.unwrap();
        ws.append(NewEvent {
            stream_id: stream,
            expected_version,
            event,
            metadata: meta.clone(),
            occurred_at: t0(),
        })
        .await
        .unwrap();
    }
    ws.commit().await.unwrap();
}

fn master() -> MasterKey {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode([8u8; 32]);
    MasterKey::load(Some(text), Path::new("/nonexistent")).unwrap()
}

/// What must hold after the upgrade, before and after a rebuild.
async fn assert_carried_over(name: &str, store: &Store, l: &Legacy) {
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1, "{name}");
    assert_eq!(keys[0].kid, l.key.kid, "{name}");
    assert_eq!(keys[0].status, SigningKeyStatus::Active, "{name}");
    assert_eq!(
        keys[0].private_key_sealed, l.key.private_key_sealed,
        "{name}"
    );
    SigningKey::unseal(&keys[0], &master()).unwrap();

    let found = store.api_key(&l.api_key.key()).await.unwrap();
    assert!(found.is_some_and(|k| k.revoked_at.is_none()), "{name}");

    let hooks = store.webhooks().await.unwrap();
    assert_eq!(hooks.len(), 1, "{name}");
    let h = &hooks[0];
    assert_eq!(h.subscription_id, l.hook, "{name}");
    assert_eq!(h.url, "https://siem.example.test/in", "{name}");
    assert_eq!(h.format, WebhookFormat::Json, "{name}");
    assert_eq!(h.event_types, ["session.revoked"], "{name}");
    assert_eq!(h.created_at, t0(), "{name}");
    assert_eq!(h.secret_sealed, l.hook_sealed, "{name}");
    assert_eq!(
        (h.delivered_position, h.failures, h.last_error.as_deref()),
        (2, 3, Some("the subscriber answered HTTP 503")),
        "{name}"
    );
}

async fn upgrade_case(name: &str, store: Store, l: &Legacy) {
    match &store {
        Store::Sqlite(s) => legacy_events(&mut s.write_session().await.unwrap(), l).await,
        Store::Postgres(p) => legacy_events(&mut p.write_session().await.unwrap(), l).await,
    }
    assert_carried_over(name, &store, l).await;

    // The subscription had no event; opening the store records one, once, at its own time.
    assert_eq!(store.unlogged_webhooks().await.unwrap(), [l.hook], "{name}");
    assert_eq!(
        adopt_unlogged_webhooks(&store, t0()).await.unwrap(),
        1,
        "{name}"
    );
    assert_eq!(
        adopt_unlogged_webhooks(&store, t0()).await.unwrap(),
        0,
        "{name}"
    );
    let subscribed = store
        .events(&EventFilter {
            event_types: vec!["webhook.subscribed".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(subscribed.len(), 1, "{name}");
    assert_eq!(subscribed[0].occurred_at, format_timestamp(t0()), "{name}");
    assert!(!subscribed[0].data.contains("whsec"), "{name}");

    let live = store.projection_snapshot().await.unwrap();
    sessiond::projection::rebuild_projections(&store)
        .await
        .unwrap();
    assert_eq!(store.projection_snapshot().await.unwrap(), live, "{name}");
    assert_carried_over(name, &store, l).await;

    // Nothing secret went into the log on the way.
    let text: String = store
        .events(&EventFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.data.clone())
        .collect();
    assert!(!text.contains(&hex(&l.api_key.hash().0)), "{name}");
}

#[tokio::test]
async fn an_older_database_keeps_its_keys_secrets_subscriptions_and_checkpoints() {
    let master = master();
    let l = legacy(&master);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=rwc", path.display()))
        .await
        .unwrap();
    old_migrator("sqlite", dir.path())
        .await
        .run(&pool)
        .await
        .unwrap();
    for sql in legacy_rows(&l, |b| format!("X'{}'", hex(b))) {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::Sqlite(SqliteStore::open(&path).await.unwrap());
    upgrade_case("sqlite", store, &l).await;

    let Some(db) = fresh_database("an_older_database_keeps").await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    old_migrator("postgres", dir.path())
        .await
        .run(&pool)
        .await
        .unwrap();
    for sql in legacy_rows(&l, |b| format!("'\\x{}'::bytea", hex(b))) {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::Postgres(PostgresStore::open(&db.url).await.unwrap());
    upgrade_case("postgres", store, &l).await;
}
