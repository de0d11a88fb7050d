//! The one place HTTP errors become responses: a small table of stable codes and a JSON body
//! `{"error":{"code","field","message"}}`. A 5xx gets a generic message; its cause is logged.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    field: Option<String>,
    message: String,
}

impl ApiError {
    /// 400: the body is not JSON.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", None, message)
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
            format!("body is larger than {limit} bytes"),
        )
    }

    /// 415: not `application/json`.
    pub fn unsupported_media_type(got: &str) -> Self {
        let message = format!("content type '{got}' is not supported, send application/json");
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
            message,
        )
    }

    /// 422: a field is missing.
    pub fn missing_field(field: &str, message: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            Some(field.to_owned()),
            message,
        )
    }

    /// 422: a field is unusable.
    pub fn invalid_field(field: &str, message: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field.to_owned()),
            message,
        )
    }

    /// 404.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            format!("{what} not found"),
        )
    }

    /// 503: the queue or store cannot take the request now; the sender should retry.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        error!(error = %cause, "BackendUnavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            "temporarily unavailable, retry later",
        )
    }

    /// The stable code, also used as the `code` label of the rejection counter.
    pub fn code(&self) -> &'static str {
        self.code
    }

    fn new(
        status: StatusCode,
        code: &'static str,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            field,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": { "code": self.code, "field": self.field, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
