//! The service's [`Error`] as an HTTP answer: `{"error": code, "message": text}` with a fitting
//! status. The one place errors meet HTTP; internal details are logged, never sent.

use crate::error::Error;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// RFC 9470 §3: the session's authentication is not enough (a rule asked for a fresh one).
/// Sent by resources (`/v1/me`) and, as the reason beside the refresh routes' own error code,
/// by `/v1/auth/refresh` and `/oauth/token`.
pub const STEP_UP_CHALLENGE: &str = "Bearer error=\"insufficient_user_authentication\", error_description=\"A new authentication is required: sign in again with prompt=login or max_age\"";
const STEP_UP_DPOP_CHALLENGE: &str = "DPoP error=\"insufficient_user_authentication\", error_description=\"A new authentication is required: sign in again with prompt=login or max_age\", algs=\"EdDSA ES256\"";

/// The status an error answers with.
pub fn status(e: &Error) -> StatusCode {
    match e {
        Error::InvalidRequest(_)
        | Error::InvalidField(..)
        | Error::InvalidDpopProof(_)
        | Error::UseDpopNonce(_)
        | Error::OAuth(..) => StatusCode::BAD_REQUEST,
        Error::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
        Error::InvalidDpopToken(_) | Error::ResourceDpopNonce(_) => StatusCode::UNAUTHORIZED,
        Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Error::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        Error::InvalidCredentials
        | Error::InvalidGrant
        | Error::ReauthRequired
        | Error::InsufficientUserAuthentication { .. }
        | Error::MissingToken
        | Error::InvalidToken(_)
        | Error::SessionEnded => StatusCode::UNAUTHORIZED,
        Error::AccountLocked | Error::Denied | Error::Forbidden(..) => StatusCode::FORBIDDEN,
        Error::NotFound => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Error::Conflict(..) => StatusCode::CONFLICT,
        Error::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable | Error::Overloaded | Error::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        Error::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let status = status(&self);
        let body = Json(serde_json::json!({ "error": self.code(), "message": self.to_string() }));
        let mut response = (status, body).into_response();
        // RFC 6750 / RFC 9449 §7.1: tell clients what went wrong with their token.
        let challenge = match &self {
            Error::MissingToken => Some("Bearer, DPoP algs=\"EdDSA ES256\""),
            Error::InvalidToken(crate::tokens::TokenError::DpopBound) => {
                Some("DPoP error=\"invalid_token\", algs=\"EdDSA ES256\"")
            }
            Error::InvalidToken(_) | Error::SessionEnded => Some("Bearer error=\"invalid_token\""),
            Error::InvalidDpopToken(_) => {
                Some("DPoP error=\"invalid_dpop_proof\", algs=\"EdDSA ES256\"")
            }
            Error::ResourceDpopNonce(_) => Some("DPoP error=\"use_dpop_nonce\""),
            Error::InsufficientUserAuthentication { dpop: false } | Error::ReauthRequired => {
                Some(STEP_UP_CHALLENGE)
            }
            Error::InsufficientUserAuthentication { dpop: true } => Some(STEP_UP_DPOP_CHALLENGE),
            Error::InvalidClient { basic: true } => Some("Basic realm=\"sessiond\""),
            _ => None,
        };
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Error::UseDpopNonce(nonce) | Error::ResourceDpopNonce(nonce) = &self
            && let Ok(v) = HeaderValue::from_str(nonce)
        {
            response
                .headers_mut()
                .insert(crate::tokens::dpop::NONCE_HEADER, v);
        }
        if let Some(c) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }
}

/// The JSON answer for a client error that something other than our handlers produced (an
/// axum extractor's plain-text rejection, such as a path segment that is not UTF-8): the same
/// status, our shape. Nothing of the original text is sent.
pub fn client_error_as_json(status: StatusCode) -> Response {
    let e = match status {
        StatusCode::NOT_FOUND => Error::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => Error::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::UnsupportedMediaType,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Error::HeadersTooLarge,
        _ => Error::InvalidRequest("the request is malformed".into()),
    };
    let mut response = e.into_response();
    *response.status_mut() = status;
    response
}
