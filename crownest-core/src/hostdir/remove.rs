//! Removing host directories: a tree the command may have made read-only, and a sandbox
//! directory through a tombstone.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Removes a directory tree. When a removal is refused, every directory in the tree is made
/// writable and searchable first (the command, or the archive, may have left read-only
/// directories) and the removal is retried. Symlinks are removed, never followed. Succeeds
/// when the tree is gone, also when it never existed; an error when anything is left.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => {
            make_writable(dir);
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if std::fs::symlink_metadata(dir).is_ok() {
        return Err(io::Error::other(format!(
            "{} still exists after removal",
            dir.display()
        )));
    }
    Ok(())
}

/// Name prefix of a sandbox directory being removed by [`remove_via_tombstone`].
pub const TOMBSTONE_PREFIX: &str = ".removing-";

/// Removes a sandbox directory in two steps: renamed to `.removing-<name>` next to it (one
/// atomic step), then deleted with [`remove_tree`]. A removal killed half-way so never
/// leaves a sandbox whose marker file is already gone but whose directory still looks like
/// a sandbox; a sweep deletes any `.removing-` directory it finds. Gone already is fine.
pub fn remove_via_tombstone(dir: &Path) -> io::Result<()> {
    let tombstone = match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => {
            parent.join(format!("{TOMBSTONE_PREFIX}{}", name.to_string_lossy()))
        }
        _ => return remove_tree(dir),
    };
    match std::fs::rename(dir, &tombstone) {
        Ok(()) => remove_tree(&tombstone),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => remove_tree(dir),
    }
}

fn make_writable(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn remove_tree_handles_read_only_dirs_and_never_follows_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let d = tmp.path().join("t");
        std::fs::create_dir_all(d.join("ro/inner")).unwrap();
        std::fs::write(d.join("ro/inner/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("ro/link")).unwrap();
        std::fs::set_permissions(d.join("ro/inner"), std::fs::Permissions::from_mode(0o500))
            .unwrap();
        std::fs::set_permissions(d.join("ro"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&d).unwrap();
        assert!(!d.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k");
        remove_tree(&d).unwrap(); // gone already: fine
    }

    #[test]
    fn removal_goes_through_a_tombstone() {
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = tmp.path().join("run_w-4");
        std::fs::create_dir_all(sandbox.join("workspace/sub")).unwrap();
        remove_via_tombstone(&sandbox).unwrap();
        assert!(!sandbox.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        remove_via_tombstone(&sandbox).unwrap(); // gone already: fine
    }
}
