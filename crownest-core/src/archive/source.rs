//! The byte readers in front of the tar parser: [`Source`] hashes and counts the compressed
//! bytes (and stops at the declared size), the gzip decoder inflates them, and [`Inflated`]
//! counts the inflated bytes and stops at the compression-ratio limit. The tar and gzip
//! layers only see an `io::Error`; why a reader stopped is kept in [`Shared`] and turned
//! into the typed error by [`Shared::read_error`].

use std::cell::{Cell, RefCell};
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use flate2::bufread::GzDecoder;
use sha2::{Digest, Sha256};

use super::ExtractPolicy;
use super::policy::{self, Refusal};
use crate::error::{Error, RejectReason};

/// Buffer between the source and the gzip decoder.
const COMPRESSED_BUF: usize = 64 * 1024;
/// Buffer between the gzip decoder and the tar parser (zlib-rs wants large reads).
pub(super) const INFLATED_BUF: usize = 256 * 1024;
/// The smallest of those buffers, for archives declared smaller.
const MIN_BUF: usize = 16 * 1024;

/// Why a reader stopped a read.
#[derive(Debug)]
pub(super) enum Stop {
    /// Inflated over the ratio limit (a refusal about the entry being read).
    Ratio(Refusal),
    /// More compressed bytes than the archive's declared size (a refusal of the archive).
    OverDeclaredSize(Refusal),
    /// The caller's reader failed.
    Source,
}

/// Counters shared by the readers and the pass (one thread: `Rc` + `Cell`).
#[derive(Debug, Default)]
pub(super) struct Shared {
    compressed: Cell<u64>,
    inflated: Cell<u64>,
    stop: RefCell<Option<Stop>>,
}

impl Shared {
    /// Compressed bytes read so far.
    pub(super) fn compressed(&self) -> u64 {
        self.compressed.get()
    }

    /// Inflated bytes read so far.
    pub(super) fn inflated(&self) -> u64 {
        self.inflated.get()
    }

    /// Takes the reason a reader stopped, if one did.
    pub(super) fn take_stop(&self) -> Option<Stop> {
        self.stop.borrow_mut().take()
    }

    fn set_stop(&self, stop: Stop) {
        *self.stop.borrow_mut() = Some(stop);
    }

    /// Maps an I/O error of the reading side (`entry` is the entry being read, if any) to
    /// the typed error it stands for: a refusal of a reader, an I/O error of the caller's
    /// reader, or else a corrupt archive (the gzip or tar layer failed).
    pub(super) fn read_error(&self, e: io::Error, entry: Option<&str>) -> Error {
        match self.take_stop() {
            Some(Stop::Ratio(refusal)) => policy::rejection(refusal, entry),
            Some(Stop::OverDeclaredSize(refusal)) => policy::rejection(refusal, None),
            Some(Stop::Source) => Error::io("reading the archive", e),
            None => policy::rejection(
                (
                    RejectReason::Corrupt,
                    format!("corrupt or truncated archive: {e}"),
                ),
                entry,
            ),
        }
    }
}

/// The source: hashes and counts the compressed bytes, refusing more than `limit`.
pub(super) struct Source<R> {
    inner: R,
    /// `None` when another reader of the same bytes checks their digest (the store).
    hasher: Option<Sha256>,
    shared: Rc<Shared>,
    limit: Option<u64>,
}

impl<R> Source<R> {
    /// The sha256 of every byte read, when hashed.
    pub(super) fn digest(self) -> Option<[u8; 32]> {
        self.hasher.map(|h| h.finalize().into())
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.shared.set_stop(Stop::Source);
                }
                return Err(e);
            }
        };
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        let total = self.shared.compressed.get() + n as u64;
        self.shared.compressed.set(total);
        if let Err(refusal) = policy::check_declared_size(total, self.limit) {
            self.shared.set_stop(Stop::OverDeclaredSize(refusal));
            return Err(io::Error::other("more bytes than declared"));
        }
        Ok(n)
    }
}

/// The inflated stream as the tar parser sees it: counts bytes (so the position of the
/// end-of-archive marker is known) and enforces the compression ratio.
pub(super) struct Inflated<R> {
    inner: R,
    shared: Rc<Shared>,
    policy: ExtractPolicy,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let inflated = self.shared.inflated.get() + n as u64;
        self.shared.inflated.set(inflated);
        let compressed = self.shared.compressed.get();
        if let Err(refusal) = policy::check_ratio(inflated, compressed, &self.policy) {
            self.shared.set_stop(Stop::Ratio(refusal));
            return Err(io::Error::other("compression ratio over the limit"));
        }
        Ok(n)
    }
}

/// The whole reading side, as the tar parser reads it.
pub(super) type Stream<R> = Inflated<BufReader<GzDecoder<BufReader<Source<R>>>>>;

/// The size of a buffer of at most `max` bytes for an archive of about `size_hint`
/// compressed bytes (when known): a `BufReader` zeroes all of its buffer at the first fill
/// (the decoder has no `read_buf`), faulting in every page of it, so a small archive gets
/// buffers of its own size instead of 320 KiB (`perf stat`: ~150 fewer page faults per
/// tiny run).
pub(super) fn buffer_size(size_hint: Option<u64>, max: usize) -> usize {
    size_hint.map_or(max, |d| {
        usize::try_from(d).unwrap_or(max).clamp(MIN_BUF, max)
    })
}

/// Stacks the readers on `reader`: at most `declared_size` compressed bytes (if given), the
/// ratio limit of `policy`, a sha256 of the compressed bytes when `hash`; buffers sized for
/// `declared_size`, else for `size_hint` (a size known but checked elsewhere: the store's).
/// Returns the stream and the counters it shares with the pass.
pub(super) fn open<R: Read>(
    reader: R,
    declared_size: Option<u64>,
    size_hint: Option<u64>,
    policy: &ExtractPolicy,
    hash: bool,
) -> (Stream<R>, Rc<Shared>) {
    let shared = Rc::new(Shared::default());
    let source = Source {
        inner: reader,
        hasher: hash.then(Sha256::new),
        shared: shared.clone(),
        limit: declared_size,
    };
    let fits = |max: usize| buffer_size(declared_size.or(size_hint), max);
    let decoder = GzDecoder::new(BufReader::with_capacity(fits(COMPRESSED_BUF), source));
    let stream = Inflated {
        inner: BufReader::with_capacity(fits(INFLATED_BUF), decoder),
        shared: shared.clone(),
        policy: *policy,
    };
    (stream, shared)
}

/// The compressed side of a stream whose gzip member ended: what is still buffered (or
/// readable) after it is what follows the member.
pub(super) fn compressed<R: Read>(stream: Stream<R>) -> BufReader<Source<R>> {
    stream.inner.into_inner().into_inner()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn counts_and_hashes_both_sides() {
        let data = vec![7u8; 100_000];
        let gz = gzip(&data);
        let (mut stream, shared) = open(&gz[..], None, None, &ExtractPolicy::default(), true);
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(shared.inflated(), data.len() as u64);
        assert_eq!(shared.compressed(), gz.len() as u64);
        let digest = compressed(stream).into_inner().digest().unwrap();
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&gz)));
    }

    #[test]
    fn stops_over_the_declared_size_and_the_ratio() {
        let gz = gzip(&vec![0u8; 1 << 20]);
        let (mut stream, shared) = open(&gz[..], Some(10), None, &ExtractPolicy::default(), true);
        let e = stream.read_to_end(&mut Vec::new()).unwrap_err();
        match shared.read_error(e, Some("x")) {
            Error::ArchiveRejected { reason, entry, .. } => {
                assert_eq!(reason, RejectReason::SizeMismatch);
                assert_eq!(entry, None);
            }
            other => panic!("{other:?}"),
        }

        let policy = ExtractPolicy {
            ratio_grace_bytes: 0,
            max_ratio: 2,
            ..ExtractPolicy::default()
        };
        let (mut stream, shared) = open(&gz[..], None, None, &policy, true);
        let e = stream.read_to_end(&mut Vec::new()).unwrap_err();
        match shared.read_error(e, Some("x")) {
            Error::ArchiveRejected { reason, entry, .. } => {
                assert_eq!(reason, RejectReason::CompressionRatio);
                assert_eq!(entry.as_deref(), Some("x"));
            }
            other => panic!("{other:?}"),
        }
    }
}
