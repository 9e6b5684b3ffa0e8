//! A bad-input corpus over every route the server documents in `/openapi.json` (so routes
//! added later are covered without touching this file): oversized and repeated headers,
//! invalid UTF-8 in bodies, paths and queries, duplicate JSON keys, deeply nested JSON, huge
//! numbers, NUL bytes, wrong methods and wrong content types. Every request is sent with a
//! security user's access token, so it reaches as deep as a real caller's would. Each gets a
//! 4xx JSON answer with an `error` field, nothing is written, and the server stays up.

mod cases;

use crate::helpers::*;
use cases::{cases, wrong_methods};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// What a route takes in its body, from the document's `requestBody`.
#[derive(Debug, Clone)]
enum Body {
    None,
    /// The schema's properties: (name, JSON type).
    Json(Vec<(String, String)>),
    Form(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
struct Route {
    method: Method,
    /// The documented path, `{param}`s and all.
    template: String,
    body: Body,
    query: Vec<String>,
}

/// One malformed request.
struct Case {
    what: String,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Option<(Option<&'static str>, Vec<u8>)>,
    /// The status it must get, when the case decides it; any 4xx otherwise. `Some(200)`: the
    /// oddity may be ignored (no 5xx, and any refusal in our JSON).
    status: Option<StatusCode>,
}

fn properties(doc: &Value, schema: &Value) -> Vec<(String, String)> {
    let name = schema["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_default();
    let schema = if name.is_empty() {
        schema
    } else {
        &doc["components"]["schemas"][name]
    };
    schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(k, v)| (k.clone(), v["type"].as_str().unwrap_or("string").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn routes(doc: &Value) -> Vec<Route> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let content = &op["requestBody"]["content"];
            let body = if let Some(s) = content.get("application/json") {
                Body::Json(properties(doc, &s["schema"]))
            } else if let Some(s) = content.get("application/x-www-form-urlencoded") {
                Body::Form(properties(doc, &s["schema"]))
            } else {
                Body::None
            };
            let query = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            out.push(Route {
                method: method.to_uppercase().parse().unwrap(),
                template: template.clone(),
                body,
                query,
            });
        }
    }
    out
}

/// Sends one case; `Err` says how the answer fell short.
async fn send(app: &TestApp, c: &Case) -> Result<(), String> {
    let mut r = app
        .http
        .request(c.method.clone(), app.url(&c.path))
        .headers(c.headers.clone())
        .timeout(std::time::Duration::from_secs(20));
    if let Some((ct, body)) = &c.body {
        if let Some(ct) = ct {
            r = r.header("content-type", *ct);
        }
        r = r.body(body.clone());
    }
    let label = format!(
        "{} {} ({})",
        c.method,
        c.path.chars().take(100).collect::<String>(),
        c.what
    );
    let r = r
        .send()
        .await
        .map_err(|e| format!("{label}: no answer: {e}"))?;
    let status = r.status();
    // `Some(200)` marks a case whose oddity may be ignored: no 5xx, and a refusal is ours.
    if c.status == Some(StatusCode::OK) {
        if status.is_server_error() {
            return Err(format!("{label}: {status}"));
        }
        if status.is_success() {
            return Ok(());
        }
    } else if let Some(expected) = c.status
        && status != expected
    {
        return Err(format!("{label}: {status}, expected {expected}"));
    }
    if !status.is_client_error() {
        return Err(format!("{label}: {status}"));
    }
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !ct.starts_with("application/json") {
        return Err(format!("{label}: {status} with content type {ct:?}"));
    }
    let body: Value = r
        .json()
        .await
        .map_err(|e| format!("{label}: the body is not JSON: {e}"))?;
    if !body["error"].is_string() {
        return Err(format!("{label}: no error code in {body}"));
    }
    Ok(())
}

#[tokio::test]
async fn every_documented_route_refuses_the_bad_input_corpus_and_writes_nothing() {
    let app = spawn_app().await;
    // A security user (made as an operator would) whose token reaches every route's parsing,
    // and another user with a live session for the routes that name one.
    let (ok, out, err) = sessiond_cli(
        &["users", "create", "analyst", "--role", "security"],
        app.data_dir.path(),
    );
    assert!(ok, "{err}");
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("password:"))
        .unwrap()
        .trim()
        .to_owned();
    let r = app.login_as("analyst", &password).await;
    assert_eq!(r.status(), StatusCode::OK);
    let analyst = Tokens::from_json(&r.json().await.unwrap());
    let victim_id = app.register("victim").await;
    let victim = app.login("victim").await;

    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routes = routes(&doc);
    assert!(routes.len() > 30, "the document lists the routes");
    let fill = |template: &str| {
        template
            .split('/')
            .map(|seg| match seg {
                "{user}" => victim_id.clone(),
                "{session_id}" => victim.session_id.clone(),
                "{ip}" => "127.0.0.1".into(),
                s if s.starts_with('{') => uuid::Uuid::new_v4().to_string(),
                s => s.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/")
    };

    let before = app.event_count().await;
    let mut sent = 0;
    let mut failures = Vec::new();
    let mut failures_written = 0;
    for route in &routes {
        let path = fill(&route.template);
        for c in cases(route, &path, &analyst.access) {
            failures.extend(send(&app, &c).await.err());
            sent += 1;
        }
        let r = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "up after {}", route.template);
        let written = app.event_count().await - before - failures_written;
        if written > 0 {
            failures_written += written;
            failures.push(format!(
                "{} {}: bad requests wrote {written} events",
                route.method, route.template
            ));
        }
    }
    for c in wrong_methods(&doc, &analyst.access, &fill) {
        failures.extend(send(&app, &c).await.err());
        sent += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} bad requests were not refused as they should be:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(sent > 900, "{sent} requests");
    assert_eq!(
        app.event_count().await,
        before,
        "no bad request wrote an event"
    );
    // Both users are as they were.
    assert_eq!(app.me(&analyst.access).await.status(), StatusCode::OK);
    app.refresh_ok(&victim.refresh).await;
}

/// Bytes no HTTP client library would send, written on a socket: the server answers with a
/// 4xx (hyper refuses a request line that is not a URI before any route sees it) and stays up.
#[tokio::test]
async fn raw_requests_with_bytes_outside_http_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let before = app.event_count().await;
    let requests: Vec<Vec<u8>> = vec![
        b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /v1/me\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n".to_vec(),
        [b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec(), (0..200).flat_map(|i| format!("X-H{i}: v\r\n").into_bytes()).collect(), b"\r\n".to_vec()].concat(),
    ];
    for raw in requests {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(&raw).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            s.read_to_end(&mut answer),
        )
        .await;
        let text = String::from_utf8_lossy(&answer);
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no status for {:?}: {text:?}",
                    String::from_utf8_lossy(&raw)
                )
            });
        assert!(
            (400..500).contains(&status),
            "{:?}: {text}",
            String::from_utf8_lossy(&raw)
        );
    }
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.event_count().await, before);
}
