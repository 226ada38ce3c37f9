//! Templates of a host application's own: a name → an image it built, listed by
//! `templates()`, checked at `create`, and used for the run (identity in the evidence).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{output_of, py, run};
use crownest_backend_docker::{DEFAULT_IMAGE, DockerBackend, DockerConfig};
use crownest_core::{EventKind, OutputStream, RunStatus, SandboxBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_template_is_listed_checked_and_used() {
    let Some(default) = common::backend().await else {
        return;
    };
    // The host application's own image: here the default image under another name.
    let mine = "crownest/python-node:templates-test";
    let (repo, tag) = mine.split_once(':').unwrap();
    default
        .docker()
        .tag_image(
            DEFAULT_IMAGE,
            Some(
                bollard::query_parameters::TagImageOptionsBuilder::new()
                    .repo(repo)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .unwrap();
    let config = DockerConfig::default()
        .with_template("my-tools", mine)
        .with_template("not-built", "crownest/no-such-image:latest");
    let b = DockerBackend::connect(config).await.unwrap();

    let listed = b.templates().await.unwrap();
    let names: Vec<_> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["my-tools", "not-built", "python-node"]);
    let state = |n: &str| listed.iter().find(|t| t.name == n).unwrap();
    assert!(state("my-tools").available && state("python-node").available);
    // A missing image makes only its own template unavailable, and says how to get it.
    assert!(!state("not-built").available);
    let why = state("not-built").reason.clone().unwrap();
    assert!(why.contains("crownest/no-such-image:latest") && why.contains("nothing is pulled"));
    let image = |n: &str| {
        state(n)
            .identity
            .as_ref()
            .and_then(|i| i.facts.get("image").cloned())
    };
    assert_eq!(image("my-tools").as_deref(), Some(mine));
    assert_eq!(image("python-node").as_deref(), Some(DEFAULT_IMAGE));

    // The run on the registered template uses it, and its environment event says so.
    let (done, events) = run(&b, py("print('on my-tools')").with_template("my-tools")).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.failure);
    assert_eq!(output_of(&events, OutputStream::Stdout), "on my-tools\n");
    let used: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Environment { identity, .. } => identity
                .as_ref()
                .and_then(|i| i.facts.get("image").cloned()),
            _ => None,
        })
        .collect();
    assert_eq!(used.last().map(String::as_str), Some(mine), "{used:?}");

    // An unknown name is refused at create, naming what the backend serves.
    let mut spec = common::sandbox_spec(Default::default());
    spec.template = "nope".into();
    let Err(err) = b.create(&spec).await else {
        panic!("an unknown template is refused")
    };
    let text = err.chain();
    assert!(
        text.contains("\"nope\"")
            && text.contains("\"my-tools\"")
            && text.contains("\"python-node\""),
        "{text}"
    );

    let _ = default
        .docker()
        .remove_image(
            mine,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}
