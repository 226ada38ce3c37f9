//! Per request: an `X-Request-Id` (the client's when it is sane, else a new UUID v7),
//! echoed on every response (errors and 401s included); a `request` span carrying it, so
//! every log line of the handler, the engine and the store names the request; one access
//! log line (target `crownest::access`, level info) and the HTTP metrics.
//!
//! Written as one axum middleware rather than tower-http's request-id + trace layers:
//! those keep any incoming id as it is (an id must be checked before it reaches logs),
//! and the metric needs the matched route template, which only axum's [`MatchedPath`]
//! knows.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id accepted from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Counter `{method, route, code}`: HTTP requests answered.
pub const HTTP_REQUESTS: &str = "crownest_http_requests_total";
/// Histogram `{method, route}`: seconds until the response head (for SSE: until the
/// stream opened).
pub const HTTP_DURATION: &str = "crownest_http_request_duration_seconds";

/// The id of the request being served (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The client's id when it is 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters
/// (`!` to `~`: no space, no control character), else none.
pub fn sane_request_id(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let ok = (1..=MAX_REQUEST_ID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(s)
}

/// The middleware (outermost layer of [`crate::router`]).
pub(crate) async fn observe_request(mut request: Request, next: Next) -> Response {
    let began = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(sane_request_id)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    // The route template, never the path itself (ids would explode the label set).
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let took = began.elapsed();
    let status = response.status().as_u16();
    let bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    span.in_scope(|| {
        tracing::info!(
            target: "crownest::access",
            method = %method,
            route = %route,
            status,
            duration_ms = took.as_secs_f64() * 1000.0,
            bytes,
            "request"
        );
    });
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(),
        "code" => status.to_string())
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(took.as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        let ok = HeaderValue::from_static("req-1_A.b:c/d");
        assert_eq!(sane_request_id(&ok), Some("req-1_A.b:c/d"));
        for bad in ["", "has space", "tab\there"] {
            let v = HeaderValue::from_str(bad).expect("header value");
            assert_eq!(sane_request_id(&v), None, "{bad:?}");
        }
        let long = HeaderValue::from_str(&"x".repeat(MAX_REQUEST_ID_LEN + 1)).expect("value");
        assert_eq!(sane_request_id(&long), None);
        let max = HeaderValue::from_str(&"x".repeat(MAX_REQUEST_ID_LEN)).expect("value");
        assert!(sane_request_id(&max).is_some());
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").expect("value");
        assert_eq!(sane_request_id(&latin1), None);
    }
}
