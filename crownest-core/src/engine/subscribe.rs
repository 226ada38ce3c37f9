//! `subscribe`: replay from the store, then follow live, without gap or duplicate.
//!
//! The stream is a cursor over the store: it asks for events after the last seq it
//! yielded, so it cannot skip or repeat one, and a slow subscriber only re-reads the store
//! later; it never blocks the run's writer. Between reads it waits for an in-process
//! notification of a commit, or polls (runs driven by another process).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::watch;

use super::WorkspaceRuns;
use crate::error::Result;
use crate::event::Event;
use crate::ids::RunId;

const PAGE: usize = 512;

/// A live stream of a run's events; ends after `terminal`.
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<Event>> + Send>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State {
    engine: WorkspaceRuns,
    id: RunId,
    after: u64,
    buffer: VecDeque<Event>,
    done: bool,
    watch: Option<watch::Receiver<super::LiveBatch>>,
}

impl State {
    /// Drops this stream's receiver and, if it was the last, the run's channel.
    fn release_watch(&mut self) {
        if self.watch.take().is_some() {
            self.engine.release_watch(&self.id);
        }
    }
}

impl WorkspaceRuns {
    /// Events with `seq > after_seq`: first those already stored, then live ones as they
    /// become durable, each exactly once and in order; the stream ends after `terminal`.
    ///
    /// A stream of an ended run whose cursor is already at or past its `terminal` event
    /// (or past its last seq) ends at once, without an item: nothing can follow. A stream
    /// of an unknown run yields `Error::NotFound` and ends.
    pub fn subscribe(&self, id: &RunId, after_seq: u64) -> EventStream {
        let rx = self.watch_run(id);
        let state = State {
            engine: self.clone(),
            id: id.clone(),
            after: after_seq,
            buffer: VecDeque::new(),
            done: false,
            watch: Some(rx),
        };
        let stream = futures::stream::unfold(state, |mut st| -> BoxFuture<'static, _> {
            Box::pin(async move {
                loop {
                    if let Some(e) = st.buffer.pop_front() {
                        st.after = e.seq;
                        if e.kind.is_terminal() {
                            st.done = true;
                        }
                        return Some((Ok(e), st));
                    }
                    if st.done {
                        st.release_watch();
                        return None;
                    }
                    // Caught up with this engine's last commit: take it from memory.
                    if let Some(rx) = st.watch.as_mut() {
                        let batch = rx.borrow_and_update().clone();
                        if let Some(pos) = batch.iter().position(|e| e.seq == st.after + 1) {
                            st.buffer.extend(batch[pos..].iter().cloned());
                            continue;
                        }
                    }
                    match st
                        .engine
                        .inner
                        .store
                        .list_events(&st.id, st.after, PAGE)
                        .await
                    {
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                        Ok(events) if !events.is_empty() => st.buffer.extend(events),
                        Ok(_) => {
                            // Nothing after the cursor. If the run has ended, nothing ever
                            // will be: end now (a cursor at or past `terminal`, e.g. a client
                            // resuming a finished run with `Last-Event-ID`).
                            match st.engine.inner.store.get_run(&st.id).await {
                                Err(e) => {
                                    st.done = true;
                                    return Some((Err(e), st));
                                }
                                Ok(run) if run.ended_by(st.after) => {
                                    st.release_watch();
                                    return None;
                                }
                                // Still going (or it ended between the two reads: the wait
                                // below wakes at once, its channel closed, and reads it).
                                Ok(_) => {}
                            }
                            let poll = st.engine.inner.config.subscribe_poll_interval;
                            match st.watch.as_mut() {
                                Some(rx) => {
                                    tokio::select! {
                                        changed = rx.changed() => {
                                            if changed.is_err() {
                                                // The run ended here; one more read gets it.
                                                st.watch = None;
                                            }
                                        }
                                        _ = tokio::time::sleep(poll) => {}
                                    }
                                }
                                None => tokio::time::sleep(poll).await,
                            }
                        }
                    }
                }
            })
        });
        EventStream {
            inner: Box::pin(stream),
        }
    }
}
