//! A spare network namespace, made off the spawn's critical path.
//!
//! A command without network gets a fresh network namespace (only a loopback interface,
//! down). Creating one (`unshare(CLONE_NEWNET)`) is the costliest step of the namespace
//! init's set-up (~0.3–0.5 ms). So the backend keeps one spare, made by a thread of its own
//! (a thread's `unshare(CLONE_NEWNET)` moves only that thread, which then holds the
//! namespace by a descriptor of `/proc/thread-self/ns/net`): the first when the backend is
//! constructed (a CLI command's one run finds it ready), the next when a sandbox is created
//! while none is ready (a server's next run: made while the archive is moved in). A
//! short-lived process never makes one it does not use. The child joins it with `setns`
//! instead of unsharing. Each spare is used by exactly one spawn and nothing else ever
//! enters it, so it is as fresh as one the child would have made.
//!
//! The thread goes back to the namespace it started in (`setns` with a descriptor it opened
//! first) and waits for the next refill, for as long as the backend lives: a thread that
//! ends unmaps its signal stack and returns its stack to the kernel, each a flush of the
//! other CPUs' TLBs by interrupt, which a virtual machine makes slow, in the middle of a
//! run. If it cannot go back, it ends (it is in a namespace of its own) and the next
//! refill starts another.
//!
//! Only where the child does not make a user namespace: a namespace made here is owned by
//! the host's user namespace, and joining it needs `CAP_SYS_ADMIN` there. When no spare is
//! ready (the refill has not finished, or making one failed), the child unshares as before.

use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::{Arc, Mutex, Weak, mpsc};

/// At most one spare network namespace.
#[derive(Debug, Default)]
pub(crate) struct SpareNetns {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    spare: Option<OwnedFd>,
    /// A spare is being made.
    filling: bool,
    /// The waiting maker thread (`None`: none, or it ended).
    maker: Option<mpsc::Sender<()>>,
    /// The maker thread's id (for the tests to find it).
    #[cfg(test)]
    maker_tid: Option<i32>,
}

impl SpareNetns {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts making a spare unless one is ready or being made.
    pub(crate) fn refill(self: &Arc<Self>) {
        let mut st = self.state();
        if st.filling || st.spare.is_some() {
            return;
        }
        st.filling = true;
        if let Some(maker) = &st.maker {
            if maker.send(()).is_ok() {
                return;
            }
            st.maker = None;
        }
        let (tx, rx) = mpsc::channel();
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("crownest-netns".into())
            .spawn(move || maker(&me, &rx));
        match spawned {
            Ok(_) => st.maker = Some(tx),
            Err(_) => st.filling = false,
        }
    }

    /// The spare, if one is ready.
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        self.state().spare.take()
    }
}

/// The maker thread: a spare now, then one per message, until the backend is gone (its
/// sender dropped) or the thread cannot go back to the namespace it started in.
fn maker(spare: &Weak<SpareNetns>, next: &mpsc::Receiver<()>) {
    #[cfg(test)]
    if let Some(spare) = spare.upgrade() {
        spare.state().maker_tid = Some(rustix::thread::gettid().as_raw_nonzero().get());
    }
    let home = own_netns();
    loop {
        let made = make();
        if let Err(e) = &made {
            tracing::debug!(error = %e, "making a spare network namespace failed");
        }
        // Back home before the spare is handed out; a thread that cannot go back ends.
        let back = home.as_ref().is_ok_and(|h| {
            rustix::thread::move_into_link_name_space(
                h.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .is_ok()
        });
        let Some(spare) = spare.upgrade() else {
            return;
        };
        {
            let mut st = spare.state();
            st.spare = made.ok();
            st.filling = false;
            if !back {
                st.maker = None;
            }
        }
        drop(spare);
        if !back || next.recv().is_err() {
            return;
        }
    }
}

/// The namespace this thread is in, by a descriptor.
fn own_netns() -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/proc/thread-self/ns/net",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// A new network namespace, held by a descriptor (this thread is in it afterwards).
fn make() -> std::io::Result<OwnedFd> {
    // SAFETY: only the network namespace of this thread changes (no descriptor table, file
    // system or memory is unshared); the thread makes no socket, and goes back to its own
    // namespace (or ends) right after.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)? };
    own_netns()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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

    /// The maker thread outlives each spare and is back in the process's own namespace
    /// between refills (a thread left in a spare would hand out its namespace twice).
    #[test]
    fn the_maker_thread_goes_back_home_and_makes_the_next_spare() {
        let spare = Arc::new(SpareNetns::default());
        spare.refill();
        let Some(first) = ready(&spare) else {
            assert!(
                !rustix::process::geteuid().is_root(),
                "as root a network namespace can be made"
            );
            return;
        };
        // This spare's maker only: other tests' makers may be making one right now.
        let tid = spare.state().maker_tid.unwrap();
        let own = rustix::fs::stat("/proc/self/ns/net").unwrap().st_ino;
        let maker = std::path::Path::new("/proc/thread-self/..").join(tid.to_string());
        let comm = std::fs::read_to_string(maker.join("comm")).unwrap();
        assert_eq!(
            comm.trim(),
            "crownest-netns",
            "the maker thread is still there"
        );
        assert_eq!(
            rustix::fs::stat(maker.join("ns/net")).unwrap().st_ino,
            own,
            "the maker thread is back in the process's namespace"
        );
        spare.refill();
        let second = ready(&spare).unwrap();
        assert_ne!(
            rustix::fs::fstat(second.as_fd()).unwrap().st_ino,
            rustix::fs::fstat(first.as_fd()).unwrap().st_ino,
            "the next spare is a new namespace"
        );
    }
}
