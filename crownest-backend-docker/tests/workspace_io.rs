//! What goes into `/workspace` (links of the archive, ownership) and what comes out of it
//! (artifacts: files, directory tars, symlinks never followed, size caps).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};

use crownest_core::archive::ExtractPolicy;
use crownest_core::event::ArtifactErrorReason;
use crownest_core::run::ArtifactKind;
use crownest_core::{ExitStatus, Limits};

/// A `.tar.gz` with a file, a relative symlink to it and a hardlink to it.
/// Puts [`archive_with_links`] in the sandbox's workspace.
async fn materialize_links(sb: &dyn crownest_core::Sandbox) {
    sb.materialize(
        crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive_with_links()))),
        &ExtractPolicy::default(),
        &|_| {},
    )
    .await
    .unwrap();
}

fn archive_with_links() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(19);
    b.append_data(&mut h, "bin/tool.sh", &b"#!/bin/sh\necho tool"[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, "tool", "bin/tool.sh").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_link(&mut h, "bin/again.sh", "bin/tool.sh")
        .unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_links_work_inside_the_container() {
    let Some(b) = common::backend().await else {
        return;
    };
    let sb = crownest_core::SandboxBackend::create(&b, &common::sandbox_spec(Limits::default()))
        .await
        .unwrap();
    let summary = sb
        .materialize(
            crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(
                archive_with_links(),
            ))),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        (summary.files, summary.symlinks, summary.hardlinks),
        (1, 1, 1),
        "{summary:?}"
    );
    let sink = common::CollectSink::default();
    let code = "import os\nprint(os.readlink('tool'), os.stat('bin/again.sh').st_ino == os.stat('bin/tool.sh').st_ino)";
    let out = sb
        .exec(
            &common::request(&["sh", "-c", &format!("./tool && python3 -c \"{code}\"")]),
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        String::from_utf8_lossy(&sink.stderr.lock().unwrap())
    );
    assert_eq!(sink.stdout(), "tool\nbin/tool.sh True\n");
    let id = sb.id().to_owned();
    sb.destroy().await.unwrap();
    common::assert_gone(&b, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_never_follow_links_and_respect_caps() {
    let Some(b) = common::backend().await else {
        return;
    };
    let sb = common::sandbox(&b, Limits::default()).await;
    let code = "import os\n\
                os.makedirs('d/sub'); open('d/a.txt', 'w').write('A'); open('d/sub/b.txt', 'w').write('BB')\n\
                os.symlink('/etc/passwd', 'd/link'); os.symlink('/etc', 'esc'); os.symlink('d', 'inner')\n\
                os.mkfifo('fifo'); open('big', 'wb').write(b'x' * 2_000_000)";
    let sink = common::CollectSink::default();
    let out = sb
        .exec(&common::request(&["python3", "-c", code]), &sink)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        String::from_utf8_lossy(&sink.stderr.lock().unwrap())
    );

    // A file.
    let a = sb.collect_artifact("d/sub/b.txt", 1024).await.unwrap();
    assert_eq!((a.kind, a.size_bytes), (ArtifactKind::File, 2));
    let mut s = String::new();
    { a.reader }.read_to_string(&mut s).unwrap();
    assert_eq!(s, "BB");

    // A directory: a tar of its regular files; the symlink inside is skipped and reported.
    let d = sb.collect_artifact("d", 1 << 20).await.unwrap();
    assert_eq!(d.kind, ArtifactKind::Directory);
    assert!(
        d.skipped.iter().any(|s| s.path.ends_with("link")
            && s.reason == crownest_core::artifact::SkipReason::Symlink),
        "{:?}",
        d.skipped
    );
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(d.reader);
    for e in ar.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(
        names.iter().any(|n| n.ends_with("a.txt"))
            && names.iter().any(|n| n.ends_with("sub/b.txt")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with("link")), "{names:?}");

    // Links are never followed: not as the artifact, not as a parent directory.
    let err = sb
        .collect_artifact("esc/passwd", 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::EscapesWorkspace, "{err:?}");
    let err = sb.collect_artifact("d/link", 1 << 20).await.unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::EscapesWorkspace, "{err:?}");
    let err = sb
        .collect_artifact("inner/a.txt", 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::NotRegular, "{err:?}");
    // Special files and caps.
    let err = sb.collect_artifact("fifo", 1 << 20).await.unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::NotRegular, "{err:?}");
    let err = sb.collect_artifact("big", 1_000_000).await.unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::TooLarge, "{err:?}");
    let err = sb.collect_artifact("nope/x", 10).await.unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::NotFound, "{err:?}");
    let err = sb.collect_artifact("../etc/passwd", 10).await.unwrap_err();
    assert_eq!(err.reason, ArtifactErrorReason::InvalidPath, "{err:?}");

    let id = sb.id().to_owned();
    sb.destroy().await.unwrap();
    common::assert_gone(&b, &id).await;
    let leftovers: Vec<_> = std::fs::read_dir(&b.config().work_dir)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&id))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "host staging left behind: {leftovers:?}"
    );
}

/// Runs the `docker` command line; panics with its output when it fails.
fn docker_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_tar_gets_the_workspace_through_the_archive_upload() {
    let Some(_) = common::backend().await else {
        return;
    };
    // The python-node image without tar: its launcher cannot unpack the workspace itself
    // (step 0 of `launcher.rs`), so the backend falls back to Docker's archive upload.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (maker, image) = (
        format!("crownest-test-notar-{id}"),
        format!("crownest-test/no-tar:{id}"),
    );
    docker_cli(&[
        "run",
        "--name",
        &maker,
        "--user",
        "0",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        crownest_backend_docker::DEFAULT_IMAGE,
        "-c",
        "rm -f /usr/bin/tar /bin/tar",
    ]);
    docker_cli(&["commit", &maker, &image]);
    docker_cli(&["rm", &maker]);
    // Through the launcher (not from the host), whose image lacks `tar`.
    let b = crownest_backend_docker::DockerBackend::connect(
        crownest_backend_docker::DockerConfig::default()
            .with_template("no-tar", &image)
            .with_host_placement(false),
    )
    .await
    .unwrap();
    let spec = crownest_core::SandboxSpec {
        template: "no-tar".into(),
        ..common::sandbox_spec(Limits::default())
    };
    let sb = crownest_core::SandboxBackend::create(&b, &spec)
        .await
        .unwrap();
    materialize_links(sb.as_ref()).await;
    let sink = common::CollectSink::default();
    let out = sb
        .exec(
            &common::request(&[
                "sh",
                "-c",
                "./tool; command -v tar || echo no tar; id -u; stat -c %u bin/tool.sh",
            ]),
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Exited(0));
    assert_eq!(sink.stdout(), "tool\nno tar\n10001\n10001\n");
    let sandbox = sb.id().to_owned();
    sb.destroy().await.unwrap();
    common::assert_gone(&b, &sandbox).await;
    docker_cli(&["rmi", &image]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_without_a_workspace_ends_the_offer_made_before_the_start() {
    let Some(_) = common::backend().await else {
        return;
    };
    // The launcher's hand-over (the offer is made only when the workspace is not written
    // from the host).
    let b = crownest_backend_docker::DockerBackend::connect(
        crownest_backend_docker::DockerConfig::default().with_host_placement(false),
    )
    .await
    .unwrap();
    // Every container is attached before its start with the workspace offered (step 0 of
    // `launcher.rs`); a command that comes without `materialize` must end that offer
    // (an empty archive) before its frame, and find the workspace untouched.
    let sb = crownest_core::SandboxBackend::create(&b, &common::sandbox_spec(Limits::default()))
        .await
        .unwrap();
    let out = common::exec_ok(
        sb.as_ref(),
        &["sh", "-c", "ls -A | wc -l; stat -c '%a %u' ."],
    )
    .await;
    assert_eq!(out, "0\n755 10001\n");
    common::destroy_gone(&b, sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_lookups_are_kept_per_image_in_the_private_work_root() {
    let Some(_) = common::backend().await else {
        return;
    };
    // A work root of its own, so the kept answers are this test's.
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("docker");
    let connect = || {
        crownest_backend_docker::DockerBackend::connect(
            crownest_backend_docker::DockerConfig::default().with_work_dir(&work),
        )
    };
    // Runs the unknown program in a fresh sandbox of `b`: the `spawn_failed` message.
    let spawn_failure = |b: crownest_backend_docker::DockerBackend| async move {
        let sb = common::sandbox(&b, Limits::default()).await;
        let sink = common::CollectSink::default();
        let out = sb
            .exec(&common::request(&["no-such-program-here"]), &sink)
            .await
            .unwrap();
        sb.destroy().await.unwrap();
        match out.status {
            ExitStatus::SpawnFailed(m) => m,
            other => panic!("{other:?}"),
        }
    };
    // The preflight's own message: nothing was started.
    let m = spawn_failure(connect().await.unwrap()).await;
    assert!(m.contains("not found in PATH"), "{m}");
    let kept: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("paths-"))
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let answers: std::collections::HashMap<String, Option<u32>> =
        serde_json::from_slice(&std::fs::read(&kept[0]).unwrap()).unwrap();
    assert_eq!(answers.get("/usr/bin/no-such-program-here"), Some(&None));
    // The next backend (another process, as far as it knows) believes the kept answers: a
    // forged entry makes the preflight pass, and the launcher itself reports the program
    // missing. (The work root is private to this user: nobody else can forge it.)
    let mut forged = answers.clone();
    forged.insert("/usr/local/bin/no-such-program-here".into(), Some(0o755));
    std::fs::write(&kept[0], serde_json::to_vec(&forged).unwrap()).unwrap();
    let m = spawn_failure(connect().await.unwrap()).await;
    assert!(!m.contains("not found in PATH"), "{m}");
    assert!(m.starts_with("crownest-launcher"), "{m}");
}

/// What `/workspace` holds, entry by entry: path, type, mode, owner, mtime (whole
/// seconds), link target, link count.
const LISTING: &str = "find . -printf '%p %y %m %u:%g %TY-%Tm-%Td_%TH:%TM:%.2TS %l %n\\n' | sort";

async fn listing_after_hand_over(host_placement: bool) -> String {
    let b = crownest_backend_docker::DockerBackend::connect(
        crownest_backend_docker::DockerConfig::default().with_host_placement(host_placement),
    )
    .await
    .unwrap();
    // As root against the local engine (CI), the host copy must really be the one used.
    if host_placement && rustix::process::geteuid().is_root() && common::docker_required() {
        assert!(b.places_workspaces_from_host());
    }
    assert!(host_placement || !b.places_workspaces_from_host());
    let sb = crownest_core::SandboxBackend::create(&b, &common::sandbox_spec(Limits::default()))
        .await
        .unwrap();
    materialize_links(sb.as_ref()).await;
    let listing = common::exec_ok(sb.as_ref(), &["sh", "-c", LISTING]).await;
    common::destroy_gone(&b, sb).await;
    listing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_written_from_the_host_is_the_one_the_launcher_unpacks() {
    let Some(_) = common::backend().await else {
        return;
    };
    // The same archive through both hand-overs: the launcher's `tar -x -p` in the
    // container, and the copy into the volume from the host (`place.rs`, used when this
    // test runs as root against the local engine). Types, modes, owners, mtimes, link
    // targets and link counts must match, entry for entry.
    let launcher = listing_after_hand_over(false).await;
    let host = listing_after_hand_over(true).await;
    assert!(
        launcher.contains("./bin/tool.sh f 755 crownest:crownest"),
        "{launcher}"
    );
    assert!(launcher.contains("./tool l 777"), "{launcher}");
    // The mtimes of the root, the directories and the symlinks are the staging tree's (the
    // time of the extraction), so they differ between the two runs; everything else,
    // including each symlink's target, must not.
    let strip = |l: &str| -> Vec<String> {
        l.lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                if f.get(1) == Some(&"d") || f.get(1) == Some(&"l") {
                    let rest = f.get(5..).unwrap_or_default().join(" ");
                    format!("{} {} {} {} {rest}", f[0], f[1], f[2], f[3])
                } else {
                    line.to_owned()
                }
            })
            .collect()
    };
    assert_eq!(
        strip(&host),
        strip(&launcher),
        "host:\n{host}\nlauncher:\n{launcher}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_of_thousands_of_directories_is_placed_with_few_descriptors() {
    let Some(b) = common::backend().await else {
        return;
    };
    // 3 000 directories (one file each) under a soft limit of 2 048 descriptors for this
    // process: a copy that held a descriptor per directory would fail with EMFILE. (The
    // other tests of this binary need far fewer.)
    let mut tar = tar::Builder::new(Vec::new());
    for i in 0..3000 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(1);
        tar.append_data(&mut h, format!("d{}/e{i}/f.txt", i % 30), &b"x"[..])
            .unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let archive = gz.finish().unwrap();
    let before = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(2048),
            maximum: before.maximum,
        },
    )
    .unwrap();
    let sb = crownest_core::SandboxBackend::create(&b, &common::sandbox_spec(Limits::default()))
        .await
        .unwrap();
    let placed = sb
        .materialize(
            crownest_core::ArchiveSource::Archive(Box::new(std::io::Cursor::new(archive))),
            &ExtractPolicy::default(),
            &|_| {},
        )
        .await;
    rustix::process::setrlimit(rustix::process::Resource::Nofile, before).unwrap();
    placed.unwrap();
    let counts = common::exec_ok(
        sb.as_ref(),
        &["sh", "-c", "find . -type d | wc -l; find . -type f | wc -l"],
    )
    .await;
    // The root, 30 `d*` and 3 000 `e*` directories; 3 000 files.
    assert_eq!(counts, "3031\n3000\n");
    common::destroy_gone(&b, sb).await;
}
