//! First start and restarts: the signing key is created once, kept sealed, and a wrong master
//! key stops the start instead of minting a new identity.

use crate::helpers::*;
use base64::Engine;
use sessiond::app::Options;
use sessiond::clock::ManualClock;
use sessiond::config::Config;
use sessiond::tokens::keys::MasterKey;
use sessiond::{App, StartError};
use std::sync::Arc;

fn options(master_key: Option<String>) -> Options {
    Options {
        clock: Arc::new(ManualClock::default()),
        master_key,
        start_jobs: false,
        start_delivery: false,
    }
}

#[tokio::test]
async fn the_signing_key_survives_restarts_and_needs_its_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let master = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);

    let first = App::build_with(config.clone(), options(Some(master.clone())))
        .await
        .unwrap();
    let kid = first.service.tokens.active_kid();
    let rsa_kid = first.service.tokens.active_rsa_kid();
    let stored = first.service.store.signing_keys().await.unwrap();
    // One key of each kind: Ed25519 (access tokens) and RSA (RS256 ID tokens).
    assert_eq!(stored.len(), 2);
    for key in &stored {
        let der = MasterKey::load(Some(master.clone()), dir.path())
            .unwrap()
            .open(&key.kid, &key.private_key_sealed)
            .unwrap();
        assert!(
            !key.private_key_sealed
                .windows(der.len())
                .any(|w| w == der.as_slice()),
            "stored sealed, not in the clear"
        );
    }
    assert!(
        !dir.path().join("master.key").exists(),
        "an explicit master key writes no key file"
    );
    drop(first);

    let again = App::build_with(config.clone(), options(Some(master)))
        .await
        .unwrap();
    assert_eq!(
        again.service.tokens.active_kid(),
        kid,
        "the same key after a restart"
    );
    assert_eq!(again.service.tokens.active_rsa_kid(), rsa_kid);
    assert_eq!(again.service.store.signing_keys().await.unwrap().len(), 2);
    drop(again);

    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    match App::build_with(config.clone(), options(Some(wrong))).await {
        Err(StartError::Keys(e)) => assert!(
            e.to_string().contains(&kid) || e.to_string().contains(&rsa_kid),
            "{e}"
        ),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a wrong master key must stop the start"),
    }
    match App::build_with(config, options(Some("too short".into()))).await {
        Err(StartError::Keys(e)) => assert!(e.to_string().contains("SESSIOND_MASTER_KEY"), "{e}"),
        _ => panic!("a malformed master key must stop the start"),
    }
}

#[tokio::test]
async fn the_first_start_records_its_key_in_the_log() {
    let app = spawn_app().await;
    let events = app.all_events().await;
    assert_eq!(
        types(&events),
        [
            "signing_key.created",
            "signing_key.activated",
            "signing_key.created",
            "signing_key.activated"
        ]
    );
    let created = data(&events[0]);
    assert_eq!(created["kid"], app.service.tokens.active_kid().as_str());
    assert_eq!(created["algorithm"], "EdDSA");
    let created = data(&events[2]);
    assert_eq!(created["kid"], app.service.tokens.active_rsa_kid().as_str());
    assert_eq!(created["algorithm"], "RS256");
}
