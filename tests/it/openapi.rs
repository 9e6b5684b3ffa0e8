//! `/openapi.json` describes exactly the routes the router serves: every `.route(…)` in
//! `src/http` is documented with each of its methods, and nothing documented is missing there.

use crate::helpers::*;
use serde_json::Value;
use std::collections::BTreeSet;

/// Every (method, path) the source registers with `.route(path, get(..).post(..))`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The pages are HTML, CSS and JS, not JSON routes.
        if path.ends_with("pages.rs") {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        let consts: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("pub const ")?;
                let (name, value) = rest.split_once(": &str = \"")?;
                Some((name.to_owned(), value.strip_suffix("\";")?.to_owned()))
            })
            .collect();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let (path_expr, after) = rest.split_once(',').unwrap();
            let path_expr = path_expr.trim();
            let path = match path_expr.strip_prefix('"') {
                Some(p) => p.trim_end_matches('"').to_owned(),
                None => consts
                    .iter()
                    .find(|(n, _)| n == path_expr)
                    .unwrap_or_else(|| panic!("route path {path_expr} is not a const here"))
                    .1
                    .clone(),
            };
            // The method chain: `get(h)`, `get(h).delete(h2)`, up to the route's closing paren.
            let mut depth = 1;
            let end = after
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .unwrap()
                .0;
            let chain = &after[..end];
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = chain.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0 || !chain[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if called {
                    found.insert((method.to_owned(), path.clone()));
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"].is_object(), "{method} {path} has responses");
            documented.insert((method.clone(), path.clone()));
        }
    }
    let served = routes_in_source();
    assert!(
        served.len() > 30,
        "the source scan found the routes: {served:?}"
    );
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
}
