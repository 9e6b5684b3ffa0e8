//! The one error type of the service, with the code a client sees. How it becomes an HTTP
//! answer is the HTTP layer's (`http::error`); internal details are logged, never sent.

use crate::store::StoreError;
use crate::tokens::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{1}")]
    InvalidField(&'static str, String),
    #[error("the body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("the request headers are too large")]
    HeadersTooLarge,
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("the refresh token is invalid, expired or revoked")]
    InvalidGrant,
    #[error("this session must re-authenticate before it can refresh")]
    ReauthRequired,
    /// RFC 9470: the access token's session must step up (a rule asked for a fresh
    /// authentication); `dpop` when the token was presented with DPoP (the challenge's scheme).
    #[error(
        "this session must re-authenticate (RFC 9470): sign in again with prompt=login or max_age, or POST /v1/auth/reauth"
    )]
    InsufficientUserAuthentication { dpop: bool },
    #[error("an access token is required (Authorization: Bearer ...)")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("the session of this access token has ended")]
    SessionEnded,
    #[error("this account is locked")]
    AccountLocked,
    #[error("this request was refused by a security rule")]
    Denied,
    #[error("{1}")]
    Forbidden(&'static str, String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("this caller already holds {0} live streams; close one first")]
    TooManyStreams(usize),
    /// A DPoP proof of a login, token or refresh request does not hold (RFC 9449 §5): 400.
    #[error("{0}")]
    InvalidDpopProof(String),
    /// The proof lacks the server's nonce (RFC 9449 §8); carries a fresh one: 400.
    #[error("the DPoP proof must carry the server's nonce: retry with the DPoP-Nonce given")]
    UseDpopNonce(String),
    /// A protected resource's DPoP proof does not hold (RFC 9449 §7.1): 401.
    #[error("{0}")]
    InvalidDpopToken(String),
    /// A protected resource's proof lacks the nonce (RFC 9449 §9); carries a fresh one: 401.
    #[error("the DPoP proof must carry the server's nonce: retry with the DPoP-Nonce given")]
    ResourceDpopNonce(String),
    #[error("the service is unavailable for a moment; try again shortly")]
    Unavailable,
    #[error("the server is too busy to check a password now; try again shortly")]
    Overloaded,
    #[error("too many failed attempts; wait before trying again")]
    TooManyAttempts { retry_after: u64 },
    #[error("the request took too long")]
    Timeout,
    /// Client authentication at the token endpoint failed (RFC 6749 §5.2): 401, with a
    /// `WWW-Authenticate: Basic` challenge when the client tried HTTP Basic.
    #[error("client authentication failed")]
    InvalidClient { basic: bool },
    /// Another OAuth error of RFC 6749 §5.2 (`unauthorized_client`, `invalid_scope`,
    /// `unsupported_grant_type`, ...): 400 with that code.
    #[error("{1}")]
    OAuth(&'static str, String),
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WriterStopped => Error::Unavailable,
            // The database is down or out of reach: a passing state, not a bug.
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                Error::Unavailable
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::InvalidToken(e)
    }
}

impl From<crate::passwords::Overloaded> for Error {
    fn from(_: crate::passwords::Overloaded) -> Self {
        Error::Overloaded
    }
}

impl Error {
    /// Seconds a client should wait before trying again (`Retry-After`), for the answers that
    /// say "not now" rather than "no".
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::TooManyAttempts { retry_after } => Some(*retry_after),
            Error::Overloaded | Error::Timeout => Some(1),
            Error::Unavailable => Some(5),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::InvalidField(code, _) => code,
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::PayloadTooLarge => "payload_too_large",
            Error::HeadersTooLarge => "headers_too_large",
            Error::InvalidCredentials => "invalid_credentials",
            Error::InvalidGrant => "invalid_grant",
            Error::ReauthRequired => "reauth_required",
            Error::InsufficientUserAuthentication { .. } => "insufficient_user_authentication",
            Error::MissingToken => "unauthorized",
            Error::InvalidToken(_) | Error::SessionEnded => "invalid_token",
            Error::AccountLocked => "account_locked",
            Error::Denied => "request_denied",
            Error::Forbidden(code, _) => code,
            Error::NotFound => "not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::Conflict(code, _) => code,
            Error::TooManyStreams(_) => "too_many_streams",
            Error::InvalidDpopProof(_) | Error::InvalidDpopToken(_) => "invalid_dpop_proof",
            Error::UseDpopNonce(_) | Error::ResourceDpopNonce(_) => "use_dpop_nonce",
            Error::Unavailable => "unavailable",
            Error::Overloaded => "overloaded",
            Error::TooManyAttempts { .. } => "too_many_attempts",
            Error::Timeout => "request_timeout",
            Error::InvalidClient { .. } => "invalid_client",
            Error::OAuth(code, _) => code,
            Error::Internal(_) => "internal_error",
        }
    }
}
