//! Archives for tests: gzipped tars built in memory, hostile ones included.

use bytes::Bytes;

/// Builds a `.tar.gz` of `(path, content, mode)` regular files (directories implied).
pub fn tar_gz(files: &[(&str, &[u8], u32)]) -> Bytes {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        if builder.append_data(&mut header, path, *content).is_err() {
            return Bytes::new();
        }
    }
    match builder.into_inner().and_then(|gz| gz.finish()) {
        Ok(v) => Bytes::from(v),
        Err(_) => Bytes::new(),
    }
}

/// Builds a `.tar.gz` whose single entry has a raw, unchecked name (for hostile cases the
/// `tar` builder refuses, such as `../escape`).
pub fn tar_gz_raw_name(name: &str, content: &[u8]) -> Bytes {
    tar_gz_raw_entries(&[(name, content)])
}

/// Builds a `.tar.gz` of regular-file entries with raw, unchecked names, in order (e.g.
/// good entries followed by a hostile one).
pub fn tar_gz_raw_entries(entries: &[(&str, &[u8])]) -> Bytes {
    let mut raw = Vec::new();
    for (name, content) in entries {
        let mut header = tar::Header::new_old();
        {
            let old = header.as_old_mut();
            let n = name.as_bytes();
            let len = n.len().min(old.name.len());
            old.name[..len].copy_from_slice(&n[..len]);
        }
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        raw.extend_from_slice(header.as_bytes());
        raw.extend_from_slice(content);
        raw.resize(raw.len().div_ceil(512) * 512, 0);
    }
    raw.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if std::io::Write::write_all(&mut gz, &raw).is_err() {
        return Bytes::new();
    }
    gz.finish().map(Bytes::from).unwrap_or_default()
}

/// The descriptor of some bytes.
pub fn descriptor_of(bytes: &[u8]) -> crate::run::ArchiveDescriptor {
    crate::run::ArchiveDescriptor {
        size_bytes: bytes.len() as u64,
        sha256: crate::ids::Sha256Digest::of(bytes),
    }
}
