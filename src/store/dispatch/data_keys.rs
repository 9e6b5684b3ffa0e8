//! The `data_keys` table (see [`crate::store::vault`]), written once for both databases: the
//! writer creates and destroys keys in its transaction; reads open sealed event fields.

use super::dialect::{Cols, Dialect, Stmt};
use crate::domain::{Timestamp, format_timestamp};
use crate::store::vault::{self, KeyState, Vault};
use crate::store::{RecordedEvent, StoreError};
use std::collections::HashMap;

/// The state of each of `ids`; an id with no row reads as erased (never an error).
pub async fn states<D: Dialect>(
    c: &mut D::Connection,
    vault: &Vault,
    ids: &[String],
) -> Result<HashMap<String, KeyState>, StoreError> {
    // Reads never use the cache: a key destroyed by another process (a CLI erasure) must read
    // as destroyed here at once.
    let mut out = find::<D>(c, vault, ids, false).await?;
    for id in ids {
        out.entry(id.clone()).or_insert(KeyState::Erased);
    }
    Ok(out)
}

/// The state of each of `ids` that has a row (or is cached open).
pub async fn find<D: Dialect>(
    c: &mut D::Connection,
    vault: &Vault,
    ids: &[String],
    use_cache: bool,
) -> Result<HashMap<String, KeyState>, StoreError> {
    let mut out = HashMap::new();
    let mut wanted = Vec::new();
    for id in ids {
        match vault.cached(id).filter(|_| use_cache) {
            Some(key) => {
                out.insert(id.clone(), KeyState::Open(key));
            }
            None => wanted.push(id.clone()),
        }
    }
    for chunk in wanted.chunks(200) {
        let mut q =
            Stmt::new::<D>("SELECT key_id, sealed_key, destroyed_reason FROM data_keys WHERE ");
        q.any_of("key_id", chunk);
        for r in D::fetch_all(c, q).await? {
            let id = r.text("key_id")?;
            let state = match (r.opt_bytes("sealed_key")?, r.opt_text("destroyed_reason")?) {
                (_, Some(reason)) if reason == vault::REASON_EXPIRED => KeyState::Expired,
                (Some(wrapped), None) => match vault.unwrap_key(&id, &wrapped) {
                    Some(key) => {
                        if use_cache {
                            vault.remember(&id, key);
                        }
                        KeyState::Open(key)
                    }
                    // Another master key's: a misconfiguration, never to be taken for an
                    // erasure (a rebuild would write every user as erased).
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "data key {id} does not open with this master key \
                             (wrong SESSIOND_MASTER_KEY or master.key?)"
                        )));
                    }
                },
                _ => KeyState::Erased,
            };
            out.insert(id, state);
        }
    }
    Ok(out)
}

/// Stores a new wrapped key; a key another node created first wins (`false`).
pub async fn create<D: Dialect>(
    c: &mut D::Connection,
    key_id: &str,
    subject: &str,
    period: Option<i64>,
    wrapped: &[u8],
    now: Timestamp,
) -> Result<bool, StoreError> {
    let mut q = Stmt::new::<D>(
        "INSERT INTO data_keys (key_id, subject, period, sealed_key, created_at) VALUES (",
    );
    q.bind(key_id).push(", ").bind(subject).push(", ");
    match period {
        Some(p) => q.bind(p),
        None => q.push("NULL"),
    };
    q.push(", ")
        .bind(wrapped)
        .push(", ")
        .bind(format_timestamp(now))
        .push(") ON CONFLICT (key_id) DO NOTHING");
    Ok(D::execute(c, q).await? == 1)
}

/// Destroys every live key of `subject` (an erasure); returns how many.
pub async fn destroy_subject<D: Dialect>(
    c: &mut D::Connection,
    subject: &str,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let mut q = Stmt::new::<D>("UPDATE data_keys SET sealed_key = NULL, destroyed_at = ");
    q.bind(format_timestamp(now))
        .push(", destroyed_reason = ")
        .bind(vault::REASON_ERASED)
        .push(" WHERE subject = ")
        .bind(subject)
        .push(" AND destroyed_at IS NULL");
    Ok(D::execute(c, q).await?)
}

/// Destroys every live period key of periods before `period` (retention); returns how many.
pub async fn destroy_before<D: Dialect>(
    c: &mut D::Connection,
    period: i64,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let mut q = Stmt::new::<D>("UPDATE data_keys SET sealed_key = NULL, destroyed_at = ");
    q.bind(format_timestamp(now))
        .push(", destroyed_reason = ")
        .bind(vault::REASON_EXPIRED)
        .push(" WHERE period IS NOT NULL AND period < ")
        .bind(period)
        .push(" AND destroyed_at IS NULL");
    Ok(D::execute(c, q).await?)
}

/// Replaces each event's stored data by its read-through form: sealed fields opened, or their
/// markers. The hash still names the stored form.
pub async fn open_events<D: Dialect>(
    c: &mut D::Connection,
    vault: &Vault,
    events: &mut [RecordedEvent],
) -> Result<(), StoreError> {
    let keys = key_states_of::<D>(c, vault, events).await?;
    if keys.is_empty() {
        return Ok(());
    }
    for e in events.iter_mut() {
        if !e.data.contains("\"sealed\"") {
            continue;
        }
        if let Ok(mut d) = serde_json::from_str::<serde_json::Value>(&e.data) {
            vault::open_event(&mut d, &e.stream_id, e.stream_version, &keys);
            e.data = d.to_string();
        }
    }
    Ok(())
}

/// Each event's read-through data, parsed: [`open_events`] without printing it again.
pub async fn open_values<D: Dialect>(
    c: &mut D::Connection,
    vault: &Vault,
    events: &[RecordedEvent],
) -> Result<Vec<serde_json::Value>, StoreError> {
    let keys = key_states_of::<D>(c, vault, events).await?;
    events
        .iter()
        .map(|e| {
            let mut d = e.data_value()?;
            if !keys.is_empty() {
                vault::open_event(&mut d, &e.stream_id, e.stream_version, &keys);
            }
            Ok(d)
        })
        .collect()
}

/// Calls `found` with each data-key id a stored event's data names (by a scan of the text: a
/// stray match only costs a lookup of a key that is not there).
pub(crate) fn key_ids_in<'a>(text: &'a str, mut found: impl FnMut(&'a str)) {
    let mut rest = text;
    while let Some(at) = rest.find("\"key\":\"") {
        rest = &rest[at + 7..];
        let Some(end) = rest.find('"') else { break };
        found(&rest[..end]);
        rest = &rest[end..];
    }
}

/// The states of the data keys `events` name (empty when they name none).
async fn key_states_of<D: Dialect>(
    c: &mut D::Connection,
    vault: &Vault,
    events: &[RecordedEvent],
) -> Result<HashMap<String, KeyState>, StoreError> {
    // The key ids by a scan of the text (a stray match only costs a lookup), so that no more
    // than one event's parsed JSON is held at a time: exports stream pages of thousands.
    // A page of thousands names a few dozen keys, each many times: a set, not a list scan.
    let mut ids: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for e in events.iter() {
        key_ids_in(&e.data, |id| {
            ids.insert(id);
        });
    }
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
    states::<D>(c, vault, &ids).await
}

/// The login-throttle rows of an account name (its `acct:` key and the `acct_addr:` keys that
/// begin with `pair_prefix`, both as stored), and the `net:` rows its failures added (same
/// time): a rebuild of the erased log counts none of them.
pub async fn delete_login_failures<D: Dialect>(
    c: &mut D::Connection,
    acct_key: &str,
    pair_prefix: &str,
) -> Result<u64, StoreError> {
    let mut q = Stmt::new::<D>(
        "DELETE FROM login_failures WHERE throttle_key LIKE 'net:%' AND failed_at IN \
         (SELECT failed_at FROM login_failures WHERE throttle_key = ",
    );
    q.bind(acct_key).push(")");
    D::execute(&mut *c, q).await?;
    let mut q = Stmt::new::<D>("DELETE FROM login_failures WHERE throttle_key = ");
    // A range rather than LIKE: names may hold `_`. '}' is the character after '|'.
    let end = format!("{}}}", pair_prefix.trim_end_matches('|'));
    q.bind(acct_key)
        .push(" OR (throttle_key >= ")
        .bind(pair_prefix)
        .push(" AND throttle_key < ")
        .bind(end)
        .push(")");
    Ok(D::execute(c, q).await?)
}

/// The user's usual networks (detector memory): an erased user has none.
pub async fn delete_usual_networks<D: Dialect>(
    c: &mut D::Connection,
    user_id: uuid::Uuid,
) -> Result<u64, StoreError> {
    let mut q = Stmt::new::<D>("DELETE FROM usual_networks WHERE user_id = ");
    q.cast(user_id.to_string(), D::UUID);
    Ok(D::execute(c, q).await?)
}

/// Writes a session's (redacted) request contexts.
pub async fn redact_session<D: Dialect>(
    c: &mut D::Connection,
    s: &crate::domain::session::Session,
) -> Result<(), StoreError> {
    let text = |ctx| serde_json::to_string(ctx).unwrap_or_else(|_| "{}".into());
    let mut q = Stmt::new::<D>("UPDATE sessions SET login_context = ");
    q.cast(text(&s.login_context), D::JSON)
        .push(", last_context = ")
        .cast(text(&s.last_context), D::JSON)
        .push(" WHERE session_id = ")
        .cast(s.session_id.to_string(), D::UUID);
    D::execute(c, q).await?;
    Ok(())
}

/// Rewrites one event's data and chain hashes (the reseal of clear-text history only).
pub async fn rewrite_event<D: Dialect>(
    c: &mut D::Connection,
    e: &RecordedEvent,
) -> Result<(), StoreError> {
    // PostgreSQL keeps the exact text in `data_text` (`data` is generated from it).
    let column = if D::NUMBERED { "data_text" } else { "data" };
    let mut q = Stmt::new::<D>(format!("UPDATE events SET {column} = "));
    q.bind(e.data.as_str())
        .push(", prev_hash = ")
        .bind(e.prev_hash.as_slice())
        .push(", hash = ")
        .bind(e.hash.as_slice())
        .push(" WHERE position = ")
        .bind(e.position);
    D::execute(c, q).await?;
    Ok(())
}

/// The oldest period among the live period keys before `period`: where a retention run that
/// destroys them starts (the periods before it were expired by an earlier run).
pub async fn oldest_live_period_before<D: Dialect>(
    c: &mut D::Connection,
    period: i64,
) -> Result<Option<i64>, StoreError> {
    let mut q = Stmt::new::<D>(
        "SELECT MIN(period) AS p FROM data_keys WHERE period IS NOT NULL AND destroyed_at IS NULL \
         AND period < ",
    );
    q.bind(period);
    let row = D::fetch_optional(c, q).await?;
    Ok(match row {
        Some(r) => r.opt_int("p")?,
        None => None,
    })
}

/// The sessions whose login (`created_at`) or last request (`last_seen_at`) was recorded in
/// `[from, to)`: the ones whose request context a retention run over those periods expires.
pub async fn sessions_seen_between<D: Dialect>(
    c: &mut D::Connection,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<uuid::Uuid>, StoreError> {
    let (from, to) = (format_timestamp(from), format_timestamp(to));
    let mut q = Stmt::new::<D>(
        "SELECT CAST(session_id AS TEXT) AS session_id FROM sessions WHERE (created_at >= ",
    );
    q.cast(from.clone(), D::TIME)
        .push(" AND created_at < ")
        .cast(to.clone(), D::TIME)
        .push(") OR (last_seen_at >= ")
        .cast(from, D::TIME)
        .push(" AND last_seen_at < ")
        .cast(to, D::TIME)
        .push(")");
    D::fetch_all(c, q)
        .await?
        .iter()
        .map(|r| {
            let id = r.text("session_id")?;
            uuid::Uuid::parse_str(&id)
                .map_err(|e| StoreError::Corrupt(format!("session id {id}: {e}")))
        })
        .collect()
}

/// Whether a stored throttle key is already in the hashed form of `Vault::throttle_key`.
fn is_hashed_throttle_key(key: &str) -> bool {
    let tag = |t: &str| {
        t.len() == 43
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match key.split_once(':') {
        Some(("acct" | "net" | "other", t)) => tag(t),
        Some(("acct_addr", rest)) => rest.split_once('|').is_some_and(|(a, b)| tag(a) && tag(b)),
        _ => false,
    }
}

/// Rewrites the throttle rows an older build stored in clear (`acct:alice`) in their hashed
/// form (`sessiond migrate`): the live table then matches a replay of the log.
pub async fn rehash_login_failures<D: Dialect>(
    c: &mut D::Connection,
    vault: &Vault,
) -> Result<u64, StoreError> {
    let q = Stmt::new::<D>("SELECT DISTINCT throttle_key FROM login_failures");
    let keys: Vec<String> = D::fetch_all(&mut *c, q)
        .await?
        .iter()
        .map(|r| r.text("throttle_key"))
        .collect::<Result<_, _>>()?;
    let mut changed = 0;
    for key in keys.iter().filter(|k| !is_hashed_throttle_key(k)) {
        let mut q = Stmt::new::<D>("UPDATE login_failures SET throttle_key = ");
        q.bind(vault.throttle_key(key))
            .push(" WHERE throttle_key = ")
            .bind(key.as_str());
        changed += D::execute(&mut *c, q).await?;
    }
    Ok(changed)
}

/// Indexes one event (at `position`) under the keyed hashes of its address and networks.
pub fn push_address_tags<'a, D: Dialect>(
    q: &mut Stmt<'a>,
    rows: &'a [crate::store::overlay::AddressTag],
) {
    q.push("INSERT INTO address_tags (tag, position, subject, period) ");
    q.values(rows, |t, r| {
        t.bind(r.tag.as_str())
            .bind(r.position)
            .bind(r.subject.as_str())
            .bind(r.period);
    });
}

/// Forgets the address tags of a subject (an erasure) or of the periods before `period`
/// (retention): the addresses they stood for can no longer be read, nor searched.
pub async fn delete_address_tags<D: Dialect>(
    c: &mut D::Connection,
    subject: Option<&str>,
    before_period: Option<i64>,
) -> Result<u64, StoreError> {
    let mut q = Stmt::new::<D>("DELETE FROM address_tags WHERE ");
    match (subject, before_period) {
        (Some(s), _) => q.push("subject = ").bind(s),
        (None, Some(p)) => q.push("period < ").bind(p),
        (None, None) => return Ok(0),
    };
    Ok(D::execute(c, q).await?)
}
