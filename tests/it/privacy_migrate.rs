//! `sessiond migrate` on a database an older build wrote (personal data in clear in the log):
//! it seals that history, re-chains the log and records the link to the replaced head.

use crate::helpers::sessiond_cli;
use sessiond::commands::Register;
use sessiond::commands::writer::run_once;
use sessiond::domain::context::RequestContext;
use sessiond::domain::event::{Actor, EventMetadata};
use sessiond::domain::parse_timestamp;
use sessiond::store::SqliteStore;
use sqlx::Row;

const IP: &str = "192.0.2.44";
const UA: &str = "OldBuild/1.0 (fixture)";

/// The database as the previous build left it: events written with no vault installed (the
/// old event format, every field in clear).
async fn old_database(dir: &std::path::Path) {
    let store = SqliteStore::open(&dir.join("sessiond.db")).await.unwrap();
    let mut ws = store.write_session().await.unwrap();
    let meta = EventMetadata::new(Actor::System, None);
    let now = parse_timestamp("2026-01-05T10:00:00Z").unwrap();
    for name in ["oldtimer", "veteran"] {
        let cmd = Register {
            user_id: uuid::Uuid::new_v4(),
            username: name.into(),
            password_hash: "$argon2id$v=19$fixture-hash".into(),
            roles: vec!["user".into()],
            context: RequestContext {
                ip: Some(IP.parse().unwrap()),
                user_agent: Some(UA.into()),
                ..Default::default()
            },
            email: None,
        };
        run_once(&mut ws, cmd, &meta, now).await.unwrap().unwrap();
    }
    store.close().await;
}

async fn events_text(dir: &std::path::Path) -> String {
    let url = format!("sqlite:{}", dir.join("sessiond.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows = sqlx::query("SELECT event_type, data FROM events ORDER BY position")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| format!("{} {}", r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn migrate_seals_clear_history_and_keeps_the_chain_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    old_database(dir.path()).await;
    let before = events_text(dir.path()).await;
    assert!(
        before.contains("oldtimer") && before.contains(IP),
        "the fixture is clear text"
    );

    let (ok, out, err) = sessiond_cli(&["migrate"], dir.path());
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("sealed the personal data of 2 events"),
        "{out}"
    );

    let after = events_text(dir.path()).await;
    for clear in ["oldtimer", "veteran", IP, UA, "fixture-hash"] {
        assert!(!after.contains(clear), "{clear} still in the log: {after}");
    }
    assert!(after.contains("log.resealed"), "{after}");
    let (ok, out, err) = sessiond_cli(&["events", "verify"], dir.path());
    assert!(ok, "{out}{err}");
    // With the master key the service reads the old history as before.
    let (ok, out, err) = sessiond_cli(&["events", "export"], dir.path());
    assert!(ok, "{err}");
    assert!(
        out.contains("oldtimer") && out.contains(IP) && out.contains(UA),
        "{out}"
    );
    // A rebuild from the resealed log works.
    let (ok, out, err) = sessiond_cli(&["projections", "rebuild"], dir.path());
    assert!(ok, "{out}{err}");
    // Nothing more to do the second time.
    let (ok, out, _) = sessiond_cli(&["migrate"], dir.path());
    assert!(ok);
    assert!(out.contains("no personal data in clear"), "{out}");
}
