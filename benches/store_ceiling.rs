//! The storage ceiling (issue 16): the service's own writer and store, appending refresh
//! batches exactly as a refresh request does (the same `Refresh` command, decided, judged,
//! sealed by the vault, signed per batch, committed with `synchronous=FULL`), with no HTTP, no
//! JWT and no request parsing. Clients submit straight to the writer in a closed loop; the
//! service's figure beside this one is the distance to the limit (see BENCHMARKS.md).
//!
//!     cargo build --release --bins
//!     ./target/release/sessiond-ceiling --clients 64 --duration 10s [--database-url postgres://…]
//!
//! The sessions are set up over HTTP (register and log in, as `sessiond-load` does); only the
//! measured loop bypasses it. It also reports, over the measured loop, the statements sent per
//! batch (counted from sqlx's statement log in a short second phase) and the bytes written by
//! this process per refresh (`/proc/self/io`, SQLite: WAL frames and checkpoint copies) or the
//! WAL bytes PostgreSQL generated per refresh (`pg_current_wal_lsn`).

use clap::Parser;
use serde_json::{Value, json};
use sessiond::commands::{ProofInput, Refresh};
use sessiond::domain::context::RequestContext;
use sessiond::domain::event::{Actor, EventMetadata};
use sessiond::domain::session::RefreshGrant;
use sessiond::domain::token::RefreshToken;
use sessiond::service::Sessiond;
use sessiond::store::Store;
use sessiond::{App, Config, app::Options};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(
    name = "sessiond-ceiling",
    about = "Refresh batches through the writer and store alone"
)]
struct Args {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// PostgreSQL instead of SQLite (a fresh database: the run writes to it).
    #[arg(long)]
    database_url: Option<String>,
    /// Where the SQLite file (and the master key) go; a fresh temporary directory by default.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
    /// Instead: the bare argon2 rate, password verifications through the service's own gate
    /// (one at a time per core, as logins get them), no HTTP, no store.
    #[arg(long)]
    argon2: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    sessiond::domain::parse::parse_duration(s)
        .and_then(|d| d.to_std().ok())
        .ok_or_else(|| format!("{s:?} is not a duration like 20s or 1m"))
}

/// Counts sqlx's statement log lines (one per statement or multi-statement query sent) while
/// `COUNTING` is set; off during the measured loop, since the log formats every statement.
static COUNTING: AtomicBool = AtomicBool::new(false);
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

struct CountStatements;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountStatements {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if e.metadata().target() == "sqlx::query" {
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar: ").map(|v| v.trim().parse().ok()))
        })
        .flatten()
        .unwrap_or(0)
}

async fn pg_wal_lsn(store: &Store) -> Option<i64> {
    let Store::Postgres(_) = store else {
        return None;
    };
    let url = std::env::var("SESSIOND_CEILING_PG").ok()?;
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .ok()?;
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(&mut c)
        .await
        .ok()
}

struct Client {
    token: RefreshToken,
    context: RequestContext,
}

/// Registers and logs in one user over HTTP; returns its refresh token and session id.
async fn log_in(http: &reqwest::Client, base: &str, name: &str) -> (String, uuid::Uuid) {
    let body = json!({ "username": name, "password": format!("ceiling-password-{name}") });
    let r = http
        .post(format!("{base}/v1/auth/register"))
        .json(&body)
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success(), "register: {}", r.status());
    let r = http
        .post(format!("{base}/v1/auth/login"))
        .json(&body)
        .send()
        .await
        .expect("login");
    assert!(r.status().is_success(), "login: {}", r.status());
    let v: Value = r.json().await.expect("login body");
    let session = v["session_id"].as_str().and_then(|s| s.parse().ok());
    (
        v["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned(),
        session.expect("session_id"),
    )
}

/// One client's closed loop until `until`: its latencies in microseconds.
async fn refresh_loop(
    service: Arc<Sessiond>,
    client: &mut Client,
    until: Instant,
    latencies: &mut Vec<u32>,
) {
    while Instant::now() < until {
        let next = service.refresh_tokens.fresh();
        let cmd = Refresh {
            presented: client.token.key(),
            new_token: next.key(),
            context: client.context.clone(),
            minter: service.refresh_tokens.clone(),
            proof: ProofInput::Absent,
            require_dpop: false,
            client_id: None,
        };
        let meta = EventMetadata::new(Actor::Anonymous, None);
        let started = Instant::now();
        let reply = service.writer.submit(cmd, meta).await;
        latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        match reply {
            Ok(Ok(r)) => {
                client.token = match r.grant {
                    RefreshGrant::Rotated { .. } => next,
                    RefreshGrant::Retried { successor, .. } => {
                        service.refresh_tokens.mint(successor.id)
                    }
                }
            }
            other => panic!("refresh refused: {other:?}"),
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Verifications per second through [`sessiond::passwords::PasswordGate`] with `clients`
/// callers, for `d`.
async fn argon2_rate(clients: usize, d: Duration) -> Value {
    let gate = Arc::new(sessiond::passwords::PasswordGate::new(usize::MAX));
    let stored = gate.hash("ceiling-password".into()).await.expect("hash");
    let until = Instant::now() + d;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (gate, stored) = (gate.clone(), stored.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    let ok = gate
                        .verify(Some(stored.clone()), "ceiling-password".into())
                        .await;
                    assert_eq!(ok, Ok(true));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("argon2 task");
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    json!({
        "argon2_verifications_per_second": total as f64 / started.elapsed().as_secs_f64(),
        "callers": clients,
        "parallelism": cores,
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.argon2 {
        println!("{}", argon2_rate(args.clients, args.duration).await);
        return;
    }
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::filter_fn(|m| {
            COUNTING.load(Ordering::Relaxed) && m.target() == "sqlx::query"
        }))
        .with(CountStatements)
        .init();
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sessiond-ceiling-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut config = Config {
        data_dir: dir.clone(),
        listen: listener.local_addr().expect("address"),
        ..Config::default()
    };
    if let Some(url) = &args.database_url {
        config.database_url =
            Some(sessiond::config::DatabaseUrl::parse(url).expect("a database URL"));
        // SAFETY: set before any other thread reads the environment.
        unsafe { std::env::set_var("SESSIOND_CEILING_PG", url) };
    }
    let app = App::build_with(
        config,
        Options {
            start_jobs: false,
            ..Options::default()
        },
    )
    .await
    .expect("the app builds");
    let service = app.service.clone();
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(app.serve_on(listener, std::future::pending()));

    let http = reqwest::Client::new();
    let mut loaded = Vec::new();
    for i in 0..args.clients {
        let (token, session_id) = log_in(&http, &base, &format!("ceiling{i}")).await;
        let token = RefreshToken::parse(&token).expect("a refresh token");
        // The context each refresh carries: the one its login stored (IP, device, agent).
        let session = service.store.session(session_id).await.expect("store");
        loaded.push(Client {
            token,
            context: session.expect("the session of a fresh login").last_context,
        });
    }

    // Warm-up, then the measured loop, then a short loop counting statements.
    let phase = |d: Duration, clients: Vec<Client>| {
        let service = service.clone();
        async move {
            let until = Instant::now() + d;
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|mut c| {
                    let service = service.clone();
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        refresh_loop(service, &mut c, until, &mut lat).await;
                        (c, lat)
                    })
                })
                .collect();
            let mut clients = Vec::new();
            let mut all = Vec::new();
            for t in tasks {
                let (c, lat) = t.await.expect("client task");
                clients.push(c);
                all.extend(lat);
            }
            (clients, all)
        }
    };
    let (loaded, _) = phase(Duration::from_secs(1), loaded).await;
    let stats = service.writer.stats.clone();
    let (b0, c0) = (
        stats.batches.load(Ordering::Relaxed),
        stats.commands.load(Ordering::Relaxed),
    );
    let bytes0 = written_bytes();
    let lsn0 = pg_wal_lsn(&service.store).await;
    let started = Instant::now();
    let (loaded, mut lat) = phase(args.duration, loaded).await;
    let elapsed = started.elapsed().as_secs_f64();
    let lsn1 = pg_wal_lsn(&service.store).await;
    let bytes = written_bytes() - bytes0;
    let batches = stats.batches.load(Ordering::Relaxed) - b0;
    let commands = stats.commands.load(Ordering::Relaxed) - c0;
    let n = lat.len() as f64;
    lat.sort_unstable();

    COUNTING.store(true, Ordering::Relaxed);
    let (s0, cb0, cc0) = (
        STATEMENTS.load(Ordering::Relaxed),
        stats.batches.load(Ordering::Relaxed),
        stats.commands.load(Ordering::Relaxed),
    );
    let _ = phase(Duration::from_secs(2), loaded).await;
    COUNTING.store(false, Ordering::Relaxed);
    let counted_batches = (stats.batches.load(Ordering::Relaxed) - cb0).max(1) as f64;
    let counted_commands = (stats.commands.load(Ordering::Relaxed) - cc0).max(1) as f64;
    let statements = (STATEMENTS.load(Ordering::Relaxed) - s0) as f64;

    let result = json!({
        "backend": if args.database_url.is_some() { "postgres" } else { "sqlite" },
        "clients": args.clients,
        "seconds": elapsed,
        "refreshes_per_second": n / elapsed,
        "p50_ms": percentile(&lat, 0.50),
        "p99_ms": percentile(&lat, 0.99),
        "p999_ms": percentile(&lat, 0.999),
        "max_ms": percentile(&lat, 1.0),
        "batches": batches,
        "refreshes_per_batch": commands as f64 / batches.max(1) as f64,
        "pipelined_batches": stats.pipelined.load(Ordering::Relaxed),
        "statements_per_batch": statements / counted_batches,
        "statements_per_refresh": statements / counted_commands,
        "bytes_written_per_refresh": bytes as f64 / commands.max(1) as f64,
        "pg_wal_bytes_per_refresh": match (lsn0, lsn1) {
            (Some(a), Some(b)) => json!((b - a) as f64 / commands.max(1) as f64),
            _ => Value::Null,
        },
    });
    if args.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result).expect("json"));
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::process::exit(0);
}
