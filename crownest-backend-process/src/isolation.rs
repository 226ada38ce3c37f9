//! The isolation details a process sandbox reports (rlimits, environment, descriptors,
//! containment and its fallbacks, what the command holds over the host).

use std::collections::BTreeMap;

use crate::containment::Applied;
use crate::privilege::HostPrivilege;
use crate::sandbox::ProcessSandbox;

impl ProcessSandbox {
    pub(crate) fn isolation_details(&self) -> BTreeMap<String, String> {
        let r = self.rlimits();
        let mut d = BTreeMap::new();
        d.insert(
            "rlimits".into(),
            format!(
                "nofile={} core=0 fsize={}",
                r.open_files.unwrap_or(0),
                r.file_size.unwrap_or(0)
            ),
        );
        d.insert(
            "env".into(),
            "cleared; PATH, HOME, LANG, TMPDIR + the spec's env".into(),
        );
        d.insert("stdin".into(), "null".into());
        d.insert(
            "descriptors".into(),
            "only 0, 1, 2 inherited (every other descriptor is closed at exec)".into(),
        );
        d.insert(
            "filesystem".into(),
            "host filesystem visible (not isolated)".into(),
        );
        d.insert("sandboxDir".into(), self.host.display().to_string());
        if let Applied::PidNamespace { user, .. } = self.applied() {
            d.insert("userNamespace".into(), user.to_string());
        }
        if let Applied::Cgroup { parent } = self.applied() {
            d.insert("cgroupParent".into(), parent.display().to_string());
        }
        let (probe, reprobe_note, privilege) = {
            let st = self.state();
            (st.probe.clone(), st.reprobe_note.clone(), st.privilege)
        };
        // Before the first exec: what a spawn now would apply.
        let privilege = privilege.unwrap_or_else(|| {
            HostPrivilege::for_spawn(matches!(
                probe.applied,
                Applied::PidNamespace { user: true, .. }
            ))
        });
        d.insert("hostPrivilege".into(), privilege.describe());
        if privilege.no_new_privs() {
            d.insert("noNewPrivileges".into(), "true".into());
        }
        if !probe.notes.is_empty() {
            d.insert("containmentFallback".into(), probe.notes.join("; "));
        }
        if let Some(note) = reprobe_note {
            d.insert("containmentReprobed".into(), note);
        }
        d
    }
}
