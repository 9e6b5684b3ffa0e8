-- Sign-in notices and exceptions (issue 15, point 4). Both are projections of events on the
-- user streams (`notice.created`, `.confirmed`, `.denied`; `exception.added`), rebuilt by a
-- replay; every column is text (the record is the domain value as JSON, timestamps RFC 3339),
-- so one statement text serves both databases. Nothing personal is kept here: device class,
-- country and the networks' keyed tags only (the address, User-Agent and city stay sealed in
-- the log).
CREATE TABLE notices (
    notice_id   text PRIMARY KEY,
    user_id     text NOT NULL,
    created_at  text NOT NULL,             -- RFC 3339, as in the record
    status      text NOT NULL,             -- open, confirmed, denied
    record      text NOT NULL              -- domain::notice::Notice, JSON
);
CREATE INDEX notices_by_user ON notices (user_id, created_at);

CREATE TABLE exceptions (
    exception_id  text PRIMARY KEY,
    user_id       text NOT NULL,
    expires_at    text NOT NULL,           -- RFC 3339
    record        text NOT NULL            -- domain::notice::Exception, JSON
);
CREATE INDEX exceptions_by_user ON exceptions (user_id, expires_at);

-- Where the mailing of notices stands in the log, like webhook_progress: written by the mail
-- worker only; not a projection (a rebuild leaves it).
CREATE TABLE mail_progress (
    channel             text PRIMARY KEY,
    delivered_position  bigint NOT NULL,
    failures            bigint NOT NULL DEFAULT 0,
    last_error          text,
    last_attempt_at     text
);
