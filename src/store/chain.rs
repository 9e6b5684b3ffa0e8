//! The hash chain over the log: `hash = SHA-256(prev_hash || canonical event bytes)`.
//!
//! The canonical bytes are the stored fields themselves, each length-prefixed, so the hash is
//! recomputed from the row exactly as stored: editing any field, or reordering rows, breaks it.

use super::{ChainHead, RecordedEvent};
use sha2::{Digest, Sha256};

pub fn event_hash(e: &RecordedEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&e.prev_hash);
    h.update(e.position.to_be_bytes());
    field(&mut h, e.stream_id.as_bytes());
    h.update(e.stream_version.to_be_bytes());
    field(&mut h, e.event_type.as_bytes());
    h.update(e.schema_version.to_be_bytes());
    field(&mut h, e.data.as_bytes());
    field(&mut h, e.metadata.as_bytes());
    field(&mut h, e.occurred_at.as_bytes());
    field(&mut h, e.recorded_at.as_bytes());
    h.finalize().into()
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Why the chain is broken at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Positions must follow each other with no gap.
    Gap { expected: i64 },
    /// The row's `prev_hash` is not the hash of the row before it.
    PrevHash,
    /// The row's content does not hash to its stored `hash`.
    Hash,
}

/// Walks events in position order, remembering where the chain stands.
pub struct ChainVerifier {
    head: ChainHead,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            head: ChainHead::GENESIS,
            checked: 0,
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, e: &RecordedEvent) -> Result<(), (i64, ChainBreak)> {
        if e.position != self.head.position + 1 {
            return Err((
                e.position,
                ChainBreak::Gap {
                    expected: self.head.position + 1,
                },
            ));
        }
        if e.prev_hash.as_slice() != self.head.hash {
            return Err((e.position, ChainBreak::PrevHash));
        }
        let hash = event_hash(e);
        if e.hash.as_slice() != hash {
            return Err((e.position, ChainBreak::Hash));
        }
        self.head = ChainHead {
            position: e.position,
            hash,
        };
        self.checked += 1;
        Ok(())
    }

    /// Takes `e` into the chain by its stored hash without recomputing it: for an exported
    /// event whose content the export redacted. Its position and link still must hold.
    pub fn link(&mut self, e: &RecordedEvent) -> Result<(), (i64, ChainBreak)> {
        if e.position != self.head.position + 1 {
            return Err((
                e.position,
                ChainBreak::Gap {
                    expected: self.head.position + 1,
                },
            ));
        }
        if e.prev_hash.as_slice() != self.head.hash {
            return Err((e.position, ChainBreak::PrevHash));
        }
        let hash =
            <[u8; 32]>::try_from(e.hash.as_slice()).map_err(|_| (e.position, ChainBreak::Hash))?;
        self.head = ChainHead {
            position: e.position,
            hash,
        };
        Ok(())
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }

    pub fn head(&self) -> ChainHead {
        self.head
    }
}
