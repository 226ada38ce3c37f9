//! Turns raw command output into `stdout`/`stderr` events: UTF-8-safe chunks of at most
//! 64 KiB, base64 for bytes that are not UTF-8, a stored cap per stream, and masking of
//! secret values (plain env values are never masked; see [`crate::secret`]).

use std::borrow::Cow;
use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine as _;
use tokio::sync::mpsc;

use sha2::{Digest as _, Sha256};

use crate::backend::ExecSink;
use crate::event::{EventKind, NewEvent, OutputChunk, OutputStream};
use crate::evidence::{OutputSummary, StreamSummary};

/// Largest chunk carried by one output event.
pub(crate) const MAX_CHUNK: usize = 64 * 1024;

/// Messages from the sink to the run's driver.
#[derive(Debug)]
pub(crate) enum SinkMsg {
    Started,
    Events(Vec<NewEvent>),
}

#[derive(Debug, Default)]
struct StreamState {
    /// Bytes stored so far (the next chunk's offset).
    stored: u64,
    /// Bytes dropped after the cap.
    dropped: u64,
    /// An incomplete UTF-8 sequence held back until its next bytes arrive.
    carry: Vec<u8>,
    /// Tail held back because it might be the start of a secret.
    mask_hold: Vec<u8>,
    /// Every byte after masking, stored or dropped.
    total: u64,
    /// sha256 of those bytes.
    hasher: Sha256,
}

/// Output accounting of one exec, shared by the sink and the driver.
#[derive(Debug)]
pub(crate) struct OutputChunker {
    cap: u64,
    secrets: Vec<Vec<u8>>,
    streams: Mutex<[StreamState; 2]>,
}

fn idx(s: OutputStream) -> usize {
    match s {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

const MASK: &[u8] = b"***";

impl OutputChunker {
    /// `secrets`: the run's secret values, each masked wherever it occurs exactly (an
    /// accidental-echo guard: a transformed value passes). Every non-empty secret is
    /// masked, however short: the client said it is one.
    pub(crate) fn new(cap: u64, secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::into_bytes)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            cap,
            secrets,
            streams: Mutex::new(Default::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [StreamState; 2]> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Masks secrets in `data` (prefixed by what was held back), returning bytes safe to
    /// emit and keeping back a tail that could be the start of a secret. Without secrets
    /// the bytes pass through uncopied.
    fn mask<'d>(&self, st: &mut StreamState, data: &'d [u8], flush: bool) -> Cow<'d, [u8]> {
        if self.secrets.is_empty() {
            return Cow::Borrowed(data);
        }
        let mut buf = std::mem::take(&mut st.mask_hold);
        buf.extend_from_slice(data);
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'outer: while i < buf.len() {
            for s in &self.secrets {
                if buf[i..].starts_with(s) {
                    out.extend_from_slice(MASK);
                    i += s.len();
                    continue 'outer;
                }
                if !flush && buf.len() - i < s.len() && s.starts_with(&buf[i..]) {
                    st.mask_hold = buf[i..].to_vec();
                    return Cow::Owned(out);
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        Cow::Owned(out)
    }

    /// Accepts raw bytes of one stream; returns the events to append.
    pub(crate) fn push(&self, stream: OutputStream, data: &[u8]) -> Vec<NewEvent> {
        let mut g = self.lock();
        let st = &mut g[idx(stream)];
        let masked = self.mask(st, data, false);
        self.chunk(stream, st, &masked, false)
    }

    /// Flushes held-back bytes at the end of the command.
    pub(crate) fn finish(&self) -> Vec<NewEvent> {
        let mut g = self.lock();
        let mut out = Vec::new();
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let st = &mut g[idx(stream)];
            let masked = self.mask(st, &[], true);
            out.extend(self.chunk(stream, st, &masked, true));
        }
        out
    }

    /// Bytes dropped per stream (for `output_truncated`).
    pub(crate) fn dropped(&self) -> [(OutputStream, u64); 2] {
        let g = self.lock();
        [
            (OutputStream::Stdout, g[0].dropped),
            (OutputStream::Stderr, g[1].dropped),
        ]
    }

    /// Both streams' totals, stored and dropped bytes, and digests (call after
    /// [`finish`](Self::finish)).
    pub(crate) fn summary(&self) -> OutputSummary {
        let g = self.lock();
        let one = |st: &StreamState| StreamSummary {
            total_bytes: st.total,
            stored_bytes: st.stored,
            dropped_bytes: st.dropped,
            sha256: hex::encode(st.hasher.clone().finalize()),
        };
        OutputSummary {
            stdout: one(&g[0]),
            stderr: one(&g[1]),
        }
    }

    fn chunk(
        &self,
        stream: OutputStream,
        st: &mut StreamState,
        data: &[u8],
        flush: bool,
    ) -> Vec<NewEvent> {
        st.total += data.len() as u64;
        st.hasher.update(data);
        let room = self.cap.saturating_sub(st.stored + st.carry.len() as u64);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        st.dropped += (data.len() - take) as u64;
        // Only bytes held back from the previous call need a copy to be joined.
        let carry = std::mem::take(&mut st.carry);
        let buf: Cow<'_, [u8]> = if carry.is_empty() {
            Cow::Borrowed(&data[..take])
        } else {
            let mut joined = carry;
            joined.extend_from_slice(&data[..take]);
            Cow::Owned(joined)
        };
        let mut events = Vec::with_capacity(buf.len().div_ceil(MAX_CHUNK));
        let mut rest: &[u8] = &buf;
        while !rest.is_empty() {
            let (piece, is_text) = next_piece(rest, flush);
            if piece == 0 {
                // An incomplete UTF-8 sequence at the end: wait for its next bytes.
                st.carry = rest.to_vec();
                break;
            }
            let bytes = &rest[..piece];
            let chunk = if is_text {
                OutputChunk {
                    offset: st.stored,
                    // `next_piece` found these bytes valid; `from_utf8` checks again at
                    // full speed (`from_utf8_lossy` walks them far slower).
                    data: Some(
                        String::from_utf8(bytes.to_vec())
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    ),
                    data_base64: None,
                }
            } else {
                OutputChunk {
                    offset: st.stored,
                    data: None,
                    data_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                }
            };
            st.stored += piece as u64;
            let kind = match stream {
                OutputStream::Stdout => EventKind::Stdout(chunk),
                OutputStream::Stderr => EventKind::Stderr(chunk),
            };
            events.push(NewEvent::now(kind));
            rest = &rest[piece..];
        }
        events
    }
}

/// Length of the next chunk of `buf` and whether it is UTF-8 text. Returns 0 when `buf` is
/// only an incomplete UTF-8 sequence that more bytes may complete (and `!flush`).
fn next_piece(buf: &[u8], flush: bool) -> (usize, bool) {
    let window = &buf[..buf.len().min(MAX_CHUNK)];
    match std::str::from_utf8(window) {
        Ok(_) => (window.len(), true),
        Err(e) => {
            let valid = e.valid_up_to();
            if valid > 0 {
                return (valid, true);
            }
            match e.error_len() {
                // Incomplete sequence at the end of the window.
                None if window.len() < buf.len() => (window.len(), false),
                None if !flush && buf.len() < 4 => (0, false),
                None => (window.len(), false),
                // Invalid bytes: the window goes out as one binary chunk.
                Some(_) => (window.len(), false),
            }
        }
    }
}

/// The [`ExecSink`] handed to a sandbox: chunks output and sends it to the driver through a
/// bounded channel (the backpressure).
pub(crate) struct EngineSink<'a> {
    pub(crate) chunker: &'a OutputChunker,
    pub(crate) tx: mpsc::Sender<SinkMsg>,
}

#[async_trait]
impl ExecSink for EngineSink<'_> {
    async fn started(&self) {
        let _ = self.tx.send(SinkMsg::Started).await;
    }

    async fn output(&self, stream: OutputStream, data: &[u8]) {
        let events = self.chunker.push(stream, data);
        if !events.is_empty() {
            let _ = self.tx.send(SinkMsg::Events(events)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(events: &[NewEvent]) -> Vec<u8> {
        events
            .iter()
            .flat_map(|e| match &e.kind {
                EventKind::Stdout(c) | EventKind::Stderr(c) => c.bytes(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn never_splits_a_character() {
        let c = OutputChunker::new(u64::MAX, Vec::new());
        let text = "héllo wörld ✓ 🚀".as_bytes();
        let mut events = Vec::new();
        for b in text {
            events.extend(c.push(OutputStream::Stdout, &[*b]));
        }
        events.extend(c.finish());
        for e in &events {
            if let EventKind::Stdout(chunk) = &e.kind {
                assert!(chunk.data.is_some(), "every chunk is text: {chunk:?}");
            }
        }
        assert_eq!(collect(&events), text);
    }

    #[test]
    fn binary_is_base64_and_offsets_are_contiguous() {
        let c = OutputChunker::new(u64::MAX, Vec::new());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut events = c.push(OutputStream::Stderr, &data);
        events.extend(c.finish());
        let mut offset = 0;
        for e in &events {
            let EventKind::Stderr(chunk) = &e.kind else {
                panic!("stderr only")
            };
            assert_eq!(chunk.offset, offset);
            assert!(chunk.len() as usize <= MAX_CHUNK);
            offset += chunk.len();
        }
        assert_eq!(collect(&events), data);
    }

    #[test]
    fn cap_drops_and_counts() {
        let c = OutputChunker::new(10, Vec::new());
        let mut events = c.push(OutputStream::Stdout, b"0123456789abcdef");
        events.extend(c.push(OutputStream::Stdout, b"more"));
        assert_eq!(collect(&events), b"0123456789");
        assert_eq!(c.dropped()[0], (OutputStream::Stdout, 10));
        assert_eq!(c.dropped()[1], (OutputStream::Stderr, 0));
    }

    #[test]
    fn secrets_are_masked_across_chunks() {
        let c = OutputChunker::new(u64::MAX, vec!["s3cr3t-value".to_string()]);
        let mut events = c.push(OutputStream::Stdout, b"token=s3cr");
        events.extend(c.push(OutputStream::Stdout, b"3t-value done s3c"));
        events.extend(c.finish());
        assert_eq!(collect(&events), b"token=*** done s3c");
    }
}
