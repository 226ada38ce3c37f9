//! `crownest serve`'s policy: which backends clients may choose (`--backends`), and the
//! engine maxima a run may ask for (`--max LIMIT=N`, `--max-concurrent-runs`). Pure
//! functions over the parsed arguments, so each rule is tested without a server.

use std::collections::BTreeMap;

use crownest_backend_process::BACKEND as PROCESS_BACKEND;
use crownest_core::EngineConfig;
use crownest_core::spec::Limits;

use crate::exit::usage;
use crate::home::BackendSlot;

/// The backends a server offers, in the order given (the first is the default of a run
/// that names none).
///
/// * `--backends` given: each must be a backend of this build that could be set up here
///   (else a usage error saying why); duplicates are dropped.
/// * not given: every usable backend but `process`, which runs commands as host processes
///   of the server's user (no isolation) and is offered only when named; none left is a
///   usage error that says why each one is unusable.
pub(crate) fn allowed_backends(
    requested: Option<&[String]>,
    slots: &[BackendSlot],
) -> anyhow::Result<Vec<String>> {
    let Some(requested) = requested else {
        let usable: Vec<String> = slots
            .iter()
            .filter(|s| s.backend.is_ok() && s.name != PROCESS_BACKEND)
            .map(|s| s.name.to_owned())
            .collect();
        if usable.is_empty() {
            let why: Vec<String> = slots
                .iter()
                .filter(|s| s.name != PROCESS_BACKEND)
                .map(|s| match &s.backend {
                    Ok(_) => format!("{}: usable", s.name),
                    Err(why) => format!("{}: {why}", s.name),
                })
                .collect();
            return Err(usage(format!(
                "no sandboxing backend is usable here ({}); name the backends to offer with \
                 --backends (--backends process serves host processes of this user, which \
                 is no security boundary)",
                if why.is_empty() {
                    "this build has none but process".to_owned()
                } else {
                    why.join("; ")
                }
            )));
        }
        return Ok(usable);
    };
    let mut out: Vec<String> = Vec::new();
    for name in requested.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let Some(slot) = slots.iter().find(|s| s.name == name) else {
            let known: Vec<&str> = slots.iter().map(|s| s.name).collect();
            return Err(usage(format!(
                "--backends: no backend named {name:?} in this build (it has {})",
                known.join(", ")
            )));
        };
        if let Err(why) = &slot.backend {
            return Err(usage(format!(
                "--backends: backend {name} is not usable here: {why}"
            )));
        }
        if !out.iter().any(|o| o == name) {
            out.push(name.to_owned());
        }
    }
    if out.is_empty() {
        return Err(usage("--backends: name at least one backend"));
    }
    Ok(out)
}

/// Applies `--max LIMIT=N` settings (names as in the `limits` object of a run spec,
/// camelCase; values in that limit's unit, greater than zero) to the engine maxima. A
/// default above its new maximum is lowered to it, so a run that asks for nothing stays
/// valid.
pub(crate) fn apply_maxima(config: &mut EngineConfig, settings: &[String]) -> anyhow::Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let mut maxima = serde_json::to_value(config.maxima)?;
    let mut defaults = serde_json::to_value(config.defaults)?;
    for setting in settings {
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| usage(format!("--max {setting:?}: give LIMIT=N")))?;
        let name = name.trim();
        let value: u64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| usage(format!("--max {setting:?}: N must be a whole number > 0")))?;
        let Some(slot) = maxima.get_mut(name) else {
            let names: Vec<String> = maxima
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            return Err(usage(format!(
                "--max {setting:?}: unknown limit {name:?} (one of {})",
                names.join(", ")
            )));
        };
        *slot = value.into();
        if let Some(d) = defaults.get_mut(name)
            && d.as_u64().is_some_and(|d| d > value)
        {
            *d = value.into();
        }
    }
    config.maxima = serde_json::from_value::<Limits>(maxima)?;
    config.defaults = serde_json::from_value::<Limits>(defaults)?;
    Ok(())
}

/// The most sandboxes one `--pool` may keep ready.
pub(crate) const MAX_POOL_SIZE: usize = 64;

/// Parses `--pool BACKEND:TEMPLATE=N` settings (the docker backend only; N from 0 to
/// [`MAX_POOL_SIZE`]) into sizes per template of the Docker backend's pool.
pub(crate) fn parse_pools(settings: &[String]) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for setting in settings {
        let bad = |why: &str| usage(format!("--pool {setting:?}: {why}"));
        let (target, n) = setting
            .rsplit_once('=')
            .ok_or_else(|| bad("give BACKEND:TEMPLATE=N, e.g. docker:python-node=4"))?;
        let (backend, template) = target
            .split_once(':')
            .ok_or_else(|| bad("give BACKEND:TEMPLATE=N, e.g. docker:python-node=4"))?;
        if backend != "docker" {
            return Err(bad("only the docker backend keeps a warm pool"));
        }
        if template.is_empty() {
            return Err(bad("name the template"));
        }
        let n: usize = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n <= MAX_POOL_SIZE)
            .ok_or_else(|| {
                bad(&format!(
                    "N must be a whole number from 0 to {MAX_POOL_SIZE}"
                ))
            })?;
        out.insert(template.to_owned(), n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn slots() -> Vec<BackendSlot> {
        let fake = || -> Result<std::sync::Arc<dyn crownest_core::SandboxBackend>, String> {
            Ok(std::sync::Arc::new(
                crownest_core::testing::FakeBackend::new(),
            ))
        };
        vec![
            BackendSlot {
                name: "process",
                backend: fake(),
            },
            BackendSlot {
                name: "docker",
                backend: Err("no daemon".into()),
            },
            BackendSlot {
                name: "wasm",
                backend: fake(),
            },
        ]
    }

    #[test]
    fn process_is_offered_only_when_named() {
        assert_eq!(allowed_backends(None, &slots()).unwrap(), ["wasm"]);
        let named = [
            "process".to_owned(),
            "wasm".to_owned(),
            "process".to_owned(),
        ];
        assert_eq!(
            allowed_backends(Some(&named), &slots()).unwrap(),
            ["process", "wasm"]
        );
        let err = allowed_backends(Some(&["docker".to_owned()]), &slots()).unwrap_err();
        assert!(err.to_string().contains("no daemon"), "{err}");
        let err = allowed_backends(Some(&["k8s".to_owned()]), &slots()).unwrap_err();
        assert!(err.to_string().contains("no backend named"), "{err}");
        let only_process: Vec<BackendSlot> =
            slots().into_iter().filter(|s| s.name != "wasm").collect();
        let err = allowed_backends(None, &only_process).unwrap_err();
        assert!(err.to_string().contains("docker: no daemon"), "{err}");
        assert!(err.to_string().contains("--backends process"), "{err}");
    }

    #[test]
    fn maxima_are_set_by_name_and_lower_the_defaults() {
        let mut config = EngineConfig::default();
        apply_maxima(
            &mut config,
            &["timeoutMs=60000".into(), "memoryBytes=4294967296".into()],
        )
        .unwrap();
        assert_eq!(config.maxima.timeout_ms, 60_000);
        assert_eq!(config.defaults.timeout_ms, 60_000, "default 10 min lowered");
        assert_eq!(config.maxima.memory_bytes, 4 << 30);
        assert_eq!(config.defaults.memory_bytes, 2 << 30, "default below: kept");
        for bad in [
            "timeout=5",
            "timeoutMs",
            "timeoutMs=0",
            "timeoutMs=-1",
            "pids=x",
        ] {
            assert!(
                apply_maxima(&mut EngineConfig::default(), &[bad.into()]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn pool_settings_are_parsed_or_refused() {
        let ok = parse_pools(&["docker:python-node=4".into(), "docker:other=0".into()]).unwrap();
        assert_eq!(ok.get("python-node"), Some(&4));
        assert_eq!(ok.get("other"), Some(&0));
        for bad in [
            "python-node=4",
            "docker:python-node",
            "process:python-node=1",
            "docker:=1",
            "docker:python-node=-1",
            "docker:python-node=65",
            "docker:python-node=x",
        ] {
            let e = parse_pools(&[bad.into()]).unwrap_err();
            assert!(format!("{e:#}").contains("--pool"), "{bad}: {e:#}");
        }
    }
}
