//! The run spec from `crownest run`'s flags (and its secrets from their sources).

use crownest_core::{RunSpec, SecretValue};

use crate::cli::RunArgs;
use crate::exit::usage;

/// Builds the run spec from the arguments.
pub(super) fn spec(args: &RunArgs) -> anyhow::Result<RunSpec> {
    let mut spec = RunSpec::new(args.command.clone())
        .with_template(args.template.clone())
        .with_cwd(args.cwd.clone());
    if let Some(b) = &args.backend {
        spec = spec.with_backend(b.clone());
    }
    for a in &args.artifacts {
        spec = spec.with_artifact(a.clone(), false);
    }
    for a in &args.required_artifacts {
        spec = spec.with_artifact(a.clone(), true);
    }
    if let Some(t) = args.timeout {
        spec = spec.with_timeout_ms(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    }
    if let Some(k) = args.keep_sandbox {
        spec = spec.with_keep_sandbox(u64::try_from(k.as_millis()).unwrap_or(u64::MAX));
    }
    for kv in &args.env {
        match kv.split_once('=') {
            Some((k, v)) => spec = spec.with_env(k, v),
            None => match std::env::var(kv) {
                Ok(v) => spec = spec.with_env(kv.clone(), v),
                Err(_) => {
                    return Err(usage(format!(
                        "--env {kv}: not set in this environment (use --env {kv}=VALUE)"
                    )));
                }
            },
        }
    }
    for kv in &args.labels {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("--label {kv}: give K=V")))?;
        if k.is_empty() {
            return Err(usage(format!("--label {kv}: the key is empty")));
        }
        spec.labels.insert(k.to_owned(), v.to_owned());
    }
    if let Some(n) = &args.network {
        spec.network = match n.as_str() {
            "enabled" => crownest_core::Network::Enabled,
            _ => crownest_core::Network::None,
        };
    }
    spec.idempotency_key.clone_from(&args.idempotency_key);
    if args.memory.is_some() {
        spec.limits.memory_bytes = args.memory;
    }
    if args.output_limit.is_some() {
        spec.limits.output_bytes_per_stream = args.output_limit;
    }
    if args.pids.is_some() {
        spec.limits.pids = args.pids;
    }
    if args.open_files.is_some() {
        spec.limits.open_files = args.open_files;
    }
    if let Some(g) = args.kill_grace {
        spec.limits.kill_grace_ms = Some(u64::try_from(g.as_millis()).unwrap_or(u64::MAX));
    }
    for (name, value) in secrets(args)? {
        spec = spec.with_secret(name, value);
    }
    Ok(spec)
}

/// The `--secret` and `--secret-file` values, read from this environment and from files
/// (never from argv, which `ps` shows). Messages name the variable, never its value.
fn secrets(args: &RunArgs) -> anyhow::Result<Vec<(String, SecretValue)>> {
    let mut out: Vec<(String, SecretValue)> = Vec::new();
    for name in &args.secrets {
        if name.contains('=') {
            let name = name.split('=').next().unwrap_or_default();
            return Err(usage(format!(
                "--secret takes a variable name, not a value: export {name} and pass \
                 --secret {name}, or use --secret-file {name}=PATH (a value on the command \
                 line is visible to every user in `ps`)"
            )));
        }
        let value = match std::env::var(name) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                return Err(usage(format!(
                    "--secret {name}: {name} is not set in this environment"
                )));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(usage(format!(
                    "--secret {name}: the value of {name} is not UTF-8"
                )));
            }
        };
        out.push((name.clone(), SecretValue::new(value)));
    }
    for kv in &args.secret_files {
        let Some((name, path)) = kv.split_once('=') else {
            return Err(usage(format!("--secret-file {kv}: expected K=PATH")));
        };
        let mut bytes = std::fs::read(path)
            .map_err(|e| usage(format!("--secret-file {name}: reading {path}: {e}")))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        let value = String::from_utf8(bytes)
            .map_err(|_| usage(format!("--secret-file {name}: {path} is not UTF-8 text")))?;
        out.push((name.to_owned(), SecretValue::new(value)));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &out {
        if !seen.insert(name.as_str()) {
            return Err(usage(format!("secret {name} is given twice")));
        }
    }
    Ok(out)
}
