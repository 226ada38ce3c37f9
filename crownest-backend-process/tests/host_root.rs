//! What the command holds over the host when the host process is root (issue 12): no
//! capability (so no `setns` into the host's namespaces: `network: none` stays true), and no
//! descriptor the host process left without `O_CLOEXEC`. Unprivileged, the same runs check
//! that the isolation report claims nothing that does not hold.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read as _, Seek as _, Write as _};
use std::net::TcpListener;
use std::os::fd::{FromRawFd as _, OwnedFd};

use common::*;
use crownest_backend_process::Containment;
use crownest_core::{IsolationReport, RunSpec, RunStatus, SandboxBackend as _};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

const CONTAINMENTS: [Containment; 4] = [
    Containment::PidNamespace,
    Containment::UserNamespace,
    Containment::Cgroup,
    Containment::ProcessGroup,
];

async fn isolation_of(
    engine: &crownest_core::WorkspaceRuns,
    done: &crownest_core::RunRecord,
) -> IsolationReport {
    engine.evidence(&done.id).await.unwrap().isolation.unwrap()
}

/// Connections that reached `listener` (completed handshakes wait in its backlog).
fn accepted(listener: &TcpListener) -> usize {
    listener.set_nonblocking(true).unwrap();
    let mut n = 0;
    loop {
        match listener.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// `network: none` means the host's loopback server is unreachable: directly, through
/// `nsenter -t <this test's pid> -n`, and through `setns` on `/proc/<pid>/ns/net`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_holds_even_against_setns_into_the_host() {
    let b = backend(Containment::Auto);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host_pid = std::process::id();
    let connect = format!(
        "import socket\ntry:\n  socket.create_connection(('127.0.0.1', {port}), timeout=3).close(); print('connected')\nexcept OSError as e:\n  print('refused', e)"
    );
    let script = format!(
        r#"
import ctypes, os, shutil, subprocess, sys
CONNECT = {connect:?}
exec(CONNECT.replace("print('", "print('plain "))
if shutil.which('nsenter'):
    r = subprocess.run(['nsenter', '-t', '{host_pid}', '-n', sys.executable, '-c', CONNECT], capture_output=True, text=True)
    print('nsenter', r.returncode, r.stdout.strip(), r.stderr.strip().replace('\n', ' '))
else:
    print('nsenter missing')
libc = ctypes.CDLL(None, use_errno=True)
try:
    fd = os.open('/proc/{host_pid}/ns/net', os.O_RDONLY)
except OSError as e:
    print('setns failed: open', e)
else:
    if libc.setns(fd, 0x40000000) == 0:
        print('setns ok')
        exec(CONNECT.replace("print('", "print('after-setns "))
    else:
        print('setns failed:', os.strerror(ctypes.get_errno()))
# A namespace descriptor the command can open (its own): setns still needs CAP_SYS_ADMIN.
own = os.open('/proc/self/ns/net', os.O_RDONLY)
if libc.setns(own, 0x40000000) == 0:
    print('own setns ok')
else:
    print('own setns failed:', os.strerror(ctypes.get_errno()))
"#
    );
    let (engine, done, events) = run(b.clone(), RunSpec::new(["python3", "-c", &script])).await;
    let out = stdout(&events);
    let reached = accepted(&listener);
    eprintln!("the command said:\n{out}");
    assert_eq!(
        done.status,
        RunStatus::Succeeded,
        "{:?} {out}",
        done.failure
    );
    let iso = isolation_of(&engine, &done).await;
    if is_root() {
        assert_eq!(
            iso.network,
            crownest_core::NetworkIsolation::None,
            "root here: namespaces work"
        );
    }
    if iso.network == crownest_core::NetworkIsolation::None {
        assert!(b.capabilities().network_isolation);
        assert_eq!(reached, 0, "the evidence says network none: {out}");
        assert!(out.contains("plain refused"), "{out}");
        assert!(out.contains("setns failed"), "{out}");
        if is_root() {
            assert!(out.contains("own setns failed"), "{out}");
        }
        assert!(!out.contains("connected"), "{out}");
    } else {
        assert_eq!(
            iso.network,
            crownest_core::NetworkIsolation::NotIsolated,
            "{iso:?}"
        );
        assert!(!b.capabilities().network_isolation);
    }
    if is_root() {
        let privilege = iso.details.get("hostPrivilege").map_or("", String::as_str);
        assert!(
            privilege.contains("every capability dropped"),
            "hostPrivilege: {privilege:?}"
        );
    }
}

/// `Cap*` and `NoNewPrivs` of `/proc/self/status`, as printed by the command.
fn status_fields(out: &str) -> BTreeMap<String, u64> {
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| {
            let v = v.trim();
            let n = if k == "NoNewPrivs" {
                v.parse().ok()?
            } else {
                u64::from_str_radix(v, 16).ok()?
            };
            Some((k.to_owned(), n))
        })
        .collect()
}

/// As root, the command starts with empty capability sets (bounding included) and
/// `no_new_privs`, in every containment; it still writes its workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_holds_no_capability() {
    for containment in CONTAINMENTS {
        let Some(b) = forced_backend(containment) else {
            continue;
        };
        let (engine, done, events) = run(
            b,
            RunSpec::new([
                "sh",
                "-c",
                "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; echo w > written && cat written",
            ]),
        )
        .await;
        let out = stdout(&events);
        assert_eq!(done.status, RunStatus::Succeeded, "{containment:?}: {out}");
        assert!(
            out.ends_with("w\n"),
            "{containment:?}: the workspace is writable: {out}"
        );
        let status = status_fields(&out);
        let iso = isolation_of(&engine, &done).await;
        let privilege = iso
            .details
            .get("hostPrivilege")
            .cloned()
            .unwrap_or_default();
        let user_namespace = containment == Containment::UserNamespace;
        if is_root() || user_namespace {
            for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
                assert_eq!(status.get(set), Some(&0), "{containment:?} {set}: {out}");
            }
            assert_eq!(status.get("NoNewPrivs"), Some(&1), "{containment:?}: {out}");
            assert_eq!(
                iso.details.get("noNewPrivileges").map(String::as_str),
                Some("true"),
                "{containment:?}"
            );
            if privilege.contains("every capability dropped") {
                assert_eq!(status.get("CapBnd"), Some(&0), "{containment:?}: {out}");
            } else {
                assert!(privilege.contains("bounding set kept"), "{privilege:?}");
            }
            if is_root() {
                assert!(
                    privilege.contains("every capability dropped"),
                    "{containment:?}: root here holds CAP_SETPCAP: {privilege:?}"
                );
            }
        } else {
            assert_eq!(status.get("CapEff"), Some(&0), "{containment:?}: {out}");
            assert!(privilege.starts_with("none held"), "{privilege:?}");
        }
    }
}

/// A descriptor this process opened without `O_CLOEXEC` does not reach the command: it
/// sees only 0, 1 and 2 (plus the one `ls` opens) and cannot read or write the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inherited_descriptors_are_closed() {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b"host-only-content\n").unwrap();
    // F_DUPFD never sets FD_CLOEXEC: a high-numbered, inheritable descriptor.
    // SAFETY: fcntl on a descriptor we own; the result is a new descriptor we then own.
    let raw = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_DUPFD, 300) };
    assert!(raw >= 300, "{}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let leaked = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: plain fcntl query on a valid descriptor.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, 0);
    let script = format!(
        "echo \"fds: $(ls /proc/self/fd | tr '\\n' ' ')\"
         cat /proc/self/fd/{raw} 2>/dev/null
         echo written-by-the-command >> /proc/self/fd/{raw} 2>/dev/null
         true"
    );
    for containment in CONTAINMENTS {
        let Some(b) = forced_backend(containment) else {
            continue;
        };
        let (_, done, events) = run(b, RunSpec::new(["sh", "-c", &script])).await;
        let out = stdout(&events);
        assert_eq!(done.status, RunStatus::Succeeded, "{containment:?}: {out}");
        let fds: Vec<&str> = out
            .lines()
            .find_map(|l| l.strip_prefix("fds: "))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "{containment:?}: {out}");
        assert!(!out.contains("host-only-content"), "{containment:?}: {out}");
    }
    let mut content = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut content).unwrap();
    assert_eq!(
        content, "host-only-content\n",
        "the command wrote the host's file"
    );
    drop(leaked);
}
