use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::config::Config;
use sessiond::service::Sessiond;
use sessiond::store::{EventFilter, RecordedEvent};
use sessiond::{App, app::Options};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use tempfile::TempDir;

pub const PASSWORD: &str = "correct horse battery";
pub const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_env_filter("sessiond=trace")
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
    });
}

/// Everything every test has logged so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub service: Arc<Sessiond>,
    pub jobs: Arc<sessiond::jobs::Jobs>,
    pub data_dir: TempDir,
}

/// Lets webhooks reach receivers the test runs on this machine: plain http on loopback, which
/// the defaults refuse (https only, no internal addresses).
/// `python3` for a support script in `tests/support/`, with the modules it imports present: on a
/// fresh machine the first test that needs one installs it with pip (the README's `cargo test`
/// does its own set-up; `.ci/run` installs them up front).
pub fn python3(modules: &[&str]) -> std::process::Command {
    static READY: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    for m in modules {
        if ready.iter().any(|r| r == m) {
            continue;
        }
        let importable = |m: &str| {
            std::process::Command::new("python3")
                .args(["-c", &format!("import {m}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !importable(m) {
            let pip = |extra: &[&str]| {
                std::process::Command::new("python3")
                    .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                    .args(extra)
                    .arg(m)
                    .status()
                    .is_ok_and(|s| s.success())
            };
            // A Debian Python refuses a system-wide install (PEP 668): then into the user's site.
            let _ = pip(&[]) || pip(&["--user", "--break-system-packages"]);
            assert!(
                importable(m),
                "python3 cannot import {m}, and pip could not install it"
            );
        }
        ready.push((*m).to_owned());
    }
    let mut cmd = std::process::Command::new("python3");
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

pub fn local_webhooks(c: &mut Config) {
    c.webhook_allow_http = true;
    c.webhook_allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_node_with(configure, Arc::new(ManualClock::default()), None, false).await
}

/// An app whose scheduled jobs run on their configured schedules (set them in `configure`).
pub async fn spawn_app_scheduled(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_node_with(configure, Arc::new(ManualClock::default()), None, true).await
}

/// A server built with `configure`, reading time from `clock`, with the master key given (as
/// `SESSIOND_MASTER_KEY` would give it) or a `master.key` of its own. Several nodes of one
/// PostgreSQL database need the same master key.
pub async fn spawn_node(
    configure: impl FnOnce(&mut Config),
    clock: Arc<ManualClock>,
    master_key: Option<String>,
) -> TestApp {
    spawn_node_with(configure, clock, master_key, false).await
}

async fn spawn_node_with(
    configure: impl FnOnce(&mut Config),
    clock: Arc<ManualClock>,
    master_key: Option<String>,
    start_jobs: bool,
) -> TestApp {
    capture_logs();
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: data_dir.path().to_owned(),
        ..Config::default()
    };
    configure(&mut config);
    // Bound first, so that `listen` is the address clients reach: the server's absolute URLs
    // (OAuth metadata, the `htu` a DPoP proof must name) come from it when no `public_url` is set.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.listen = listener.local_addr().unwrap();
    let app = App::build_with(
        config,
        Options {
            clock: clock.clone(),
            master_key,
            // Jobs mostly run by hand in tests (`TestApp::jobs`), so that they run
            // exactly when the test has moved the manual clock.
            start_jobs,
            start_delivery: true,
        },
    )
    .await
    .expect("the app builds");
    serve_on(app, listener, clock, data_dir).await
}

/// Serves a built app on 127.0.0.1:0.
pub async fn serve(app: App, clock: Arc<ManualClock>, data_dir: TempDir) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(app, listener, clock, data_dir).await
}

async fn serve_on(
    app: App,
    listener: tokio::net::TcpListener,
    clock: Arc<ManualClock>,
    data_dir: TempDir,
) -> TestApp {
    let service = app.service.clone();
    let jobs = app.jobs();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(app.serve_on(listener, std::future::pending()));
    TestApp {
        addr,
        http: reqwest::Client::builder()
            .user_agent(FIREFOX)
            .build()
            .unwrap(),
        clock,
        service,
        jobs,
        data_dir,
    }
}

/// What login and refresh return, checked for shape.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub session_id: String,
    pub expires_in: i64,
}

impl Tokens {
    pub fn from_json(v: &Value) -> Tokens {
        assert_eq!(v["token_type"], "Bearer", "{v}");
        Tokens {
            access: v["access_token"].as_str().expect("access_token").to_owned(),
            refresh: v["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
            session_id: v["session_id"].as_str().expect("session_id").to_owned(),
            expires_in: v["expires_in"].as_i64().expect("expires_in"),
        }
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn register(&self, username: &str) -> String {
        let r = self
            .post_json(
                "/v1/auth/register",
                json!({ "username": username, "password": PASSWORD }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        body["user_id"].as_str().unwrap().to_owned()
    }

    pub async fn login_as(&self, username: &str, password: &str) -> Response {
        self.post_json(
            "/v1/auth/login",
            json!({ "username": username, "password": password }),
        )
        .await
    }

    pub async fn login(&self, username: &str) -> Tokens {
        let r = self.login_as(username, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
        Tokens::from_json(&r.json().await.unwrap())
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json(
            "/v1/auth/refresh",
            json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    pub async fn refresh_ok(&self, refresh_token: &str) -> Tokens {
        let r = self.refresh(refresh_token).await;
        assert_eq!(r.status(), StatusCode::OK);
        Tokens::from_json(&r.json().await.unwrap())
    }

    pub async fn me(&self, access: &str) -> Response {
        self.http
            .get(self.url("/v1/me"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
    }

    pub async fn events(&self, filter: EventFilter) -> Vec<RecordedEvent> {
        self.service.store.events(&filter).await.unwrap()
    }

    pub async fn all_events(&self) -> Vec<RecordedEvent> {
        self.events(EventFilter::default()).await
    }

    pub async fn session_events(&self, session_id: &str) -> Vec<RecordedEvent> {
        self.events(EventFilter {
            stream_id: Some(format!("session-{session_id}")),
            ..Default::default()
        })
        .await
    }

    pub async fn event_count(&self) -> usize {
        self.all_events().await.len()
    }

    pub fn db_path(&self) -> std::path::PathBuf {
        self.data_dir.path().join("sessiond.db")
    }
}

/// Asserts a JSON error answer and returns its code.
pub async fn error_code(r: Response, status: StatusCode) -> String {
    assert_eq!(r.status(), status);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ct.starts_with("application/json"),
        "error content type {ct:?}"
    );
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].is_string(), "{body}");
    body["error"].as_str().expect("error code").to_owned()
}

pub fn types(events: &[RecordedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

pub fn data(e: &RecordedEvent) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

/// Runs the real `sessiond` binary and returns (success, stdout, stderr).
pub fn sessiond_cli(args: &[&str], data_dir: &Path) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("SESSIOND_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Requests as if from another client: `X-Forwarded-For` (honoured when 127.0.0.1 is a
/// trusted proxy) and a User-Agent.
pub async fn post_from(
    app: &TestApp,
    path: &str,
    body: Value,
    ip: &str,
    ua: &str,
) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .header("x-forwarded-for", ip)
        .header("user-agent", ua)
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub async fn login_from(app: &TestApp, user: &str, ip: &str, ua: &str) -> Tokens {
    let r = post_from(
        app,
        "/v1/auth/login",
        json!({"username": user, "password": PASSWORD}),
        ip,
        ua,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    Tokens::from_json(&r.json().await.unwrap())
}

pub async fn refresh_from(app: &TestApp, token: &str, ip: &str, ua: &str) -> reqwest::Response {
    post_from(
        app,
        "/v1/auth/refresh",
        json!({"refresh_token": token}),
        ip,
        ua,
    )
    .await
}
