//! `sessiond migrate` on a database an older build wrote (personal data in clear in the log):
//! it seals that history, re-chains the log and records the link to the replaced head.

use crate::helpers::sessiond_cli;
use crate::store_contract::backends;
use sessiond::commands::Register;
use sessiond::commands::writer::run_once;
use sessiond::domain::context::RequestContext;
use sessiond::domain::event::{Actor, EventMetadata};
use sessiond::domain::parse_timestamp;
use sessiond::store::{EventFilter, Store};

const IP: &str = "192.0.2.44";
const UA: &str = "OldBuild/1.0 (fixture)";

/// The database as the previous build left it: events written with no vault installed (the
/// old event format, every field in clear).
async fn old_database(store: &Store) {
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
        match store {
            Store::Sqlite(s) => {
                let mut ws = s.write_session().await.unwrap();
                run_once(&mut ws, cmd, &meta, now).await.unwrap().unwrap();
            }
            Store::Postgres(p) => {
                let mut ws = p.write_session().await.unwrap();
                run_once(&mut ws, cmd, &meta, now).await.unwrap().unwrap();
            }
        }
    }
}

/// Every event's type and stored data, as the database holds them (no vault: this store
/// reads the stored bytes).
async fn events_text(store: &Store) -> String {
    store
        .raw_events(&EventFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e.event_type, e.data))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn migrate_seals_clear_history_and_keeps_the_chain_verifiable() {
    for backend in backends("migrate_seals_clear_history").await {
        let dir = tempfile::tempdir().unwrap();
        // SQLite: the fixture's file becomes the data directory's database.
        let store = match (&backend.store, backend.postgres_url()) {
            (Store::Sqlite(_), _) => Store::Sqlite(
                sessiond::store::SqliteStore::open(&dir.path().join("sessiond.db"))
                    .await
                    .unwrap(),
            ),
            (_, Some(url)) => {
                Store::Postgres(sessiond::store::PostgresStore::open(url).await.unwrap())
            }
            _ => unreachable!(),
        };
        let url: Vec<&str> = backend
            .postgres_url()
            .map(|u| vec!["--database-url", u])
            .unwrap_or_default();
        let cli = |args: &[&str]| {
            let all: Vec<&str> = args.iter().copied().chain(url.iter().copied()).collect();
            sessiond_cli(&all, dir.path())
        };
        let name = backend.name;
        old_database(&store).await;
        let before = events_text(&store).await;
        assert!(
            before.contains("oldtimer") && before.contains(IP),
            "{name}: the fixture is clear text"
        );

        let (ok, out, err) = cli(&["migrate"]);
        assert!(ok, "{name}: {out}{err}");
        assert!(
            out.contains("sealed the personal data of 2 events"),
            "{name}: {out}"
        );

        let after = events_text(&store).await;
        for clear in ["oldtimer", "veteran", IP, UA, "fixture-hash"] {
            assert!(
                !after.contains(clear),
                "{name}: {clear} still in the log: {after}"
            );
        }
        assert!(after.contains("log.resealed"), "{name}: {after}");
        let (ok, out, err) = cli(&["events", "verify"]);
        assert!(ok, "{name}: {out}{err}");
        assert!(out.contains("projections ok"), "{name}: {out}");
        // With the master key the service reads the old history as before.
        let (ok, out, err) = cli(&["events", "export"]);
        assert!(ok, "{name}: {err}");
        assert!(
            out.contains("oldtimer") && out.contains(IP) && out.contains(UA),
            "{name}: {out}"
        );
        // A rebuild from the resealed log works.
        let (ok, out, err) = cli(&["projections", "rebuild"]);
        assert!(ok, "{name}: {out}{err}");
        // Nothing more to do the second time.
        let (ok, out, _) = cli(&["migrate"]);
        assert!(ok, "{name}");
        assert!(out.contains("no personal data in clear"), "{name}: {out}");
        store.close().await;
    }
}
