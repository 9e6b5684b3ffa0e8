//! Load generator: drives login or refresh against a running sessiond at a chosen concurrency and
//! prints throughput and latency percentiles. Every request loop is bounded by `--duration`.
//!
//!     sessiond-load --url http://127.0.0.1:8080 --clients 64 --duration 20s --scenario refresh
//!
//! With `--dpop` each client holds an Ed25519 key and sends a DPoP proof (RFC 9449) with every
//! login and refresh, so its session is bound to the key.

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "sessiond-load", about = "Load generator for sessiond")]
struct Args {
    /// Base URL of the server (loopback only: this tool is for local measurement).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients, each with its own user and session.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to measure, e.g. 20s or 1m.
    #[arg(long, default_value = "20s", value_parser = duration)]
    duration: Duration,
    /// Requests before measuring starts, per client.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, value_enum, default_value_t = Scenario::Refresh)]
    scenario: Scenario,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Sign a DPoP proof for every login and refresh (the sessions are key-bound).
    #[arg(long)]
    dpop: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Scenario {
    /// Each client rotates its own refresh token as fast as it can.
    Refresh,
    /// Each client logs in again and again (argon2-bound).
    Login,
}

fn duration(s: &str) -> Result<Duration, String> {
    sessiond::domain::parse::parse_duration(s)
        .and_then(|d| d.to_std().ok())
        .ok_or_else(|| format!("{s:?} is not a duration like 20s or 1m"))
}

struct Client {
    http: reqwest::Client,
    url: String,
    username: String,
    password: String,
    refresh_token: String,
    dpop: Option<DpopKey>,
}

/// A client's DPoP key: the signer and the proof header, encoded once.
struct DpopKey {
    signer: ed25519_dalek::SigningKey,
    header_b64: String,
}

impl DpopKey {
    fn generate() -> DpopKey {
        let signer = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let x = B64.encode(signer.verifying_key().as_bytes());
        let header = json!({ "typ": "dpop+jwt", "alg": "EdDSA",
            "jwk": { "kty": "OKP", "crv": "Ed25519", "x": x } });
        DpopKey {
            signer,
            header_b64: B64.encode(header.to_string()),
        }
    }

    fn proof(&self, method: &str, url: &str) -> String {
        use ed25519_dalek::Signer;
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = json!({ "jti": uuid::Uuid::new_v4().to_string(), "htm": method,
            "htu": url, "iat": iat });
        let input = format!("{}.{}", self.header_b64, B64.encode(claims.to_string()));
        let sig = self.signer.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }
}

use base64::Engine;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

impl Client {
    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.url);
        let mut request = self.http.post(&url).json(&body);
        if let Some(key) = &self.dpop
            && path != "/v1/auth/register"
        {
            request = request.header("DPoP", key.proof("POST", &url));
        }
        let r = request.send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }

    /// Posts `body` and keeps the refresh token of the answer: both scenarios end this way.
    async fn take_token(&mut self, path: &str, body: Value) -> Result<(), String> {
        let answer = self.post(path, body).await?;
        let token = answer["refresh_token"].as_str().ok_or("no refresh_token")?;
        self.refresh_token = token.to_owned();
        Ok(())
    }

    async fn login(&mut self) -> Result<(), String> {
        let body = json!({ "username": self.username, "password": self.password });
        self.take_token("/v1/auth/login", body).await
    }

    async fn refresh(&mut self) -> Result<(), String> {
        let body = json!({ "refresh_token": self.refresh_token });
        self.take_token("/v1/auth/refresh", body).await
    }

    async fn once(&mut self, scenario: Scenario) -> Result<(), String> {
        match scenario {
            Scenario::Refresh => self.refresh().await,
            Scenario::Login => self.login().await,
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiond-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    eprintln!("setting up {} users and sessions...", args.clients);
    let mut setup = Vec::new();
    for i in 0..args.clients {
        let mut c = Client {
            http: http.clone(),
            url: args.url.trim_end_matches('/').to_owned(),
            username: format!("load-{}-{i}", &run_id[..8]),
            password: format!("load-password-{run_id}"),
            refresh_token: String::new(),
            dpop: args.dpop.then(DpopKey::generate),
        };
        setup.push(tokio::spawn(async move {
            c.post(
                "/v1/auth/register",
                json!({ "username": c.username, "password": c.password }),
            )
            .await?;
            c.login().await?;
            Ok::<_, String>(c)
        }));
    }
    let mut clients = Vec::new();
    for s in setup {
        clients.push(s.await.map_err(|e| e.to_string())??);
    }

    let scenario = args.scenario;
    let warmup = args.warmup;
    let start = Arc::new(tokio::sync::Barrier::new(args.clients + 1));
    let mut tasks = Vec::new();
    for mut c in clients {
        let start = start.clone();
        let measure_for = args.duration;
        tasks.push(tokio::spawn(async move {
            for _ in 0..warmup {
                c.once(scenario).await?;
            }
            start.wait().await;
            let began = Instant::now();
            let mut latencies = Vec::with_capacity(16_384);
            let mut errors = 0u64;
            while began.elapsed() < measure_for {
                let t = Instant::now();
                match c.once(scenario).await {
                    Ok(()) => latencies.push(t.elapsed().as_micros() as u64),
                    Err(_) if errors < 100 => {
                        errors += 1;
                        // A failed refresh leaves no usable token: start a fresh session.
                        c.login().await?;
                    }
                    Err(e) => return Err(format!("too many errors, last: {e}")),
                }
            }
            Ok::<_, String>((latencies, errors))
        }));
    }
    start.wait().await;
    let began = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, err) = t.await.map_err(|e| e.to_string())??;
        all.extend(lat);
        errors += err;
    }
    let elapsed = began.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    let result = json!({
        "scenario": format!("{scenario:?}").to_lowercase(),
        "dpop": args.dpop,
        "clients": args.clients,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "requests": all.len(),
        "errors": errors,
        "per_second": (all.len() as f64 / elapsed).round(),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": all.last().map_or(0.0, |m| *m as f64 / 1000.0),
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{}{} x{}: {} ok in {:.1}s = {}/s, errors {}; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            result["scenario"].as_str().unwrap_or(""),
            if args.dpop { " (DPoP)" } else { "" },
            args.clients,
            all.len(),
            elapsed,
            result["per_second"],
            errors,
            pct(0.50),
            pct(0.99),
            pct(0.999),
            result["max_ms"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
