//! Archive intake: the one extraction policy and extractor shared by every backend
//! (DESIGN §2.4). Every archive is treated as hostile.
//!
//! One file per stage of the pass (`docs/archive.md`):
//!
//! | file | concern |
//! |---|---|
//! | `pass.rs` | the pipeline: wires the stages, keeps the summary and progress |
//! | `source.rs` | the byte readers: sha256 and count, declared size, inflate, ratio |
//! | `parse.rs` | raw tar entries and PAX/GNU metadata records → typed entries |
//! | `policy.rs` | every accept/refuse decision, as pure functions (with `policy/paths.rs`, `policy/tree.rs`) |
//! | `writer.rs` | the writer thread, its lanes and the one batcher feeding them |
//! | `staging.rs` | the private staging directory and its no-replace commit |
//! | `confined.rs` | the confined directory handle every write goes through |

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::event::ArchivePhase;
use crate::ids::Sha256Digest;
use crate::run::ArchiveDescriptor;
use crate::spec::Limits;

mod confined;
mod parse;
mod pass;
mod policy;
mod source;
mod staging;
mod writer;

use pass::Digest;

/// The rules an archive must pass, from a run's [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractPolicy {
    /// Entries (of every kind), each directory implied by a deeper path counted as one.
    pub max_entries: u64,
    /// Extracted bytes in total.
    pub max_total_bytes: u64,
    /// Extracted bytes of one entry.
    pub max_entry_bytes: u64,
    /// Bytes in one entry path.
    pub max_path_len: u64,
    /// Components in one entry path.
    pub max_depth: u64,
    /// Bytes of all entry paths together (normalized), each implied directory's path
    /// counted as if it were an entry.
    pub max_path_bytes: u64,
    /// Bytes of one PAX/GNU metadata record.
    pub max_metadata_bytes: u64,
    /// Inflated/compressed ratio, checked once `ratio_grace_bytes` were inflated.
    pub max_ratio: u64,
    /// Inflated bytes before the ratio is checked.
    pub ratio_grace_bytes: u64,
}

impl ExtractPolicy {
    /// The policy of a run's limits.
    pub fn from_limits(limits: &Limits) -> Self {
        Self {
            max_entries: limits.entries,
            max_total_bytes: limits.extracted_bytes,
            max_entry_bytes: limits.extracted_bytes,
            max_path_len: limits.path_length,
            max_depth: limits.path_depth,
            max_path_bytes: limits.path_bytes,
            max_metadata_bytes: limits.metadata_record_bytes,
            max_ratio: limits.compression_ratio,
            ratio_grace_bytes: 10 * 1024 * 1024,
        }
    }
}

impl Default for ExtractPolicy {
    fn default() -> Self {
        Self::from_limits(&Limits::default())
    }
}

/// Progress of a validation or extraction pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractProgress {
    /// `verifying` or `extracting`.
    pub phase: ArchivePhase,
    /// Compressed bytes consumed so far.
    pub bytes_done: u64,
    /// Entries processed so far.
    pub entries: u64,
}

/// What an archive held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractSummary {
    /// Entries as counted against [`ExtractPolicy::max_entries`]: every entry of the
    /// archive (files, dirs, links, repeats, the `./` root entry) and every directory
    /// implied by a deeper path.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Hardlinks.
    pub hardlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Compressed bytes read.
    pub compressed_bytes: u64,
    /// sha256 of the compressed bytes read (the whole input: nothing may follow the gzip
    /// stream). Serialized as lowercase hex.
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
}

impl ExtractSummary {
    /// The digest of the compressed bytes, as a [`Sha256Digest`].
    pub fn sha256_digest(&self) -> Sha256Digest {
        Sha256Digest::from_bytes(&self.sha256)
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(D::Error::custom)?;
        v.try_into()
            .map_err(|_| D::Error::custom("expected 32 bytes of hex"))
    }
}

/// Checks a whole `.tar.gz` against the policy without writing anything: the same checks as
/// [`extract`], so a hostile archive is refused at upload, before any run starts.
pub fn validate(
    reader: impl Read,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    pass::run(reader, None, Digest::Compute, policy, progress)
}

/// Extracts a `.tar.gz` into `dest` (which must not exist yet; its parent must). Entries are
/// written into a private staging directory next to `dest` through a confined directory
/// handle, and the staging directory is renamed to `dest` only when the whole archive
/// passed; on any error nothing is left behind.
pub fn extract(
    reader: impl Read,
    dest: &Path,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    pass::run(reader, Some(dest), Digest::Compute, policy, progress)
}

/// [`validate`], also checking that the bytes are exactly the declared archive: more bytes
/// than `expected.size_bytes` stop the pass at once ([`RejectReason::SizeMismatch`]), and
/// the sha256 is compared at the end ([`RejectReason::DigestMismatch`]). One streaming pass:
/// the bytes are hashed while they are inflated and checked.
///
/// [`RejectReason::SizeMismatch`]: crate::RejectReason::SizeMismatch
/// [`RejectReason::DigestMismatch`]: crate::RejectReason::DigestMismatch
pub fn validate_verified(
    reader: impl Read,
    expected: &ArchiveDescriptor,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    pass::run(reader, None, Digest::Check(expected), policy, progress)
}

/// [`extract`], also checking that the bytes are exactly the declared archive (as
/// [`validate_verified`]) before the tree is moved to `dest`: on a mismatch nothing is kept.
/// This is the one-pass "verify + extract" path (hash and inflate on the calling thread,
/// file writes on a second thread).
pub fn extract_verified(
    reader: impl Read,
    dest: &Path,
    expected: &ArchiveDescriptor,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    pass::run(
        reader,
        Some(dest),
        Digest::Check(expected),
        policy,
        progress,
    )
}

/// [`extract`] of bytes whose size and digest another reader checks as they stream (the
/// store, while the same bytes are stored): the pass does not hash them, so the one-pass
/// upload hashes each byte once. The summary's `sha256` is all zeros. The caller must not
/// hand the tree to a command before that other check passed (`docs/archive.md`).
/// `size_hint`, the archive's size when known, sizes the pass's buffers only (a small
/// archive gets buffers of its own size); nothing is checked against it.
pub fn extract_unhashed(
    reader: impl Read,
    dest: &Path,
    size_hint: Option<u64>,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    pass::run(
        reader,
        Some(dest),
        Digest::Elsewhere(size_hint),
        policy,
        progress,
    )
}

/// [`validate`] without hashing, as [`extract_unhashed`].
pub fn validate_unhashed(
    reader: impl Read,
    size_hint: Option<u64>,
    policy: &ExtractPolicy,
    progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    pass::run(reader, None, Digest::Elsewhere(size_hint), policy, progress)
}
