-- Analyst verdicts on alerts (issue 15, point 5). A projection of the rule receipts
-- (`rule.fired`: one row each, keyed by the receipt's log position, which is how
-- /v1/admin/alerts names an alert) and of `alert.verdict_recorded` (sets the verdict), rebuilt
-- by a replay. It holds no personal data: ids, the rule, and the verdict (the analyst's note
-- stays sealed in the log). Per-rule stats are counted from it.
CREATE TABLE alerts (
    position     bigint PRIMARY KEY,       -- the receipt's position in the log
    receipt_id   text NOT NULL,            -- its stream is rule-<receipt_id>
    rule_id      text NOT NULL,
    user_id      text,
    verdict      text,                     -- NULL, true_positive or false_positive
    record       text                      -- domain::verdict::Judged, JSON, with the verdict
);
CREATE INDEX alerts_by_rule ON alerts (rule_id, verdict);
