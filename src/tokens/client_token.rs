//! Access tokens of the `client_credentials` grant: the client acts for itself, so `sub` is its
//! `client_id` and there is no session (`sid`) and no user. Signed like every access token
//! (`typ: at+jwt`, the active key); `TokenService::verify` refuses them (its `sub` is a user
//! id), so they never open a user's API.

use super::TokenService;
use crate::domain::Timestamp;
use serde::Serialize;

#[derive(Serialize)]
struct ClientClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    client_id: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: uuid::Uuid,
    scope: &'a str,
}

impl TokenService {
    /// A token for `client_id` itself; returns it with its lifetime in seconds.
    pub fn issue_client_token(
        &self,
        client_id: &str,
        scope: &str,
        now: Timestamp,
    ) -> (String, i64) {
        let lifetime = self.lifetime.num_seconds();
        let iat = now.timestamp();
        let claims = ClientClaims {
            iss: &self.issuer,
            sub: client_id,
            aud: &self.audience,
            client_id,
            exp: iat + lifetime,
            iat,
            nbf: iat - super::NBF_SKEW_SECS,
            jti: uuid::Uuid::new_v4(),
            scope,
        };
        (self.ring().sign(&claims), lifetime)
    }
}
