-- Login throttling (issue 11): every failed password check, once per throttle key it feeds
-- (`acct_addr:` account and address, `net:` the address's /24 or /64, `acct:` the account from
-- anywhere), at the time of its `login.failed` event. A projection of those events, written in
-- the same transaction and rebuilt from the log; the throttle counts a key's rows in a window.
CREATE TABLE login_failures (
    throttle_key TEXT NOT NULL,
    failed_at    TEXT NOT NULL
);

CREATE INDEX login_failures_by_key ON login_failures (throttle_key, failed_at);
