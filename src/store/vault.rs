//! Personal data in the log, sealed per subject (crypto-shredding). Every appended event's JSON
//! is walked once, by field name: the fields that identify or authenticate a person
//! ([`SEALED_FIELDS`]) are replaced by `{"sealed": "<base64url nonce || ciphertext>", "key":
//! "<key id>"}`, ChaCha20-Poly1305 under a data key of the event's subject, with the stream id,
//! stream version and field path as associated data (a sealed value cannot be moved to another
//! event or field). The data keys live in `data_keys`, outside the log, each sealed with a key
//! derived from the master key; destroying a key (erasure, retention) leaves the ciphertext, and
//! so the hash chain, as it was, and the fields read back as [`ERASED`] or [`EXPIRED`].
//!
//! Key ids: `{subject}/identity` holds a user's name and password hash (destroyed only by an
//! erasure); `{subject}/{period}` holds request context of one retention period
//! ([`PERIOD_DAYS`] days), destroyed by an erasure or once the period is past retention. The
//! subject is a user id, or [`SERVICE_SUBJECT`] for events of no known user (a failed login
//! with an unknown name).

use crate::domain::Timestamp;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use rand::RngCore;
use serde_json::{Map, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Field names sealed wherever they occur in an event's data. `inputs` and `explanation` are a
/// rule receipt's figures and text, which quote addresses, networks and places.
pub const SEALED_FIELDS: &[&str] = &[
    "username",
    "password_hash",
    "ip",
    "user_agent",
    "city",
    "region",
    "latitude",
    "longitude",
    "request_id",
    "network",
    "inputs",
    "explanation",
    "email",
    // An analyst's free text on a verdict (`alert.verdict_recorded`): it may name anyone.
    "note",
];
/// Top-level fields sealed under the subject's identity key rather than a period key: they
/// must outlive retention (the users table is rebuilt from them).
const IDENTITY_FIELDS: &[&str] = &["username", "password_hash", "email"];

pub const SERVICE_SUBJECT: &str = "service";
pub const PERIOD_DAYS: i64 = 30;
/// The networks an address is indexed under for search, longest first (the address itself
/// first): IPv4 and IPv6.
pub const ADDRESS_PREFIXES: (&[u8], &[u8]) = (&[32, 24, 16], &[128, 64, 48, 32]);

fn prefixes_of(ip: IpAddr) -> &'static [u8] {
    match ip {
        IpAddr::V4(_) => ADDRESS_PREFIXES.0,
        IpAddr::V6(_) => ADDRESS_PREFIXES.1,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What a field sealed under an erased subject's key reads as.
pub const ERASED: &str = crate::domain::event::ERASED_MARKER;
/// What a field whose retention period is over reads as.
pub const EXPIRED: &str = crate::domain::event::EXPIRED_MARKER;
/// Open data keys kept in memory; past this the cache starts over (the writer touches a few
/// keys per batch, so a simple bound is enough).
const CACHE_MAX: usize = 4096;

pub fn period_of(t: Timestamp) -> i64 {
    t.timestamp().div_euclid(PERIOD_DAYS * 86_400)
}

/// The first instant of a period.
pub fn period_start(period: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(period * PERIOD_DAYS * 86_400, 0).unwrap_or_default()
}

pub fn identity_key_id(subject: &str) -> String {
    format!("{subject}/identity")
}

pub fn period_key_id(subject: &str, period: i64) -> String {
    format!("{subject}/{period}")
}

/// A data key as the store reads it: open, or destroyed for a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Open([u8; 32]),
    Erased,
    Expired,
}

impl KeyState {
    fn marker(&self) -> Option<&'static str> {
        match self {
            KeyState::Open(_) => None,
            KeyState::Erased => Some(ERASED),
            KeyState::Expired => Some(EXPIRED),
        }
    }
}

/// The destroyed reasons as stored in `data_keys.destroyed_reason`.
pub const REASON_ERASED: &str = "erased";
pub const REASON_EXPIRED: &str = "expired";

/// The master-derived key that wraps data keys, the cache of open ones, and the key of the
/// keyed hashes that stand for personal values outside the log (throttle rows, the address
/// index).
pub struct Vault {
    wrap: ChaCha20Poly1305,
    tags: Hmac<Sha256>,
    cache: Mutex<HashMap<String, [u8; 32]>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    /// `wrap_key`, `tag_key`: keys derived from the master key for these purposes only.
    pub fn new(wrap_key: [u8; 32], tag_key: [u8; 32]) -> Vault {
        Vault {
            wrap: ChaCha20Poly1305::new((&wrap_key).into()),
            tags: <Hmac<Sha256> as Mac>::new_from_slice(&tag_key)
                .expect("HMAC takes a key of any length"),
            cache: Mutex::default(),
        }
    }

    /// HMAC-SHA256 of `value` under the tag key, in the `domain` of values it stands for
    /// (`name`, `addr`, `net`): base64url, no padding. Without the master key it cannot be
    /// computed, so it cannot be tried against guesses.
    pub fn tag(&self, domain: &str, value: &str) -> String {
        let mut mac = self.tags.clone();
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes().as_slice())
    }

    /// The keyed hashes an event with request-context address `ip` is indexed under: the
    /// address and each of its networks at [`ADDRESS_PREFIXES`].
    pub fn address_tags(&self, ip: IpAddr) -> Vec<String> {
        let ip = unmapped(ip);
        prefixes_of(ip)
            .iter()
            .filter_map(|len| IpNet::new(ip, *len).ok())
            .map(|net| self.tag("net", &net.trunc().to_string()))
            .collect()
    }

    /// The stored tag that narrows a search for `net`: its own, or that of the nearest wider
    /// stored network (the caller filters the opened addresses on `net`). `None` when `net`
    /// is wider than every stored network: nothing narrows it.
    pub fn search_tag(&self, net: &IpNet) -> Option<String> {
        let ip = unmapped(net.addr());
        let asked = match (net.addr(), ip) {
            (IpAddr::V6(_), IpAddr::V4(_)) => net.prefix_len().checked_sub(96)?,
            _ => net.prefix_len(),
        };
        let len = prefixes_of(ip).iter().copied().find(|l| *l <= asked)?;
        let net = IpNet::new(ip, len).ok()?.trunc();
        Some(self.tag("net", &net.to_string()))
    }

    /// A login-throttle key as stored (`domain::throttle::throttle_keys` makes them): the
    /// scope stays clear, the name, the address and the network are keyed hashes. The
    /// account-and-address key starts with its name's hash, so an erasure finds its rows.
    pub fn throttle_key(&self, key: &str) -> String {
        match key.split_once(':') {
            Some(("acct", name)) => format!("acct:{}", self.tag("name", name)),
            Some(("acct_addr", rest)) => match rest.rsplit_once('|') {
                Some((name, ip)) => {
                    format!(
                        "acct_addr:{}|{}",
                        self.tag("name", name),
                        self.tag("addr", ip)
                    )
                }
                None => format!("acct_addr:{}", self.tag("name", rest)),
            },
            Some(("net", net)) => format!("net:{}", self.tag("net", net)),
            _ => format!("other:{}", self.tag("other", key)),
        }
    }

    /// A fresh random data key and its wrapped form (nonce || ciphertext, the key id as
    /// associated data).
    pub fn new_key(&self, key_id: &str) -> ([u8; 32], Vec<u8>) {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        (key, seal_bytes(&self.wrap, key_id.as_bytes(), &key))
    }

    /// Opens a wrapped data key; `None` if it was not wrapped by this master key for this id.
    pub fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Option<[u8; 32]> {
        let clear = open_bytes(&self.wrap, key_id.as_bytes(), wrapped)?;
        <[u8; 32]>::try_from(clear.as_slice()).ok()
    }

    pub fn cached(&self, key_id: &str) -> Option<[u8; 32]> {
        self.cache.lock().ok()?.get(key_id).copied()
    }

    pub fn remember(&self, key_id: &str, key: [u8; 32]) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.clear();
            }
            c.insert(key_id.to_owned(), key);
        }
    }

    /// Drops every cached key of `subject` (after its keys were destroyed), or of periods
    /// before `period` (after retention).
    pub fn forget(&self, subject: Option<&str>, before_period: Option<i64>) {
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|id, _| {
                let (s, p) = id.split_once('/').unwrap_or((id, ""));
                let subject_hit = subject.is_some_and(|want| want == s);
                let period_hit =
                    before_period.is_some_and(|before| p.parse::<i64>().is_ok_and(|p| p < before));
                !(subject_hit || period_hit)
            });
        }
    }
}

/// The personal fields of `data`, found by name: each path (`context.ip`) with whether it is
/// an identity field.
pub fn personal_fields(data: &Value) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    walk(data, "", &mut |path, top| {
        found.push((path.to_owned(), top));
    });
    found
}

fn walk(v: &Value, prefix: &str, f: &mut impl FnMut(&str, bool)) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if SEALED_FIELDS.contains(&k.as_str()) && !child.is_null() && !is_sealed(child) {
                    f(
                        &path,
                        prefix.is_empty() && IDENTITY_FIELDS.contains(&k.as_str()),
                    );
                } else {
                    walk(child, &path, f);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{prefix}[{i}]"), f);
            }
        }
        _ => {}
    }
}

fn is_sealed(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| m.len() == 2 && m.contains_key("sealed") && m.contains_key("key"))
}

fn aad(stream_id: &str, version: i64, path: &str) -> Vec<u8> {
    format!("{stream_id}|{version}|{path}").into_bytes()
}

/// Seals every personal field of `data` in place. `key_for(identity)` names the key id and
/// gives the key for an identity field (`true`) or a period field (`false`); `None` (the key
/// was destroyed) records the field as [`ERASED`].
pub fn seal_event(
    data: &mut Value,
    stream_id: &str,
    version: i64,
    mut key_for: impl FnMut(bool) -> Option<(String, [u8; 32])>,
) {
    seal_at(data, "", stream_id, version, &mut key_for);
}

// The same walk as [`walk`] and [`open_at`], so the paths (associated data) agree.
fn seal_at(
    v: &mut Value,
    prefix: &str,
    stream_id: &str,
    version: i64,
    key_for: &mut impl FnMut(bool) -> Option<(String, [u8; 32])>,
) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if SEALED_FIELDS.contains(&k.as_str()) && !child.is_null() && !is_sealed(child) {
                    let identity = prefix.is_empty() && IDENTITY_FIELDS.contains(&k.as_str());
                    *child = match key_for(identity) {
                        Some((key_id, key)) => {
                            seal_one(child, &path, stream_id, version, key_id, &key)
                        }
                        None => Value::String(ERASED.into()),
                    };
                } else {
                    seal_at(child, &path, stream_id, version, key_for);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                seal_at(
                    child,
                    &format!("{prefix}[{i}]"),
                    stream_id,
                    version,
                    key_for,
                );
            }
        }
        _ => {}
    }
}

fn seal_one(
    clear: &Value,
    path: &str,
    stream_id: &str,
    version: i64,
    key_id: String,
    key: &[u8; 32],
) -> Value {
    let cipher = ChaCha20Poly1305::new(key.into());
    let text = clear.to_string();
    let sealed = seal_bytes(&cipher, &aad(stream_id, version, path), text.as_bytes());
    let mut m = Map::new();
    m.insert(
        "sealed".into(),
        Value::String(URL_SAFE_NO_PAD.encode(sealed)),
    );
    m.insert("key".into(), Value::String(key_id));
    Value::Object(m)
}

/// The key ids the sealed fields of `data` name.
pub fn sealed_key_ids(data: &Value, out: &mut Vec<String>) {
    match data {
        Value::Object(m) if is_sealed(data) => {
            if let Some(k) = m["key"].as_str()
                && !out.iter().any(|o| o == k)
            {
                out.push(k.to_owned());
            }
        }
        Value::Object(m) => m.values().for_each(|c| sealed_key_ids(c, out)),
        Value::Array(a) => a.iter().for_each(|c| sealed_key_ids(c, out)),
        _ => {}
    }
}

/// Opens every sealed field of `data` in place with `keys`: a destroyed key reads as its
/// marker, an unknown key or a value that does not open (tampered) as [`ERASED`]: never an
/// error.
pub fn open_event(
    data: &mut Value,
    stream_id: &str,
    version: i64,
    keys: &HashMap<String, KeyState>,
) {
    open_at(data, "", stream_id, version, keys);
}

fn open_at(
    v: &mut Value,
    path: &str,
    stream_id: &str,
    version: i64,
    keys: &HashMap<String, KeyState>,
) {
    if is_sealed(v) {
        *v = open_one(v, path, stream_id, version, keys);
        return;
    }
    match v {
        Value::Object(m) => {
            // Only a sealed value or a container needs its path (scalars are most fields).
            for (k, child) in m.iter_mut().filter(|(_, c)| c.is_object() || c.is_array()) {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                open_at(child, &p, stream_id, version, keys);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                if child.is_object() || child.is_array() {
                    open_at(child, &format!("{path}[{i}]"), stream_id, version, keys);
                }
            }
        }
        _ => {}
    }
}

fn open_one(
    v: &Value,
    path: &str,
    stream_id: &str,
    version: i64,
    keys: &HashMap<String, KeyState>,
) -> Value {
    let erased = Value::String(ERASED.into());
    let Some(state) = v["key"].as_str().and_then(|k| keys.get(k)) else {
        return erased;
    };
    let key = match state {
        KeyState::Open(key) => key,
        other => return Value::String(other.marker().unwrap_or(ERASED).into()),
    };
    let opened = v["sealed"]
        .as_str()
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .and_then(|sealed| {
            let cipher = ChaCha20Poly1305::new(key.into());
            open_bytes(&cipher, &aad(stream_id, version, path), &sealed)
        })
        .and_then(|clear| serde_json::from_slice::<Value>(&clear).ok());
    opened.unwrap_or(erased)
}

fn seal_bytes(cipher: &ChaCha20Poly1305, aad: &[u8], msg: &[u8]) -> Vec<u8> {
    // The thread's CSPRNG (ChaCha, seeded and reseeded from the OS): a sealed field is sealed
    // on the writer's serial path, where a getrandom syscall per field showed in profiles.
    let mut nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let body = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
        .expect("ChaCha20-Poly1305 encryption of a short message cannot fail");
    [nonce.as_slice(), &body].concat()
}

fn open_bytes(cipher: &ChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 {
        return None;
    }
    let (nonce, body) = sealed.split_at(12);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({"user_id": "u", "username": "alice", "password_hash": "$argon2id$x",
               "context": {"ip": "203.0.113.7", "user_agent": "Firefox",
                           "geo": {"country": "FR", "city": "Paris", "latitude": 48.8}},
               "roles": ["user"]})
    }

    #[test]
    fn seals_by_field_name_and_opens_back() {
        let key = [7u8; 32];
        let mut data = sample();
        seal_event(&mut data, "user-1", 1, |identity| {
            Some((if identity { "u/identity" } else { "u/5" }.to_owned(), key))
        });
        let text = data.to_string();
        for clear in ["alice", "argon2", "203.0.113", "Firefox", "Paris", "48.8"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert!(text.contains("\"FR\""), "country stays clear");
        assert_eq!(data["username"]["key"], "u/identity");
        assert_eq!(data["context"]["ip"]["key"], "u/5");
        let keys = HashMap::from([
            ("u/identity".to_owned(), KeyState::Open(key)),
            ("u/5".to_owned(), KeyState::Open(key)),
        ]);
        let mut opened = data.clone();
        open_event(&mut opened, "user-1", 1, &keys);
        assert_eq!(opened, sample());
        // Bound to its event: the same ciphertext under another stream version does not open.
        let mut moved = data.clone();
        open_event(&mut moved, "user-1", 2, &keys);
        assert_eq!(moved["username"], ERASED);
    }

    #[test]
    fn fields_under_keys_with_dots_and_in_arrays_are_sealed_too() {
        let mut data = json!({"inputs.x": {"ip": "203.0.113.9"}, "list": [{"user_agent": "UA"}]});
        seal_event(&mut data, "s", 1, |_| Some(("k/1".to_owned(), [3u8; 32])));
        let text = data.to_string();
        assert!(
            !text.contains("203.0.113") && !text.contains("\"UA\""),
            "{text}"
        );
        let keys = HashMap::from([("k/1".to_owned(), KeyState::Open([3u8; 32]))]);
        open_event(&mut data, "s", 1, &keys);
        assert_eq!(data["inputs.x"]["ip"], "203.0.113.9");
        assert_eq!(data["list"][0]["user_agent"], "UA");
    }

    #[test]
    fn destroyed_keys_read_as_markers() {
        let key = [1u8; 32];
        let mut data = sample();
        seal_event(&mut data, "s", 3, |identity| {
            Some((if identity { "u/identity" } else { "u/5" }.to_owned(), key))
        });
        let keys = HashMap::from([
            ("u/identity".to_owned(), KeyState::Erased),
            ("u/5".to_owned(), KeyState::Expired),
        ]);
        open_event(&mut data, "s", 3, &keys);
        assert_eq!(data["username"], ERASED);
        assert_eq!(data["context"]["ip"], EXPIRED);
        assert_eq!(data["context"]["geo"]["country"], "FR");
    }

    #[test]
    fn wrapped_keys_open_only_under_their_id() {
        let vault = Vault::new([9u8; 32], [8u8; 32]);
        let (key, wrapped) = vault.new_key("a/1");
        assert_eq!(vault.unwrap_key("a/1", &wrapped), Some(key));
        assert_eq!(vault.unwrap_key("b/1", &wrapped), None);
    }

    #[test]
    fn a_search_uses_the_nearest_stored_network_at_or_wider_than_its_own() {
        let vault = Vault::new([9u8; 32], [8u8; 32]);
        let tags = vault.address_tags("203.0.113.9".parse().unwrap());
        assert_eq!(tags.len(), 3);
        let search = |n: &str| vault.search_tag(&n.parse().unwrap());
        assert_eq!(search("203.0.113.9/32").as_ref(), Some(&tags[0]));
        assert_eq!(search("203.0.113.0/24").as_ref(), Some(&tags[1]));
        // Not on a stored boundary: narrowed by the /24 it lies in, and by the /16.
        assert_eq!(search("203.0.113.0/28").as_ref(), Some(&tags[1]));
        assert_eq!(search("203.0.0.0/20").as_ref(), Some(&tags[2]));
        assert_eq!(search("203.0.0.0/8"), None);
        let v6 = vault.address_tags("2001:db8:1:2::7".parse().unwrap());
        assert_eq!(v6.len(), 4);
        assert_eq!(
            vault
                .search_tag(&"2001:db8:1::/56".parse().unwrap())
                .as_ref(),
            Some(&v6[2])
        );
        // A mapped address is the IPv4 one.
        assert_eq!(
            vault.address_tags("::ffff:203.0.113.9".parse().unwrap()),
            tags
        );
    }

    #[test]
    fn throttle_keys_are_stored_as_keyed_hashes_the_name_first() {
        let vault = Vault::new([9u8; 32], [8u8; 32]);
        let acct = vault.throttle_key("acct:alice");
        let pair = vault.throttle_key("acct_addr:alice|203.0.113.9");
        let net = vault.throttle_key("net:203.0.113.0/24");
        for k in [&acct, &pair, &net] {
            assert!(!k.contains("alice") && !k.contains("203.0.113"), "{k}");
        }
        let name = acct.strip_prefix("acct:").unwrap();
        assert!(pair.starts_with(&format!("acct_addr:{name}|")), "{pair}");
        assert_eq!(vault.throttle_key("acct:alice"), acct, "deterministic");
        let other = Vault::new([9u8; 32], [7u8; 32]);
        assert_ne!(other.throttle_key("acct:alice"), acct, "keyed");
    }
}
