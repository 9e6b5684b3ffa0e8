//! What differs between the two databases, and the one place that binds and decodes values.
//!
//! Everything above this module (row mapping, reads, the writer's overlay) is written once,
//! generic over [`Dialect`]: the SQL text of each statement, how placeholders and casts are
//! spelled, and how the few column types that differ (timestamps, the refresh-token id) decode.
//! Statements are built as a [`Stmt`] (SQL text and [`Arg`]s); each dialect binds them to its own
//! driver in a few lines, so no other code meets sqlx's generic bounds.

use crate::domain::Timestamp;
use crate::domain::token::TokenKey;
use crate::store::StoreError;
use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type};
use std::borrow::Cow;
use std::fmt::Write;
use std::future::Future;
use uuid::Uuid;

/// The SQL text of the statements whose spelling differs between the databases.
pub struct Sql {
    pub user_by_id: &'static str,
    pub user_by_name: &'static str,
    pub session: &'static str,
    pub active_sessions_of: &'static str,
    /// A user's active session seen most recently, waiting for no re-authentication, other
    /// than the second argument's; at most one row.
    pub last_seen_session_of: &'static str,
    pub token: &'static str,
    /// Aliased `v`.
    pub stream_version: &'static str,
    /// Up to `WHERE position > `: the filter's conditions follow.
    pub events: &'static str,
    /// Up to `VALUES `.
    pub insert_events: &'static str,
    /// The event payload's `session_id` and `user_id` (a filter's subject).
    pub data_session_id: &'static str,
    pub data_user_id: &'static str,
    pub session_ids_of: &'static str,
    /// Aliased `found`.
    pub has_user_with_role: &'static str,
    pub sessions_due: &'static str,
    /// Aliased `n`.
    pub count_active_sessions: &'static str,
    /// The highest migration applied, aliased `v`.
    pub migrated: &'static str,
    pub registry: RegistrySql,
}

/// The SQL of the signing keys, API keys and webhook subscriptions (projected rows written by
/// the writer), of the secrets kept beside them, and of delivery's checkpoints.
pub struct RegistrySql {
    /// With the sealed private half (`private_key_sealed`), oldest first.
    pub signing_keys: &'static str,
    /// The projected rows alone, oldest first.
    pub signing_key_records: &'static str,
    pub put_signing_key: &'static str,
    /// With the key's hash (`key_hash`), by id.
    pub api_key: &'static str,
    /// With their hashes, oldest first.
    pub api_keys: &'static str,
    pub api_key_record: &'static str,
    pub put_api_key: &'static str,
    /// With the sealed secret and the delivery checkpoint, oldest first.
    pub webhooks: &'static str,
    /// Subscription rows that no event names, oldest first.
    pub unlogged_webhooks: &'static str,
    pub webhook_record: &'static str,
    pub put_webhook: &'static str,
    pub delete_webhook: &'static str,
    pub put_secret: &'static str,
    pub delete_secret: &'static str,
    pub start_webhook_delivery: &'static str,
    pub delete_webhook_delivery: &'static str,
    pub webhook_delivered: &'static str,
    pub webhook_failed: &'static str,
    /// A client's back-channel logout checkpoint (`delivered_position`).
    pub backchannel_checkpoint: &'static str,
    /// Upserts a client's checkpoint after a delivered (or skipped) event; failures reset.
    pub backchannel_delivered: &'static str,
    /// Upserts a client's checkpoint after a failed attempt; failures count up.
    pub backchannel_failed: &'static str,
    /// One row of the login-throttle projection (key, time).
    pub put_login_failure: &'static str,
    /// A key's failures after a time, newest first, from an offset (`failed_at`).
    /// A login failure's time as the shared code reads it (`failed_at`).
    pub login_failure_at: &'static str,
    /// A DPoP proof's jti hash and expiry; inserts nothing if the hash is known.
    pub claim_dpop_jti: &'static str,
    pub prune_dpop_jtis: &'static str,
    /// Detector memory (issue 15): a threshold window's `n` rows, `d` distinct names and
    /// `mine` rows of this name, after a time.
    pub window_counts: &'static str,
    pub put_window_count: &'static str,
    pub prune_window: &'static str,
    /// A rule's breaker spend after a time: `n` actions and the latest trip's end `until`.
    pub breaker_spent: &'static str,
    pub put_breaker_spend: &'static str,
    pub prune_breaker: &'static str,
}

/// One database as the shared code sees it. Implemented by `sqlx::Sqlite` and `sqlx::Postgres`.
pub trait Dialect: Database<Row: Cols> {
    const SQL: Sql;
    /// `$1, $2…` placeholders and array parameters (PostgreSQL), or `?` and lists (SQLite).
    const NUMBERED: bool;
    /// Casts after a parameter for a uuid, timestamp or JSON column ("" where it is TEXT).
    const UUID: &'static str;
    const TIME: &'static str;
    const JSON: &'static str;
    /// Refresh-token ids per lookup statement.
    const TOKENS_PER_STATEMENT: usize;
    /// Rows per multi-row INSERT, within the bound on parameters of one statement.
    const ROWS_PER_STATEMENT: usize;

    const MIGRATOR: &'static sqlx::migrate::Migrator;
    /// A nullable timestamp column (stored as text, or selected as epoch milliseconds).
    fn time(r: &Self::Row, col: &str) -> Result<Option<Timestamp>, StoreError>;
    /// An event's timestamp in the exact text the hash covers.
    fn event_time(r: &Self::Row, col: &str) -> Result<String, StoreError>;
    /// The refresh-token id column, and the id as a parameter (a BLOB on SQLite).
    fn token_id(r: &Self::Row, col: &str) -> Result<Uuid, StoreError>;
    fn token_id_arg(id: &Uuid) -> Arg<'_>;
    /// The lookup of these tokens (id, stored hash, record) with their sessions' columns.
    fn tokens_with_sessions<'a>(q: &mut Stmt<'a>, keys: &'a [TokenKey]);
    /// The two deletes of a retention prune: refresh tokens, then sessions.
    fn prune(cutoff: Timestamp) -> [Stmt<'static>; 2];
    /// A row of `table` (aliased `t`) as one text, every column in it: for snapshots.
    fn row_text<'a>(
        c: &'a mut Self::Connection,
        table: &'a str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send + 'a;
    /// The columns of `table`, in their declared order.
    fn column_names<'a>(
        c: &'a mut Self::Connection,
        table: &'a str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send + 'a;
    /// An expression rendering `col` as text (NULL stays NULL, or is spelled out).
    fn column_text(col: &str) -> String;
    /// An expression rendering `col` as an SQL literal of its own type (keyset paging in
    /// `events verify` puts it back into the next page's query).
    fn literal(col: &str) -> String;

    /// Adds one parameter to a query (see [`bind_scalar`]).
    fn bind<'q>(q: Query<'q, Self>, a: Arg<'q>) -> Query<'q, Self>;

    fn fetch_all<'a>(
        c: &'a mut Self::Connection,
        q: Stmt<'a>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + 'a;
    fn fetch_optional<'a>(
        c: &'a mut Self::Connection,
        q: Stmt<'a>,
    ) -> impl Future<Output = Result<Option<Self::Row>, sqlx::Error>> + Send + 'a;
    /// Runs `q`, returning the rows it changed.
    fn execute<'a>(
        c: &'a mut Self::Connection,
        q: Stmt<'a>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
    /// Runs statements without parameters, several in one go.
    fn script<'a>(
        c: &'a mut Self::Connection,
        sql: &'a str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;
}

/// The raw-access methods of a [`Dialect`] impl: the same text for both drivers, compiled for
/// each (their executors are concrete types).
macro_rules! raw_access {
    () => {
        fn fetch_all<'a>(
            c: &'a mut Self::Connection,
            q: Stmt<'a>,
        ) -> impl std::future::Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + 'a {
            async move {
                let mut q = q;
                q.query::<Self>().fetch_all(c).await
            }
        }
        fn fetch_optional<'a>(
            c: &'a mut Self::Connection,
            q: Stmt<'a>,
        ) -> impl std::future::Future<Output = Result<Option<Self::Row>, sqlx::Error>> + Send + 'a {
            async move {
                let mut q = q;
                q.query::<Self>().fetch_optional(c).await
            }
        }
        fn execute<'a>(
            c: &'a mut Self::Connection,
            q: Stmt<'a>,
        ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send + 'a {
            async move {
                let mut q = q;
                let done = q.query::<Self>().execute(c).await?;
                Ok(done.rows_affected())
            }
        }
        fn script<'a>(
            c: &'a mut Self::Connection,
            sql: &'a str,
        ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'a {
            async move {
                sqlx::Executor::execute(c, sqlx::raw_sql(sql))
                    .await
                    .map(|_| ())
            }
        }
    };
}
pub(crate) use raw_access;

/// A statement parameter.
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    Str(Option<Cow<'a, str>>),
    Bytes(Option<&'a [u8]>),
    Blob(Vec<u8>),
    Int(i64),
    Bool(bool),
    /// A text array (PostgreSQL only).
    Strs(Vec<String>),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(s: &'a str) -> Self {
        Arg::Str(Some(Cow::Borrowed(s)))
    }
}
impl From<String> for Arg<'_> {
    fn from(s: String) -> Self {
        Arg::Str(Some(Cow::Owned(s)))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(s: Option<&'a str>) -> Self {
        Arg::Str(s.map(Cow::Borrowed))
    }
}
impl From<Option<String>> for Arg<'_> {
    fn from(s: Option<String>) -> Self {
        Arg::Str(s.map(Cow::Owned))
    }
}
impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(b: &'a [u8]) -> Self {
        Arg::Bytes(Some(b))
    }
}
impl<'a> From<Option<&'a [u8]>> for Arg<'a> {
    fn from(b: Option<&'a [u8]>) -> Self {
        Arg::Bytes(b)
    }
}
impl From<i64> for Arg<'_> {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}
impl From<bool> for Arg<'_> {
    fn from(b: bool) -> Self {
        Arg::Bool(b)
    }
}

pub type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// Binds one scalar [`Arg`] as the Rust type the drivers map it to (text, BLOB/bytea, int8,
/// boolean). An array is handed back: only a dialect that has them binds it.
pub fn bind_scalar<'q, DB: Database>(
    q: Query<'q, DB>,
    a: Arg<'q>,
) -> Result<Query<'q, DB>, (Query<'q, DB>, Vec<String>)>
where
    Option<Cow<'q, str>>: Encode<'q, DB> + Type<DB>,
    Option<&'q [u8]>: Encode<'q, DB> + Type<DB>,
    Vec<u8>: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
{
    Ok(match a {
        Arg::Str(s) => q.bind(s),
        Arg::Bytes(b) => q.bind(b),
        Arg::Blob(b) => q.bind(b),
        Arg::Int(n) => q.bind(n),
        Arg::Bool(b) => q.bind(b),
        Arg::Strs(v) => return Err((q, v)),
    })
}

/// A statement being built: its SQL text and parameters, placeholders spelled for its dialect.
pub struct Stmt<'a> {
    sql: Cow<'static, str>,
    args: Vec<Arg<'a>>,
    numbered: bool,
}

impl<'a> Stmt<'a> {
    pub fn new<D: Dialect>(sql: impl Into<Cow<'static, str>>) -> Self {
        Stmt {
            sql: sql.into(),
            args: Vec::new(),
            numbered: D::NUMBERED,
        }
    }

    /// A parameter for a placeholder already in the SQL text.
    pub fn arg(mut self, v: impl Into<Arg<'a>>) -> Self {
        self.args.push(v.into());
        self
    }

    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.to_mut().push_str(sql);
        self
    }

    /// A placeholder and its parameter.
    pub fn bind(&mut self, v: impl Into<Arg<'a>>) -> &mut Self {
        self.cast(v, "")
    }

    /// A placeholder followed by `cast` (`::uuid`, say), and its parameter.
    pub fn cast(&mut self, v: impl Into<Arg<'a>>, cast: &str) -> &mut Self {
        self.args.push(v.into());
        let sql = self.sql.to_mut();
        if self.numbered {
            let _ = write!(sql, "${}", self.args.len());
        } else {
            sql.push('?');
        }
        sql.push_str(cast);
        self
    }

    /// `col` is one of `values`: `= ANY($n)` with one array parameter where the dialect has
    /// them (one statement text for any number of values), else an `IN` list.
    pub fn any_of(&mut self, col: &str, values: &'a [String]) -> &mut Self {
        self.push(col);
        if self.numbered {
            return self
                .push(" = ANY(")
                .bind(Arg::Strs(values.to_vec()))
                .push(")");
        }
        self.push(" IN (");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v.as_str());
        }
        self.push(")")
    }

    /// `VALUES (…), (…)`: one tuple per row, its parameters added by `row`.
    pub fn values<T>(
        &mut self,
        rows: impl IntoIterator<Item = T>,
        mut row: impl FnMut(&mut Tuple<'_, 'a>, T),
    ) {
        self.push("VALUES ");
        for (i, r) in rows.into_iter().enumerate() {
            self.push(if i == 0 { "(" } else { ", (" });
            row(
                &mut Tuple {
                    q: self,
                    any: false,
                },
                r,
            );
            self.push(")");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sql.is_empty()
    }

    /// The driver's query, its parameters bound.
    pub fn query<D: Dialect>(&mut self) -> Query<'_, D> {
        let args = std::mem::take(&mut self.args);
        args.into_iter().fold(sqlx::query::<D>(&self.sql), D::bind)
    }
}

/// The parameters of one row of a multi-row INSERT.
pub struct Tuple<'s, 'a> {
    q: &'s mut Stmt<'a>,
    any: bool,
}

impl<'a> Tuple<'_, 'a> {
    pub fn bind(&mut self, v: impl Into<Arg<'a>>) -> &mut Self {
        self.cast(v, "")
    }

    pub fn cast(&mut self, v: impl Into<Arg<'a>>, cast: &str) -> &mut Self {
        if self.any {
            self.q.push(", ");
        }
        self.any = true;
        self.q.cast(v, cast);
        self
    }
}

/// Typed column reads, the same for both drivers.
pub trait Cols {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
}

impl<R: Row> Cols for R
where
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        Ok(self.try_get(col)?)
    }
}
