//! Signing keys, API keys and webhook subscriptions, written once for both databases: their
//! projected rows, the secrets kept beside them (never in the log, never cleared by a rebuild)
//! and delivery's checkpoints. The writer's statements take its transaction's connection; the
//! pool's reads join the secrets in.

use super::dialect::{Cols, Dialect, Stmt};
use super::rows;
use super::tables::{Tables, all, one};
use crate::domain::Timestamp;
use crate::domain::format_timestamp;
use crate::domain::keys::{ApiKeyRecord, SigningKeyRecord};
use crate::domain::token::TokenKey;
use crate::domain::webhook::SubscriptionRecord;
use crate::store::{StoreError, StoredApiKey, StoredSigningKey, WebhookSubscription};
use uuid::Uuid;

async fn execute<D: Dialect>(c: &mut D::Connection, q: Stmt<'_>) -> Result<(), StoreError> {
    D::execute(c, q).await?;
    Ok(())
}

pub async fn signing_key_records<D: Dialect>(
    c: &mut D::Connection,
) -> Result<Vec<SigningKeyRecord>, StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.signing_key_records);
    all::<D, _>(c, q, rows::signing_key_record::<D>).await
}

pub async fn put_signing_key<D: Dialect>(
    c: &mut D::Connection,
    k: &SigningKeyRecord,
) -> Result<(), StoreError> {
    let q = rows::signing_key_args(Stmt::new::<D>(D::SQL.registry.put_signing_key), k);
    execute::<D>(c, q).await
}

pub async fn api_key_record<D: Dialect>(
    c: &mut D::Connection,
    key_id: Uuid,
) -> Result<Option<ApiKeyRecord>, StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.api_key_record).arg(key_id.to_string());
    one::<D, _>(c, q, rows::api_key_record::<D>).await
}

pub async fn put_api_key<D: Dialect>(
    c: &mut D::Connection,
    k: &ApiKeyRecord,
) -> Result<(), StoreError> {
    let q = rows::api_key_args(Stmt::new::<D>(D::SQL.registry.put_api_key), k);
    execute::<D>(c, q).await
}

pub async fn webhook_record<D: Dialect>(
    c: &mut D::Connection,
    id: Uuid,
) -> Result<Option<SubscriptionRecord>, StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.webhook_record).arg(id.to_string());
    one::<D, _>(c, q, rows::subscription::<D>).await
}

pub async fn put_webhook<D: Dialect>(
    c: &mut D::Connection,
    w: &SubscriptionRecord,
) -> Result<(), StoreError> {
    let q = rows::subscription_args(Stmt::new::<D>(D::SQL.registry.put_webhook), w);
    execute::<D>(c, q).await
}

pub async fn delete_webhook<D: Dialect>(c: &mut D::Connection, id: Uuid) -> Result<(), StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.delete_webhook).arg(id.to_string());
    execute::<D>(c, q).await
}

pub async fn put_secret<D: Dialect>(
    c: &mut D::Connection,
    owner: &str,
    material: &[u8],
) -> Result<(), StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.put_secret)
        .arg(owner)
        .arg(material);
    execute::<D>(c, q).await
}

pub async fn delete_secret<D: Dialect>(
    c: &mut D::Connection,
    owner: &str,
) -> Result<(), StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.delete_secret).arg(owner);
    execute::<D>(c, q).await
}

pub async fn start_webhook_delivery<D: Dialect>(
    c: &mut D::Connection,
    id: Uuid,
    after_position: i64,
) -> Result<(), StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.start_webhook_delivery)
        .arg(id.to_string())
        .arg(after_position);
    execute::<D>(c, q).await
}

pub async fn delete_webhook_delivery<D: Dialect>(
    c: &mut D::Connection,
    id: Uuid,
) -> Result<(), StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.delete_webhook_delivery).arg(id.to_string());
    execute::<D>(c, q).await
}

/// One failed password check, under each throttle key it feeds.
pub async fn put_login_failures<D: Dialect>(
    c: &mut D::Connection,
    keys: &[String],
    at: Timestamp,
) -> Result<(), StoreError> {
    for key in keys {
        let q = Stmt::new::<D>(D::SQL.registry.put_login_failure)
            .arg(key.as_str())
            .arg(format_timestamp(at));
        execute::<D>(c, q).await?;
    }
    Ok(())
}

/// Records a DPoP proof's jti as seen: `false` if it was seen before. Run at once in the
/// writer's transaction (not batched): a later command of the same batch must see it, and on
/// PostgreSQL another node's insert of the same hash waits for this one to commit.
pub async fn claim_dpop_jti<D: Dialect>(
    c: &mut D::Connection,
    jti_hash: &[u8; 32],
    expires_at: Timestamp,
) -> Result<bool, StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.claim_dpop_jti)
        .arg(jti_hash.as_slice())
        .arg(format_timestamp(expires_at));
    Ok(D::execute(c, q).await? == 1)
}

pub async fn prune_dpop_jtis<D: Dialect>(
    c: &mut D::Connection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.prune_dpop_jtis).arg(format_timestamp(before));
    Ok(D::execute(c, q).await?)
}

/// A threshold window's counts after `since` (this event not yet in them): rows, distinct
/// names, rows of `name_tag`. The window's older rows are deleted first, so a key holds at
/// most one window's events.
pub async fn window_counts<D: Dialect>(
    c: &mut D::Connection,
    rule_id: &str,
    key_tag: &str,
    name_tag: &str,
    since: Timestamp,
) -> Result<(i64, i64, i64), StoreError> {
    let prune = Stmt::new::<D>(D::SQL.registry.prune_window)
        .arg(rule_id)
        .arg(key_tag)
        .arg(format_timestamp(since));
    execute::<D>(c, prune).await?;
    let q = Stmt::new::<D>(D::SQL.registry.window_counts)
        .arg(name_tag)
        .arg(rule_id)
        .arg(key_tag)
        .arg(format_timestamp(since));
    let row = one::<D, _>(c, q, |r| Ok((r.int("n")?, r.int("d")?, r.int("mine")?))).await?;
    Ok(row.unwrap_or((0, 0, 0)))
}

pub async fn put_window_count<D: Dialect>(
    c: &mut D::Connection,
    rule_id: &str,
    key_tag: &str,
    name_tag: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.put_window_count)
        .arg(rule_id)
        .arg(key_tag)
        .arg(name_tag)
        .arg(format_timestamp(at));
    execute::<D>(c, q).await
}

/// A rule's breaker spend after `since` (older rows deleted first): actions taken, and the
/// latest trip's end.
pub async fn breaker_spent<D: Dialect>(
    c: &mut D::Connection,
    rule_id: &str,
    since: Timestamp,
) -> Result<(i64, Option<Timestamp>), StoreError> {
    let prune = Stmt::new::<D>(D::SQL.registry.prune_breaker)
        .arg(rule_id)
        .arg(format_timestamp(since));
    execute::<D>(c, prune).await?;
    let q = Stmt::new::<D>(D::SQL.registry.breaker_spent)
        .arg(rule_id)
        .arg(format_timestamp(since));
    let row = one::<D, _>(c, q, |r| Ok((r.int("n")?, D::time(r, "until")?))).await?;
    Ok(row.unwrap_or((0, None)))
}

pub async fn put_breaker_spend<D: Dialect>(
    c: &mut D::Connection,
    rule_id: &str,
    at: Timestamp,
    tripped_until: Option<Timestamp>,
) -> Result<(), StoreError> {
    let q = Stmt::new::<D>(D::SQL.registry.put_breaker_spend)
        .arg(rule_id)
        .arg(format_timestamp(at))
        .arg(tripped_until.map(format_timestamp));
    execute::<D>(c, q).await
}

/// Which of `networks` the user was seen on after `since`: one read for all of them.
pub async fn usual_networks_seen<D: Dialect>(
    c: &mut D::Connection,
    user_id: Uuid,
    networks: &[&str],
    since: Timestamp,
) -> Result<Vec<String>, StoreError> {
    if networks.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<String> = networks.iter().map(|n| (*n).to_owned()).collect();
    let mut q = Stmt::new::<D>("SELECT network FROM usual_networks WHERE user_id = ");
    q.cast(user_id.to_string(), D::UUID)
        .push(" AND ")
        .any_of("network", &wanted)
        .push(" AND last_seen > ")
        .cast(format_timestamp(since), D::TIME);
    all::<D, _>(c, q, |r| r.text("network")).await
}

/// Marks each of `networks` seen by the user at `at`: one statement for all of them.
pub async fn put_usual_networks<D: Dialect>(
    c: &mut D::Connection,
    user_id: Uuid,
    networks: &[&str],
    at: Timestamp,
) -> Result<(), StoreError> {
    // One row per network: an upsert may not touch the same row twice.
    let mut distinct: Vec<&str> = networks.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() {
        return Ok(());
    }
    let (user, at) = (user_id.to_string(), format_timestamp(at));
    let mut q = Stmt::new::<D>("INSERT INTO usual_networks (user_id, network, last_seen) ");
    q.values(distinct, |t, n| {
        t.cast(user.as_str(), D::UUID)
            .bind(n)
            .cast(at.as_str(), D::TIME);
    });
    q.push(" ON CONFLICT (user_id, network) DO UPDATE SET last_seen = excluded.last_seen");
    execute::<D>(c, q).await
}

impl<D: Dialect> Tables<D> {
    /// For each probe `(key, since, n)`, the `n`-th newest failure (0 = the newest) under `key`
    /// after `since`, if there are that many: one indexed read per probe answers "is the limit
    /// reached, and until when", all of them in one statement.
    pub async fn nth_login_failures(
        &self,
        probes: &[(String, Timestamp, i64)],
    ) -> Result<Vec<Option<Timestamp>>, StoreError> {
        let mut found = vec![None; probes.len()];
        if probes.is_empty() {
            return Ok(found);
        }
        let mut q = Stmt::new::<D>("");
        for (i, (key, since, n)) in probes.iter().enumerate() {
            // The rows hold keyed hashes of the keys (see `Vault::throttle_key`).
            let stored = match self.vault.get() {
                Some(v) => v.throttle_key(key),
                None => key.clone(),
            };
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push(&format!("SELECT CAST({i} AS BIGINT) AS probe, "))
                .push(D::SQL.registry.login_failure_at)
                .push(" FROM (SELECT failed_at FROM login_failures WHERE throttle_key = ")
                .bind(stored)
                .push(" AND failed_at > ")
                .cast(format_timestamp(*since), D::TIME)
                .push(" ORDER BY failed_at DESC LIMIT 1 OFFSET ")
                .bind(*n)
                .push(&format!(") AS p{i}"));
        }
        for (i, at) in all::<D, _>(&mut *self.pool.acquire().await?, q, |r| {
            Ok((r.int("probe")?, D::time(r, "failed_at")?))
        })
        .await?
        {
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| found.get_mut(i)) {
                *slot = at;
            }
        }
        Ok(found)
    }

    /// Every signing key with its sealed private half, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let q = Stmt::new::<D>(D::SQL.registry.signing_keys);
        all::<D, _>(&mut c, q, rows::signing_key::<D>).await
    }

    /// The key with this id, if its stored hash is `key.hash` (else `None`, as if unknown).
    pub async fn api_key(&self, key: &TokenKey) -> Result<Option<StoredApiKey>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let q = Stmt::new::<D>(D::SQL.registry.api_key).arg(key.id.to_string());
        let found = one::<D, _>(&mut c, q, rows::api_key::<D>).await?;
        Ok(found.filter(|k| key.hash.matches(&k.key_hash)))
    }

    pub async fn api_keys(&self) -> Result<Vec<StoredApiKey>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let q = Stmt::new::<D>(D::SQL.registry.api_keys);
        all::<D, _>(&mut c, q, rows::api_key::<D>).await
    }

    /// Every subscription with its sealed secret and delivery checkpoint.
    pub async fn webhooks(&self) -> Result<Vec<WebhookSubscription>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let q = Stmt::new::<D>(D::SQL.registry.webhooks);
        all::<D, _>(&mut c, q, rows::webhook::<D>).await
    }

    /// Subscriptions made before they were recorded in the log (by builds that wrote the row
    /// only), to be adopted into it.
    pub async fn unlogged_webhooks(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let q = Stmt::new::<D>(D::SQL.registry.unlogged_webhooks);
        all::<D, _>(&mut c, q, |r| rows::uuid(r.text("subscription_id")?)).await
    }

    /// Records one delivery attempt: success moves the checkpoint and clears the failure
    /// count; a failure counts up and keeps its reason.
    pub async fn record_webhook_attempt(
        &self,
        id: Uuid,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let sql = match error {
            None => D::SQL.registry.webhook_delivered,
            Some(_) => D::SQL.registry.webhook_failed,
        };
        let q = Stmt::new::<D>(sql)
            .arg(delivered_position)
            .arg(error)
            .arg(format_timestamp(at))
            .arg(id.to_string());
        execute::<D>(&mut *self.pool.acquire().await?, q).await
    }

    /// Where a client's back-channel logout delivery stands; `None` before its first attempt.
    pub async fn backchannel_checkpoint(&self, client_id: &str) -> Result<Option<i64>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let q = Stmt::new::<D>(D::SQL.registry.backchannel_checkpoint).arg(client_id);
        one::<D, _>(&mut c, q, |r| r.int("delivered_position")).await
    }

    /// Records one back-channel logout attempt for a client (the row is made on the first).
    pub async fn record_backchannel_attempt(
        &self,
        client_id: &str,
        delivered_position: i64,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let sql = match error {
            None => D::SQL.registry.backchannel_delivered,
            Some(_) => D::SQL.registry.backchannel_failed,
        };
        let q = Stmt::new::<D>(sql)
            .arg(client_id)
            .arg(delivered_position)
            .arg(error)
            .arg(format_timestamp(at));
        execute::<D>(&mut *self.pool.acquire().await?, q).await
    }
}
