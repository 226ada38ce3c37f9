//! The host key that signs evidence (`crownest evidence RUN --dsse`, `crownest serve`): an
//! ed25519 seed in `<home>/host-key.ed25519` (mode 0600), created on first use.

use std::path::{Path, PathBuf};

use crownest_core::signing::{HostKey, HostPublicKey};

use crate::connection::Target;
use crate::exit::usage;

/// File name of the host key in the home directory.
pub(crate) const HOST_KEY_FILE: &str = "host-key.ed25519";

/// The key at `explicit` (which must exist: a mistyped path never mints a new key), else the
/// home's (created when missing).
pub(crate) fn signing_key(home: &Path, explicit: Option<&Path>) -> anyhow::Result<HostKey> {
    if let Some(p) = explicit {
        return HostKey::load(p).map_err(|e| usage(format!("--key: {}", e.chain())));
    }
    std::fs::create_dir_all(home)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", home.display()))?;
    Ok(HostKey::load_or_create(&home.join(HOST_KEY_FILE))?)
}

/// The public key that `verify --dsse` checks against: `--public-key` (64 hex digits, or a
/// file holding them), else the server's (with `--server`), else the home's host key.
pub(crate) async fn verifying_key(
    target: &Target,
    explicit: Option<&str>,
) -> anyhow::Result<HostPublicKey> {
    if let Some(arg) = explicit {
        let text = match std::fs::read_to_string(arg) {
            Ok(t) => t,
            Err(_) if !Path::new(arg).exists() => arg.to_owned(),
            Err(e) => return Err(usage(format!("--public-key {arg}: {e}"))),
        };
        return HostPublicKey::parse(&text).map_err(|e| usage(format!("--public-key: {e}")));
    }
    if let Some(client) = target.server() {
        let key = client
            .host_key()
            .await?
            .ok_or_else(|| usage("the server has no host key; pass --public-key"))?;
        eprintln!(
            "crownest: verify: checking against the key the server reports ({}); that proves \
             the envelope matches the server, not that the server is honest: pass \
             --public-key with a key you hold to check the signer",
            key.key_id()
        );
        return Ok(key);
    }
    let path: PathBuf = target.home()?.join(HOST_KEY_FILE);
    if !path.exists() {
        return Err(usage(format!(
            "no host key at {}; pass --public-key",
            path.display()
        )));
    }
    Ok(HostKey::load(&path)?.public_key())
}

/// `crownest host-key [--pem]`: the public key that signs evidence (the home's, created on
/// first use; with `--server`, the server's).
pub(crate) async fn print(
    target: &Target,
    args: crate::cli::HostKeyArgs,
) -> anyhow::Result<crate::exit::Exit> {
    let key = match target.server() {
        Some(client) => client
            .host_key()
            .await?
            .ok_or_else(|| usage("the server has no host key"))?,
        None => signing_key(&target.home()?, None)?.public_key(),
    };
    if args.pem {
        print!("{}", key.to_pem());
    } else {
        println!("{}", key.to_hex());
    }
    Ok(crate::exit::Exit::Success)
}
