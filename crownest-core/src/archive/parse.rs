//! Tar entries to typed entries. The tar crate is used in raw mode: GNU long name/link
//! (`L`/`K`) and PAX (`x`/`g`) records are read here, sized (by the policy) from their
//! header before a byte of them is buffered, and folded into the [`TarEntry`] they
//! describe. The tar crate's cooked mode would buffer them unbounded.

use std::borrow::Cow;
use std::io::Read;
use std::rc::Rc;

use tar::{EntryType, Header};

use super::ExtractPolicy;
use super::policy::{self, Refusal};
use super::source::Shared;
use crate::error::{RejectReason, Result};

/// An entry of the archive (not a metadata record), its metadata records applied. Nothing
/// here is checked yet: that is the policy's job, in its order.
#[derive(Debug)]
pub(super) struct TarEntry {
    /// The path as written (PAX `path`, else GNU long name, else the header's).
    pub(super) raw_path: Vec<u8>,
    /// `raw_path` as lossy UTF-8, naming the entry in errors.
    pub(super) name: String,
    /// The header's type flag.
    pub(super) ty: EntryType,
    /// The PAX header had `GNU.sparse.*` keys.
    pub(super) sparse: bool,
    /// Data bytes, from the header.
    pub(super) size: u64,
    /// The PAX `size`, if any.
    pub(super) pax_size: Option<u64>,
    /// The header's mode field, or why it could not be read (a refusal once the entry is
    /// looked at past its path).
    pub(super) mode: std::result::Result<u32, Refusal>,
    /// The header's mtime in seconds, if it fits.
    pub(super) mtime: Option<i64>,
    /// The link target of a symlink or hardlink (PAX `linkpath`, else GNU long link, else
    /// the header's); empty for other types.
    pub(super) link: Vec<u8>,
}

/// The keys of a PAX extended header that CrowNest honours.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Pax {
    /// `path`.
    pub(super) path: Option<Vec<u8>>,
    /// `linkpath`.
    pub(super) linkpath: Option<Vec<u8>>,
    /// `size`.
    pub(super) size: Option<u64>,
    /// Any `GNU.sparse.*` key (sparse files are refused).
    pub(super) sparse: bool,
}

impl Pax {
    /// Whether any key that describes one entry (rather than the archive) is set.
    fn has_entry_keys(&self) -> bool {
        self.path.is_some() || self.linkpath.is_some() || self.size.is_some() || self.sparse
    }
}

/// Parses PAX records (`"<len> <key>=<value>\n"`) strictly; a malformed record is an error.
pub(super) fn parse_pax(mut data: &[u8]) -> std::result::Result<Pax, String> {
    let mut pax = Pax::default();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|l| l.parse().ok())
            .ok_or("PAX record with an invalid length")?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("PAX record length does not match its contents".into());
        }
        let record = &data[sp + 1..len - 1];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("PAX record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse().ok())
                    .ok_or("PAX size is not a decimal number")?;
                pax.size = Some(size);
            }
            k if k.starts_with(b"GNU.sparse.") => pax.sparse = true,
            _ => {}
        }
        data = &data[len..];
    }
    Ok(pax)
}

/// GNU long name/link and PAX records waiting for the entry they describe.
#[derive(Debug, Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Pax>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// The typed entry of `header` with the metadata records that preceded it.
fn typed(header: &Header, size: u64, pending: Pending) -> TarEntry {
    let Pending {
        long_name,
        long_link,
        pax,
    } = pending;
    let pax = pax.unwrap_or_default();
    let ty = header.entry_type();
    let raw_path = match pax.path.or(long_name) {
        Some(p) => p,
        None => header.path_bytes().into_owned(),
    };
    let link = match ty {
        EntryType::Symlink | EntryType::Link => match pax.linkpath.or(long_link) {
            Some(l) => l,
            None => header
                .link_name_bytes()
                .map(Cow::into_owned)
                .unwrap_or_default(),
        },
        _ => Vec::new(),
    };
    TarEntry {
        name: String::from_utf8_lossy(&raw_path).into_owned(),
        raw_path,
        ty,
        sparse: pax.sparse,
        size,
        pax_size: pax.size,
        mode: header
            .mode()
            .map_err(|e| (RejectReason::Corrupt, format!("bad mode: {e}"))),
        mtime: header.mtime().ok().and_then(|m| i64::try_from(m).ok()),
        link,
    }
}

fn round_up(size: u64) -> Option<u64> {
    size.checked_add(511).map(|s| s & !511)
}

/// The entries of an archive, one [`TarEntry`] (and the tar entry to read its data from) at
/// a time; metadata records are consumed on the way.
pub(super) struct Parser<'a, R: Read> {
    entries: tar::Entries<'a, R>,
    pending: Pending,
    metadata_records: u64,
    end_of_entries: u64,
    policy: ExtractPolicy,
    shared: Rc<Shared>,
}

impl<'a, R: Read> Parser<'a, R> {
    /// Starts reading `archive`, whose reading side reports through `shared`.
    pub(super) fn new(
        archive: &'a mut tar::Archive<R>,
        shared: Rc<Shared>,
        policy: &ExtractPolicy,
    ) -> Result<Self> {
        let entries = archive
            .entries()
            .map_err(|e| shared.read_error(e, None))?
            .raw(true);
        Ok(Self {
            entries,
            pending: Pending::default(),
            metadata_records: 0,
            end_of_entries: 0,
            policy: *policy,
            shared,
        })
    }

    /// The next entry, or `None` after the last one.
    pub(super) fn next_entry(&mut self) -> Result<Option<(TarEntry, tar::Entry<'a, R>)>> {
        while let Some(item) = self.entries.next() {
            let mut entry = item.map_err(|e| self.shared.read_error(e, None))?;
            let size = entry.size();
            self.end_of_entries = round_up(size)
                .and_then(|s| entry.raw_file_position().checked_add(s))
                .ok_or_else(|| {
                    policy::rejection((RejectReason::Corrupt, "entry size overflows".into()), None)
                })?;
            let ty = entry.header().entry_type();
            if ty.is_gnu_longname()
                || ty.is_gnu_longlink()
                || ty.is_pax_local_extensions()
                || ty.is_pax_global_extensions()
            {
                self.metadata(&mut entry, ty, size)?;
                continue;
            }
            let pending = std::mem::take(&mut self.pending);
            let typed = typed(entry.header(), size, pending);
            return Ok(Some((typed, entry)));
        }
        Ok(None)
    }

    /// After the last entry: the inflated offset where the entries ended (where the
    /// end-of-archive marker must start).
    pub(super) fn end_of_entries(self) -> Result<u64> {
        policy::check_no_orphan_metadata(!self.pending.is_empty())
            .map_err(|r| policy::rejection(r, None))?;
        Ok(self.end_of_entries)
    }

    /// A GNU long name/link or PAX record: sized before it is read.
    fn metadata(&mut self, entry: &mut tar::Entry<'a, R>, ty: EntryType, size: u64) -> Result<()> {
        let name = String::from_utf8_lossy(&entry.header().path_bytes()).into_owned();
        let name = Some(name.as_str());
        let refused = |r| policy::rejection(r, name);
        let gnu = ty.is_gnu_longname() || ty.is_gnu_longlink();
        self.metadata_records += 1;
        policy::check_metadata_count(self.metadata_records, &self.policy).map_err(refused)?;
        policy::check_metadata_size(size, gnu, &self.policy).map_err(refused)?;
        let mut data = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| self.shared.read_error(e, name))?;
        if data.len() as u64 != size {
            return Err(refused((
                RejectReason::Corrupt,
                "truncated metadata record".into(),
            )));
        }
        if gnu {
            while data.last() == Some(&0) {
                data.pop();
            }
            let slot = if ty.is_gnu_longname() {
                &mut self.pending.long_name
            } else {
                &mut self.pending.long_link
            };
            policy::check_metadata_once(slot.is_some()).map_err(refused)?;
            *slot = Some(data);
            return Ok(());
        }
        let pax = parse_pax(&data).map_err(|m| refused((RejectReason::Corrupt, m)))?;
        if ty.is_pax_global_extensions() {
            return policy::check_pax_global(pax.has_entry_keys()).map_err(refused);
        }
        policy::check_metadata_once(self.pending.pax.is_some()).map_err(refused)?;
        self.pending.pax = Some(pax);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pax_records() {
        let pax = parse_pax(b"16 path=abc/def\n13 size=1234\n").unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"abc/def"[..]));
        assert_eq!(pax.size, Some(1234));
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"x").is_err());
        assert!(
            parse_pax(b"22 GNU.sparse.major=1\n")
                .unwrap()
                .has_entry_keys()
        );
        assert!(!parse_pax(b"19 comment=a b c d\n").unwrap().has_entry_keys());
    }

    #[test]
    fn metadata_is_folded_into_its_entry() {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Symlink);
        header.set_path("short").unwrap();
        header.set_link_name("t").unwrap();
        header.set_mode(0o4755);
        header.set_mtime(7);
        let pending = Pending {
            long_name: Some(b"long/name".to_vec()),
            long_link: Some(b"long/link".to_vec()),
            pax: None,
        };
        let e = typed(&header, 0, pending);
        assert_eq!(e.raw_path, b"long/name");
        assert_eq!(e.link, b"long/link");
        assert_eq!(e.mode.unwrap(), 0o4755);
        assert_eq!(e.mtime, Some(7));
        // PAX keys win over GNU records; a file has no link target.
        header.set_entry_type(EntryType::Regular);
        let pending = Pending {
            long_name: Some(b"gnu".to_vec()),
            long_link: Some(b"gnu-link".to_vec()),
            pax: Some(parse_pax(b"12 path=pax\n13 size=1234\n").unwrap()),
        };
        let e = typed(&header, 5, pending);
        assert_eq!(e.raw_path, b"pax");
        assert_eq!(e.name, "pax");
        assert!(e.link.is_empty());
        assert_eq!((e.size, e.pax_size), (5, Some(1234)));
        // Without metadata the header speaks.
        let e = typed(&header, 0, Pending::default());
        assert_eq!(e.raw_path, b"short");
    }
}
