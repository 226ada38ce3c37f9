//! Descriptor hygiene between `fork` and `exec`: closing everything but what a process of
//! the namespace init needs, and marking every inherited descriptor close-on-exec before
//! the command's exec. Async-signal-safe, no allocation.

use std::io;
use std::os::fd::RawFd;

/// Closes every descriptor but the (up to two) given ones (-1 = none).
pub(crate) unsafe fn close_all_except(keep: [RawFd; 2]) {
    let mut keep = keep;
    keep.sort_unstable();
    let mut start: libc::c_uint = 0;
    for fd in keep {
        if fd < 0 {
            continue;
        }
        let fd = fd as libc::c_uint;
        if fd > start {
            // SAFETY: closing descriptors of this (child) process.
            unsafe { close_range(start, fd - 1) };
        }
        start = fd + 1;
    }
    // SAFETY: as above.
    unsafe { close_range(start, libc::c_uint::MAX) };
}

unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: close_range(2) / close(2) on this process's descriptors.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0) != 0 {
            let last = last.min(65_535);
            let mut fd = first;
            while fd <= last {
                libc::close(fd as libc::c_int);
                fd += 1;
            }
        }
    }
}

/// Marks every descriptor from `first` up close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`, Linux ≥ 5.11; else each entry of `/proc/self/fd`).
pub(crate) unsafe fn cloexec_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY (whole fn): close_range/open/getdents64/fcntl/close on this process's
    // descriptors; the buffer is a local array.
    unsafe {
        let all = libc::c_uint::MAX;
        if libc::syscall(libc::SYS_close_range, first, all, libc::CLOSE_RANGE_CLOEXEC) == 0 {
            return Ok(());
        }
        cloexec_listed_from(first)
    }
}

/// [`cloexec_from`] for kernels without `CLOSE_RANGE_CLOEXEC`: each entry of
/// `/proc/self/fd`.
unsafe fn cloexec_listed_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY (whole fn): as in `cloexec_from`.
    unsafe {
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 2048];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if n < 0 {
                let e = io::Error::last_os_error();
                libc::close(dir);
                return Err(e);
            }
            if n == 0 {
                break;
            }
            for_each_dirent_name(&buf[..n as usize], |name| {
                if let Some(fd) = fd_of(name)
                    && fd >= first as libc::c_int
                    && fd != dir
                {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            });
        }
        libc::close(dir);
        Ok(())
    }
}

/// Calls `f` with the name of each `linux_dirent64` record in `buf` (a `getdents64` result:
/// `d_ino` u64, `d_off` i64, `d_reclen` u16, `d_type` u8, then the NUL-terminated name).
fn for_each_dirent_name(buf: &[u8], mut f: impl FnMut(&[u8])) {
    const NAME: usize = 19;
    let mut at = 0;
    while let Some(len) = buf.get(at + 16..at + 18) {
        let reclen = usize::from(u16::from_ne_bytes([len[0], len[1]]));
        let Some(rec) = buf.get(at..at + reclen).filter(|_| reclen > NAME) else {
            return;
        };
        let name = &rec[NAME..];
        f(&name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())]);
        at += reclen;
    }
}

/// The descriptor number a `/proc/self/fd` entry names (`.`/`..` and junk: `None`).
fn fd_of(name: &[u8]) -> Option<libc::c_int> {
    if name.is_empty() || name.len() > 9 {
        return None;
    }
    let mut n: libc::c_int = 0;
    for &b in name {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + libc::c_int::from(b - b'0');
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dirent_names_and_descriptor_numbers() {
        let mut buf = Vec::new();
        for name in [&b"."[..], b"..", b"0", b"17", b"300"] {
            // Records are 8-byte aligned: header (19) + name + NUL, rounded up.
            let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
            let mut rec = vec![0u8; reclen];
            rec[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
            rec[19..19 + name.len()].copy_from_slice(name);
            buf.extend(rec);
        }
        let mut fds = Vec::new();
        for_each_dirent_name(&buf, |n| fds.push(fd_of(n)));
        assert_eq!(fds, [None, None, Some(0), Some(17), Some(300)]);
        // A truncated record ends the walk instead of reading past it.
        let mut calls = 0;
        for_each_dirent_name(&buf[..buf.len() - 3], |_| calls += 1);
        assert_eq!(calls, 4);
        assert_eq!(fd_of(b"12a"), None);
        assert_eq!(fd_of(b"1234567890"), None);
    }

    #[test]
    fn cloexec_from_marks_inherited_descriptors() {
        use std::os::fd::AsRawFd as _;
        let f = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: fcntl on descriptors of this test process.
        unsafe {
            let raw = libc::fcntl(f.as_raw_fd(), libc::F_DUPFD, 500);
            assert!(raw >= 500);
            assert_eq!(libc::fcntl(raw, libc::F_GETFD) & libc::FD_CLOEXEC, 0);
            // Only from `raw` up: the test harness's own descriptors are left alone.
            cloexec_from(raw as libc::c_uint).unwrap();
            assert_ne!(libc::fcntl(raw, libc::F_GETFD) & libc::FD_CLOEXEC, 0);
            // The fallback for Linux < 5.11 does the same.
            assert_eq!(libc::fcntl(raw, libc::F_SETFD, 0), 0);
            cloexec_listed_from(raw as libc::c_uint).unwrap();
            assert_ne!(libc::fcntl(raw, libc::F_GETFD) & libc::FD_CLOEXEC, 0);
            libc::close(raw);
        }
    }
}
