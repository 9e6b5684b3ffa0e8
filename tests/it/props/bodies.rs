//! Request bodies against the real server: any JSON value, and any bytes, sent to the public
//! routes that take a JSON body. Never a 5xx; a refusal is a 4xx in our JSON; a body that is
//! not of the route's shape is a 400 (415 for a wrong content type) and writes nothing.

use super::config;
use crate::helpers::*;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use reqwest::StatusCode;
use serde_json::Value;

/// The public JSON routes and their fields: (required, optional).
const ROUTES: &[(&str, &[&str], &[&str])] = &[
    ("/v1/auth/login", &["username", "password"], &["mode"]),
    ("/v1/auth/register", &["username", "password"], &["mode"]),
    ("/v1/auth/refresh", &["refresh_token"], &[]),
    ("/v1/auth/reauth", &["refresh_token", "password"], &[]),
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z]{1,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object of the route's fields (some left out) and other keys, with values of any kind.
fn body_for(fields: Vec<&'static str>) -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => prop::sample::select(fields).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop_oneof![
        3 => prop::collection::btree_map(key, json_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => json_value(),
    ]
}

/// Whether `body` has the route's shape: an object with every required field a string and
/// no key outside the route's fields. Only such a body may get past the parser.
fn well_shaped(body: &Value, required: &[&str], optional: &[&str]) -> bool {
    let Some(map) = body.as_object() else {
        return false;
    };
    required
        .iter()
        .all(|f| map.get(*f).is_some_and(Value::is_string))
        && map
            .keys()
            .all(|k| required.contains(&k.as_str()) || optional.contains(&k.as_str()))
}

struct Answer {
    status: StatusCode,
    json_error: bool,
}

async fn post(app: &TestApp, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
    let r = app
        .http
        .post(app.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Option<Value> = r.json().await.ok();
    Answer {
        status,
        json_error: ct.starts_with("application/json")
            && body.is_some_and(|b| b["error"].is_string()),
    }
}

#[test]
fn json_bodies_of_any_shape_get_a_typed_answer_and_the_wrong_shapes_write_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn_app());
    for &(path, required, optional) in ROUTES {
        let fields: Vec<&'static str> = required.iter().chain(optional).copied().collect();
        let mut runner = TestRunner::new(config());
        let result = runner.run(&body_for(fields), |body| {
            let shaped = well_shaped(&body, required, optional);
            let text = serde_json::to_vec(&body).unwrap();
            rt.block_on(async {
                let before = app.event_count().await;
                let a = post(&app, path, "application/json", text).await;
                prop_assert!(!a.status.is_server_error(), "{path} {body}: {}", a.status);
                if !a.status.is_success() {
                    prop_assert!(a.status.is_client_error() && a.json_error, "{path} {body}");
                }
                if !shaped {
                    prop_assert_eq!(a.status, StatusCode::BAD_REQUEST, "{} {}", path, body);
                    prop_assert_eq!(app.event_count().await, before, "{} {}", path, body);
                }
                Ok(())
            })
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    // Any bytes at all, as JSON and as another type: refused, nothing written, still up.
    let mut runner = TestRunner::new(config());
    let result = runner.run(
        &(
            0..ROUTES.len(),
            prop::collection::vec(any::<u8>(), 1..512),
            prop_oneof![
                Just("application/json"),
                Just("text/plain"),
                Just("application/json; charset=latin1")
            ],
        ),
        |(i, bytes, ct)| {
            let path = ROUTES[i].0;
            // Whitespace alone is an absent body (a cookie refresh): not this property's case.
            prop_assume!(!bytes.iter().all(u8::is_ascii_whitespace));
            rt.block_on(async {
                let before = app.event_count().await;
                let a = post(&app, path, ct, bytes.clone()).await;
                prop_assert!(
                    a.status.is_client_error() && a.json_error,
                    "{path} {bytes:?}: {}",
                    a.status
                );
                prop_assert_eq!(app.event_count().await, before);
                Ok(())
            })
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        let r = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    });
}
