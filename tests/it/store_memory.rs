//! What the rule engine and the login throttle remember in the store, on every backend (SQLite
//! always, PostgreSQL when `SESSIOND_TEST_DATABASE_URL` is set): the networks a user is known
//! by, and the failures that count against a throttle key. Each is read and written for many
//! keys in one statement; these tests hold those statements to the one-key meaning.

use crate::store_contract::{backends, with_write_session};
use sessiond::domain::{Duration, Timestamp, parse_timestamp};
use sessiond::store::{Store, UnitOfWork, WriteSession};
use uuid::Uuid;

const ALICE: Uuid = Uuid::from_u128(1);
const BOB: Uuid = Uuid::from_u128(2);

fn t0() -> Timestamp {
    parse_timestamp("2026-03-01T12:00:00.123Z").unwrap()
}

fn minutes(m: i64) -> Timestamp {
    t0() + Duration::minutes(m)
}

async fn seen<U: UnitOfWork>(
    uow: &mut U,
    user: Uuid,
    nets: &[&str],
    since: Timestamp,
) -> Vec<String> {
    let mut seen = uow.usual_networks_seen(user, nets, since).await.unwrap();
    seen.sort();
    seen
}

/// Several networks marked at once (one named twice), then asked about together: each answers
/// as it would alone, by user and by time, and a later mark moves only its own network.
#[tokio::test]
async fn usual_networks_are_marked_and_asked_about_together() {
    for b in backends("usual_networks_together").await {
        let name = b.name;
        with_write_session!(&b.store, |ws| {
            ws.begin(&[]).await.unwrap();
            ws.put_usual_networks(ALICE, &["net:a", "net:b", "net:a"], t0())
                .await
                .unwrap();
            ws.put_usual_networks(ALICE, &[], t0()).await.unwrap();
            ws.commit().await.unwrap();

            ws.begin(&[]).await.unwrap();
            let all = ["net:a", "net:b", "net:c"];
            assert_eq!(
                seen(&mut ws, ALICE, &all, minutes(-1)).await,
                ["net:a", "net:b"],
                "{name}"
            );
            assert!(
                seen(&mut ws, ALICE, &all, t0()).await.is_empty(),
                "{name}: only after since"
            );
            assert!(
                seen(&mut ws, BOB, &all, minutes(-1)).await.is_empty(),
                "{name}: Alice's only"
            );
            assert!(
                seen(&mut ws, ALICE, &[], minutes(-1)).await.is_empty(),
                "{name}"
            );
            ws.put_usual_networks(ALICE, &["net:b"], minutes(60))
                .await
                .unwrap();
            assert_eq!(
                seen(&mut ws, ALICE, &all, minutes(1)).await,
                ["net:b"],
                "{name}: moved"
            );
            ws.commit().await.unwrap();
        });
        let after = with_write_session!(&b.store, |ws| {
            ws.begin(&[]).await.unwrap();
            let found = seen(&mut ws, ALICE, &["net:a", "net:b"], minutes(-1)).await;
            ws.rollback().await.unwrap();
            found
        });
        assert_eq!(after, ["net:a", "net:b"], "{name}: committed");
    }
}

/// The throttle asks about every key of an attempt in one read: the n-th newest failure of each
/// key after its own window's start, and nothing for a key with fewer failures in its window.
#[tokio::test]
async fn a_throttle_read_answers_each_key_by_its_own_window_and_count() {
    for b in backends("throttle_read_together").await {
        let name = b.name;
        with_write_session!(&b.store, |ws| {
            ws.begin(&[]).await.unwrap();
            for m in 0..3 {
                ws.put_login_failures(&["name:alice".into()], minutes(m))
                    .await
                    .unwrap();
            }
            ws.put_login_failures(&["ip:192.0.2.7".into()], minutes(1))
                .await
                .unwrap();
            ws.commit().await.unwrap();
        });
        let probe = |key: &str, since, n| (key.to_owned(), since, n);
        let found = b
            .store
            .nth_login_failures(&[
                probe("name:alice", minutes(-1), 2),
                probe("name:alice", minutes(0), 2),
                probe("ip:192.0.2.7", minutes(-1), 0),
                probe("ip:198.51.100.1", minutes(-1), 0),
                probe("name:alice", minutes(-1), 0),
            ])
            .await
            .unwrap();
        assert_eq!(
            found,
            [Some(t0()), None, Some(minutes(1)), None, Some(minutes(2))],
            "{name}"
        );
        assert!(
            b.store.nth_login_failures(&[]).await.unwrap().is_empty(),
            "{name}"
        );
    }
}
