//! Personal data past retention (issue 12, point 4) in the projections too, and the raw
//! bytes of every table: no clear name, address or User-Agent of a user anywhere in the
//! database, on SQLite and PostgreSQL.

use crate::admin::analyst;
use crate::helpers::*;
use crate::pg::fresh_database;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::clock::ManualClock;
use sessiond::config::Config;
use sessiond::domain::Duration;
use sessiond::jobs::JobKind;
use sqlx::Row;
use std::sync::Arc;

const IP: &str = "198.51.100.61";
const UA: &str = "RetentionProbe/4.2 (X11; Linux x86_64)";

fn proxied(c: &mut Config) {
    c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

/// A server on SQLite, or on the PostgreSQL database `url`, behind a trusted proxy.
async fn server(url: Option<String>, also: fn(&mut Config)) -> TestApp {
    spawn_node(
        move |c| {
            if let Some(url) = &url {
                c.database_url = Some(sessiond::config::DatabaseUrl::parse(url).unwrap());
            }
            proxied(c);
            also(c);
        },
        Arc::new(ManualClock::default()),
        None,
    )
    .await
}

/// Every table of the database and the text of every row of it, each column read as text
/// (blobs as the bytes they hold), with a connection of its own: what a copy of the database
/// gives away.
pub async fn every_table_text(app: &TestApp, pg_url: Option<&str>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match pg_url {
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let tables: Vec<String> = sqlx::query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
            for t in tables {
                let cols = sqlx::query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1",
                )
                .bind(&t)
                .fetch_all(&pool)
                .await
                .unwrap();
                let expr = cols
                    .iter()
                    .map(|r| {
                        let (c, ty): (String, String) = (r.get(0), r.get(1));
                        match ty.as_str() {
                            "bytea" => format!("coalesce(encode({c}, 'escape'), '')"),
                            _ => format!("coalesce({c}::text, '')"),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                let rows = sqlx::query(&format!("SELECT {expr} FROM {t}"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                let text: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                out.push((t, text.join("\n")));
            }
            pool.close().await;
        }
        None => {
            let url = format!("sqlite:{}", app.db_path().display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let tables: Vec<String> = sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
            for t in tables {
                let cols: Vec<String> = sqlx::query(&format!("PRAGMA table_info({t})"))
                    .fetch_all(&pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<String, _>("name"))
                    .collect();
                let expr = cols
                    .iter()
                    .map(|c| format!("coalesce(CAST({c} AS TEXT), '')"))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                let rows = sqlx::query(&format!("SELECT CAST({expr} AS BLOB) FROM {t}"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                let text: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        let bytes: Vec<u8> = r.get(0);
                        String::from_utf8_lossy(&bytes).into_owned()
                    })
                    .collect();
                out.push((t, text.join("\n")));
            }
            pool.close().await;
        }
    }
    out
}

/// Fails naming the table and the place if any of `needles` is in any table.
pub fn assert_no_table_holds(tables: &[(String, String)], needles: &[&str], when: &str) {
    for (table, text) in tables {
        for n in needles {
            if let Some(at) = text.find(n) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                let to = (at + 80).min(text.len());
                panic!("{when}: table {table} holds {n:?}: …{}…", &text[from..to]);
            }
        }
    }
}

/// Login, refresh, then past retention: the job destroys the period's keys and the session
/// rows forget the contexts recorded in it, as a rebuild of the log yields them.
async fn retention_on(app: &TestApp, pg_url: Option<&str>) {
    let admin = analyst(app).await;
    app.register("rosa").await;
    let old = login_from(app, "rosa", IP, UA).await;
    let r = refresh_from(app, &old.refresh, IP, UA).await;
    assert_eq!(r.status(), StatusCode::OK);
    let before = every_table_text(app, pg_url).await;
    let sessions = &before.iter().find(|(t, _)| t == "sessions").unwrap().1;
    assert!(
        sessions.contains(UA),
        "the live session row keeps its context: {sessions}"
    );

    app.clock.advance(Duration::days(125));
    let admin2 = app.login("analyst").await;
    let new = login_from(app, "rosa", "203.0.113.78", "Fresh/2.0").await;
    let outcome = app.jobs.run(JobKind::Retention).await.unwrap();
    assert!(format!("{outcome:?}").contains("data keys"), "{outcome:?}");

    // (a) The stored bytes: no table holds the old address or User-Agent any more.
    let after = every_table_text(app, pg_url).await;
    assert_no_table_holds(&after, &[IP, UA, "RetentionProbe"], "after retention");
    // The recent login keeps its context.
    let sessions = &after.iter().find(|(t, _)| t == "sessions").unwrap().1;
    assert!(sessions.contains("Fresh/2.0"), "{sessions}");

    // (b) The views: the old session's contexts read as expired, the new one's as recorded.
    let r = app
        .http
        .get(app.url("/v1/admin/users/rosa"))
        .bearer_auth(&admin2.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let session = |sid: &str| {
        body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session_id"] == sid)
            .cloned()
            .unwrap_or_else(|| panic!("{sid} in {body}"))
    };
    let s = session(&old.session_id);
    for ctx in ["login_context", "last_context"] {
        assert_eq!(s[ctx]["user_agent"], "[expired]", "{s}");
        assert!(s[ctx]["ip"].is_null(), "{s}");
    }
    let s = session(&new.session_id);
    assert_eq!(s["login_context"]["ip"], "203.0.113.78", "{s}");
    // The old address is no longer searchable (its tags went with its period); the new is.
    for (ip, n) in [(IP, 0), ("203.0.113.78", 1)] {
        let r = app
            .http
            .get(app.url(&format!("/v1/admin/events?ip={ip}&type=session.started")))
            .bearer_auth(&admin2.access)
            .send()
            .await
            .unwrap();
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["events"].as_array().unwrap().len(), n, "{ip}: {page}");
    }
    assert_eq!(s["login_context"]["user_agent"], "Fresh/2.0", "{s}");
    drop(admin);

    // (c) verify replays the log and finds every projected table equal; a rebuild yields the
    // same rows.
    let db: Vec<&str> = pg_url
        .map(|u| vec!["--database-url", u])
        .unwrap_or_default();
    let args: Vec<&str> = ["events", "verify"]
        .iter()
        .copied()
        .chain(db.clone())
        .collect();
    let (ok, out, err) = sessiond_cli(&args, app.data_dir.path());
    assert!(ok, "{out}{err}");
    assert!(out.contains("projections ok"), "{out}");
    let live = app.service.store.projection_snapshot().await.unwrap();
    sessiond::projection::rebuild_projections(&app.service.store)
        .await
        .unwrap();
    assert_eq!(app.service.store.projection_snapshot().await.unwrap(), live);
    let rebuilt = every_table_text(app, pg_url).await;
    assert_no_table_holds(&rebuilt, &[IP, UA], "after a rebuild");

    // A second run destroys nothing and changes nothing.
    let n = app.event_count().await;
    app.jobs.run(JobKind::Retention).await.unwrap();
    assert_eq!(app.event_count().await, n);
}

#[tokio::test]
async fn past_retention_no_table_keeps_the_context_and_verify_and_rebuild_still_match() {
    let app = server(None, |c| c.personal_data_retention = Duration::days(90)).await;
    retention_on(&app, None).await;
    let db = fresh_database("retention_sessions").await;
    let Some(db) = db else { return };
    let app = server(Some(db.url.clone()), |c| {
        c.personal_data_retention = Duration::days(90)
    })
    .await;
    retention_on(&app, Some(&db.url)).await;
}

/// Register, log in, refresh, change the password, and fail to log in (with the right name
/// and with an unknown one): afterwards no table of the database holds the name, the
/// address, its network or the User-Agent in clear.
async fn nothing_in_clear_on(app: &TestApp, pg_url: Option<&str>) {
    let name = "ottoline";
    let r = post_from(
        app,
        "/v1/auth/register",
        json!({"username": name, "password": PASSWORD}),
        IP,
        UA,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let t = login_from(app, name, IP, UA).await;
    let r = refresh_from(app, &t.refresh, IP, UA).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t = Tokens::from_json(&r.json().await.unwrap());
    let r = app
        .http
        .post(app.url("/v1/auth/password"))
        .header("x-forwarded-for", IP)
        .header("user-agent", UA)
        .bearer_auth(&t.access)
        .json(&json!({"current_password": PASSWORD, "new_password": "another long passphrase 9"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for who in [name, "nobody-by-this-name"] {
        let r = post_from(
            app,
            "/v1/auth/login",
            json!({"username": who, "password": "wrong password entirely"}),
            IP,
            UA,
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let tables = every_table_text(app, pg_url).await;
    let throttle = &tables
        .iter()
        .find(|(t, _)| t == "login_failures")
        .unwrap()
        .1;
    assert!(
        throttle.lines().count() >= 4,
        "the failures were counted: {throttle}"
    );
    // The users table holds the name and hash (state: logins look them up); the session rows
    // hold the request context of live sessions for the devices view, until retention (see
    // the README, *Personal data*). No other table holds any of it.
    let except = |skip: &[&str]| -> Vec<(String, String)> {
        tables
            .iter()
            .filter(|(t, _)| !skip.contains(&t.as_str()))
            .cloned()
            .collect()
    };
    let when = "after register, login, refresh, password change and failed logins";
    assert_no_table_holds(&except(&["users"]), &[name, "nobody-by-this-name"], when);
    assert_no_table_holds(
        &except(&["users", "sessions"]),
        &[IP, "198.51.100.", UA, "RetentionProbe"],
        when,
    );
    // The hashed throttle rows are a projection like the others: a rebuild yields them again.
    let snapshot = app.service.store.projection_snapshot().await.unwrap();
    sessiond::projection::rebuild_projections(&app.service.store)
        .await
        .unwrap();
    assert_eq!(
        app.service.store.projection_snapshot().await.unwrap(),
        snapshot
    );
}

#[tokio::test]
async fn no_table_holds_a_name_address_or_user_agent_in_clear() {
    let app = server(None, |_| {}).await;
    nothing_in_clear_on(&app, None).await;
    let Some(db) = fresh_database("nothing_in_clear").await else {
        return;
    };
    let app = server(Some(db.url.clone()), |_| {}).await;
    nothing_in_clear_on(&app, Some(&db.url)).await;
}

/// Events a security caller finds at `path` (a search or an IP timeline): each one's context
/// address.
async fn found(app: &TestApp, access: &str, path: &str) -> Vec<String> {
    let r = app
        .http
        .get(app.url(path))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    let body: Value = r.json().await.unwrap();
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["context"]["ip"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Runs `$body` with `$pool` connected to the app's database, PostgreSQL at `$pg` or its SQLite
/// file, and returns its value.
macro_rules! on_database {
    ($app:expr, $pg:expr, |$pool:ident| $body:expr) => {
        match $pg {
            Some(url) => {
                let $pool = sqlx::PgPool::connect(url).await.unwrap();
                let out = $body;
                $pool.close().await;
                out
            }
            None => {
                let url = format!("sqlite:{}", $app.db_path().display());
                let $pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                let out = $body;
                $pool.close().await;
                out
            }
        }
    };
}

async fn sql(app: &TestApp, pg_url: Option<&str>, statement: &str) {
    on_database!(app, pg_url, |pool| {
        sqlx::query(statement).execute(&pool).await.unwrap();
    });
}

async fn row_count(app: &TestApp, pg_url: Option<&str>, table: &str) -> i64 {
    let q = format!("SELECT COUNT(*) FROM {table}");
    on_database!(app, pg_url, |pool| {
        sqlx::query_scalar::<_, i64>(&q)
            .fetch_one(&pool)
            .await
            .unwrap()
    })
}

/// Search by address or network reads the address index (keyed hashes outside the log): an
/// exact address, a stored network, a prefix between stored boundaries (narrowed by the wider
/// stored one, then filtered on the opened addresses), IPv6; the index is a projection (a
/// rebuild fills it again, verify compares it); an erasure deletes the user's tags.
async fn search_on(app: &TestApp, pg_url: Option<&str>) {
    let admin = analyst(app).await;
    let rosa = app.register("rosa").await;
    app.register("sam").await;
    app.register("tom").await;
    login_from(app, "rosa", IP, UA).await;
    login_from(app, "sam", "198.51.100.7", UA).await;
    login_from(app, "tom", "2001:db8:1:2::7", UA).await;
    let a = &admin.access;
    let only = |got: Vec<String>, want: &[&str], what: &str| {
        assert!(!got.is_empty(), "{what}: nothing found");
        assert!(
            got.iter().all(|ip| want.contains(&ip.as_str())),
            "{what}: {got:?}"
        );
        for w in want {
            assert!(
                got.iter().any(|g| g == w),
                "{what}: {w} missing from {got:?}"
            );
        }
    };
    only(
        found(app, a, &format!("/v1/admin/events?ip={IP}")).await,
        &[IP],
        "exact",
    );
    only(
        found(app, a, "/v1/admin/ips/198.51.100.0%2F24/timeline").await,
        &[IP, "198.51.100.7"],
        "a stored /24",
    );
    // 198.51.100.48/28 holds .61 but not .7: narrowed by the /24's tag, then filtered.
    only(
        found(app, a, "/v1/admin/ips/198.51.100.48%2F28/timeline").await,
        &[IP],
        "a /28",
    );
    // 198.51.100.0/30 holds neither .7 nor .61.
    assert!(
        found(app, a, "/v1/admin/events?ip=198.51.100.0/30")
            .await
            .is_empty()
    );
    only(
        found(app, a, "/v1/admin/ips/2001:db8:1::%2F48/timeline").await,
        &["2001:db8:1:2::7"],
        "an IPv6 /48",
    );

    // The index is what the search reads: emptied by hand, the search finds nothing; a
    // rebuild fills it again from the log.
    sql(app, pg_url, "DELETE FROM address_tags").await;
    assert!(
        found(app, a, &format!("/v1/admin/events?ip={IP}"))
            .await
            .is_empty()
    );
    let db: Vec<&str> = pg_url
        .map(|u| vec!["--database-url", u])
        .unwrap_or_default();
    let args: Vec<&str> = ["events", "verify"]
        .iter()
        .copied()
        .chain(db.clone())
        .collect();
    let (ok, out, _) = sessiond_cli(&args, app.data_dir.path());
    assert!(
        !ok && out.contains("address_tags"),
        "verify names the emptied index: {out}"
    );
    sessiond::projection::rebuild_projections(&app.service.store)
        .await
        .unwrap();
    only(
        found(app, a, &format!("/v1/admin/events?ip={IP}")).await,
        &[IP],
        "after a rebuild",
    );
    let (ok, out, err) = sessiond_cli(&args, app.data_dir.path());
    assert!(ok, "{out}{err}");

    // An erasure deletes the user's tags: the address finds nothing, the others still work.
    let r = app
        .http
        .post(app.url(&format!("/v1/admin/users/{rosa}/erase")))
        .bearer_auth(a)
        .send()
        .await
        .unwrap();
    // On PostgreSQL too (usual_networks.user_id is a uuid there).
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        found(app, a, &format!("/v1/admin/events?ip={IP}"))
            .await
            .is_empty()
    );
    let tables = every_table_text(app, pg_url).await;
    let tags = &tables.iter().find(|(t, _)| t == "address_tags").unwrap().1;
    assert!(
        !tags.contains(&rosa),
        "the erased user's tags are gone: {tags}"
    );
    assert_no_table_holds(
        &[("address_tags".into(), tags.clone())],
        &[IP, "198.51.100.", "2001:db8"],
        "the index",
    );
    only(
        found(app, a, "/v1/admin/ips/198.51.100.0%2F24/timeline").await,
        &["198.51.100.7"],
        "after the erasure",
    );
    let (ok, out, err) = sessiond_cli(&args, app.data_dir.path());
    assert!(ok, "{out}{err}");
}

#[tokio::test]
async fn search_by_address_or_prefix_reads_keyed_hashes_that_erasure_deletes() {
    let app = server(None, |_| {}).await;
    search_on(&app, None).await;
    let Some(db) = fresh_database("address_tags").await else {
        return;
    };
    let app = server(Some(db.url.clone()), |_| {}).await;
    search_on(&app, Some(&db.url)).await;
}

/// A session refreshing from where it was last seen adds no address rows (issue 16: three
/// per refresh before), yet a search for the address still finds every one of its refreshes;
/// a move is indexed, and the live index equals a replay's (verify, then a rebuild).
async fn steady_rotation_on(app: &TestApp, pg_url: Option<&str>) {
    let admin = analyst(app).await;
    app.register("una").await;
    let moved = "198.51.100.62";
    let mut t = login_from(app, "una", IP, UA).await;
    let after_login = row_count(app, pg_url, "address_tags").await;
    assert!(after_login > 0, "the login is indexed");
    let rotate = async |ip: &str, t: &mut Tokens| {
        let r = refresh_from(app, &t.refresh, ip, UA).await;
        assert_eq!(r.status(), StatusCode::OK, "refresh from {ip}");
        *t = Tokens::from_json(&r.json().await.unwrap());
    };
    for _ in 0..3 {
        rotate(IP, &mut t).await;
    }
    assert_eq!(
        row_count(app, pg_url, "address_tags").await,
        after_login,
        "three refreshes from the same address add no rows"
    );
    rotate(moved, &mut t).await;
    let after_move = row_count(app, pg_url, "address_tags").await;
    assert!(after_move > after_login, "a move is indexed");
    rotate(IP, &mut t).await;
    assert!(row_count(app, pg_url, "address_tags").await > after_move);

    let a = &admin.access;
    let refreshes = |ip: &str| format!("/v1/admin/events?ip={ip}&type=session.refreshed");
    assert_eq!(
        found(app, a, &refreshes(IP)).await,
        vec![IP; 4],
        "the three steady refreshes and the one back"
    );
    assert_eq!(found(app, a, &refreshes(moved)).await, vec![moved]);

    let db: Vec<&str> = pg_url
        .map(|u| vec!["--database-url", u])
        .unwrap_or_default();
    let verify: Vec<&str> = ["events", "verify"].into_iter().chain(db).collect();
    let (ok, out, err) = sessiond_cli(&verify, app.data_dir.path());
    assert!(ok, "the live index is a replay's: {out}{err}");
    let live = row_count(app, pg_url, "address_tags").await;
    sessiond::projection::rebuild_projections(&app.service.store)
        .await
        .unwrap();
    assert_eq!(row_count(app, pg_url, "address_tags").await, live);
    assert_eq!(found(app, a, &refreshes(IP)).await.len(), 4);
}

#[tokio::test]
async fn a_steady_rotation_adds_no_address_rows_and_a_search_still_finds_each_refresh() {
    let app = server(None, |_| {}).await;
    steady_rotation_on(&app, None).await;
    let Some(db) = fresh_database("steady_rotation").await else {
        return;
    };
    let app = server(Some(db.url.clone()), |_| {}).await;
    steady_rotation_on(&app, Some(&db.url)).await;
}
