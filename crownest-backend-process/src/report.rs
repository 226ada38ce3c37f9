//! The report pipe between the child hook and the backend: fixed 5-byte records (the init's
//! host pid, the command's and the init's wait statuses, a failed exec), written in the child without
//! allocating, read and parsed in the backend.

use std::os::fd::{OwnedFd, RawFd};

/// A report record written to the report pipe: 1 tag byte + 4 bytes (i32, little endian).
pub(crate) const RECORD_LEN: usize = 5;
/// C → parent: the host pid of the init (G).
pub(crate) const TAG_INIT_PID: u8 = b'G';
/// G → parent: the raw wait status of the command (H).
pub(crate) const TAG_COMMAND_STATUS: u8 = b'S';
/// C → parent: the raw wait status of the init (G), when it ended.
pub(crate) const TAG_INIT_STATUS: u8 = b'C';
/// H → parent: the command could not be started (the `errno` of the failed step: the last
/// preparation or `execve`).
pub(crate) const TAG_EXEC_ERROR: u8 = b'E';
/// C → parent, when C shares the host's memory (`crate::leader`): the containment could not
/// be set up (the `errno` of the failed step), what std's spawn reports for a forked C.
pub(crate) const TAG_SETUP_ERROR: u8 = b'X';

/// Writes one record (in the forked child: one atomic pipe write, no allocation).
pub(crate) unsafe fn report(fd: RawFd, tag: u8, value: libc::c_int) {
    if fd < 0 {
        return;
    }
    let v = value.to_le_bytes();
    let rec: [u8; RECORD_LEN] = [tag, v[0], v[1], v[2], v[3]];
    // SAFETY: valid buffer; a 5-byte pipe write is atomic.
    unsafe {
        libc::write(fd, rec.as_ptr().cast(), rec.len());
    }
}

/// Parses the report pipe's records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reports {
    /// Host pid of the init.
    pub(crate) init_pid: Option<i32>,
    /// Wait status of the command.
    pub(crate) command_status: Option<i32>,
    /// Wait status of the init.
    pub(crate) init_status: Option<i32>,
    /// Why the command's process could not exec (an `errno`).
    pub(crate) exec_error: Option<i32>,
    /// Why C could not set up the containment (an `errno`).
    pub(crate) setup_error: Option<i32>,
}

impl Reports {
    pub(crate) fn parse(&mut self, bytes: &[u8]) {
        for rec in bytes.chunks_exact(RECORD_LEN) {
            let v = i32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
            match rec[0] {
                TAG_INIT_PID => self.init_pid = Some(v),
                TAG_COMMAND_STATUS => self.command_status = Some(v),
                TAG_INIT_STATUS => self.init_status = Some(v),
                TAG_EXEC_ERROR => self.exec_error = Some(v),
                TAG_SETUP_ERROR => self.setup_error = Some(v),
                _ => {}
            }
        }
    }
}

/// Whatever the report pipe holds right now (it is non-blocking).
pub(crate) fn read_available(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reports_parse_records() {
        let mut r = Reports::default();
        let mut bytes = vec![TAG_INIT_PID];
        bytes.extend(1234i32.to_le_bytes());
        bytes.push(TAG_COMMAND_STATUS);
        bytes.extend((3i32 << 8).to_le_bytes());
        r.parse(&bytes);
        assert_eq!(r.init_pid, Some(1234));
        assert_eq!(r.command_status.map(|s| libc::WEXITSTATUS(s)), Some(3));
        assert_eq!(r.init_status, None);
        assert_eq!(r.exec_error, None);
        let mut failed = vec![TAG_EXEC_ERROR];
        failed.extend(libc::EACCES.to_le_bytes());
        r.parse(&failed);
        assert_eq!(r.exec_error, Some(libc::EACCES));
    }
}
