//! What the command may hold over the host ([`HostPrivilege`]), decided before the fork,
//! and dropping it in the child right before exec ([`HostPrivilege::drop_in_child`]).
//!
//! A host process that runs as root (or holds any capability) would otherwise hand its
//! command real privilege over the host: `setns` into the host's namespaces (so
//! `network: none` would be a claim, not a fact), `ptrace` of host processes, mounts, raw
//! devices, module loading. Whenever the backend holds privilege, and whenever the command
//! gets its own user namespace (where it would hold every capability of that namespace),
//! the command therefore starts with:
//!
//! 1. an empty bounding set (`PR_CAPBSET_DROP` for every capability the kernel knows; needs
//!    `CAP_SETPCAP`, which root normally has and a new user namespace always has),
//! 2. an empty ambient set (`PR_CAP_AMBIENT_CLEAR_ALL`),
//! 3. empty effective, permitted and inheritable sets (`capset`; lowering is always allowed),
//! 4. `no_new_privs` (`PR_SET_NO_NEW_PRIVS`): exec never grants a capability again, neither
//!    the full set the kernel gives uid 0 at exec nor a setuid or file-capability binary's.
//!
//! Steps 2–4 need no privilege, so the command holds no capability after exec even where
//! the bounding set cannot be emptied; that case is reported (`bounding set kept`). A step
//! that fails fails the spawn: the command never runs with more than the report says.
//!
//! What this does **not** change: the command keeps the uid of the host process. A uid 0
//! without capabilities still owns root's files (it can read, write and `chmod` them, and
//! connect to root's unix sockets), and outside a PID namespace it can signal root's
//! processes. See the crate docs.

use std::io;

/// What the command holds over the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostPrivilege {
    /// The host process is not root and holds no capability, and the command gets no user
    /// namespace: there is nothing to drop.
    Unprivileged {
        /// The (effective) uid the command runs as.
        uid: u32,
    },
    /// Every capability is dropped in the child and `no_new_privs` is set (see the module
    /// docs).
    Dropped {
        /// The (effective) uid the command runs as.
        uid: u32,
        /// The bounding set is emptied too.
        bounding: bool,
    },
}

/// The credentials of the spawning thread that the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// Real, effective and saved uid.
    pub(crate) uids: [u32; 3],
    /// Any capability in the effective, permitted or inheritable set (the ambient set is a
    /// subset of permitted ∩ inheritable).
    pub(crate) holds_capabilities: bool,
    /// `CAP_SETPCAP` is effective (needed to empty the bounding set).
    pub(crate) setpcap: bool,
}

impl Credentials {
    /// The calling thread's credentials (capabilities are per thread; the spawning thread
    /// is the one that forks).
    pub(crate) fn current() -> Self {
        let (mut r, mut e, mut s) = (0, 0, 0);
        // SAFETY: valid pointers to locals.
        let uids = if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } == 0 {
            [r, e, s]
        } else {
            let euid = rustix::process::geteuid().as_raw();
            [euid, euid, euid]
        };
        let (holds_capabilities, setpcap) = match rustix::thread::capabilities(None) {
            Ok(sets) => (
                !(sets.effective | sets.permitted | sets.inheritable).is_empty(),
                sets.effective
                    .contains(rustix::thread::CapabilitySet::SETPCAP),
            ),
            // Unknown: assume privilege, so that it is dropped (the bounding set only when
            // we are root, where CAP_SETPCAP is the norm; a failure then fails the spawn).
            Err(_) => (true, uids[1] == 0),
        };
        Self {
            uids,
            holds_capabilities,
            setpcap,
        }
    }
}

impl HostPrivilege {
    /// What a command spawned now by this thread gets; `user_namespace`: the command runs
    /// in a new user namespace (where it starts with every capability of that namespace).
    pub(crate) fn for_spawn(user_namespace: bool) -> Self {
        Self::decide(Credentials::current(), user_namespace)
    }

    /// The rule: anything that could be privilege is dropped; the bounding set too when
    /// that is possible (`CAP_SETPCAP` on the host, or a new user namespace, which grants
    /// it).
    pub(crate) fn decide(creds: Credentials, user_namespace: bool) -> Self {
        let uid = creds.uids[1];
        let root = creds.uids.contains(&0);
        if root || creds.holds_capabilities || user_namespace {
            Self::Dropped {
                uid,
                bounding: creds.setpcap || user_namespace,
            }
        } else {
            Self::Unprivileged { uid }
        }
    }

    /// The `hostPrivilege` value of the isolation report.
    pub(crate) fn describe(&self) -> String {
        match *self {
            Self::Unprivileged { uid } => format!("none held: uid {uid} without capabilities"),
            Self::Dropped {
                uid,
                bounding: true,
            } => format!(
                "uid {uid}, every capability dropped (bounding, effective, permitted, \
                 inheritable, ambient), no_new_privs"
            ),
            Self::Dropped {
                uid,
                bounding: false,
            } => format!(
                "uid {uid}, capabilities dropped (effective, permitted, inheritable, ambient), \
                 no_new_privs; bounding set kept (the host process lacks CAP_SETPCAP)"
            ),
        }
    }

    /// True when `no_new_privs` is set.
    pub(crate) fn no_new_privs(&self) -> bool {
        matches!(self, Self::Dropped { .. })
    }

    /// Drops what [`Self::decide`] said, in the child.
    ///
    /// # Safety
    ///
    /// Call only between fork and exec. Makes only async-signal-safe system calls and does
    /// not allocate.
    pub(crate) unsafe fn drop_in_child(&self) -> io::Result<()> {
        let Self::Dropped { bounding, .. } = *self else {
            return Ok(());
        };
        // SAFETY (whole block): prctl/capset on this (child) thread only.
        unsafe {
            if bounding {
                // Capability numbers are dense from 0; the first the kernel does not know
                // answers EINVAL.
                for cap in 0..64 as libc::c_ulong {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                            break;
                        }
                        return Err(e);
                    }
                }
            }
            let clear_all = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
            if libc::prctl(libc::PR_CAP_AMBIENT, clear_all, 0, 0, 0) != 0 {
                let e = io::Error::last_os_error();
                // Linux < 4.3 has no ambient set.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
            let none = rustix::thread::CapabilitySet::empty();
            rustix::thread::set_capabilities(
                None,
                rustix::thread::CapabilitySets {
                    effective: none,
                    permitted: none,
                    inheritable: none,
                },
            )?;
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uids: [u32; 3], holds_capabilities: bool, setpcap: bool) -> Credentials {
        Credentials {
            uids,
            holds_capabilities,
            setpcap,
        }
    }

    #[test]
    fn root_drops_everything_it_can() {
        assert_eq!(
            HostPrivilege::decide(creds([0, 0, 0], true, true), false),
            HostPrivilege::Dropped {
                uid: 0,
                bounding: true
            }
        );
        // Root without CAP_SETPCAP (a restricted container): the bounding set stays.
        assert_eq!(
            HostPrivilege::decide(creds([0, 0, 0], true, false), false),
            HostPrivilege::Dropped {
                uid: 0,
                bounding: false
            }
        );
        // Root only as the saved uid could switch back: still dropped.
        assert!(matches!(
            HostPrivilege::decide(creds([1000, 1000, 0], false, false), false),
            HostPrivilege::Dropped { uid: 1000, .. }
        ));
    }

    #[test]
    fn capabilities_or_a_user_namespace_are_dropped_too() {
        assert!(matches!(
            HostPrivilege::decide(creds([1000; 3], true, false), false),
            HostPrivilege::Dropped {
                bounding: false,
                ..
            }
        ));
        assert_eq!(
            HostPrivilege::decide(creds([1000; 3], false, false), true),
            HostPrivilege::Dropped {
                uid: 1000,
                bounding: true
            }
        );
        assert_eq!(
            HostPrivilege::decide(creds([1000; 3], false, false), false),
            HostPrivilege::Unprivileged { uid: 1000 }
        );
    }

    #[test]
    fn the_description_says_what_was_kept() {
        let full = HostPrivilege::Dropped {
            uid: 0,
            bounding: true,
        };
        assert!(full.describe().contains("every capability dropped"));
        assert!(full.no_new_privs());
        let partial = HostPrivilege::Dropped {
            uid: 0,
            bounding: false,
        };
        assert!(partial.describe().contains("bounding set kept"));
        let none = HostPrivilege::Unprivileged { uid: 7 };
        assert!(none.describe().starts_with("none held: uid 7"));
        assert!(!none.no_new_privs());
    }
}
