//! The corpus itself: for one route, every malformed request it must refuse.

use super::{Body, Case, Route};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A plausible value of each type: each case breaks exactly one thing of such a body.
fn plausible(ty: &str) -> Value {
    match ty {
        "integer" | "number" => Value::from(1),
        "boolean" => Value::Bool(true),
        "array" => serde_json::json!(["x"]),
        "object" => serde_json::json!({}),
        _ => Value::from("x"),
    }
}

/// `{"a":…,"b":…}` with the value of `replaced` written as the raw text given.
fn json_body(props: &[(String, String)], replaced: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut out = b"{".to_vec();
    for (i, (name, ty)) in props.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(serde_json::to_vec(name).unwrap());
        out.push(b':');
        match replaced {
            Some((r, raw)) if r == name => out.extend_from_slice(raw),
            _ => out.extend(serde_json::to_vec(&plausible(ty)).unwrap()),
        }
    }
    out.push(b'}');
    out
}

fn form_body(props: &[(String, String)], replaced: Option<(&str, &str)>) -> Vec<u8> {
    props
        .iter()
        .map(|(name, _)| match replaced {
            Some((r, raw)) if r == name => format!("{name}={raw}"),
            _ => format!("{name}=x"),
        })
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

/// The route's plausible body with its own content type, for cases that break something else.
fn plausible_body(route: &Route) -> Option<(Option<&'static str>, Vec<u8>)> {
    match &route.body {
        Body::None => None,
        Body::Json(props) => Some((JSON, json_body(props, None))),
        Body::Form(props) => Some((FORM, form_body(props, None))),
    }
}

fn header(name: &str, value: &[u8]) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_bytes(value).unwrap(),
    )
}

pub(super) fn cases(route: &Route, path: &str, bearer: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let auth = header("authorization", format!("Bearer {bearer}").as_bytes());
    let base_headers = || {
        let mut h = HeaderMap::new();
        h.insert(auth.0.clone(), auth.1.clone());
        h
    };
    let mut case = |what: String,
                    extra: Vec<(HeaderName, HeaderValue)>,
                    path: String,
                    body: Option<(Option<&'static str>, Vec<u8>)>,
                    status: Option<StatusCode>| {
        let mut headers = base_headers();
        for (k, v) in extra {
            headers.append(k, v);
        }
        cases.push(Case {
            what,
            method: route.method.clone(),
            path,
            headers,
            body,
            status,
        });
    };

    // Headers: too large (one, and many), repeated where one value is meant, not UTF-8.
    let big = vec![b'a'; 40 * 1024];
    case(
        "one 40 KiB header".into(),
        vec![header("x-padding", &big)],
        path.into(),
        plausible_body(route),
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    );
    let many = (0..60)
        .map(|i| header(&format!("x-padding-{i}"), &[b'b'; 700]))
        .collect();
    case(
        "60 headers of 700 bytes".into(),
        many,
        path.into(),
        plausible_body(route),
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    );
    for (name, value) in [
        ("authorization", "Bearer sdak_not-this-one".as_bytes()),
        ("content-type", b"text/plain"),
        ("cookie", b"a=b"),
        ("origin", b"https://evil.example"),
        ("x-request-id", b"second"),
    ] {
        let mut extra = Vec::new();
        if name == "content-type" {
            extra.push(header("content-type", b"application/json"));
        }
        if name == "cookie" || name == "origin" || name == "x-request-id" {
            extra.push(header(name, b"first"));
        }
        extra.push(header(name, value));
        case(
            format!("repeated {name}"),
            extra,
            path.into(),
            plausible_body(route),
            Some(StatusCode::BAD_REQUEST),
        );
    }
    // Not UTF-8 (obs-text) where a handler reads the header as text: harmless on a read, so
    // only read routes get these, and they must answer without a 5xx (see `send`).
    if route.method == Method::GET {
        for name in [
            "x-forwarded-for",
            "user-agent",
            "cookie",
            "origin",
            "last-event-id",
        ] {
            case(
                format!("{name} not UTF-8"),
                vec![header(name, b"\xff\xfe\x80")],
                path.into(),
                None,
                Some(StatusCode::OK),
            );
        }
    }

    // Paths: each parameter made of bad bytes, and junk after the route.
    let params: Vec<&str> = route
        .template
        .split('/')
        .filter(|s| s.starts_with('{'))
        .collect();
    for param in &params {
        for (what, bad) in [
            ("invalid UTF-8", "%FF%FE".to_owned()),
            ("a NUL byte", "a%00b".to_owned()),
            ("a traversal", "..%2F..%2Fetc%2Fpasswd".to_owned()),
            ("a 4 KiB segment", "z".repeat(4096)),
        ] {
            case(
                format!("{param} as {what}"),
                vec![],
                route.template.replace(param, &bad),
                plausible_body(route),
                None,
            );
        }
    }
    case(
        "invalid UTF-8 after the route".into(),
        vec![],
        format!("{path}/%C3%28"),
        plausible_body(route),
        None,
    );
    case(
        "a NUL byte after the route".into(),
        vec![],
        format!("{path}%00"),
        plausible_body(route),
        None,
    );

    // Query strings.
    for name in &route.query {
        for (what, bad) in [
            ("invalid UTF-8", "%FF"),
            ("a NUL byte", "x%00"),
            ("a huge number", "99999999999999999999999999999999"),
            ("a negative number", "-1"),
        ] {
            let numeric = ["limit", "after", "before"].contains(&name.as_str());
            if !numeric && what.contains("number") {
                continue;
            }
            case(
                format!("query {name} as {what}"),
                vec![],
                format!("{path}?{name}={bad}"),
                None,
                Some(StatusCode::BAD_REQUEST),
            );
        }
    }
    if !route.query.is_empty() {
        case(
            "an unknown query parameter".into(),
            vec![],
            format!("{path}?no_such_parameter=1"),
            None,
            Some(StatusCode::BAD_REQUEST),
        );
    }

    // Bodies.
    match &route.body {
        Body::None => {}
        Body::Json(props) => {
            let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
            let mut bodies: Vec<(String, Option<&'static str>, Vec<u8>)> = vec![
                ("not JSON".into(), JSON, b"{\"a\": nope}".to_vec()),
                ("an array".into(), JSON, b"[]".to_vec()),
                ("null".into(), JSON, b"null".to_vec()),
                (
                    "a NUL byte in the text".into(),
                    JSON,
                    b"{\"a\0\":1}".to_vec(),
                ),
                (
                    "text/plain".into(),
                    Some("text/plain"),
                    json_body(props, None),
                ),
                ("a form content type".into(), FORM, json_body(props, None)),
                ("no content type".into(), None, json_body(props, None)),
                ("a key with a NUL".into(), JSON, {
                    let mut b = json_body(props, None);
                    b.pop();
                    b.extend_from_slice(b",\"k\\u0000\":1}");
                    b
                }),
            ];
            for (name, ty) in props {
                let bad: Vec<(&str, Vec<u8>)> = vec![
                    ("a huge number", b"1e999999".to_vec()),
                    ("a huge integer", b"123456789012345678901234567890".to_vec()),
                    ("deeply nested", deep.clone().into_bytes()),
                    ("a NUL character", b"\"a\\u0000b\"".to_vec()),
                    ("invalid UTF-8", b"\"\xff\xfe\"".to_vec()),
                    ("a lone surrogate", b"\"\\ud800\"".to_vec()),
                ];
                for (what, raw) in bad {
                    bodies.push((
                        format!("{name} as {what}"),
                        JSON,
                        json_body(props, Some((name, &raw))),
                    ));
                }
                // The same key twice, the second with another value: refused, not last-wins.
                let mut twice = json_body(props, None);
                twice.pop();
                twice.extend_from_slice(b",");
                twice.extend(serde_json::to_vec(name).unwrap());
                twice.extend_from_slice(b":");
                twice.extend(serde_json::to_vec(&plausible(ty)).unwrap());
                twice.extend_from_slice(b"}");
                bodies.push((format!("{name} twice"), JSON, twice));
            }
            for (what, ct, body) in bodies {
                case(
                    format!("body: {what}"),
                    vec![],
                    path.into(),
                    Some((ct, body)),
                    None,
                );
            }
        }
        Body::Form(props) => {
            let mut bodies: Vec<(String, Option<&'static str>, Vec<u8>)> = vec![
                (
                    "JSON".into(),
                    JSON,
                    b"{\"grant_type\":\"password\"}".to_vec(),
                ),
                ("no content type".into(), None, form_body(props, None)),
                ("a raw NUL".into(), FORM, b"a\0=b".to_vec()),
            ];
            for (name, _) in props {
                for (what, raw) in [
                    ("a NUL byte", "a%00b"),
                    ("invalid UTF-8", "%FF%FE"),
                    ("a broken escape", "%zz"),
                ] {
                    bodies.push((
                        format!("{name} as {what}"),
                        FORM,
                        form_body(props, Some((name, raw))),
                    ));
                }
                let mut twice = form_body(props, None);
                twice.extend(format!("&{name}=y").into_bytes());
                bodies.push((format!("{name} twice"), FORM, twice));
            }
            for (what, ct, body) in bodies {
                case(
                    format!("body: {what}"),
                    vec![],
                    path.into(),
                    Some((ct, body)),
                    None,
                );
            }
        }
    }
    cases
}

/// Every method not documented for a path is a 405, with our JSON.
pub(super) fn wrong_methods(doc: &Value, bearer: &str, fill: &dyn Fn(&str) -> String) -> Vec<Case> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        let allowed: Vec<String> = item.as_object().unwrap().keys().cloned().collect();
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "BREW"] {
            let lower = m.to_lowercase();
            // axum answers HEAD wherever GET is served.
            if allowed.contains(&lower) {
                continue;
            }
            let mut headers = HeaderMap::new();
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {bearer}")).unwrap(),
            );
            out.push(Case {
                what: format!("method {m}"),
                method: m.parse().unwrap(),
                path: fill(template),
                headers,
                body: Some((JSON, b"{}".to_vec())),
                status: Some(StatusCode::METHOD_NOT_ALLOWED),
            });
        }
    }
    out
}
