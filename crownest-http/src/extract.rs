//! Extractors whose refusals are [`ApiError`]s (so the framework's own rejections have the
//! one error shape), the fallbacks for an unknown route and a wrong method, and a last
//! layer that gives any other error response that shape.

use axum::body::Body;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::ROUTES;
use crate::error::{ApiError, ErrorBody, ErrorDetail};

/// `Json<T>` whose rejection is 400 `bad_request` (malformed or mistyped JSON), 413
/// `too_large` or 415 `unsupported_media_type`.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => Err(json_rejection(&e)),
        }
    }
}

fn json_rejection(e: &JsonRejection) -> ApiError {
    match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON: send Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(b) => bytes_rejection(b),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        other => ApiError::bad_request(other.body_text()),
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "the request body is larger than this route accepts",
    )
}

fn bytes_rejection(e: &BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::bad_request(e.body_text())
    }
}

/// The raw body, whose rejection is 413 `too_large` (over the route's limit) or 400.
#[derive(Debug)]
pub(crate) struct ApiBytes(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|e| bytes_rejection(&e))
    }
}

/// `Query<T>` whose rejection is 400 `bad_request`.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// `Path<T>` whose rejection is 400 `bad_request`.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))
    }
}

/// The fallback of an unknown path: 404 `no_route`.
pub(crate) async fn no_route(uri: Uri) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("route not found: {}", uri.path()),
    );
    err.detail_mut().kind = Some("route".into());
    err.detail_mut().id = Some(uri.path().to_owned());
    err
}

/// The fallback of a known path asked with a method it does not have: 405
/// `method_not_allowed`, with the route's methods (from [`ROUTES`]) in the `Allow` header
/// and in `allowed`.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = methods_of(uri.path());
    let mut err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not answer {method}; it answers {}",
            uri.path(),
            allowed.join(", ")
        ),
    );
    let allow = allowed.join(", ");
    err.detail_mut().allowed = Some(allowed);
    let mut resp = err.into_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// The methods [`ROUTES`] lists for the route `path` matches (`GET` implies `HEAD`).
fn methods_of(path: &str) -> Vec<String> {
    let segments: Vec<&str> = path.split('/').collect();
    let matches = |template: &str| {
        let t: Vec<&str> = template.split('/').collect();
        t.len() == segments.len()
            && t.iter()
                .zip(&segments)
                .all(|(t, s)| (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s)
    };
    let mut out: Vec<String> = Vec::new();
    for (m, template) in ROUTES {
        if matches(template) {
            out.push((*m).to_owned());
            if *m == "GET" {
                out.push("HEAD".to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The last layer: an error response (4xx or 5xx) that is not JSON (a layer's or the
/// framework's own) gets the one error shape, with its text as the message; a 405 names
/// its `Allow` methods in `allowed`. Responses to `HEAD` keep no body.
pub(crate) async fn error_shape(method: Method, resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || method == Method::HEAD {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let allow = resp.headers().get(header::ALLOW).cloned();
    if is_json && allow.is_none() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut detail = if is_json {
        ErrorBody::from_response(status.as_u16(), &bytes).error
    } else {
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        };
        ErrorDetail::new(code_of(status), message)
    };
    if let Some(allow) = allow.as_ref().and_then(|a| a.to_str().ok()) {
        detail.allowed = Some(
            allow
                .split(',')
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect(),
        );
    }
    let json = serde_json::to_vec(&ErrorBody { error: detail }).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json)).into_response()
}

/// The code of an error status no handler named.
fn code_of(status: StatusCode) -> String {
    match status {
        StatusCode::BAD_REQUEST => "bad_request".into(),
        StatusCode::NOT_FOUND => "no_route".into(),
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed".into(),
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "timeout".into(),
        StatusCode::PAYLOAD_TOO_LARGE => "too_large".into(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type".into(),
        StatusCode::SERVICE_UNAVAILABLE => "unavailable".into(),
        s if s.is_server_error() => "internal".into(),
        s => format!("http_{}", s.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn shaped(method: Method, resp: Response) -> (StatusCode, Option<ErrorBody>, Response) {
        let out = error_shape(method, resp).await;
        let status = out.status();
        let (parts, body) = out.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let parsed = serde_json::from_slice(&bytes).ok();
        (
            status,
            parsed,
            Response::from_parts(parts, Body::from(bytes)),
        )
    }

    #[tokio::test]
    async fn a_layers_own_error_gets_the_one_shape() {
        // A timeout layer's empty 408.
        let (status, body, resp) =
            shaped(Method::GET, StatusCode::REQUEST_TIMEOUT.into_response()).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        let body = body.unwrap();
        assert_eq!(body.error.code, "timeout");
        assert_eq!(body.error.message, "Request Timeout");
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        // The framework's text/plain refusal keeps its text as the message.
        let text = (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded").into_response();
        let (_, body, _) = shaped(Method::POST, text).await;
        let body = body.unwrap();
        assert_eq!(body.error.code, "too_large");
        assert_eq!(body.error.message, "length limit exceeded");
        // An ErrorBody passes untouched; a success and a HEAD answer too.
        let ours = ApiError::bad_request("nope").into_response();
        let (_, body, _) = shaped(Method::GET, ours).await;
        assert_eq!(body.unwrap().error.message, "nope");
        let (status, body, _) = shaped(Method::GET, "fine".into_response()).await;
        assert_eq!((status, body), (StatusCode::OK, None));
        let (_, body, _) = shaped(Method::HEAD, StatusCode::NOT_FOUND.into_response()).await;
        assert!(body.is_none());
    }

    #[test]
    fn the_methods_of_a_path_come_from_routes() {
        assert_eq!(methods_of("/v1/runs"), ["GET", "HEAD", "POST"]);
        assert_eq!(methods_of("/v1/runs/run_x"), ["DELETE", "GET", "HEAD"]);
        assert_eq!(methods_of("/v1/transfers/xfer_x"), ["GET", "HEAD", "PUT"]);
        assert!(methods_of("/v1/nope").is_empty());
    }
}
