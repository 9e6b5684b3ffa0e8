//! The store's tables behind a connection pool, written once for both databases, and the reads
//! the writer's transaction shares with the pool.

use super::dialect::{Cols, Dialect, Stmt};
use super::rows;
use crate::domain::session::Session;
use crate::domain::token::{TokenHash, TokenKey};
use crate::domain::user::User;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::{ChainHead, EventFilter, RecordedEvent, ReplayedEvent, StoreError, TokenRecord};
use sqlx::Pool;
use uuid::Uuid;

pub const HEAD: &str = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1";
const ACTIVE_USERS: &str =
    "SELECT COUNT(DISTINCT user_id) AS n FROM sessions WHERE status = 'active'";

pub async fn head<D: Dialect>(c: &mut D::Connection) -> Result<ChainHead, StoreError> {
    match D::fetch_optional(c, Stmt::new::<D>(HEAD)).await? {
        None => Ok(ChainHead::GENESIS),
        Some(r) => rows::head(&r),
    }
}

/// The chain head, read in the round trip that runs `before` first (a `BEGIN`).
pub async fn head_after<D: Dialect>(
    c: &mut D::Connection,
    before: &str,
) -> Result<ChainHead, StoreError> {
    match D::fetch_all(c, Stmt::new::<D>(format!("{before}{HEAD}")))
        .await?
        .first()
    {
        None => Ok(ChainHead::GENESIS),
        Some(r) => rows::head(r),
    }
}

/// Every session a user ever had, newest first.
pub async fn session_ids_of<D: Dialect>(
    c: &mut D::Connection,
    user_id: Uuid,
) -> Result<Vec<Uuid>, StoreError> {
    let q = Stmt::new::<D>(D::SQL.session_ids_of).arg(user_id.to_string());
    all::<D, _>(c, q, |r| rows::uuid(r.text("session_id")?)).await
}

/// `q`'s row, if any, mapped.
pub(super) async fn one<D: Dialect, T>(
    c: &mut D::Connection,
    q: Stmt<'_>,
    map: impl Fn(&D::Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    D::fetch_optional(c, q).await?.as_ref().map(map).transpose()
}

/// `q`'s rows, mapped.
pub(super) async fn all<D: Dialect, T>(
    c: &mut D::Connection,
    q: Stmt<'_>,
    map: impl Fn(&D::Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    D::fetch_all(c, q).await?.iter().map(map).collect()
}

pub async fn user_by_id<D: Dialect>(
    c: &mut D::Connection,
    id: Uuid,
) -> Result<Option<User>, StoreError> {
    let q = Stmt::new::<D>(D::SQL.user_by_id).arg(id.to_string());
    one::<D, _>(c, q, rows::user::<D>).await
}

pub async fn user_by_name<D: Dialect>(
    c: &mut D::Connection,
    name: &str,
) -> Result<Option<User>, StoreError> {
    let q = Stmt::new::<D>(D::SQL.user_by_name).arg(name);
    one::<D, _>(c, q, rows::user::<D>).await
}

pub async fn session<D: Dialect>(
    c: &mut D::Connection,
    id: Uuid,
) -> Result<Option<Session>, StoreError> {
    let q = Stmt::new::<D>(D::SQL.session).arg(id.to_string());
    one::<D, _>(c, q, rows::session::<D>).await
}

pub async fn active_sessions_of<D: Dialect>(
    c: &mut D::Connection,
    user_id: Uuid,
) -> Result<Vec<Session>, StoreError> {
    let q = Stmt::new::<D>(D::SQL.active_sessions_of).arg(user_id.to_string());
    all::<D, _>(c, q, rows::session::<D>).await
}

/// See [`super::dialect::Sql::last_seen_session_of`]; `except` may be `None`.
pub async fn last_seen_session_of<D: Dialect>(
    c: &mut D::Connection,
    user_id: Uuid,
    except: Option<Uuid>,
) -> Result<Option<Session>, StoreError> {
    // No session has the nil id: it stands for "no session to leave out".
    let except = except.unwrap_or(Uuid::nil());
    let q = Stmt::new::<D>(D::SQL.last_seen_session_of)
        .arg(user_id.to_string())
        .arg(except.to_string());
    one::<D, _>(c, q, rows::session::<D>).await
}

/// The version of the last event in a stream, 0 for a stream with none.
pub async fn stream_version<D: Dialect>(
    c: &mut D::Connection,
    stream_id: &str,
) -> Result<i64, StoreError> {
    let q = Stmt::new::<D>(D::SQL.stream_version).arg(stream_id);
    Ok(D::fetch_optional(c, q)
        .await?
        .map(|r| r.int("v"))
        .transpose()?
        .unwrap_or(0))
}

pub async fn active_user_count<D: Dialect>(c: &mut D::Connection) -> Result<u64, StoreError> {
    let n = D::fetch_all(c, Stmt::new::<D>(ACTIVE_USERS)).await?;
    Ok(n.first()
        .map(|r| r.int("n"))
        .transpose()?
        .unwrap_or(0)
        .max(0) as u64)
}

/// The tokens among `keys` and, in the same statement, their sessions (a refresh needs both):
/// (hash, record, session) for each key whose stored hash matches. `before` runs first in the
/// same round trip (SQLite's BEGIN).
pub async fn tokens_with_sessions<D: Dialect>(
    c: &mut D::Connection,
    keys: &[TokenKey],
    before: &'static str,
) -> Result<Vec<(TokenHash, TokenRecord, Option<Session>)>, StoreError> {
    let mut found = Vec::new();
    for (i, chunk) in keys.chunks(D::TOKENS_PER_STATEMENT).enumerate() {
        let mut q = Stmt::new::<D>(if i == 0 { before } else { "" });
        D::tokens_with_sessions(&mut q, chunk);
        for r in D::fetch_all(c, q).await? {
            let id = D::token_id(&r, "t_id")?;
            // The row is a presented token's only if the whole token hashes to what is
            // stored; a known id with another body stays unknown (and loads nothing).
            for k in chunk.iter().filter(|k| k.id == id) {
                if let Some(record) = rows::token(&r, k)? {
                    let session = match r.opt_text("session_id")? {
                        Some(_) => Some(rows::session::<D>(&r)?),
                        None => None,
                    };
                    found.push((k.hash, record, session));
                    break;
                }
            }
        }
    }
    Ok(found)
}

/// The tables of one database, through its pool: every read and write that needs no writer.
pub struct Tables<D: sqlx::Database> {
    pub(crate) pool: Pool<D>,
    /// The personal-data vault, once installed (shared by every clone and the writer).
    pub(crate) vault: VaultSlot,
}

pub type VaultSlot =
    std::sync::Arc<std::sync::OnceLock<std::sync::Arc<crate::store::vault::Vault>>>;

impl<D: sqlx::Database> Tables<D> {
    pub fn new(pool: Pool<D>) -> Self {
        Tables {
            pool,
            vault: VaultSlot::default(),
        }
    }
}

impl<D: sqlx::Database> Clone for Tables<D> {
    fn clone(&self) -> Self {
        Tables {
            pool: self.pool.clone(),
            vault: self.vault.clone(),
        }
    }
}

impl<D: Dialect> Tables<D> {
    async fn all<T>(
        &self,
        q: Stmt<'_>,
        map: impl Fn(&D::Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        all::<D, _>(&mut *self.pool.acquire().await?, q, map).await
    }

    async fn one<T>(
        &self,
        q: Stmt<'_>,
        map: impl Fn(&D::Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        one::<D, _>(&mut *self.pool.acquire().await?, q, map).await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn head(&self) -> Result<ChainHead, StoreError> {
        head::<D>(&mut *self.pool.acquire().await?).await
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        user_by_name::<D>(&mut *self.pool.acquire().await?, username).await
    }

    pub async fn user_by_id(&self, user_id: Uuid) -> Result<Option<User>, StoreError> {
        user_by_id::<D>(&mut *self.pool.acquire().await?, user_id).await
    }

    pub async fn session(&self, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        session::<D>(&mut *self.pool.acquire().await?, session_id).await
    }

    /// The token with this id, if its stored hash is `key.hash` (else `None`, as if unknown).
    pub async fn token(&self, key: &TokenKey) -> Result<Option<TokenRecord>, StoreError> {
        let q = Stmt::new::<D>(D::SQL.token).arg(D::token_id_arg(&key.id));
        Ok(self.one(q, |r| rows::token(r, key)).await?.flatten())
    }

    /// A user's live sessions, oldest first.
    pub async fn active_sessions_of(&self, user_id: Uuid) -> Result<Vec<Session>, StoreError> {
        active_sessions_of::<D>(&mut *self.pool.acquire().await?, user_id).await
    }

    pub async fn events(&self, f: &EventFilter) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.raw_events(f).await?;
        if let Some(vault) = self.vault.get() {
            let mut c = self.pool.acquire().await?;
            super::data_keys::open_events::<D>(&mut c, vault, &mut events).await?;
        }
        Ok(events)
    }

    pub async fn events_parsed(
        &self,
        f: &EventFilter,
    ) -> Result<Vec<(RecordedEvent, serde_json::Value)>, StoreError> {
        let events = self.raw_events(f).await?;
        let Some(vault) = self.vault.get() else {
            return events
                .into_iter()
                .map(|e| {
                    let data = e.data_value()?;
                    Ok((e, data))
                })
                .collect();
        };
        let mut c = self.pool.acquire().await?;
        let opened = super::data_keys::open_values::<D>(&mut c, vault, &events).await?;
        Ok(events.into_iter().zip(opened).collect())
    }

    /// A page of a replay (see [`crate::store::Store::replay_page`]).
    pub async fn replay_page(
        &self,
        after: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ReplayedEvent>, StoreError> {
        let page = self
            .events_parsed(&EventFilter {
                after_position: after,
                before_position: before,
                limit: Some(limit),
                ..Default::default()
            })
            .await?;
        page.into_iter()
            .map(|(e, data)| {
                ReplayedEvent::decode(
                    e.position,
                    e.stream_id,
                    &e.event_type,
                    e.schema_version,
                    &e.occurred_at,
                    data,
                )
            })
            .collect()
    }

    /// The states of the data keys `ids` (read now, as every read does), or none without the
    /// vault.
    pub async fn key_states(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, crate::store::vault::KeyState>, StoreError> {
        match self.vault.get() {
            Some(vault) if !ids.is_empty() => {
                let mut c = self.pool.acquire().await?;
                super::data_keys::states::<D>(&mut c, vault, ids).await
            }
            _ => Ok(Default::default()),
        }
    }

    pub async fn raw_events(&self, f: &EventFilter) -> Result<Vec<RecordedEvent>, StoreError> {
        raw_events::<D>(&mut *self.pool.acquire().await?, f).await
    }
}

/// A page of events as stored, on any connection (the writer's too).
pub async fn raw_events<D: Dialect>(
    c: &mut D::Connection,
    f: &EventFilter,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut q = Stmt::new::<D>(D::SQL.events);
    q.bind(f.after_position);
    if let Some(stream) = &f.stream_id {
        q.push(" AND stream_id = ").bind(stream.as_str());
    }
    if !f.stream_ids.is_empty() {
        q.push(" AND ").any_of("stream_id", &f.stream_ids);
    }
    if let Some(before) = f.before_position {
        q.push(" AND position < ").bind(before);
    }
    if let Some(subject) = f.subject {
        let id = subject.to_string();
        q.push(" AND (").push(D::SQL.data_session_id).push(" = ");
        q.bind(id.clone())
            .push(" OR ")
            .push(D::SQL.data_user_id)
            .push(" = ");
        q.bind(id).push(")");
    }
    if !f.event_types.is_empty() {
        q.push(" AND ").any_of("event_type", &f.event_types);
    }
    if let Some(tag) = &f.address_tag {
        // Every event of a stream indexed under the tag: a session seen again where it was
        // last seen adds no row (see the writer's `index_value`); the caller matches each
        // opened address.
        q.push(
            " AND stream_id IN (SELECT e.stream_id FROM address_tags t \
             JOIN events e ON e.position = t.position WHERE t.tag = ",
        )
        .bind(tag.as_str())
        .push(")");
    }
    if let Some(since) = f.since {
        q.push(" AND occurred_at >= ")
            .cast(format_timestamp(since), D::TIME);
    }
    if let Some(until) = f.until {
        q.push(" AND occurred_at < ")
            .cast(format_timestamp(until), D::TIME);
    }
    q.push(if f.newest_first {
        " ORDER BY position DESC"
    } else {
        " ORDER BY position"
    });
    if let Some(limit) = f.limit {
        q.push(" LIMIT ").bind(limit);
    }
    all::<D, _>(c, q, rows::event::<D>).await
}

impl<D: Dialect> Tables<D> {
    /// Every session a user ever had, newest first: a timeline reads their streams.
    pub async fn session_ids_of(&self, user_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        session_ids_of::<D>(&mut *self.pool.acquire().await?, user_id).await
    }

    /// Whether any user holds `role` (the first start says how to make a security user).
    pub async fn has_user_with_role(&self, role: &str) -> Result<bool, StoreError> {
        let q = Stmt::new::<D>(D::SQL.has_user_with_role).arg(role);
        Ok(self.one(q, |r| r.flag("found")).await? == Some(true))
    }

    /// Active sessions whose idle (hence also any absolute) expiry is at or before `now`,
    /// soonest first, through the `sessions_due` index.
    pub async fn sessions_due(&self, now: Timestamp, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let q = Stmt::new::<D>(D::SQL.sessions_due)
            .arg(format_timestamp(now))
            .arg(limit);
        self.all(q, |r| rows::uuid(r.text("session_id")?)).await
    }

    pub async fn count_active_sessions(&self) -> Result<i64, StoreError> {
        let q = Stmt::new::<D>(D::SQL.count_active_sessions);
        Ok(self.one(q, |r| r.int("n")).await?.unwrap_or(0))
    }

    /// Fails unless the database answers and every migration this build knows is applied.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        let q = Stmt::new::<D>(D::SQL.migrated);
        let applied = self.one(q, |r| r.opt_int("v")).await?.flatten();
        let expected = D::MIGRATOR.iter().map(|m| m.version).max();
        if applied < expected {
            return Err(StoreError::Corrupt(format!(
                "migrations applied up to {applied:?}, this build needs {expected:?}"
            )));
        }
        Ok(())
    }

    /// Every row of every inline projection in a fixed order, for comparing live and rebuilt.
    pub async fn projection_snapshot(&self) -> Result<Vec<String>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut out = Vec::new();
        for &(table, key) in super::integrity::PROJECTED_TABLES {
            let row = D::row_text(&mut c, table).await?;
            let sql = format!("SELECT '{table}|' || {row} AS r FROM {table} t ORDER BY {key}");
            out.extend(all::<D, _>(&mut c, Stmt::new::<D>(sql), |r| r.text("r")).await?);
        }
        Ok(out)
    }
}
