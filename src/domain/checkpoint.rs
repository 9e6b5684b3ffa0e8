//! A signed checkpoint of the log's head: "the event at `position` has chain hash `hash`", as
//! of `signed_at`, signed with the checkpoint key. The message is plain text so that a third
//! party can rebuild it byte for byte (README, *Integrity*).

use super::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: i64,
    pub hash: [u8; 32],
    /// The exact RFC 3339 text signed (milliseconds, `Z`).
    pub signed_at: String,
    /// The RFC 7638 thumbprint of the checkpoint key's public JWK.
    pub key_id: String,
    /// Ed25519 over [`Checkpoint::message`].
    pub signature: Vec<u8>,
}

/// Which of a pair of checkpoints the store keeps: per this many positions, the first one and
/// the latest one, so the table grows with the log, not with the number of batches.
pub const KEEP_EVERY: i64 = 1024;

impl Checkpoint {
    /// The bytes signed: `sessiond-checkpoint-v1\n{position}\n{hash hex}\n{signed_at}`.
    pub fn message(position: i64, hash: &[u8; 32], signed_at: &str) -> Vec<u8> {
        format!(
            "sessiond-checkpoint-v1\n{position}\n{}\n{signed_at}",
            super::token::hex(hash)
        )
        .into_bytes()
    }

    pub fn signed_message(&self) -> Vec<u8> {
        Checkpoint::message(self.position, &self.hash, &self.signed_at)
    }

    pub fn signed_time(&self) -> Option<Timestamp> {
        super::parse_timestamp(&self.signed_at)
    }

    /// The first position of the bucket of [`KEEP_EVERY`] positions this one falls in.
    pub fn bucket_start(position: i64) -> i64 {
        position - position.rem_euclid(KEEP_EVERY)
    }
}
