//! The token endpoint's grants for registered clients: `authorization_code` (with the PKCE
//! verifier), `client_credentials`, and the refresh of a client's session (bound to that
//! client, RFC 9700 §4.14); and `/oauth/userinfo`.

use super::{IssuedTokens, Principal, Sessiond, meta};
use crate::commands::RedeemCode;
use crate::domain::authorization::{AuthorizationCode, CodeRefusal};
use crate::domain::client::Client;
use crate::domain::context::RequestContext;
use crate::domain::event::Actor;
use crate::domain::session::Session;
use crate::domain::token::AuthCode;
use crate::error::Error;
use crate::tokens::oidc::{IdTokenAlg, IdTokenClaims};
use serde_json::{Value, json};

/// What a client's token request asked for, as read from the form.
pub struct CodeExchange<'a> {
    pub code: &'a str,
    pub redirect_uri: Option<&'a str>,
    pub code_verifier: &'a str,
}

/// A `client_credentials` answer: an access token and nothing else (RFC 6749 §4.4.3).
#[derive(Debug)]
pub struct ClientToken {
    pub access_token: String,
    pub expires_in: i64,
    pub scope: String,
}

impl Sessiond {
    /// Exchanges a code for tokens: the client (authenticated by the caller) must be the
    /// code's, the redirect URI identical, the verifier the challenge's. A code presented
    /// twice revokes the session the first exchange started.
    pub async fn exchange_code(
        &self,
        client: &Client,
        x: &CodeExchange<'_>,
        ctx: &RequestContext,
        dpop: &super::dpop::Dpop,
    ) -> Result<IssuedTokens, Error> {
        if !client.allows_grant("authorization_code") {
            return Err(unauthorized_client("authorization_code"));
        }
        let code = AuthCode::parse(x.code).map_err(|_| Error::InvalidGrant)?;
        // Checked like a login's proof: a proof that fails (or is missing when DPoP is
        // required) refuses the exchange before the code is looked at.
        let proof = self.login_proof(dpop)?;
        let cmd = RedeemCode {
            code: code.key(),
            client_id: client.client_id.clone(),
            redirect_uri: x.redirect_uri.map(str::to_owned),
            code_verifier: x.code_verifier.to_owned(),
            context: ctx.clone(),
            dpop: proof,
        };
        match self.writer.submit(cmd, meta(Actor::Anonymous, ctx)).await? {
            Ok((session, code)) => self.code_tokens(client, &session, &code).await,
            Err(refusal) => {
                tracing::info!(?refusal, client_id = %client.client_id, "code exchange refused");
                match refusal {
                    CodeRefusal::Reused => {
                        tracing::warn!(client_id = %client.client_id, "authorization code reused: its session is revoked");
                    }
                    CodeRefusal::DpopKey => {
                        return Err(Error::InvalidDpopProof(
                            "this authorization code is bound to a DPoP key (dpop_jkt): send a DPoP proof by that key".into(),
                        ));
                    }
                    CodeRefusal::ProofReplayed => {
                        return Err(Error::InvalidDpopProof(
                            super::dpop::fault_message(crate::domain::event::DpopFault::Replayed)
                                .into(),
                        ));
                    }
                    _ => {}
                }
                Err(Error::InvalidGrant)
            }
        }
    }

    /// The tokens of a redeemed code: the session's first refresh token, minted again from
    /// its id (nobody has held it yet), and a fresh access token.
    async fn code_tokens(
        &self,
        client: &Client,
        session: &Session,
        code: &AuthorizationCode,
    ) -> Result<IssuedTokens, Error> {
        let current = session
            .current_token
            .filter(|k| self.refresh_tokens.reissues(k))
            .ok_or(Error::InvalidGrant)?;
        let refresh = self.refresh_tokens.mint(current.id);
        let mut issued = self.issue(session, refresh);
        issued.id_token = self
            .id_token_for(client, session, code, &issued.access_token)
            .await?;
        Ok(issued)
    }

    /// The ID token of a code exchange with `openid` in scope (OpenID Connect Core §3.1.3.3).
    /// Signed RS256 unless the client registered EdDSA; `preferred_username` with `profile`.
    async fn id_token_for(
        &self,
        client: &Client,
        session: &Session,
        code: &AuthorizationCode,
        access_token: &str,
    ) -> Result<Option<String>, Error> {
        let scopes: Vec<&str> = code.scope.split(' ').collect();
        if !scopes.contains(&"openid") {
            return Ok(None);
        }
        let mut extra = serde_json::Map::new();
        if scopes.contains(&"profile") {
            let user = self.user(session.user_id).await?;
            extra.insert("preferred_username".into(), json!(user.username));
        }
        let (acr, amr) = session.authentication();
        let claims = IdTokenClaims {
            sub: session.user_id.to_string(),
            aud: client.client_id.clone(),
            nonce: code.nonce.clone(),
            auth_time: session.auth_time,
            acr: acr.to_owned(),
            amr: amr.iter().map(|m| m.to_string()).collect(),
            sid: session.session_id,
            access_token: Some(access_token.to_owned()),
            extra,
        };
        let alg = IdTokenAlg::parse(&client.id_token_signed_response_alg).unwrap_or_default();
        Ok(Some(self.tokens.issue_id_token(&claims, alg, self.now())))
    }

    /// `client_credentials` (RFC 6749 §4.4): a confidential client's token for itself.
    pub async fn client_credentials(
        &self,
        client: &Client,
        scope: Option<&str>,
    ) -> Result<ClientToken, Error> {
        if client.public || !client.allows_grant("client_credentials") {
            return Err(unauthorized_client("client_credentials"));
        }
        let mut granted: Vec<&str> = Vec::new();
        for s in scope.unwrap_or("").split(' ').filter(|s| !s.is_empty()) {
            // No user is involved: the user scopes mean nothing here.
            if matches!(s, "openid" | "profile" | "offline_access") || !client.allows_scope(s) {
                return Err(Error::OAuth(
                    "invalid_scope",
                    format!(
                        "scope {:?} is not available to client_credentials",
                        s.chars().take(40).collect::<String>()
                    ),
                ));
            }
            if !granted.contains(&s) {
                granted.push(s);
            }
        }
        let scope = granted.join(" ");
        let (access_token, expires_in) =
            self.tokens
                .issue_client_token(&client.client_id, &scope, self.now());
        Ok(ClientToken {
            access_token,
            expires_in,
            scope,
        })
    }

    /// A refresh by a registered client: its session's family must be that client's (another
    /// client's refresh token, or a first-party one, is `invalid_grant`), then the same refresh
    /// as every other (rotation, retries, reuse, rules).
    pub async fn refresh_for_client(
        &self,
        client: &Client,
        presented: &str,
        ctx: &RequestContext,
        dpop: &super::dpop::Dpop,
    ) -> Result<IssuedTokens, Error> {
        if !client.allows_grant("refresh_token") {
            return Err(unauthorized_client("refresh_token"));
        }
        self.refresh_family(presented, ctx, dpop, Some(&client.client_id))
            .await
    }

    /// `/oauth/userinfo` (OpenID Connect Core §5.3): for an access token with `openid`.
    pub async fn userinfo(&self, principal: &Principal) -> Result<Value, Error> {
        let scopes: Vec<&str> = principal.claims.scope.split(' ').collect();
        if !scopes.contains(&"openid") {
            return Err(Error::Forbidden(
                "insufficient_scope",
                "the access token lacks the openid scope".into(),
            ));
        }
        let mut answer = json!({ "sub": principal.claims.sub.to_string() });
        if scopes.contains(&"profile") {
            let user = self.user(principal.user_id()).await?;
            answer["preferred_username"] = json!(user.username);
        }
        Ok(answer)
    }
}

fn unauthorized_client(grant: &str) -> Error {
    Error::OAuth(
        "unauthorized_client",
        format!("this client may not use the {grant} grant"),
    )
}
