//! `sessiond events verify` and the export's covering checkpoint: the hash chain walked from
//! the first event, every stored checkpoint's signature checked against it, the head required
//! to be signed, and (unless `--chain-only`) the log replayed into a scratch store whose
//! projections are compared row by row with the live ones. `--export FILE` checks an export
//! file alone, with the published public key, without the database.

use super::Common;
use crate::StartError;
use crate::app::open_store_keyed;
use crate::config::Config;
use crate::domain::checkpoint::Checkpoint;
use crate::store::chain::{ChainBreak, ChainVerifier};
use crate::store::integrity::{PROJECTED_TABLES, PageKey, ProjectedRow};
use crate::store::{EventFilter, RecordedEvent, Store};
use crate::tokens::checkpoint::CheckpointKey;
use crate::tokens::checkpoint::CheckpointPublicKey;
use crate::tokens::keys::MasterKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;

const PAGE: i64 = 1000;

/// The master key if there is one (from the environment or the data directory's file); never
/// creates one.
pub(super) fn existing_master(config: &Config) -> Result<Option<MasterKey>, StartError> {
    let env = std::env::var(crate::tokens::keys::MASTER_KEY_ENV).ok();
    if env.is_none()
        && !config
            .data_dir
            .join(crate::tokens::keys::MASTER_KEY_FILE)
            .exists()
    {
        return Ok(None);
    }
    Ok(Some(MasterKey::load(env, &config.data_dir)?))
}

/// The key checkpoints must be signed by: the one given, else the master key's.
fn trusted_key(common: &Common, given: Option<String>) -> Result<CheckpointPublicKey, StartError> {
    if let Some(text) = given {
        return CheckpointPublicKey::parse(&text).ok_or_else(|| {
            StartError::Io("--public-key: not an Ed25519 public key (base64url or JWK)".into())
        });
    }
    match existing_master(&common.config(None)?)? {
        Some(master) => Ok(CheckpointKey::derive(&master).public().clone()),
        None => Err(StartError::Io(
            "no master key here: give the published checkpoint key with --public-key".into(),
        )),
    }
}

pub(super) async fn verify(
    common: &Common,
    export: Option<PathBuf>,
    public_key: Option<String>,
    chain_only: bool,
) -> Result<ExitCode, StartError> {
    let key = trusted_key(common, public_key)?;
    if let Some(path) = export {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| StartError::Io(format!("{}: {e}", path.display())))?;
        return Ok(match verify_export(&text, &key) {
            Ok(r) => {
                println!(
                    "export ok: {} events, a complete prefix of the log up to position {}, signed {} by checkpoint key {}{}",
                    r.events + r.redacted,
                    r.checkpoint.position,
                    r.checkpoint.signed_at,
                    key.key_id,
                    if r.redacted > 0 {
                        format!(
                            " ({} with redacted fields: linked by their stored hash)",
                            r.redacted
                        )
                    } else {
                        String::new()
                    }
                );
                ExitCode::SUCCESS
            }
            Err(Failure(why)) => {
                println!("export not verified: {why}");
                ExitCode::FAILURE
            }
        });
    }
    let config = common.existing_config()?;
    // Keyed when the master key is here: the replay needs the personal fields opened.
    let keyed = existing_master(&config)?.is_some();
    let store = open_store_keyed(&config, false).await?;
    let report = match verify_log(&store, &key).await? {
        Ok(r) => r,
        Err(Failure(why)) => {
            println!("{why}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "chain ok: {} events, head at position {}, {} signed checkpoints valid (key {})",
        report.events, report.head, report.checkpoints, key.key_id
    );
    if chain_only {
        return Ok(ExitCode::SUCCESS);
    }
    if !keyed {
        println!(
            "projections not compared: the replay needs the master key to open the sealed personal data (or pass --chain-only)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let before = store.head().await?.position;
    match replay_and_compare(&store, &config.database_path()).await? {
        None => {
            println!("projections ok: every projected table matches a replay of the log");
            Ok(ExitCode::SUCCESS)
        }
        Some(difference) => {
            let after = store.head().await?.position;
            if after != before {
                println!(
                    "projections differ ({difference}), but the log moved during the check ({before} -> {after}): run it again on a quiet database"
                );
            } else {
                println!("projections differ from a replay of the log: {difference}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Why a verification failed, in words for the operator.
pub struct Failure(pub String);

fn chain_break(position: i64, why: ChainBreak) -> Failure {
    let reason = match why {
        ChainBreak::Gap { expected } => format!("position {expected} is missing"),
        ChainBreak::PrevHash => "prev_hash does not match the event before".to_owned(),
        ChainBreak::Hash => "the event's content does not match its hash".to_owned(),
    };
    Failure(format!("chain broken at position {position}: {reason}"))
}

/// `cp` against the chain hash at its position: signed by `key`, over that hash.
fn check_checkpoint(
    cp: &Checkpoint,
    hash: &[u8],
    key: &CheckpointPublicKey,
) -> Result<(), Failure> {
    if !key.verifies(cp) {
        return Err(Failure(format!(
            "checkpoint at position {} is not signed by checkpoint key {}",
            cp.position, key.key_id
        )));
    }
    if cp.hash.as_slice() != hash {
        return Err(Failure(format!(
            "checkpoint at position {} (signed {}) does not match the chain: the log was altered at or before that position",
            cp.position, cp.signed_at
        )));
    }
    Ok(())
}

/// What a verified log comes to.
pub struct LogReport {
    pub events: u64,
    pub head: i64,
    pub checkpoints: u64,
}

/// The chain and its checkpoints, read in pages (bounded memory whatever the log's length).
pub async fn verify_log(
    store: &Store,
    key: &CheckpointPublicKey,
) -> Result<Result<LogReport, Failure>, StartError> {
    let mut verifier = ChainVerifier::default();
    let mut queue: VecDeque<Checkpoint> = VecDeque::new();
    let mut fetched_to = 0i64;
    let mut checked = 0u64;
    let mut covered = 0i64;
    let mut after = 0;
    loop {
        let page = store
            .raw_events(&EventFilter {
                after_position: after,
                limit: Some(PAGE),
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else {
            // Caught up. A checkpoint written since arrives with its events: read on once more
            // if the log moved, so a head signed during the walk is seen.
            let more = store.checkpoints(fetched_to, PAGE).await?;
            if let Some(cp) = more.first() {
                if cp.position <= verifier.head().position {
                    queue.extend(more);
                    fetched_to = queue.back().map_or(fetched_to, |c| c.position);
                    continue;
                }
                if store.head().await?.position >= cp.position {
                    continue;
                }
                return Ok(Err(Failure(format!(
                    "checkpoint at position {} signs a position past the log's end ({}): events were deleted from the tail",
                    cp.position,
                    verifier.head().position
                ))));
            }
            break;
        };
        after = last.position;
        // Checkpoints are read after the events they cover: both commit in one transaction.
        if fetched_to < last.position {
            loop {
                let more = store.checkpoints(fetched_to, PAGE).await?;
                let Some(back) = more.last() else { break };
                fetched_to = back.position;
                let done = more.len() < PAGE as usize || back.position >= last.position;
                queue.extend(more);
                if done {
                    break;
                }
            }
        }
        for e in &page {
            if let Err((position, why)) = verifier.check(e) {
                return Ok(Err(chain_break(position, why)));
            }
            while let Some(cp) = queue.front().filter(|cp| cp.position <= e.position) {
                if cp.position == e.position {
                    if let Err(f) = check_checkpoint(cp, &e.hash, key) {
                        return Ok(Err(f));
                    }
                    checked += 1;
                    covered = e.position;
                }
                queue.pop_front();
            }
        }
    }
    let head = verifier.head().position;
    if head > 0 && covered != head {
        return Ok(Err(Failure(format!(
            "the head at position {head} is not covered by a signed checkpoint (the last signed position is {covered}): events after it were appended or rewritten without the master key"
        ))));
    }
    Ok(Ok(LogReport {
        events: verifier.checked(),
        head,
        checkpoints: checked,
    }))
}

/// The first difference between two pages of one projected table.
fn first_difference(table: &str, live: &[ProjectedRow], replay: &[ProjectedRow]) -> Option<String> {
    for (l, r) in live.iter().zip(replay) {
        if l.key != r.key {
            return Some(format!(
                "table {table}: the live row {} is not what the replay has there ({})",
                l.key, r.key
            ));
        }
        for ((column, lv), (_, rv)) in l.columns.iter().zip(&r.columns) {
            if lv != rv {
                return Some(format!(
                    "table {table}, row {}: column {column} is {} live but {} in the replay",
                    l.key,
                    lv.as_deref().unwrap_or("NULL"),
                    rv.as_deref().unwrap_or("NULL")
                ));
            }
        }
    }
    match live.len().cmp(&replay.len()) {
        std::cmp::Ordering::Greater => Some(format!(
            "table {table}: the live row {} is not in the replay",
            live[replay.len()].key
        )),
        std::cmp::Ordering::Less => Some(format!(
            "table {table}: the replayed row {} is missing from the live table",
            replay[live.len()].key
        )),
        std::cmp::Ordering::Equal => None,
    }
}

/// Compares every projected table of `live` with `replay`, page by page in key order; the
/// first row that differs, named by table, key and column.
pub async fn compare_projections(
    live: &Store,
    replay: &Store,
) -> Result<Option<String>, StartError> {
    for (table, (name, _)) in PROJECTED_TABLES.iter().enumerate() {
        // Each side pages by its own last key: equal pages end on equal keys.
        let (mut live_from, mut replay_from) = (None, None);
        loop {
            let l = live
                .projection_rows(table, live_from.as_ref(), PAGE)
                .await?;
            let r = replay
                .projection_rows(table, replay_from.as_ref(), PAGE)
                .await?;
            if let Some(d) = first_difference(name, &l, &r) {
                return Ok(Some(d));
            }
            if l.len() < PAGE as usize {
                break;
            }
            live_from = PageKey::after(live_from.as_ref(), &l);
            replay_from = PageKey::after(replay_from.as_ref(), &r);
        }
    }
    Ok(None)
}

/// The replay indexes addresses under the live store's tag key, as the live appends did.
fn share_vault(live: &Store, scratch: &Store) {
    if let Some(vault) = live.vault() {
        scratch.install_vault(vault);
    }
}

/// Replays `store`'s log into a scratch store of the same backend (a file beside the SQLite
/// database, or a schema of its own on PostgreSQL), compares, and removes the scratch store.
pub async fn replay_and_compare(
    store: &Store,
    sqlite_path: &std::path::Path,
) -> Result<Option<String>, StartError> {
    match store {
        Store::Sqlite(_) => {
            let mut name = sqlite_path.as_os_str().to_owned();
            name.push(format!(".verify-{}", uuid::Uuid::new_v4().simple()));
            let path = std::path::PathBuf::from(name);
            let result = async {
                let scratch = crate::store::SqliteStore::open(&path).await?;
                share_vault(store, &Store::Sqlite(scratch.clone()));
                let mut ws = scratch.write_session().await?;
                crate::projection::replay_into(&mut ws, store).await?;
                drop(ws);
                let scratch = Store::Sqlite(scratch);
                let d = compare_projections(store, &scratch).await;
                scratch.close().await;
                d
            }
            .await;
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.as_os_str().to_owned();
                file.push(suffix);
                let _ = std::fs::remove_file(std::path::PathBuf::from(file));
            }
            result
        }
        Store::Postgres(p) => {
            let (scratch, schema) = p.scratch().await?;
            share_vault(store, &Store::Postgres(scratch.clone()));
            let result = async {
                let mut ws = scratch.write_session().await?;
                crate::projection::replay_into(&mut ws, store).await?;
                drop(ws);
                let scratch = Store::Postgres(scratch);
                let d = compare_projections(store, &scratch).await;
                scratch.close().await;
                d
            }
            .await;
            p.drop_scratch(&schema).await?;
            result
        }
    }
}

/// One exported event, its `data` and `metadata` kept as the exact text exported.
#[derive(serde::Deserialize)]
struct ExportedEvent<'a> {
    position: i64,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    schema_version: i64,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    metadata: &'a serde_json::value::RawValue,
    occurred_at: String,
    recorded_at: String,
    prev_hash: String,
    hash: String,
    /// Fields the export removed (a password hash): the event's own hash cannot be recomputed,
    /// its place in the chain still holds.
    #[serde(default)]
    redacted: bool,
}

#[derive(serde::Deserialize)]
struct Trailer {
    checkpoint: TrailerCheckpoint,
}

#[derive(serde::Deserialize)]
struct TrailerCheckpoint {
    position: i64,
    hash: String,
    signed_at: String,
    key_id: String,
    signature: String,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    s.len()
        .is_multiple_of(2)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

/// What a verified export comes to.
pub struct ExportReport {
    pub events: u64,
    pub redacted: u64,
    pub checkpoint: Checkpoint,
}

/// Checks an export file: a complete, unaltered prefix of the log from position 1, ending at
/// the position its trailer's checkpoint signs, the signature valid under `key`.
pub fn verify_export(text: &str, key: &CheckpointPublicKey) -> Result<ExportReport, Failure> {
    let bad = |n: usize, why: &str| Failure(format!("line {n}: {why}"));
    let mut verifier = ChainVerifier::default();
    let mut redacted = 0;
    let mut trailer = None;
    // A filtered export says so in its last line: refused for that reason, not for its gaps.
    if text
        .lines()
        .last()
        .is_some_and(|l| l.starts_with("{\"filtered\""))
    {
        return Err(Failure(
            "a filtered export: it cannot prove that no event is missing (export with no filter)"
                .into(),
        ));
    }
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if trailer.is_some() {
            return Err(bad(n, "lines after the checkpoint"));
        }
        if line.starts_with("{\"checkpoint\"") {
            let t: Trailer =
                serde_json::from_str(line).map_err(|e| bad(n, &format!("checkpoint: {e}")))?;
            trailer = Some(t.checkpoint);
            continue;
        }
        let e: ExportedEvent =
            serde_json::from_str(line).map_err(|e| bad(n, &format!("not an event: {e}")))?;
        let recorded = RecordedEvent {
            position: e.position,
            stream_id: e.stream_id,
            stream_version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data: e.data.get().to_owned(),
            metadata: e.metadata.get().to_owned(),
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
            prev_hash: unhex(&e.prev_hash).ok_or_else(|| bad(n, "prev_hash is not hex"))?,
            hash: unhex(&e.hash).ok_or_else(|| bad(n, "hash is not hex"))?,
        };
        let outcome = if !e.redacted {
            verifier.check(&recorded)
        } else {
            redacted += 1;
            verifier.link(&recorded)
        };
        if let Err((position, why)) = outcome {
            return Err(chain_break(position, why));
        }
    }
    let t = trailer.ok_or_else(|| {
        Failure("no checkpoint line: only a full export (no filter) carries one".into())
    })?;
    let hash = unhex(&t.hash)
        .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
        .ok_or_else(|| Failure("the checkpoint's hash is not 32 bytes of hex".into()))?;
    let checkpoint = Checkpoint {
        position: t.position,
        hash,
        signed_at: t.signed_at,
        key_id: t.key_id,
        signature: URL_SAFE_NO_PAD
            .decode(&t.signature)
            .map_err(|_| Failure("the checkpoint's signature is not base64url".into()))?,
    };
    let head = verifier.head();
    if checkpoint.position != head.position {
        return Err(Failure(format!(
            "the export ends at position {} but its checkpoint signs position {}: events are missing",
            head.position, checkpoint.position
        )));
    }
    check_checkpoint(&checkpoint, &head.hash, key)?;
    Ok(ExportReport {
        events: verifier.checked(),
        redacted,
        checkpoint,
    })
}
