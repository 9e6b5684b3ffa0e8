//! SQLite's own guard: a second append at one stream version is a conflict within a batch
//! (the overlay) and across writers (the UNIQUE constraint). The command-level checks (a batch
//! equals one transaction per command, rollbacks forget, rebuilds match) run on every backend
//! in the integration tests' store contract.

use super::*;
use crate::domain::event::{Actor, EventMetadata};
use crate::domain::parse_timestamp;
use crate::store::{EventFilter, NewEvent, RecordedEvent, StoreError, UnitOfWork, WriteSession};

fn meta() -> EventMetadata {
    EventMetadata {
        actor: Actor::Anonymous,
        request_id: Some("req".into()),
        causation: None,
    }
}

async fn open(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
    SqliteStore::open(&dir.path().join(name)).await.unwrap()
}

async fn all_events(store: &SqliteStore) -> Vec<RecordedEvent> {
    store.events(&EventFilter::default()).await.unwrap()
}

#[tokio::test]
async fn appending_twice_at_one_version_is_a_conflict_in_the_batch_and_across_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "c.db").await;
    let mut a = store.write_session().await.unwrap();
    let mut b = store.write_session().await.unwrap();
    let now = parse_timestamp("2026-01-01T00:00:00.000Z").unwrap();
    let record = |kid: &str| NewEvent {
        stream_id: "signing-key-k".into(),
        expected_version: 0,
        event: crate::domain::event::Event::SigningKeyActivated(
            crate::domain::event::SigningKeyChanged { kid: kid.into() },
        ),
        metadata: meta(),
        occurred_at: now,
    };

    // Within one batch the overlay is the guard.
    a.begin(&[]).await.unwrap();
    a.append(record("k")).await.unwrap();
    let err = a.append(record("k")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    a.rollback().await.unwrap();

    // Across writers it is SQLite's UNIQUE constraint, met when the overlay is flushed.
    a.begin(&[]).await.unwrap();
    a.append(record("k")).await.unwrap();
    a.commit().await.unwrap();
    b.begin(&[]).await.unwrap();
    b.append(record("k2")).await.unwrap();
    let err = b.commit().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { stream_id, expected: 0 } if stream_id == "signing-key-k"),
        "{err}"
    );
    b.rollback().await.unwrap();
    assert_eq!(all_events(&store).await.len(), 1);

    // Writers that take turns on other streams both land, on one unbroken chain.
    let other = |stream: &str| NewEvent {
        stream_id: stream.into(),
        ..record("k3")
    };
    for i in 0..3 {
        let ws = if i % 2 == 0 { &mut a } else { &mut b };
        ws.begin(&[]).await.unwrap();
        ws.append(other(&format!("signing-key-{i}"))).await.unwrap();
        ws.commit().await.unwrap();
    }
    let events = all_events(&store).await;
    assert_eq!(events.len(), 4);
    let mut chain = crate::store::chain::ChainVerifier::default();
    for e in &events {
        chain.check(e).unwrap();
    }
}
