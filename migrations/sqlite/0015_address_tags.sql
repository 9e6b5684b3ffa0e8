-- Search by address or network (issue 12): for each event with a request-context address,
-- keyed hashes (HMAC-SHA256 under a key derived from the master key, base64url) of the address
-- and of its networks (IPv4 /32, /24, /16; IPv6 /128, /64, /48, /32), outside the log. A
-- projection of the log: a rebuild fills it from the opened events (an erased or expired
-- address adds nothing), an erasure deletes its subject's rows and retention the rows of the
-- periods it expires, so the tags of forgotten addresses are gone with them.
CREATE TABLE address_tags (
    tag       TEXT NOT NULL,
    position  INTEGER NOT NULL,
    subject   TEXT NOT NULL,  -- whose data keys seal the address: a user id or 'service'
    period    INTEGER NOT NULL   -- the 30-day period of the data key that seals it
);
CREATE INDEX address_tags_by_tag ON address_tags (tag, position);
CREATE INDEX address_tags_by_subject ON address_tags (subject);
CREATE INDEX address_tags_by_period ON address_tags (period);
