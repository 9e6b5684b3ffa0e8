//! What `events verify` reads besides the log, written once for both databases: the signed
//! checkpoints of the head (written by the writer inside its batch) and the projected tables,
//! page by page, as text per column, to compare a replay with the live rows.

use super::dialect::{Cols, Dialect, Stmt};
use super::tables::{Tables, all};
use crate::domain::checkpoint::Checkpoint;
use crate::store::StoreError;

/// Every projected table with the columns that order its rows: the tables a rebuild empties and
/// replays, and the ones `events verify` compares with a replay. A new projection is one line
/// here. (`login_failures` has no unique key: rows equal in both columns are equal rows.)
pub const PROJECTED_TABLES: &[(&str, &str)] = &[
    ("users", "user_id"),
    ("sessions", "session_id"),
    ("refresh_tokens", "token_id"),
    ("signing_keys", "kid"),
    ("api_keys", "key_id"),
    ("webhook_subscriptions", "subscription_id"),
    ("login_failures", "throttle_key, failed_at"),
    ("clients", "client_id"),
    ("authorization_codes", "code_id"),
    ("address_tags", "position, tag"),
    ("notices", "notice_id"),
    ("exceptions", "exception_id"),
    ("alerts", "position"),
];

/// The tables that are not projections of the log, and why `events verify` does not compare
/// them with a replay.
pub const NOT_PROJECTED: &[(&str, &str)] = &[
    (
        "events",
        "the log itself: checked by the chain and the signed checkpoints",
    ),
    (
        "checkpoints",
        "signatures over the log, checked against the chain",
    ),
    (
        "secrets",
        "key material (sealed private keys, API-key hashes) kept out of the log",
    ),
    (
        "webhook_progress",
        "delivery state: where each subscription's delivery stands",
    ),
    (
        "backchannel_progress",
        "delivery state: where each client's back-channel logout delivery stands",
    ),
    (
        "dpop_proofs",
        "a replay cache of DPoP proof ids, forgotten after their window",
    ),
    (
        "data_keys",
        "key material: the sealed per-subject data keys, destroyed by erasure and retention",
    ),
    (
        "detector_counts",
        "detector memory: sliding windows the rules count in, forgotten after their window",
    ),
    (
        "breaker_spend",
        "the breaker's budget per rule, forgotten after its window",
    ),
    (
        "usual_networks",
        "each user's usual networks, kept by the rules for weeks, not replayed",
    ),
    (
        "mail_progress",
        "delivery state: where the mailing of sign-in notices stands",
    ),
];

/// One projected row: its key and every column, as the database renders them as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedRow {
    pub key: String,
    pub columns: Vec<(String, Option<String>)>,
    /// Where the next page starts after this row (see [`PageKey`]).
    pub page_key: PageKey,
}

/// Where a page of a projected table starts: at the row whose key columns are `values` (SQL
/// literals of their own type, as the database quoted them: `Dialect::literal`), skipping
/// `equal` rows of that key already read (a key need not be unique: `login_failures`).
/// Keyset paging: each page is one index range read, however far into the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageKey {
    pub values: Vec<String>,
    pub equal: i64,
}

impl PageKey {
    /// The key to read on from after `page`, which was read from `from`.
    pub fn after(from: Option<&PageKey>, page: &[ProjectedRow]) -> Option<PageKey> {
        let last = page.last()?;
        let mut equal = page
            .iter()
            .rev()
            .take_while(|r| r.page_key.values == last.page_key.values)
            .count() as i64;
        // The whole page was of the key it started at: those rows come on top of the skipped.
        if let Some(from) = from.filter(|f| f.values == last.page_key.values)
            && equal == page.len() as i64
        {
            equal += from.equal;
        }
        Some(PageKey {
            equal,
            ..last.page_key.clone()
        })
    }
}

fn checkpoint<D: Dialect>(r: &D::Row) -> Result<Checkpoint, StoreError> {
    let hash = r.bytes("hash")?;
    Ok(Checkpoint {
        position: r.int("position")?,
        hash: <[u8; 32]>::try_from(hash.as_slice())
            .map_err(|_| StoreError::Corrupt("checkpoint hash is not 32 bytes".into()))?,
        signed_at: r.text("signed_at")?,
        key_id: r.text("key_id")?,
        signature: r.bytes("signature")?,
    })
}

const CHECKPOINT_COLS: &str =
    "SELECT position, hash, signed_at, key_id, signature FROM checkpoints";

/// Stores `cp` in the writer's transaction. Of the checkpoints in `cp`'s bucket of
/// [`crate::domain::checkpoint::KEEP_EVERY`] positions only the first stays beside it: the
/// others were heads of earlier batches, covered by this one.
pub async fn put_checkpoint<D: Dialect>(
    c: &mut D::Connection,
    cp: &Checkpoint,
) -> Result<(), StoreError> {
    let mut thin = Stmt::new::<D>("");
    push_checkpoint_thin::<D>(&mut thin, cp);
    D::execute(c, thin).await?;
    let mut q = Stmt::new::<D>("");
    push_checkpoint_insert::<D>(&mut q, cp);
    D::execute(c, q).await?;
    Ok(())
}

/// The first statement of [`put_checkpoint`] (for a flush that sends it with its rows):
/// keeps only the first checkpoint of the bucket `cp` falls in.
pub fn push_checkpoint_thin<'a, D: Dialect>(q: &mut Stmt<'a>, cp: &Checkpoint) {
    let start = Checkpoint::bucket_start(cp.position);
    q.push("DELETE FROM checkpoints WHERE position >= ")
        .bind(start)
        .push(" AND position > (SELECT MIN(position) FROM checkpoints WHERE position >= ")
        .bind(start)
        .push(")");
}

/// The second statement of [`put_checkpoint`]: the checkpoint itself.
pub fn push_checkpoint_insert<'a, D: Dialect>(q: &mut Stmt<'a>, cp: &'a Checkpoint) {
    q.push("INSERT INTO checkpoints (position, hash, signed_at, key_id, signature) VALUES (")
        .bind(cp.position)
        .push(", ")
        .bind(cp.hash.as_slice())
        .push(", ")
        .bind(cp.signed_at.as_str())
        .push(", ")
        .bind(cp.key_id.as_str())
        .push(", ")
        .bind(cp.signature.as_slice())
        .push(") ON CONFLICT (position) DO NOTHING");
}

/// Forgets the checkpoints from `position` on: `sessiond migrate` re-chained the log from
/// there, so they sign hashes that no longer exist (the writer signs the new head).
pub async fn drop_checkpoints_from<D: Dialect>(
    c: &mut D::Connection,
    position: i64,
) -> Result<(), StoreError> {
    let mut q = Stmt::new::<D>("DELETE FROM checkpoints WHERE position >= ");
    q.bind(position);
    D::execute(c, q).await?;
    Ok(())
}

impl<D: Dialect> Tables<D> {
    /// Stored checkpoints after `after_position`, oldest first.
    pub async fn checkpoints(
        &self,
        after_position: i64,
        limit: i64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut q = Stmt::new::<D>(format!("{CHECKPOINT_COLS} WHERE position > "));
        q.bind(after_position)
            .push(" ORDER BY position LIMIT ")
            .bind(limit);
        all::<D, _>(&mut c, q, checkpoint::<D>).await
    }

    /// The newest stored checkpoints, newest first.
    pub async fn latest_checkpoints(&self, limit: i64) -> Result<Vec<Checkpoint>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut q = Stmt::new::<D>(format!("{CHECKPOINT_COLS} ORDER BY position DESC LIMIT "));
        q.bind(limit);
        all::<D, _>(&mut c, q, checkpoint::<D>).await
    }

    /// A page of the projected table `PROJECTED_TABLES[table]`, in key order, from `from`.
    pub async fn projection_rows(
        &self,
        table: usize,
        from: Option<&PageKey>,
        limit: i64,
    ) -> Result<Vec<ProjectedRow>, StoreError> {
        let (name, key) = *PROJECTED_TABLES
            .get(table)
            .ok_or_else(|| StoreError::Corrupt(format!("no projected table {table}")))?;
        let mut c = self.pool.acquire().await?;
        let columns = D::column_names(&mut c, name).await?;
        let keys: Vec<&str> = key.split(',').map(str::trim).collect();
        let key_text = keys
            .iter()
            .map(|k| D::column_text(k))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let mut sql = format!("SELECT {key_text} AS k");
        for (i, k) in keys.iter().enumerate() {
            sql.push_str(&format!(", {} AS v{i}", D::literal(k)));
        }
        for (i, col) in columns.iter().enumerate() {
            sql.push_str(&format!(", {} AS c{i}", D::column_text(col)));
        }
        sql.push_str(&format!(" FROM {name}"));
        let mut q = Stmt::new::<D>(sql);
        let mut skip = 0;
        if let Some(from) = from.filter(|f| f.values.len() == keys.len()) {
            // The literals are the database's own quoting of the row read last.
            q.push(&format!(" WHERE ({key}) >= ({})", from.values.join(", ")));
            skip = from.equal;
        }
        q.push(&format!(" ORDER BY {key} LIMIT "))
            .bind(limit)
            .push(" OFFSET ")
            .bind(skip);
        let n = keys.len();
        all::<D, _>(&mut c, q, |r| {
            let columns = columns
                .iter()
                .enumerate()
                .map(|(i, col)| Ok((col.clone(), r.opt_text(&format!("c{i}"))?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let mut page_key = PageKey::default();
            for i in 0..n {
                page_key
                    .values
                    .push(r.opt_text(&format!("v{i}"))?.unwrap_or_default());
            }
            Ok(ProjectedRow {
                key: r.opt_text("k")?.unwrap_or_default(),
                columns,
                page_key,
            })
        })
        .await
    }
}
