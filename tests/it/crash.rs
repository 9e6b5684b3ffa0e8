//! kill -9 under refresh load, against the real binary: many clients each follow their own
//! refresh chain, every rotation answered 200 is written down, the process is SIGKILLed in the
//! middle of it, restarted on the same data, and then
//! - every acknowledged successor token is in the store (no acknowledged rotation lost), and the
//!   last one of each chain still refreshes (a rotation that committed but was never answered
//!   is a grace retry, not a loss);
//! - `sessiond events verify` passes (the hash chain is whole);
//! - the inline projections equal a replay of the log (`sessiond projections rebuild`).
//!
//! The suite runs a few trials; `crash_trials_many` (ignored) runs `SESSIOND_CRASH_TRIALS`
//! (default 50) and prints the figure recorded in BENCHMARKS.md.

use crate::helpers::*;
use crate::pg::fresh_database;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::json;
use sessiond::domain::token::RefreshToken;
use sessiond::store::{PostgresStore, SqliteStore, Store};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Concurrent clients, each with its own user, session and chain.
const CLIENTS: usize = 24;

/// What one trial saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Rotations answered 200 before the kill.
    pub acknowledged: usize,
    /// Acknowledged successor tokens the restarted store does not know.
    pub lost: usize,
    /// Chains whose last acknowledged token did not refresh after the restart.
    pub dead_chains: usize,
    /// Rotations that committed but whose answer the kill cut off: the restart's refresh of
    /// the chain was a grace retry. (It shows the kill landed inside a batch.)
    pub committed_unanswered: usize,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.acknowledged += o.acknowledged;
        self.lost += o.lost;
        self.dead_chains += o.dead_chains;
        self.committed_unanswered += o.committed_unanswered;
    }
}

struct Server {
    child: Child,
    base: String,
}

/// Starts `sessiond serve` on `dir` (and on `database_url`, when given) and waits until ready.
async fn start(dir: &Path, database_url: Option<&str>, log: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir)
    .env_remove("SESSIOND_CONFIG")
    .env_remove("SESSIOND_MASTER_KEY")
    .env_remove("SESSIOND_DATABASE_URL")
    // One access line per refresh would only slow the server down here.
    .env("RUST_LOG", "sessiond=warn")
    .stdout(Stdio::null())
    // A file, not a pipe: a full pipe would block the server's logging.
    .stderr(std::fs::File::create(dir.join(log)).unwrap());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..1500 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return Server { child, base };
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
            panic!("the server exited ({status}) before it was ready:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not become ready");
}

/// The CLI on the same data, off the runtime.
async fn cli(args: &[&str], dir: &Path, database_url: Option<&str>) -> (bool, String, String) {
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if let Some(url) = database_url {
        args.extend(["--database-url".to_owned(), url.to_owned()]);
    }
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sessiond_cli(&args, &dir)
    })
    .await
    .unwrap()
}

async fn open_store(dir: &Path, database_url: Option<&str>) -> Store {
    match database_url {
        Some(url) => Store::Postgres(PostgresStore::open(url).await.unwrap()),
        None => Store::Sqlite(SqliteStore::open(&dir.join("sessiond.db")).await.unwrap()),
    }
}

/// One refresh: `Ok(Some(successor))` on 200, `Ok(None)` on a refusal the caller may retry
/// (503), `Err(status)` on any other answer, and `Err(None)` when no answer came.
async fn refresh(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<Option<String>, Option<StatusCode>> {
    let r = http
        .post(format!("{base}/v1/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .map_err(|_| None)?;
    match r.status() {
        StatusCode::OK => {}
        StatusCode::SERVICE_UNAVAILABLE => return Ok(None),
        other => return Err(Some(other)),
    }
    // A body cut off by the kill is no acknowledgement.
    let body: serde_json::Value = r.json().await.map_err(|_| None)?;
    Ok(Some(Tokens::from_json(&body).refresh))
}

/// One trial: load, SIGKILL after a random number of acknowledged rotations, restart, check.
pub async fn trial(database_url: Option<&str>, trial_no: usize) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), database_url, "first.log").await;
    let http = reqwest::Client::builder()
        .user_agent(FIREFOX)
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();

    // Each chain starts with its login's token (the login is a commit too).
    let logins = (0..CLIENTS).map(|i| {
        let (http, base) = (http.clone(), server.base.clone());
        async move {
            let body = json!({ "username": format!("crash{i}"), "password": PASSWORD });
            let r = http
                .post(format!("{base}/v1/auth/register"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let r = http
                .post(format!("{base}/v1/auth/login"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            Tokens::from_json(&r.json().await.unwrap()).refresh
        }
    });
    let first_tokens = futures_util::future::join_all(logins).await;

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let chains: Vec<Arc<Mutex<Vec<String>>>> = first_tokens
        .into_iter()
        .map(|t| Arc::new(Mutex::new(vec![t])))
        .collect();
    let mut clients = Vec::new();
    for chain in &chains {
        let (http, base, chain) = (http.clone(), server.base.clone(), chain.clone());
        let acknowledged = acknowledged.clone();
        clients.push(tokio::spawn(async move {
            loop {
                let last = chain.lock().unwrap().last().unwrap().clone();
                match refresh(&http, &base, &last).await {
                    Ok(Some(next)) => {
                        chain.lock().unwrap().push(next);
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
                    // The server is gone: the kill.
                    Err(None) => return None,
                    Err(Some(status)) => return Some(status),
                }
            }
        }));
    }

    // Kill at a different point of the writer's cycle each time: after a random number of
    // acknowledged rotations, plus up to 2 ms. (The deadline only turns a stuck server into a
    // failure instead of a hang.)
    let (kill_after, extra_micros) = {
        let mut rng = rand::thread_rng();
        (rng.gen_range(50..600), rng.gen_range(0..2000))
    };
    for _ in 0..6000 {
        if acknowledged.load(Ordering::SeqCst) >= kill_after
            || clients.iter().any(|c| c.is_finished())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_micros(extra_micros)).await;
    assert!(
        clients.iter().all(|c| !c.is_finished()),
        "trial {trial_no}: a client stopped before the kill"
    );
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for c in clients {
        assert_eq!(
            c.await.unwrap(),
            None,
            "trial {trial_no}: only the kill ends a client"
        );
    }
    let chains: Vec<Vec<String>> = chains.iter().map(|c| c.lock().unwrap().clone()).collect();
    let mut outcome = Outcome {
        acknowledged: chains.iter().map(|c| c.len() - 1).sum(),
        ..Outcome::default()
    };

    // Restart on the same data; each chain's last acknowledged token must still refresh (when
    // its unanswered successor did commit, this is a grace retry and answers 200 as well).
    let mut server = start(dir.path(), database_url, "second.log").await;
    for chain in &chains {
        let last = chain.last().unwrap();
        if !matches!(refresh(&http, &server.base, last).await, Ok(Some(_))) {
            outcome.dead_chains += 1;
        }
    }
    // A clean stop, so that the checks below read what the server left.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        server.child.wait().unwrap().success(),
        "trial {trial_no}: clean stop"
    );

    let (ok, out, err) = cli(&["events", "verify"], dir.path(), database_url).await;
    assert!(ok, "trial {trial_no}: events verify: {out}{err}");

    let store = open_store(dir.path(), database_url).await;
    for chain in &chains {
        for token in &chain[1..] {
            let key = RefreshToken::parse(token).unwrap().key();
            if store.token(&key).await.unwrap().is_none() {
                outcome.lost += 1;
            }
        }
    }
    outcome.committed_unanswered = store
        .events(&sessiond::store::EventFilter {
            event_types: vec!["session.refresh_retried".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    let live = store.projection_snapshot().await.unwrap();
    assert!(
        live.iter()
            .filter(|r| r.starts_with("refresh_tokens|"))
            .count()
            > outcome.acknowledged - outcome.lost,
        "trial {trial_no}: the snapshot sees the tokens"
    );
    store.close().await;
    let (ok, out, err) = cli(&["projections", "rebuild"], dir.path(), database_url).await;
    assert!(ok, "trial {trial_no}: projections rebuild: {out}{err}");
    let store = open_store(dir.path(), database_url).await;
    let rebuilt = store.projection_snapshot().await.unwrap();
    store.close().await;
    assert!(
        live == rebuilt,
        "trial {trial_no}: the projections after the crash differ from a replay of the log"
    );
    outcome
}

fn assert_nothing_lost(what: &str, trials: usize, total: Outcome) {
    println!(
        "{what}: trials: {trials}, acknowledged rotations: {}, lost: {}, chains that did not refresh after the restart: {}, rotations committed but unanswered at the kill: {}",
        total.acknowledged, total.lost, total.dead_chains, total.committed_unanswered
    );
    assert!(total.acknowledged >= trials * 50, "{total:?}");
    assert_eq!(total.lost, 0, "{total:?}");
    assert_eq!(total.dead_chains, 0, "{total:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_refresh_load_loses_no_acknowledged_rotation() {
    const TRIALS: usize = 3;
    let mut total = Outcome::default();
    for i in 0..TRIALS {
        total += trial(None, i).await;
    }
    assert_nothing_lost("sqlite", TRIALS, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_refresh_load_on_postgres_loses_no_acknowledged_rotation() {
    let Some(db) =
        fresh_database("kill_9_under_refresh_load_on_postgres_loses_no_acknowledged_rotation")
            .await
    else {
        return;
    };
    let total = trial(Some(&db.url), 0).await;
    assert_nothing_lost("postgres", 1, total);
}

/// `SESSIOND_CRASH_TRIALS=50 cargo test --test it crash_trials_many -- --ignored --nocapture`:
/// the figure in BENCHMARKS.md. With `SESSIOND_TEST_DATABASE_URL` set, PostgreSQL as well
/// (`SESSIOND_CRASH_PG_TRIALS`, default 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: run by hand for BENCHMARKS.md"]
async fn crash_trials_many() {
    let count = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let trials = count("SESSIOND_CRASH_TRIALS", 50);
    let mut total = Outcome::default();
    for i in 0..trials {
        let o = trial(None, i).await;
        println!("sqlite trial {i}: {o:?}");
        total += o;
    }
    assert_nothing_lost("sqlite", trials, total);
    let pg_trials = count("SESSIOND_CRASH_PG_TRIALS", 10);
    let mut total = Outcome::default();
    for i in 0..pg_trials {
        let Some(db) = fresh_database("crash_trials_many").await else {
            return;
        };
        let o = trial(Some(&db.url), i).await;
        println!("postgres trial {i}: {o:?}");
        total += o;
    }
    assert_nothing_lost("postgres", pg_trials, total);
}
