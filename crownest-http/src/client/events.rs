//! Events: the bounded window, and the SSE stream with its reconnects.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use crownest_core::event::Event;
use crownest_core::{Error, RunId};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;

use super::{Client, Result};

impl Client {
    /// `GET /v1/runs/{id}/events?afterSeq=&limit=`.
    pub async fn list_events(
        &self,
        id: &RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        #[derive(Deserialize)]
        struct Window {
            events: Vec<Event>,
        }
        let r = self
            .req(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
            .query(&[("afterSeq", after_seq), ("limit", limit as u64)]);
        Ok(self.json::<Window>(r).await?.events)
    }

    /// The run's events from `after_seq` over SSE, reconnecting with `Last-Event-ID` when
    /// the connection drops; ends after `terminal`, or at once (with no item) when the run
    /// has ended and nothing follows `after_seq` (the server answers 204). Each event
    /// arrives exactly once.
    pub fn events(
        &self,
        id: &RunId,
        after_seq: u64,
    ) -> Pin<Box<dyn Stream<Item = Result<Event>> + Send>> {
        struct St {
            client: Client,
            id: RunId,
            last: u64,
            body: Option<Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>>,
            buf: Vec<u8>,
            ready: VecDeque<Event>,
            done: bool,
            failures: u32,
        }
        let st = St {
            client: self.clone(),
            id: id.clone(),
            last: after_seq,
            body: None,
            buf: Vec::new(),
            ready: VecDeque::new(),
            done: false,
            failures: 0,
        };
        Box::pin(futures::stream::unfold(st, |mut st| async move {
            loop {
                if let Some(e) = st.ready.pop_front() {
                    if e.seq <= st.last {
                        continue;
                    }
                    st.last = e.seq;
                    if e.kind.is_terminal() {
                        st.done = true;
                    }
                    return Some((Ok(e), st));
                }
                if st.done {
                    return None;
                }
                let Some(body) = st.body.as_mut() else {
                    let r = st
                        .client
                        .req(
                            reqwest::Method::GET,
                            &format!("/v1/runs/{}/events/stream", st.id),
                        )
                        .header("Last-Event-ID", st.last.to_string())
                        .header(reqwest::header::ACCEPT, "text/event-stream");
                    match st.client.send(r).await {
                        // The run has ended and nothing follows the cursor.
                        Ok(resp) if resp.status() == reqwest::StatusCode::NO_CONTENT => {
                            st.done = true;
                        }
                        Ok(resp) => {
                            st.body = Some(Box::pin(resp.bytes_stream()));
                            st.buf.clear();
                        }
                        Err(e @ (Error::NotFound { .. } | Error::InvalidSpec { .. })) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                        Err(e) => {
                            st.failures += 1;
                            if st.failures > 20 {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                            tokio::time::sleep(Duration::from_millis(
                                100 * u64::from(st.failures.min(10)),
                            ))
                            .await;
                        }
                    }
                    continue;
                };
                match body.next().await {
                    Some(Ok(chunk)) => {
                        st.failures = 0;
                        st.buf.extend_from_slice(&chunk);
                        while let Some(pos) = find_blank_line(&st.buf) {
                            let block: Vec<u8> = st.buf.drain(..pos.0).collect();
                            st.buf.drain(..pos.1);
                            if let Some(e) = parse_sse_event(&block) {
                                st.ready.push_back(e);
                            }
                        }
                    }
                    // Dropped connection (or the server closed): reconnect with Last-Event-ID.
                    Some(Err(_)) | None => st.body = None,
                }
            }
        }))
    }
}

/// Position of the end of the first SSE block and the length of its separator.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_sse_event(block: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(block);
    let mut data = String::new();
    let mut kind = "message";
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        } else if let Some(v) = line.strip_prefix("event:") {
            kind = if v.trim() == "stream_error" {
                "stream_error"
            } else {
                "event"
            };
        }
    }
    if data.is_empty() || kind == "stream_error" {
        return None;
    }
    serde_json::from_str(&data).ok()
}
