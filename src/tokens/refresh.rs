//! Minting refresh tokens. A token's 32 secret bytes are HMAC-SHA256(refresh-token secret,
//! token id), so the token is a function of its public id: a retry of the token just replaced
//! gets the *same* successor back, from any node, though the store keeps only the SHA-256 of
//! each token. The secret is derived from the master key (every node of a database has the
//! same one) and never stored.

use super::keys::MasterKey;
use crate::domain::token::{RefreshToken, TokenKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use uuid::Uuid;

/// Labels the derivation, so the secret is used for nothing else.
pub const SECRET_LABEL: &[u8] = b"sessiond refresh-token secret v1";

pub struct RefreshTokens {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for RefreshTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshTokens(..)")
    }
}

impl RefreshTokens {
    pub fn new(master: &MasterKey) -> Self {
        Self::from_secret(&master.derive(SECRET_LABEL))
    }

    pub fn from_secret(secret: &[u8; 32]) -> Self {
        RefreshTokens {
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length"),
        }
    }

    /// A new token: a fresh UUIDv7 id (time-ordered, for the token index) and its bytes.
    pub fn fresh(&self) -> RefreshToken {
        self.mint(Uuid::now_v7())
    }

    /// The token with this id, the same every time.
    pub fn mint(&self, id: Uuid) -> RefreshToken {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        RefreshToken::new(id, mac.finalize().into_bytes().into())
    }

    /// Whether the token `key` stands for is one this secret minted (and so can be handed out
    /// again): false for tokens of a build before derived tokens, or of another secret.
    pub fn reissues(&self, key: &TokenKey) -> bool {
        self.mint(key.id).hash() == key.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_id_mints_the_same_token_and_another_secret_another_one() {
        let a = RefreshTokens::from_secret(&[1; 32]);
        let t = a.fresh();
        assert_eq!(a.mint(t.id()), t);
        assert!(a.reissues(&t.key()));
        assert_ne!(a.fresh().expose(), t.expose(), "fresh ids, fresh tokens");
        let b = RefreshTokens::from_secret(&[2; 32]);
        assert!(!b.reissues(&t.key()));
        let random = RefreshToken::new(Uuid::now_v7(), [9; 32]);
        assert!(!a.reissues(&random.key()), "a token not minted here");
        assert_eq!(format!("{a:?}"), "RefreshTokens(..)");
    }
}
