//! Events: a bounded window, and the SSE stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::Deserialize;

use super::{AppState, header_str, run_id};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorDetail};
use crate::extract::{ApiPath, ApiQuery};
use crate::wire::EventPage;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventsQuery {
    after_seq: Option<u64>,
    limit: Option<u64>,
}

/// A bounded window of the run's events after `afterSeq`.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    tag = "events",
    params(
        ("id" = String, Path, description = "Run id (`run_...`)."),
        ("afterSeq" = Option<u64>, Query, description = "Events with a greater seq (0)."),
        ("limit" = Option<u64>, Query, description = "At most this many (100)."),
    ),
    responses(
        (status = 200, description = "The window.", body = EventPage),
        (status = 400, description = "`bad_request`: a malformed parameter.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(crate) async fn list_events(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Json<EventPage>> {
    let id = run_id(&id)?;
    let after = q.after_seq.unwrap_or(0);
    let limit = q
        .limit
        .map_or(100, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let events = s.engine.list_events(&id, after, limit).await?;
    let next_after_seq = events.last().map_or(after, |e| e.seq);
    Ok(Json(EventPage {
        events,
        next_after_seq,
    }))
}

/// Decrements the subscriber gauge when an SSE stream is dropped.
struct SubscriberGuard(Arc<AtomicU64>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The run's events over Server-Sent Events.
///
/// Each event is one block: `id:` = seq, `event:` = type, `data:` = the event's JSON. The
/// stream replays from the cursor, follows live, sends keep-alive comments, and closes
/// after `terminal`. A read failure mid-stream is an `event: stream_error` block whose data
/// is an ErrorBody's `error` object.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events/stream",
    tag = "events",
    params(
        ("id" = String, Path, description = "Run id (`run_...`)."),
        ("afterSeq" = Option<u64>, Query, description = "Events with a greater seq (wins over Last-Event-ID)."),
        ("Last-Event-ID" = Option<u64>, Header,
         description = "The last seq received (what an EventSource resends on reconnect)."),
    ),
    responses(
        (status = 200, description = "The stream.", content_type = "text/event-stream", body = String),
        (status = 204, description = "The run has ended and nothing follows the cursor: an EventSource stops reconnecting."),
        (status = 400, description = "`bad_request`: a malformed afterSeq or Last-Event-ID.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(crate) async fn stream_events(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    let run = s.engine.get(&id).await?;
    let last_event_id = header_str(&headers, "last-event-id")?
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be a seq number"))
        })
        .transpose()?;
    // `afterSeq` wins when both are given.
    let after = q.after_seq.or(last_event_id).unwrap_or(0);
    // An ended run with nothing after the cursor: 204, which tells an EventSource to stop
    // reconnecting (an empty 200 stream would make it reconnect for ever).
    if run.ended_by(after) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    s.subscribers.fetch_add(1, Ordering::Relaxed);
    let guard = SubscriberGuard(s.subscribers.clone());
    let stream = s.engine.subscribe(&id, after).map(move |item| {
        let _keep = &guard;
        Ok::<_, Infallible>(match item {
            Ok(e) => SseEvent::default()
                .id(e.seq.to_string())
                .event(e.kind.type_name())
                .data(serde_json::to_string(&e).unwrap_or_default()),
            Err(err) => SseEvent::default()
                .event("stream_error")
                .data(serde_json::to_string(&ErrorDetail::of(&err)).unwrap_or_default()),
        })
    });
    let keep_alive = KeepAlive::new()
        .interval(s.config.sse_keep_alive)
        .text("keep-alive");
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}
