//! Sign-in notices, exceptions and the mail checkpoint (migration 0016), written once for both
//! databases: every column is text (records are the domain values as JSON), so one statement
//! text serves both, its placeholders spelled by [`Stmt::bind`].

use super::dialect::{Cols, Dialect, Stmt};
use super::tables::{Tables, all, one};
use crate::domain::notice::{Exception, Notice, NoticeStatus};
use crate::domain::{Timestamp, format_timestamp};
use crate::store::StoreError;
use uuid::Uuid;

fn record<T: serde::de::DeserializeOwned>(r: &impl Cols) -> Result<T, StoreError> {
    serde_json::from_str(&r.text("record")?)
        .map_err(|e| StoreError::Corrupt(format!("record: {e}")))
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

pub async fn notice<D: Dialect>(
    c: &mut D::Connection,
    notice_id: Uuid,
) -> Result<Option<Notice>, StoreError> {
    let mut q = Stmt::new::<D>("SELECT record FROM notices WHERE notice_id = ");
    q.bind(notice_id.to_string());
    one::<D, _>(c, q, record).await
}

pub async fn put_notice<D: Dialect>(c: &mut D::Connection, n: &Notice) -> Result<(), StoreError> {
    let mut q = Stmt::new::<D>(
        "INSERT INTO notices (notice_id, user_id, created_at, status, record) VALUES (",
    );
    q.bind(n.notice_id.to_string())
        .push(", ")
        .bind(n.user_id.to_string())
        .push(", ")
        .bind(format_timestamp(n.created_at))
        .push(", ")
        .bind(n.status.as_str())
        .push(", ")
        .bind(json(n))
        .push(
            ") ON CONFLICT (notice_id) DO UPDATE SET status = excluded.status, \
             record = excluded.record",
        );
    D::execute(c, q).await?;
    Ok(())
}

/// A user's notices created after `since`, newest first.
pub async fn notices_of<D: Dialect>(
    c: &mut D::Connection,
    user_id: Uuid,
    since: Option<Timestamp>,
    limit: i64,
) -> Result<Vec<Notice>, StoreError> {
    let mut q = Stmt::new::<D>("SELECT record FROM notices WHERE user_id = ");
    q.bind(user_id.to_string());
    if let Some(since) = since {
        q.push(" AND created_at > ").bind(format_timestamp(since));
    }
    q.push(" ORDER BY created_at DESC, notice_id DESC LIMIT ")
        .bind(limit);
    all::<D, _>(c, q, record).await
}

/// When the user last denied a notice, if ever.
pub async fn last_denial<D: Dialect>(
    c: &mut D::Connection,
    user_id: Uuid,
) -> Result<Option<Timestamp>, StoreError> {
    let mut q = Stmt::new::<D>("SELECT record FROM notices WHERE user_id = ");
    q.bind(user_id.to_string())
        .push(" AND status = ")
        .bind(NoticeStatus::Denied.as_str());
    let denied: Vec<Notice> = all::<D, _>(c, q, record).await?;
    Ok(denied.into_iter().filter_map(|n| n.answered_at).max())
}

pub async fn put_exception<D: Dialect>(
    c: &mut D::Connection,
    e: &Exception,
) -> Result<(), StoreError> {
    let mut q = Stmt::new::<D>(
        "INSERT INTO exceptions (exception_id, user_id, expires_at, record) VALUES (",
    );
    q.bind(e.exception_id.to_string())
        .push(", ")
        .bind(e.user_id.to_string())
        .push(", ")
        .bind(format_timestamp(e.expires_at))
        .push(", ")
        .bind(json(e))
        .push(
            ") ON CONFLICT (exception_id) DO UPDATE SET expires_at = excluded.expires_at, \
             record = excluded.record",
        );
    D::execute(c, q).await?;
    Ok(())
}

/// A user's exceptions that have not expired at `now`.
pub async fn live_exceptions<D: Dialect>(
    c: &mut D::Connection,
    user_id: Uuid,
    now: Timestamp,
) -> Result<Vec<Exception>, StoreError> {
    let mut q = Stmt::new::<D>("SELECT record FROM exceptions WHERE user_id = ");
    q.bind(user_id.to_string())
        .push(" AND expires_at > ")
        .bind(format_timestamp(now))
        .push(" ORDER BY expires_at, exception_id");
    all::<D, _>(c, q, record).await
}

impl<D: Dialect> Tables<D> {
    /// A user's notices, newest first.
    pub async fn notices_of(&self, user_id: Uuid, limit: i64) -> Result<Vec<Notice>, StoreError> {
        let mut c = self.pool.acquire().await?;
        notices_of::<D>(&mut c, user_id, None, limit).await
    }

    /// When the user last denied a notice, if ever.
    pub async fn last_denial(&self, user_id: Uuid) -> Result<Option<Timestamp>, StoreError> {
        let mut c = self.pool.acquire().await?;
        last_denial::<D>(&mut c, user_id).await
    }

    /// Where the mailing of notices stands; `None` before its first attempt.
    pub async fn mail_checkpoint(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut q = Stmt::new::<D>("SELECT delivered_position FROM mail_progress WHERE channel = ");
        q.bind(channel);
        one::<D, _>(&mut c, q, |r| r.int("delivered_position")).await
    }

    /// Records one mailing attempt: delivered (or skipped) up to `delivered_position`, or a
    /// failure (`error`) that counts up. The position never moves back.
    pub async fn record_mail_attempt(
        &self,
        channel: &str,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut c = self.pool.acquire().await?;
        let failures = if error.is_some() {
            "mail_progress.failures + 1"
        } else {
            "0"
        };
        let mut q = Stmt::new::<D>(
            "INSERT INTO mail_progress (channel, delivered_position, failures, last_error, \
             last_attempt_at) VALUES (",
        );
        q.bind(channel)
            .push(", ")
            .bind(delivered_position)
            .push(", ")
            .bind(i64::from(error.is_some()))
            .push(", ")
            .bind(error)
            .push(", ")
            .bind(format_timestamp(at))
            .push(&format!(
                ") ON CONFLICT (channel) DO UPDATE SET delivered_position = CASE WHEN \
                 excluded.delivered_position > mail_progress.delivered_position THEN \
                 excluded.delivered_position ELSE mail_progress.delivered_position END, \
                 failures = {failures}, last_error = excluded.last_error, \
                 last_attempt_at = excluded.last_attempt_at"
            ));
        D::execute(&mut c, q).await?;
        Ok(())
    }
}
