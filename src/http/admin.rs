//! The security team's API under `/v1/admin`: for a user whose access token carries the
//! `security` role, or an API key with that role. Everyone else gets 403 on every route.

use super::AppState;
use super::extract::{ApiJson, Context, RequiredBearer};
use crate::domain::parse::parse_net;
use crate::domain::parse_timestamp;
use crate::error::Error;
use crate::service::admin::{EventPage, EventQuery, SessionDetail, UserDetail};
use crate::service::api_keys::{Caller, SECURITY_ROLE};
use crate::service::family::Lineage;
use crate::service::places::Places;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users/{user}", get(user))
        .route("/v1/admin/users/{user}/timeline", get(user_timeline))
        .route("/v1/admin/users/{user}/places", get(user_places))
        .route(
            "/v1/admin/users/{user}/logout-everywhere",
            post(logout_everywhere),
        )
        .route("/v1/admin/users/{user}/erase", post(erase))
        .route("/v1/admin/users/{user}/lock", post(lock))
        .route("/v1/admin/users/{user}/unlock", post(unlock))
        .route("/v1/admin/sessions/{session_id}", get(session))
        .route(
            "/v1/admin/sessions/{session_id}/places",
            get(session_places),
        )
        .route(
            "/v1/admin/sessions/{session_id}/lineage",
            get(session_lineage),
        )
        .route(
            "/v1/admin/sessions/{session_id}/revoke",
            post(revoke_session),
        )
        .route("/v1/admin/ips/{ip}/timeline", get(ip_timeline))
        .route("/v1/admin/events", get(search))
        .route("/v1/admin/events/export", get(export))
        .route("/v1/admin/stream", get(stream))
        .route("/v1/admin/alerts", get(alerts))
        .route("/v1/admin/checkpoints", get(checkpoints))
}

/// The checkpoint key and the newest signed checkpoints, for a party that keeps them outside.
async fn checkpoints(
    State(app): State<AppState>,
    _: SecurityCaller,
) -> Result<Json<crate::service::integrity::CheckpointsView>, Error> {
    Ok(Json(app.checkpoints().await?))
}

/// The caller of a security route: authenticated, and holding the `security` role.
pub struct SecurityCaller(pub Caller);

impl FromRequestParts<AppState> for SecurityCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Error> {
        let RequiredBearer(token) = RequiredBearer::from_request_parts(parts, app).await?;
        app.caller_with_role(&token, &[SECURITY_ROLE])
            .await
            .map(SecurityCaller)
    }
}

type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
const SEARCH_KEYS: &[&str] = &[
    "user", "session", "type", "ip", "country", "rule", "since", "until", "before", "limit",
];

/// Reads the search parameters; anything unknown or malformed is a 400 naming the parameter.
fn event_query(params: Params, allowed: &[&str]) -> Result<EventQuery, Error> {
    let Query(pairs) =
        params.map_err(|_| Error::InvalidRequest("the query string is malformed".into()))?;
    let bad = |name: &str, what: &str| {
        Error::InvalidField("invalid_query", format!("{name} must be {what}"))
    };
    let mut q = EventQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (key, value) in pairs {
        let v = value.trim();
        match key.as_str() {
            k if !allowed.contains(&k) => {
                return Err(Error::InvalidRequest(format!(
                    "unknown query parameter {k:?} (known: {})",
                    allowed.join(", ")
                )));
            }
            "user" => q.user = Some(Uuid::parse_str(v).map_err(|_| bad("user", "a user id"))?),
            "session" => {
                q.session = Some(Uuid::parse_str(v).map_err(|_| bad("session", "a session id"))?)
            }
            "type" => q
                .types
                .extend(v.split(',').filter(|t| !t.is_empty()).map(str::to_owned)),
            "ip" => q.ip = Some(parse_net(v).ok_or_else(|| bad("ip", "an address or CIDR"))?),
            "country" => q.country = Some(v.to_owned()),
            "rule" => q.rule = Some(v.to_owned()),
            "severity" => q.severity = Some(v.to_owned()),
            "mode" => q.mode = Some(v.to_owned()),
            "since" => {
                q.since = Some(parse_timestamp(v).ok_or_else(|| bad("since", "an RFC 3339 time"))?)
            }
            "until" => {
                q.until = Some(parse_timestamp(v).ok_or_else(|| bad("until", "an RFC 3339 time"))?)
            }
            "before" => {
                q.before = Some(
                    v.parse::<i64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("before", "a positive position"))?,
                )
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad("limit", &format!("from 1 to {MAX_LIMIT}")))?
            }
            other => {
                return Err(Error::InvalidRequest(format!(
                    "query parameter {other:?} does not apply here (known: {})",
                    allowed.join(", ")
                )));
            }
        }
    }
    if let Some(t) = q
        .types
        .iter()
        .find(|t| !crate::domain::event::Event::TYPES.contains(&t.as_str()))
    {
        return Err(bad("type", &format!("an event type; {t:?} is not one")));
    }
    Ok(q)
}

fn uuid_or_404(s: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(s).map_err(|_| Error::NotFound)
}

async fn user(
    State(app): State<AppState>,
    _: SecurityCaller,
    Path(user): Path<String>,
) -> Result<Json<UserDetail>, Error> {
    Ok(Json(app.user_detail(&user).await?))
}

async fn user_timeline(
    State(app): State<AppState>,
    _: SecurityCaller,
    Path(user): Path<String>,
    params: Params,
) -> Result<Json<EventPage>, Error> {
    let detail = app.user_detail(&user).await?;
    let mut q = event_query(params, &["type", "since", "until", "before", "limit"])?;
    q.user = Some(detail.user_id);
    Ok(Json(app.search_events(&q).await?))
}

async fn session(
    State(app): State<AppState>,
    _: SecurityCaller,
    Path(session_id): Path<String>,
) -> Result<Json<SessionDetail>, Error> {
    Ok(Json(app.session_detail(uuid_or_404(&session_id)?).await?))
}

/// A user's places and legs over all their sessions (the console's map).
async fn user_places(
    State(app): State<AppState>,
    _: SecurityCaller,
    Path(user): Path<String>,
) -> Result<Json<Places>, Error> {
    Ok(Json(app.user_places(&user).await?))
}

/// A session's places and legs (the console's map).
async fn session_places(
    State(app): State<AppState>,
    _: SecurityCaller,
    Path(session_id): Path<String>,
) -> Result<Json<Places>, Error> {
    Ok(Json(app.session_places(uuid_or_404(&session_id)?).await?))
}

/// A session's refresh-family lineage (the console's diagram).
async fn session_lineage(
    State(app): State<AppState>,
    _: SecurityCaller,
    Path(session_id): Path<String>,
) -> Result<Json<Lineage>, Error> {
    Ok(Json(app.session_lineage(uuid_or_404(&session_id)?).await?))
}

async fn ip_timeline(
    State(app): State<AppState>,
    _: SecurityCaller,
    Path(ip): Path<String>,
    params: Params,
) -> Result<Json<EventPage>, Error> {
    let net = parse_net(&ip).ok_or_else(|| {
        Error::InvalidField(
            "invalid_ip",
            "give an address or a network prefix such as 203.0.113.0/24 (with / as %2F)".into(),
        )
    })?;
    let mut q = event_query(params, &["type", "since", "until", "before", "limit"])?;
    q.ip = Some(net);
    Ok(Json(app.search_events(&q).await?))
}

/// Rule firings with their receipts, newest first; about a user or session, or all of them.
async fn alerts(
    State(app): State<AppState>,
    _: SecurityCaller,
    params: Params,
) -> Result<Json<crate::service::verdicts::AlertPage>, Error> {
    let mut q = event_query(
        params,
        &[
            "user", "session", "rule", "severity", "mode", "since", "until", "before", "limit",
        ],
    )?;
    q.types = vec!["rule.fired".into()];
    // Receipts are streams of their own: a user or session is found inside them.
    q.subject = q.session.take().or(q.user.take());
    Ok(Json(app.alerts(&q).await?))
}

async fn search(
    State(app): State<AppState>,
    _: SecurityCaller,
    params: Params,
) -> Result<Json<EventPage>, Error> {
    let q = event_query(params, SEARCH_KEYS)?;
    Ok(Json(app.search_events(&q).await?))
}

/// The matching events as NDJSON, oldest first, read and sent one chunk at a time.
async fn export(
    State(app): State<AppState>,
    _: SecurityCaller,
    params: Params,
) -> Result<Response, Error> {
    let q = event_query(
        params,
        &[
            "user", "session", "type", "ip", "country", "rule", "since", "until",
        ],
    )?;
    let plan = app.export_plan(&q).await?;
    // The rows from position 0, then the trailer line (the state `None`: the end).
    let chunks = futures_util::stream::try_unfold(Some(0i64), move |after| {
        let (app, plan) = (app.clone(), plan.clone());
        async move {
            let Some(mut after) = after else {
                return Ok::<_, Error>(None);
            };
            // Skip pages with no match, so the stream never yields empty chunks.
            loop {
                let (chunk, next) = app.export_chunk(&plan, after).await?;
                match next {
                    None => return Ok(plan.trailer.map(|t| (Bytes::from(t), None))),
                    Some(n) if chunk.is_empty() => after = n,
                    Some(n) => return Ok(Some((Bytes::from(chunk), Some(n)))),
                }
            }
        }
    });
    let mut response = Body::from_stream(chunks).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// New events as Server-Sent Events, each with its position as the event id, so a client that
/// reconnects with `Last-Event-ID` resumes exactly where it was.
async fn stream(
    State(app): State<AppState>,
    SecurityCaller(caller): SecurityCaller,
    headers: HeaderMap,
    params: Params,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Error> {
    let Query(pairs) =
        params.map_err(|_| Error::InvalidRequest("the query string is malformed".into()))?;
    let mut after: Option<i64> = None;
    for (k, v) in pairs {
        match k.as_str() {
            "after" => {
                after = Some(v.parse().ok().filter(|n: &i64| *n >= 0).ok_or_else(|| {
                    Error::InvalidField("invalid_query", "after must be a position".into())
                })?)
            }
            other => {
                return Err(Error::InvalidRequest(format!(
                    "unknown query parameter {other:?} (known: after)"
                )));
            }
        }
    }
    if let Some(last) = headers.get("last-event-id") {
        after = Some(
            last.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .filter(|n: &i64| *n >= 0)
                .ok_or_else(|| {
                    Error::InvalidField(
                        "invalid_last_event_id",
                        "Last-Event-ID must be a position".into(),
                    )
                })?,
        );
    }
    let slot = app.stream_slot(&caller)?;
    // Without a starting point, the stream begins with what happens next.
    let after = match after {
        Some(a) => a,
        None => app.head_position().await?,
    };
    let recheck = app
        .config
        .admin_stream_recheck_interval
        .to_std()
        .unwrap_or(Duration::from_secs(5));
    let state = StreamState {
        committed: app.commits(),
        app,
        caller,
        _slot: slot,
        after,
        buffer: VecDeque::new(),
        recheck,
        next_check: tokio::time::Instant::now() + recheck,
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            // Authority is re-checked on a timer, not once at the start: the stream ends soon
            // after the caller's session, lock state, role or API key says it should.
            if tokio::time::Instant::now() >= st.next_check {
                if let Err(e) = st.app.still_authorised(&st.caller, &[SECURITY_ROLE]).await {
                    tracing::info!(reason = %e.code(), "admin stream closed: the caller lost its authority");
                    return None;
                }
                st.next_check = tokio::time::Instant::now() + st.recheck;
            }
            if let Some(view) = st.buffer.pop_front() {
                let event = SseEvent::default()
                    .id(view.position.to_string())
                    .event(view.event_type.clone())
                    .json_data(&view)
                    .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"));
                return Some((Ok(event), st));
            }
            match st.app.events_after(st.after, 200).await {
                Ok(page) if !page.is_empty() => {
                    st.after = page.last().map_or(st.after, |e| e.position);
                    st.buffer.extend(page);
                }
                Ok(_) => {
                    // Woken by any node's commits; the timeout catches a lost notification
                    // and brings the next authority check.
                    let wait = st
                        .next_check
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(Duration::from_secs(1));
                    let _ = tokio::time::timeout(wait, st.committed.changed()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream read failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// What a live stream carries between events: its caller (re-checked), its slot under the
/// per-caller cap (freed when the stream is dropped), and where it is in the log.
struct StreamState {
    app: AppState,
    caller: Caller,
    _slot: crate::service::api_keys::StreamSlot,
    after: i64,
    buffer: VecDeque<crate::service::admin::EventView>,
    committed: tokio::sync::watch::Receiver<i64>,
    recheck: Duration,
    next_check: tokio::time::Instant,
}

async fn revoke_session(
    State(app): State<AppState>,
    Context(ctx): Context,
    SecurityCaller(caller): SecurityCaller,
    Path(session_id): Path<String>,
) -> Result<StatusCode, Error> {
    app.admin_revoke_session(&caller, uuid_or_404(&session_id)?, &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logout_everywhere(
    State(app): State<AppState>,
    Context(ctx): Context,
    SecurityCaller(caller): SecurityCaller,
    Path(user): Path<String>,
) -> Result<Json<Value>, Error> {
    let revoked = app
        .admin_logout_everywhere(&caller, uuid_or_404(&user)?, &ctx)
        .await?;
    Ok(Json(json!({ "revoked": revoked })))
}

/// Erases a user (GDPR art. 17): its sessions end and its personal data in the log reads as
/// erased from now on.
async fn erase(
    State(app): State<AppState>,
    Context(ctx): Context,
    SecurityCaller(caller): SecurityCaller,
    Path(user): Path<String>,
) -> Result<Json<Value>, Error> {
    let revoked = app
        .admin_erase_user(&caller, uuid_or_404(&user)?, &ctx)
        .await?;
    Ok(Json(json!({ "erased": true, "revoked": revoked })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LockBody {
    reason: String,
}

async fn lock(
    State(app): State<AppState>,
    Context(ctx): Context,
    SecurityCaller(caller): SecurityCaller,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<LockBody>,
) -> Result<Json<Value>, Error> {
    let revoked = app
        .admin_set_lock(&caller, uuid_or_404(&user)?, true, &body.reason, &ctx)
        .await?;
    Ok(Json(json!({ "locked": true, "revoked": revoked })))
}

async fn unlock(
    State(app): State<AppState>,
    Context(ctx): Context,
    SecurityCaller(caller): SecurityCaller,
    Path(user): Path<String>,
    ApiJson(body): ApiJson<LockBody>,
) -> Result<Json<Value>, Error> {
    app.admin_set_lock(&caller, uuid_or_404(&user)?, false, &body.reason, &ctx)
        .await?;
    Ok(Json(json!({ "locked": false })))
}
