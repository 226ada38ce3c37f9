//! A spare network namespace, made off the spawn's critical path.
//!
//! A command without network gets a fresh network namespace (only a loopback interface,
//! down). Creating one (`unshare(CLONE_NEWNET)`) is the costliest step of the namespace
//! init's set-up (~0.3–0.5 ms). So the backend keeps one spare, made by a short-lived
//! thread of its own (a thread's `unshare(CLONE_NEWNET)` moves only that thread, which then
//! holds the namespace by a descriptor of `/proc/thread-self/ns/net` and exits): the first
//! when the backend is constructed (a CLI command's one run finds it ready), the next when
//! a sandbox is created while none is ready (a server's next run: made while the archive is
//! moved in). A short-lived process never makes one it does not use. The child joins it
//! with `setns` instead of unsharing. Each spare is used by exactly one spawn and nothing
//! else ever enters it, so it is as fresh as one the child would have made.
//!
//! Only where the child does not make a user namespace: a namespace made here is owned by
//! the host's user namespace, and joining it needs `CAP_SYS_ADMIN` there. When no spare is
//! ready (the refill has not finished, or making one failed), the child unshares as before.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

/// At most one spare network namespace.
#[derive(Debug, Default)]
pub(crate) struct SpareNetns {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    spare: Option<OwnedFd>,
    /// A refill thread is running.
    filling: bool,
}

impl SpareNetns {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts making a spare unless one is ready or being made.
    pub(crate) fn refill(self: &Arc<Self>) {
        {
            let mut st = self.state();
            if st.filling || st.spare.is_some() {
                return;
            }
            st.filling = true;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("crownest-netns".into())
            .spawn(move || {
                let made = make();
                if let Err(e) = &made {
                    tracing::debug!(error = %e, "making a spare network namespace failed");
                }
                let mut st = me.state();
                st.spare = made.ok();
                st.filling = false;
            });
        if spawned.is_err() {
            self.state().filling = false;
        }
    }

    /// The spare, if one is ready.
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        self.state().spare.take()
    }
}

/// A new network namespace, held by a descriptor (on this thread, which must exit after:
/// it is in the namespace now).
fn make() -> std::io::Result<OwnedFd> {
    // SAFETY: only the network namespace of this thread changes (no descriptor table, file
    // system or memory is unshared); the thread makes no socket and exits right after.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)? };
    let fd = rustix::fs::open(
        "/proc/thread-self/ns/net",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsFd as _;

    fn ready(spare: &Arc<SpareNetns>) -> Option<OwnedFd> {
        for _ in 0..500 {
            if !spare.state().filling {
                return spare.take();
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        None
    }

    /// Where namespaces can be made (root here): a spare is a namespace other than this
    /// process's, handed out once; the next needs a refill.
    #[test]
    fn a_spare_is_a_new_namespace_handed_out_once() {
        let spare = Arc::new(SpareNetns::default());
        spare.refill();
        let Some(fd) = ready(&spare) else {
            assert!(
                !rustix::process::geteuid().is_root(),
                "as root a network namespace can be made"
            );
            return;
        };
        let own = rustix::fs::stat("/proc/self/ns/net").unwrap();
        let made = rustix::fs::fstat(fd.as_fd()).unwrap();
        assert_ne!(
            made.st_ino, own.st_ino,
            "the spare is not this process's namespace"
        );
        assert!(spare.take().is_none(), "a spare is handed out once");
        spare.refill();
        let next = ready(&spare).unwrap();
        let next_ino = rustix::fs::fstat(next.as_fd()).unwrap().st_ino;
        assert_ne!(next_ino, made.st_ino, "two live spares are two namespaces");
    }
}
