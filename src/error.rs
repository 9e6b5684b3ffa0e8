//! The one error type of the service and how it reaches a client: `{"error": code, "message":
//! text}` with a fitting status. Internal details are logged, never sent.

use crate::store::StoreError;
use crate::tokens::TokenError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

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
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("the refresh token is invalid, expired or revoked")]
    InvalidGrant,
    #[error("this session must re-authenticate before it can refresh")]
    ReauthRequired,
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
    #[error("the service is shutting down")]
    Unavailable,
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WriterStopped => Error::Unavailable,
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::InvalidToken(e)
    }
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::InvalidField(code, _) => code,
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::PayloadTooLarge => "payload_too_large",
            Error::InvalidCredentials => "invalid_credentials",
            Error::InvalidGrant => "invalid_grant",
            Error::ReauthRequired => "reauth_required",
            Error::MissingToken => "unauthorized",
            Error::InvalidToken(_) | Error::SessionEnded => "invalid_token",
            Error::AccountLocked => "account_locked",
            Error::Denied => "request_denied",
            Error::Forbidden(code, _) => code,
            Error::NotFound => "not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::Conflict(code, _) => code,
            Error::Unavailable => "unavailable",
            Error::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest(_) | Error::InvalidField(..) => StatusCode::BAD_REQUEST,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::InvalidCredentials
            | Error::InvalidGrant
            | Error::ReauthRequired
            | Error::MissingToken
            | Error::InvalidToken(_)
            | Error::SessionEnded => StatusCode::UNAUTHORIZED,
            Error::AccountLocked | Error::Denied | Error::Forbidden(..) => StatusCode::FORBIDDEN,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict(..) => StatusCode::CONFLICT,
            Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let status = self.status();
        let body = Json(serde_json::json!({ "error": self.code(), "message": self.to_string() }));
        let mut response = (status, body).into_response();
        // RFC 6750: tell Bearer clients what went wrong with their token.
        let challenge = match &self {
            Error::MissingToken => Some("Bearer"),
            Error::InvalidToken(_) | Error::SessionEnded => Some("Bearer error=\"invalid_token\""),
            _ => None,
        };
        if let Some(c) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }
}
