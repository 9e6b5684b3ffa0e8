//! The alerts projection (migration 0019): one row per rule receipt, with the analyst's
//! verdict once recorded, written once for both databases like the notices.

use super::dialect::{Cols, Dialect, Stmt};
use super::tables::{Tables, all, one};
use crate::domain::verdict::{Alert, Judged, RuleStats};
use crate::store::StoreError;
use uuid::Uuid;

fn alert(r: &impl Cols) -> Result<Alert, StoreError> {
    let uuid =
        |s: String| Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("alerts: {e}")));
    let judged = match r.opt_text("record")? {
        Some(j) => Some(
            serde_json::from_str::<Judged>(&j)
                .map_err(|e| StoreError::Corrupt(format!("alerts.record: {e}")))?,
        ),
        None => None,
    };
    Ok(Alert {
        position: r.int("position")?,
        receipt_id: uuid(r.text("receipt_id")?)?,
        rule_id: r.text("rule_id")?,
        user_id: r.opt_text("user_id")?.map(uuid).transpose()?,
        judged,
    })
}

const COLUMNS: &str = "SELECT position, receipt_id, rule_id, user_id, record FROM alerts";

pub async fn alert_at<D: Dialect>(
    c: &mut D::Connection,
    position: i64,
) -> Result<Option<Alert>, StoreError> {
    let mut q = Stmt::new::<D>(format!("{COLUMNS} WHERE position = "));
    q.bind(position);
    one::<D, _>(c, q, alert).await
}

pub async fn put_alert<D: Dialect>(c: &mut D::Connection, a: &Alert) -> Result<(), StoreError> {
    let mut q = Stmt::new::<D>(
        "INSERT INTO alerts (position, receipt_id, rule_id, user_id, verdict, record) VALUES (",
    );
    q.bind(a.position)
        .push(", ")
        .bind(a.receipt_id.to_string())
        .push(", ")
        .bind(a.rule_id.clone())
        .push(", ")
        .bind(a.user_id.map(|u| u.to_string()))
        .push(", ")
        .bind(a.judged.as_ref().map(|j| j.verdict.as_str()))
        .push(", ")
        .bind(
            a.judged
                .as_ref()
                .map(|j| serde_json::to_string(j).expect("plain data serializes")),
        )
        .push(
            ") ON CONFLICT (position) DO UPDATE SET verdict = excluded.verdict, \
             record = excluded.record",
        );
    D::execute(c, q).await?;
    Ok(())
}

impl<D: Dialect> Tables<D> {
    /// The alerts at these positions (those that are alerts).
    pub async fn alerts_at(&self, positions: &[i64]) -> Result<Vec<Alert>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.pool.acquire().await?;
        let mut q = Stmt::new::<D>(format!("{COLUMNS} WHERE position IN ("));
        for (i, p) in positions.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(*p);
        }
        q.push(")");
        all::<D, _>(&mut c, q, alert).await
    }

    /// Per rule: alerts, and how many were judged each way; by rule id.
    pub async fn rule_stats(&self) -> Result<Vec<RuleStats>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let q = Stmt::new::<D>(
            "SELECT rule_id, COUNT(*) AS alerts, \
             CAST(SUM(CASE WHEN verdict = 'true_positive' THEN 1 ELSE 0 END) AS bigint) AS tp, \
             CAST(SUM(CASE WHEN verdict = 'false_positive' THEN 1 ELSE 0 END) AS bigint) AS fp \
             FROM alerts GROUP BY rule_id ORDER BY rule_id",
        );
        all::<D, _>(&mut c, q, |r| {
            Ok(RuleStats::new(
                r.text("rule_id")?,
                r.int("alerts")?,
                r.int("tp")?,
                r.int("fp")?,
            ))
        })
        .await
    }
}
