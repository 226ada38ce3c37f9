//! The extraction policy: every accept/refuse decision of the archive pass, as pure
//! functions (no I/O), so `validate` and `extract` decide exactly the same way and each rule
//! is unit-tested on its own. The readers, the parser and the pass only ask; they decide
//! nothing themselves.
//!
//! The rules, in the order the pass meets them:
//!
//! | rule | function | reason |
//! |---|---|---|
//! | compressed bytes over the declared `sizeBytes` | [`check_declared_size`] | `size_mismatch` |
//! | inflated/compressed over `max_ratio` after the grace | [`check_ratio`] | `compression_ratio` |
//! | more than 4 × `max_entries` metadata records | [`check_metadata_count`] | `too_many_entries` |
//! | a PAX or GNU long name/link record over `max_metadata_bytes` | [`check_metadata_size`] | `metadata_too_large` |
//! | two metadata records of one kind for one entry | [`check_metadata_once`] | `corrupt` |
//! | a PAX global header with per-entry keys | [`check_pax_global`] | `corrupt` |
//! | a metadata record that describes no entry | [`check_no_orphan_metadata`] | `corrupt` |
//! | over `max_entries` entries (counted before the path is read) | [`Tree::count_entry`] | `too_many_entries` |
//! | entry path: absolute, `..`, not UTF-8, bad characters, too long or deep | [`normalize_entry_path`] | `absolute_path`, `parent_traversal`, `invalid_path` |
//! | devices, fifos, sparse files, unknown types; v7 `name/` files are directories | [`entry_kind`] | `special_file` |
//! | a PAX `size` other than the header's | [`check_pax_size`] | `corrupt` |
//! | modes: `& 0o777`; directories keep the owner's `rwx` | [`entry_mode`], [`dir_mode`] | — |
//! | only a directory may name the root (`./`) | [`root_mode`] | `invalid_path` |
//! | symlink target absolute, climbing out, or `..` after a normal component | [`check_symlink_target`] | `link_escapes`, `invalid_path` |
//! | hardlink target absolute or with `..` | [`normalize_hardlink_target`] | `link_escapes`, `invalid_path` |
//! | hardlink target not an earlier regular file (or hardlink) | [`check_hardlink_target`] | `link_escapes` |
//! | a file over `max_entry_bytes`, or the total over `max_total_bytes` | [`check_file_size`] | `too_many_bytes` |
//! | a path through a symlink / a regular file, or reused with another kind | [`Tree::place`] | `through_symlink` / `duplicate_entry` |
//! | implied directories over `max_entries`, paths over `max_path_bytes` | [`Tree::place`] | `too_many_entries`, `too_many_path_bytes` |
//! | the tar end-of-archive marker missing | [`check_end_marker`] | `corrupt` |
//! | non-zero bytes, or over 1 MiB of zeros, after the end-of-archive marker | [`check_padding`] | `trailing_data` |
//! | bytes after the gzip member | [`check_gzip_end`] | `trailing_data` |
//! | another size or sha256 than declared (`_verified`; shared with the stores) | [`ArchiveDescriptor::check`] | `size_mismatch`, `digest_mismatch` |
//! | the kernel refused a path of the confined tree (the second wall) | [`kernel_refusal`] | `through_symlink` |
//!
//! [`ArchiveDescriptor::check`]: crate::run::ArchiveDescriptor::check
//!
//! Malformed input that cannot be parsed at all (bad gzip, bad tar checksums, truncation, a
//! malformed PAX record, a bad mode field) is `corrupt`, reported where it is parsed.

use std::io;

use tar::EntryType;

use super::ExtractPolicy;
use crate::error::{Error, RejectReason};

mod paths;
mod tree;

pub(super) use paths::{check_symlink_target, normalize_entry_path, normalize_hardlink_target};
pub(super) use tree::{Kind, Placement, Tree};

/// A refusal before it is attached to an entry name.
pub(super) type Refusal = (RejectReason, String);

/// The typed error of a refusal, naming `entry` (as written in the archive) when the
/// refusal is about one entry.
pub(super) fn rejection((reason, message): Refusal, entry: Option<&str>) -> Error {
    Error::rejected(reason, entry.map(str::to_string), message)
}

/// Zero padding tolerated after the tar end-of-archive marker (tar pads to its record size,
/// 10 KiB by default).
pub(super) const MAX_PADDING: u64 = 1 << 20;
/// Mode of directories implied by deeper entries.
pub(super) const IMPLIED_DIR_MODE: u32 = 0o755;
/// Mode of the extraction root unless the archive has a `./` entry.
pub(super) const ROOT_MODE: u32 = 0o755;

/// Refuses a source that has yielded more than its declared size (`total` bytes so far).
pub(super) fn check_declared_size(total: u64, declared: Option<u64>) -> Result<(), Refusal> {
    if declared.is_some_and(|d| total > d) {
        return Err((
            RejectReason::SizeMismatch,
            "the archive is longer than its declared sizeBytes".into(),
        ));
    }
    Ok(())
}

/// Refuses an inflated/compressed ratio over `max_ratio` once more than
/// `ratio_grace_bytes` were inflated.
#[inline]
pub(super) fn check_ratio(
    inflated: u64,
    compressed: u64,
    policy: &ExtractPolicy,
) -> Result<(), Refusal> {
    if inflated > policy.ratio_grace_bytes && inflated > compressed.saturating_mul(policy.max_ratio)
    {
        return Err((
            RejectReason::CompressionRatio,
            format!(
                "{inflated} bytes inflated from {compressed} compressed bytes, over the ratio limit of {}",
                policy.max_ratio
            ),
        ));
    }
    Ok(())
}

/// Refuses the `records`-th metadata record (PAX or GNU long name/link) over four per
/// allowed entry: records are not entries, but they cost a header each.
pub(super) fn check_metadata_count(records: u64, policy: &ExtractPolicy) -> Result<(), Refusal> {
    if records > policy.max_entries.saturating_mul(4) {
        return Err((
            RejectReason::TooManyEntries,
            "too many metadata records".into(),
        ));
    }
    Ok(())
}

/// Refuses a metadata record over `max_metadata_bytes`, from its header's size, before a
/// byte of it is buffered. `gnu` tells a GNU long name/link record from a PAX one.
pub(super) fn check_metadata_size(
    size: u64,
    gnu: bool,
    policy: &ExtractPolicy,
) -> Result<(), Refusal> {
    if size > policy.max_metadata_bytes {
        return Err((
            RejectReason::MetadataTooLarge,
            format!(
                "a {} record of {size} bytes, over the limit of {}",
                if gnu { "GNU long name" } else { "PAX" },
                policy.max_metadata_bytes
            ),
        ));
    }
    Ok(())
}

/// Refuses a second metadata record of one kind (`already`: one is pending) for one entry:
/// which one would win is ambiguous.
pub(super) fn check_metadata_once(already: bool) -> Result<(), Refusal> {
    if already {
        return Err((
            RejectReason::Corrupt,
            "two metadata records of the same kind for one entry".into(),
        ));
    }
    Ok(())
}

/// Refuses a PAX global header that sets per-entry keys (path, linkpath, size or
/// `GNU.sparse.*`): they would apply to every later entry, which CrowNest does not support.
pub(super) fn check_pax_global(per_entry_keys: bool) -> Result<(), Refusal> {
    if per_entry_keys {
        return Err((
            RejectReason::Corrupt,
            "a PAX global header with path, linkpath, size or sparse keys is not supported".into(),
        ));
    }
    Ok(())
}

/// Refuses metadata records still pending at the end of the entries (`pending`).
pub(super) fn check_no_orphan_metadata(pending: bool) -> Result<(), Refusal> {
    if pending {
        return Err((
            RejectReason::Corrupt,
            "a metadata record at the end of the archive describes no entry".into(),
        ));
    }
    Ok(())
}

/// The kind of an entry of type `ty` (`sparse`: its PAX header has `GNU.sparse.*` keys):
/// regular files (a v7 regular file whose `raw_path` ends in `/` is a directory),
/// directories, symlinks and hardlinks. Sparse files, devices, fifos and any other type are
/// refused.
pub(super) fn entry_kind(ty: EntryType, sparse: bool, raw_path: &[u8]) -> Result<Kind, Refusal> {
    match ty {
        _ if sparse || ty.is_gnu_sparse() => Err((
            RejectReason::SpecialFile,
            "sparse files are not supported".into(),
        )),
        EntryType::Regular | EntryType::Continuous if raw_path.ends_with(b"/") => Ok(Kind::Dir),
        EntryType::Regular | EntryType::Continuous => Ok(Kind::File),
        EntryType::Directory => Ok(Kind::Dir),
        EntryType::Symlink => Ok(Kind::Symlink),
        EntryType::Link => Ok(Kind::Hardlink),
        other => {
            let what = match other {
                EntryType::Char => "a character device".to_string(),
                EntryType::Block => "a block device".to_string(),
                EntryType::Fifo => "a fifo".to_string(),
                t => format!("an unsupported entry type {:?}", t.as_byte() as char),
            };
            Err((RejectReason::SpecialFile, format!("{what} is not allowed")))
        }
    }
}

/// Refuses a PAX `size` that disagrees with the header's `size`.
pub(super) fn check_pax_size(pax_size: Option<u64>, size: u64) -> Result<(), Refusal> {
    if pax_size.is_some_and(|s| s != size) {
        return Err((
            RejectReason::Corrupt,
            "the PAX size disagrees with the header size".into(),
        ));
    }
    Ok(())
}

/// The mode an entry gets: ownership is ignored and setuid, setgid and sticky are stripped.
pub(super) fn entry_mode(header_mode: u32) -> u32 {
    header_mode & 0o777
}

/// The mode of an explicit directory: at least `rwx` for the owner, so extraction and
/// cleanup can proceed (and writer lanes need no fence around a mode change).
pub(super) fn dir_mode(mode: u32) -> u32 {
    mode | 0o700
}

/// The root's mode from an entry naming the root (`./`), which must be a directory.
pub(super) fn root_mode(kind: Kind, mode: u32) -> Result<u32, Refusal> {
    if kind != Kind::Dir {
        return Err((
            RejectReason::InvalidPath,
            "only a directory may name the extraction root".into(),
        ));
    }
    Ok(dir_mode(mode))
}

/// Refuses a hardlink whose (normalized) `target` is not an earlier regular file or
/// hardlink of the archive (`found`: what the tree holds at `target`).
pub(super) fn check_hardlink_target(target: &str, found: Option<Kind>) -> Result<(), Refusal> {
    if !matches!(found, Some(Kind::File | Kind::Hardlink)) {
        return Err((
            RejectReason::LinkEscapes,
            format!("hardlink target {target:?} is not an earlier regular file of the archive"),
        ));
    }
    Ok(())
}

/// Refuses a file of `size` bytes over `max_entry_bytes`, or making the files' total (so
/// far `total`) over `max_total_bytes`; returns the new total. Checked from the header,
/// before any data is read or written.
pub(super) fn check_file_size(
    size: u64,
    total: u64,
    policy: &ExtractPolicy,
) -> Result<u64, Refusal> {
    if size > policy.max_entry_bytes {
        return Err((
            RejectReason::TooManyBytes,
            format!(
                "{size} bytes, over the per-entry limit of {}",
                policy.max_entry_bytes
            ),
        ));
    }
    let total = total.saturating_add(size);
    if total > policy.max_total_bytes {
        return Err((
            RejectReason::TooManyBytes,
            format!(
                "more than {} extracted bytes in total",
                policy.max_total_bytes
            ),
        ));
    }
    Ok(total)
}

/// Refuses an archive whose entries ended where the inflated stream ended (`inflated`
/// equals `end_of_entries`): the end-of-archive marker is missing.
pub(super) fn check_end_marker(inflated: u64, end_of_entries: u64) -> Result<(), Refusal> {
    if inflated == end_of_entries {
        return Err((
            RejectReason::Corrupt,
            "truncated archive: the tar end-of-archive marker is missing".into(),
        ));
    }
    Ok(())
}

/// Checks `chunk`, read after the end-of-archive marker once `padding` bytes were: only
/// zeros, at most [`MAX_PADDING`] in all. Returns the new padding total.
pub(super) fn check_padding(chunk: &[u8], padding: u64) -> Result<u64, Refusal> {
    if chunk.iter().any(|b| *b != 0) {
        return Err((
            RejectReason::TrailingData,
            "data after the tar end-of-archive marker".into(),
        ));
    }
    let padding = padding + chunk.len() as u64;
    if padding > MAX_PADDING {
        return Err((
            RejectReason::TrailingData,
            format!("more than {MAX_PADDING} bytes of padding after the tar end-of-archive marker"),
        ));
    }
    Ok(padding)
}

/// Refuses bytes after the gzip member (`rest`: what follows it): a second member is
/// trailing data too.
pub(super) fn check_gzip_end(rest: &[u8]) -> Result<(), Refusal> {
    if !rest.is_empty() {
        return Err((
            RejectReason::TrailingData,
            "bytes follow the end of the gzip stream".into(),
        ));
    }
    Ok(())
}

/// The refusal a write error stands for when the confined directory handle refused to
/// resolve through a symlink or out of the root (`ELOOP`, `EXDEV`): the lexical policy
/// should have caught it first, but the kernel is the last word. `None`: a plain I/O error.
pub(super) fn kernel_refusal(e: &io::Error) -> Option<Refusal> {
    match e.raw_os_error() {
        Some(code)
            if code == rustix::io::Errno::LOOP.raw_os_error()
                || code == rustix::io::Errno::XDEV.raw_os_error() =>
        {
            Some((
                RejectReason::ThroughSymlink,
                format!("the confined directory handle refused the path: {e}"),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p() -> ExtractPolicy {
        ExtractPolicy::default()
    }

    fn reason<T: std::fmt::Debug>(r: Result<T, Refusal>) -> RejectReason {
        r.unwrap_err().0
    }

    #[test]
    fn stream_limits() {
        assert!(check_declared_size(10, None).is_ok());
        assert!(check_declared_size(10, Some(10)).is_ok());
        assert_eq!(
            reason(check_declared_size(11, Some(10))),
            RejectReason::SizeMismatch
        );
        let pol = ExtractPolicy {
            max_ratio: 10,
            ratio_grace_bytes: 100,
            ..p()
        };
        // Within the grace any ratio passes; after it, the ratio counts.
        assert!(check_ratio(100, 1, &pol).is_ok());
        assert!(check_ratio(101, 11, &pol).is_ok());
        assert_eq!(
            reason(check_ratio(101, 10, &pol)),
            RejectReason::CompressionRatio
        );
    }

    #[test]
    fn metadata_records() {
        let pol = ExtractPolicy {
            max_entries: 2,
            max_metadata_bytes: 10,
            ..p()
        };
        assert!(check_metadata_count(8, &pol).is_ok());
        assert_eq!(
            reason(check_metadata_count(9, &pol)),
            RejectReason::TooManyEntries
        );
        assert!(check_metadata_size(10, true, &pol).is_ok());
        let (r, m) = check_metadata_size(11, true, &pol).unwrap_err();
        assert_eq!(r, RejectReason::MetadataTooLarge);
        assert!(m.contains("GNU long name"), "{m}");
        assert!(
            check_metadata_size(11, false, &pol)
                .unwrap_err()
                .1
                .contains("PAX")
        );
        assert!(check_metadata_once(false).is_ok());
        assert_eq!(reason(check_metadata_once(true)), RejectReason::Corrupt);
        assert!(check_pax_global(false).is_ok());
        assert_eq!(reason(check_pax_global(true)), RejectReason::Corrupt);
        assert!(check_no_orphan_metadata(false).is_ok());
        assert_eq!(
            reason(check_no_orphan_metadata(true)),
            RejectReason::Corrupt
        );
    }

    #[test]
    fn entry_kinds() {
        let k = |ty, sparse, path: &[u8]| entry_kind(ty, sparse, path);
        assert_eq!(k(EntryType::Regular, false, b"a").unwrap(), Kind::File);
        assert_eq!(k(EntryType::Continuous, false, b"a").unwrap(), Kind::File);
        assert_eq!(k(EntryType::Regular, false, b"a/").unwrap(), Kind::Dir);
        assert_eq!(k(EntryType::Directory, false, b"a").unwrap(), Kind::Dir);
        assert_eq!(k(EntryType::Symlink, false, b"a").unwrap(), Kind::Symlink);
        assert_eq!(k(EntryType::Link, false, b"a").unwrap(), Kind::Hardlink);
        for ty in [
            EntryType::Char,
            EntryType::Block,
            EntryType::Fifo,
            EntryType::GNUSparse,
            EntryType::new(b'Z'),
        ] {
            assert_eq!(
                reason(k(ty, false, b"a")),
                RejectReason::SpecialFile,
                "{ty:?}"
            );
        }
        // A PAX header with GNU.sparse.* keys makes any entry sparse.
        assert_eq!(
            reason(k(EntryType::Regular, true, b"a")),
            RejectReason::SpecialFile
        );
        assert!(check_pax_size(None, 5).is_ok());
        assert!(check_pax_size(Some(5), 5).is_ok());
        assert_eq!(reason(check_pax_size(Some(6), 5)), RejectReason::Corrupt);
    }

    #[test]
    fn modes() {
        assert_eq!(entry_mode(0o107_755), 0o755);
        assert_eq!(entry_mode(0o4755), 0o755);
        assert_eq!(dir_mode(0o000), 0o700);
        assert_eq!(dir_mode(0o555), 0o755);
        assert_eq!(root_mode(Kind::Dir, 0o500).unwrap(), 0o700);
        assert_eq!(
            reason(root_mode(Kind::File, 0o644)),
            RejectReason::InvalidPath
        );
        assert_eq!(IMPLIED_DIR_MODE & 0o700, 0o700);
        assert_eq!(ROOT_MODE & 0o700, 0o700);
    }

    #[test]
    fn hardlink_targets_and_sizes() {
        assert!(check_hardlink_target("f", Some(Kind::File)).is_ok());
        assert!(check_hardlink_target("f", Some(Kind::Hardlink)).is_ok());
        for found in [None, Some(Kind::Dir), Some(Kind::Symlink)] {
            assert_eq!(
                reason(check_hardlink_target("f", found)),
                RejectReason::LinkEscapes
            );
        }
        let pol = ExtractPolicy {
            max_entry_bytes: 10,
            max_total_bytes: 15,
            ..p()
        };
        assert_eq!(check_file_size(10, 0, &pol).unwrap(), 10);
        assert_eq!(
            reason(check_file_size(11, 0, &pol)),
            RejectReason::TooManyBytes
        );
        assert_eq!(check_file_size(5, 10, &pol).unwrap(), 15);
        assert_eq!(
            reason(check_file_size(6, 10, &pol)),
            RejectReason::TooManyBytes
        );
        assert_eq!(
            reason(check_file_size(1, u64::MAX, &pol)),
            RejectReason::TooManyBytes
        );
    }

    #[test]
    fn end_of_archive() {
        assert!(check_end_marker(1024, 512).is_ok());
        assert_eq!(reason(check_end_marker(512, 512)), RejectReason::Corrupt);
        assert_eq!(check_padding(&[0; 100], 0).unwrap(), 100);
        assert_eq!(
            reason(check_padding(&[0, 1], 0)),
            RejectReason::TrailingData
        );
        assert_eq!(
            check_padding(&[0; 10], MAX_PADDING - 10).unwrap(),
            MAX_PADDING
        );
        assert_eq!(
            reason(check_padding(&[0; 11], MAX_PADDING - 10)),
            RejectReason::TrailingData
        );
        assert!(check_gzip_end(b"").is_ok());
        assert_eq!(reason(check_gzip_end(b"\x1f")), RejectReason::TrailingData);
    }

    #[test]
    fn kernel_refusals() {
        let e = |code: rustix::io::Errno| io::Error::from_raw_os_error(code.raw_os_error());
        for code in [rustix::io::Errno::LOOP, rustix::io::Errno::XDEV] {
            assert_eq!(
                kernel_refusal(&e(code)).unwrap().0,
                RejectReason::ThroughSymlink
            );
        }
        assert!(kernel_refusal(&e(rustix::io::Errno::NOSPC)).is_none());
        assert!(kernel_refusal(&io::Error::other("x")).is_none());
    }
}
