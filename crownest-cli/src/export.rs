//! `crownest export RUN --out DIR`: everything an offline verifier needs, in the layout of
//! `docs/evidence.md` §8:
//!
//! | file | content |
//! |---|---|
//! | `events.jsonl` | every event, one JSON object per line, in seq order |
//! | `evidence.json` | the Evidence Bundle |
//! | `evidence.dsse.json` | the DSSE envelope signed in the terminal commit (when there is one) |
//! | `host-key.pem` | the public key of this home (or the server) when there is one |
//! | `artifacts/<artifactId>` | each artifact's stored bytes, re-hashed while written |
//!
//! Files are written to a temporary name and renamed into place; an artifact whose bytes
//! do not hash to its recorded sha256 is an error and never lands under its name. Nothing
//! is checked beyond that: `crownest verify` and `tools/verify-evidence.py` do.

use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use crownest_core::Sha256Digest;
use crownest_core::signing::HostPublicKey;
use sha2::{Digest as _, Sha256};

use crate::cli::ArtifactsArgs;
use crate::connection::{Connection, Target};
use crate::exit::{Exit, usage};
use crate::inspect::run_id;

/// `crownest export`.
pub(crate) async fn export(target: &Target, args: ArtifactsArgs) -> anyhow::Result<Exit> {
    let id = run_id(&args.run)?;
    let conn = target.open().await?;
    let record = conn.get(&id).await?;
    if !record.status.is_terminal() {
        return Err(usage(format!(
            "run {id} is {}: its evidence exists once it ends",
            record.status
        )));
    }
    let out = &args.out;
    std::fs::create_dir_all(out.join("artifacts"))
        .with_context(|| format!("creating {}", out.display()))?;

    let events = conn.all_events(&id).await?;
    let mut lines = Vec::new();
    for e in &events {
        serde_json::to_writer(&mut lines, e)?;
        lines.push(b'\n');
    }
    write_file(&out.join("events.jsonl"), &lines)?;
    let bundle = conn.evidence(&id).await?;
    write_file(
        &out.join("evidence.json"),
        &serde_json::to_vec_pretty(&bundle)?,
    )?;
    let envelope = match &conn {
        Connection::Local(engine) => engine.evidence_envelope(&id).await?,
        Connection::Remote(client) => client.evidence_dsse(&id).await.ok(),
    };
    if let Some(env) = &envelope {
        write_file(
            &out.join("evidence.dsse.json"),
            &serde_json::to_vec_pretty(env)?,
        )?;
    }
    let key: Option<HostPublicKey> = match &conn {
        Connection::Local(engine) => engine.host_public_key(),
        Connection::Remote(client) => client.host_key().await.ok().flatten(),
    };
    if let Some(k) = &key {
        write_file(&out.join("host-key.pem"), k.to_pem().as_bytes())?;
    }
    for a in &bundle.artifacts {
        let mut readers = conn.artifact_readers(&a.artifact_id, &a.sha256, 1).await?;
        let reader = readers.pop().context("no artifact reader")?;
        let path = out.join("artifacts").join(a.artifact_id.as_str());
        let expected = a.sha256.clone();
        tokio::task::spawn_blocking(move || copy_checked(reader, &path, &expected))
            .await
            .context("export task")??;
    }
    println!(
        "exported run {id} ({}): {} events, {} artifact(s){}{} into {}",
        bundle.status,
        events.len(),
        bundle.artifacts.len(),
        if envelope.is_some() {
            ", signed envelope"
        } else {
            ""
        },
        if key.is_some() { ", public key" } else { "" },
        out.display()
    );
    Ok(Exit::Success)
}

fn temp_of(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    path.with_file_name(name)
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = temp_of(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

fn copy_checked(
    mut reader: Box<dyn std::io::Read + Send>,
    path: &Path,
    expected: &Sha256Digest,
) -> anyhow::Result<()> {
    let tmp = temp_of(path);
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading an artifact"),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    let got = Sha256Digest::from_bytes(&hasher.finalize().into());
    if got != *expected {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!(
            "artifact {} hashes to {got}, its record says {expected}",
            path.display()
        );
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}
