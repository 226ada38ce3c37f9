//! Shared helpers of the archive tests: raw tar headers the `tar` builder refuses to
//! write, gzip, and a sandbox parent directory with a sentinel layout whose contents are
//! compared before and after each extraction.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crownest_core::archive::{self, ExtractPolicy, ExtractSummary};
use crownest_core::{Error, RejectReason};

/// A raw 512-byte ustar header with a correct checksum.
pub fn raw_header(name: &[u8], typeflag: u8, size: u64, link: &[u8], mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    assert!(name.len() <= 100 && link.len() <= 100);
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 0o77777777777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        // GNU base-256 for huge sizes.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    fix_checksum(&mut h);
    h
}

pub fn fix_checksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// An uncompressed tar stream assembled from raw blocks.
#[derive(Default, Clone)]
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a header and its data (padded to 512).
    pub fn entry(mut self, header: [u8; 512], data: &[u8]) -> Self {
        self.0.extend_from_slice(&header);
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub fn file(self, name: &str, data: &[u8]) -> Self {
        let h = raw_header(name.as_bytes(), b'0', data.len() as u64, b"", 0o644);
        self.entry(h, data)
    }
    pub fn dir(self, name: &str) -> Self {
        self.entry(raw_header(name.as_bytes(), b'5', 0, b"", 0o755), b"")
    }
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(
            raw_header(name.as_bytes(), b'2', 0, target.as_bytes(), 0o777),
            b"",
        )
    }
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(
            raw_header(name.as_bytes(), b'1', 0, target.as_bytes(), 0o644),
            b"",
        )
    }
    /// A PAX extended header record set for the next entry.
    pub fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3;
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let h = raw_header(b"PaxHeaders/x", b'x', data.len() as u64, b"", 0o644);
        self.entry(h, &data)
    }
    /// Two zero blocks plus padding to a 10 KiB record, as tar writes.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        let pad = (10240 - self.0.len() % 10240) % 10240;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self.0
    }
    /// The stream without an end-of-archive marker.
    pub fn unterminated(self) -> Vec<u8> {
        self.0
    }
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn gz_best(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A parent directory with a sentinel layout; `dest` is `<parent>/dest` (absent).
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub before: BTreeMap<PathBuf, String>,
}

impl Sandbox {
    pub fn new() -> Self {
        Self::in_dir(tempfile::tempdir().unwrap())
    }
    /// A sandbox on tmpfs (`/dev/shm`) where the machine has one, else where [`Sandbox::new`]
    /// puts it: for archives whose extraction makes hundreds of thousands of directories
    /// before it is refused (minutes on a disk filesystem, and as long again to remove).
    pub fn on_tmpfs() -> Self {
        let shm = Path::new("/dev/shm");
        if shm.is_dir()
            && let Ok(dir) = tempfile::tempdir_in(shm)
        {
            return Self::in_dir(dir);
        }
        Self::new()
    }
    fn in_dir(dir: tempfile::TempDir) -> Self {
        let p = dir.path();
        std::fs::create_dir(p.join("outside")).unwrap();
        std::fs::write(p.join("outside/sentinel"), b"do not touch").unwrap();
        std::fs::write(p.join("sentinel"), b"do not touch").unwrap();
        let before = snapshot(p);
        Sandbox { dir, before }
    }
    pub fn parent(&self) -> &Path {
        self.dir.path()
    }
    pub fn dest(&self) -> PathBuf {
        self.dir.path().join("dest")
    }
    /// Everything in the parent except the destination tree.
    pub fn outside_dest(&self) -> BTreeMap<PathBuf, String> {
        snapshot(self.parent())
            .into_iter()
            .filter(|(p, _)| !p.starts_with("dest"))
            .collect()
    }
    /// Nothing new appeared and nothing changed next to the destination.
    pub fn assert_untouched(&self) {
        assert_eq!(
            snapshot(self.parent()),
            self.before,
            "the parent directory changed"
        );
    }
    /// Only `dest` appeared; everything else is as it was.
    pub fn assert_only_dest(&self) {
        assert_eq!(
            self.outside_dest(),
            self.before,
            "something outside dest changed"
        );
    }
}

/// Relative path → description (kind, content or link target, mode) of every object under
/// `root`, never following symlinks.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = md.permissions().mode() & 0o7777;
            let desc = if md.file_type().is_symlink() {
                format!("symlink {:?}", std::fs::read_link(&p).unwrap())
            } else if md.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}")
            } else if md.is_file() {
                format!("file {mode:o} {:?}", std::fs::read(&p).unwrap())
            } else {
                format!("special {mode:o}")
            };
            out.insert(rel, desc);
        }
    }
    out
}

pub fn validate(gz: &[u8], policy: &ExtractPolicy) -> Result<ExtractSummary, Error> {
    archive::validate(gz, policy, &mut |_| {})
}

pub fn extract(gz: &[u8], dest: &Path, policy: &ExtractPolicy) -> Result<ExtractSummary, Error> {
    archive::extract(gz, dest, policy, &mut |_| {})
}

fn reason_of(e: &Error) -> (RejectReason, Option<String>) {
    match e {
        Error::ArchiveRejected { reason, entry, .. } => (*reason, entry.clone()),
        other => panic!("expected ArchiveRejected, got {other:?}"),
    }
}

/// Asserts that validate and extract both refuse `gz` with `reason` naming `entry`, and that
/// extraction left nothing behind.
pub fn assert_rejected_with(
    gz: &[u8],
    policy: &ExtractPolicy,
    reason: RejectReason,
    entry: Option<&str>,
) {
    assert_rejected_in(Sandbox::new(), gz, policy, reason, entry);
}

/// [`assert_rejected_with`], extracting into `sb`.
pub fn assert_rejected_in(
    sb: Sandbox,
    gz: &[u8],
    policy: &ExtractPolicy,
    reason: RejectReason,
    entry: Option<&str>,
) {
    let v = validate(gz, policy).expect_err("validate accepted a hostile archive");
    assert_eq!(
        reason_of(&v),
        (reason, entry.map(str::to_string)),
        "validate: {v}"
    );
    let e = extract(gz, &sb.dest(), policy).expect_err("extract accepted a hostile archive");
    assert_eq!(
        reason_of(&e),
        (reason, entry.map(str::to_string)),
        "extract: {e}"
    );
    assert!(!sb.dest().exists(), "dest was created");
    sb.assert_untouched();
}

pub fn assert_rejected(gz: &[u8], reason: RejectReason, entry: Option<&str>) {
    assert_rejected_with(gz, &ExtractPolicy::default(), reason, entry);
}

/// Extracts `gz` into a fresh sandbox and checks that the pass failed with an I/O error
/// naming `entry` and left nothing behind (no destination, the sandbox untouched): what a
/// write that fails in the middle of an extraction must do.
pub fn assert_write_failure_leaves_nothing(gz: &[u8], entry: &str) {
    let sb = Sandbox::new();
    let err = extract(gz, &sb.dest(), &ExtractPolicy::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let chain = err.chain();
    assert!(chain.contains(entry), "the error names {entry}: {chain}");
    assert!(!sb.dest().exists(), "no destination after a failure");
    sb.assert_untouched();
}

/// Runs `body` with every file the process writes limited to `bytes` (`RLIMIT_FSIZE`,
/// with `SIGXFSZ` ignored, so a write past it fails with `EFBIG` instead of killing the
/// process), in a child process: this test binary run again for the test `name` alone,
/// its output on pipes. The limit is per process and applies to every file the process
/// writes, so set here it would also cap the harness's own output when that goes to a
/// regular file longer than the limit (a CI log), and the test would die printing its
/// result. The child must report exactly one passed test: a name that matches nothing
/// fails instead of passing vacuously.
pub fn with_file_size_limit(name: &str, bytes: u64, body: impl FnOnce()) {
    const CHILD: &str = "CROWNEST_TEST_FILE_SIZE_LIMIT";
    if std::env::var_os(CHILD).is_some() {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let old = rustix::process::getrlimit(rustix::process::Resource::Fsize);
        rustix::process::setrlimit(
            rustix::process::Resource::Fsize,
            rustix::process::Rlimit {
                current: Some(bytes),
                maximum: old.maximum,
            },
        )
        .unwrap();
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed;"),
        "the limited run of {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
