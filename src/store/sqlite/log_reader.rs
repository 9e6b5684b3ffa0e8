//! A replay's reader of the log: pages of events stepped on the calling (blocking) thread with
//! only the columns a replay reads, their JSON parsed straight from SQLite's buffer. Through
//! sqlx each row is copied into an owned row on the connection's worker thread and handed to
//! the task one by one: that was half of a rebuild's reading cost.

use crate::store::ReplayedEvent;
use crate::store::StoreError;
use crate::store::vault::{self, KeyState};
use rusqlite::{Connection, OpenFlags};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

/// Read-only connections to one database file, each used by one thread at a time.
pub struct LogReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// One stored event as a replay reads it: its data parsed, still sealed.
struct StoredRow {
    position: i64,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    schema_version: i64,
    occurred_at: String,
    data: serde_json::Value,
}

/// The states of the data keys a page names, read when the page has been read.
pub type KeyStates = HashMap<String, KeyState>;

const PAGE_SQL: &str = "SELECT position, stream_id, stream_version, event_type, schema_version, \
     data, occurred_at FROM events WHERE position > ?1 AND position < ?2 ORDER BY position LIMIT ?3";

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Corrupt(format!("reading the log: {e}"))
    }
}

impl LogReader {
    pub fn new(path: PathBuf) -> Self {
        LogReader {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn connection(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(c)
    }

    /// The events after position `after` and before `before`, at most `limit`, in position
    /// order, opened with the key states `keys` gives for the ids their sealed fields name,
    /// and decoded. Blocks: run it on a blocking thread. Reading, opening and decoding on one
    /// thread also frees what they allocate on the thread that allocated it.
    pub fn page(
        &self,
        after: i64,
        before: i64,
        limit: i64,
        keys: impl FnOnce(Vec<String>) -> Result<KeyStates, StoreError>,
    ) -> Result<Vec<ReplayedEvent>, StoreError> {
        let c = self.connection()?;
        let read = read(&c, after, before, limit);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        let (rows, ids) = read?;
        let keys = if ids.is_empty() {
            KeyStates::new()
        } else {
            keys(ids.into_iter().collect())?
        };
        let mut out = Vec::with_capacity(rows.len());
        for mut r in rows {
            if !keys.is_empty() {
                vault::open_event(&mut r.data, &r.stream_id, r.stream_version, &keys);
            }
            out.push(ReplayedEvent::decode(
                r.position,
                r.stream_id,
                &r.event_type,
                r.schema_version,
                &r.occurred_at,
                r.data,
            )?);
        }
        Ok(out)
    }
}

/// A page of stored rows, with the ids of the data keys their sealed fields name.
fn read(
    c: &Connection,
    after: i64,
    before: i64,
    limit: i64,
) -> Result<(Vec<StoredRow>, HashSet<String>), StoreError> {
    let mut stmt = c.prepare_cached(PAGE_SQL)?;
    let mut rows = stmt.query((after, before, limit))?;
    let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0).min(4096));
    let mut key_ids = HashSet::new();
    while let Some(r) = rows.next()? {
        let position: i64 = r.get(0)?;
        let text = r
            .get_ref(5)?
            .as_str()
            .map_err(|e| StoreError::Corrupt(format!("position {position}: data: {e}")))?;
        crate::store::dispatch::data_keys::key_ids_in(text, |id| {
            if !key_ids.contains(id) {
                key_ids.insert(id.to_owned());
            }
        });
        let data = serde_json::from_str(text)
            .map_err(|e| StoreError::Corrupt(format!("position {position}: {e}")))?;
        out.push(StoredRow {
            position,
            stream_id: r.get(1)?,
            stream_version: r.get(2)?,
            event_type: r.get(3)?,
            schema_version: r.get(4)?,
            occurred_at: r.get(6)?,
            data,
        });
    }
    Ok((out, key_ids))
}
