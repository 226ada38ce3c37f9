//! `crownest doctor`: which backends and templates are usable here, and why not.
//!
//! For every backend this build knows: whether it could be set up, what it can enforce
//! (its capabilities), and each template's availability (with the reason when unavailable
//! and the identity when available), from the backend's own `templates()`. Also whether the
//! store opens. Exit 0 when at least one template of one backend is usable, else 1.
//!
//! With `--server`: whether the server answers `GET /healthz` and accepts the token.

use crownest_core::{Capabilities, TemplateInfo};
use crownest_http::Client;
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::connection::Target;
use crate::exit::Exit;
use crate::home;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BackendReport {
    name: String,
    usable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capabilities: Option<Capabilities>,
    /// What programs cannot do on this backend even when it is usable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    limitations: Vec<String>,
    templates: Vec<TemplateInfo>,
    /// Warm pool sandboxes on this host (docker), by owner process and template.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pools: Vec<HostPool>,
}

/// Warm pool sandboxes of one owner process and template, as the host shows them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HostPool {
    template: String,
    owner_pid: u32,
    owner_alive: bool,
    sandboxes: u64,
    memory_limit_bytes: u64,
}

/// The warm pools on this Docker host (a `crownest serve --pool` keeps them), whoever
/// owns them: empty when the backend is not usable.
#[cfg(feature = "docker")]
async fn host_pools() -> Vec<HostPool> {
    use crownest_backend_docker::{DockerBackend, DockerConfig};
    let Ok(b) = DockerBackend::connect(DockerConfig::default()).await else {
        return Vec::new();
    };
    b.pools_on_host()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| HostPool {
            template: p.template,
            owner_pid: p.owner_pid,
            owner_alive: p.owner_alive,
            sandboxes: p.sandboxes,
            memory_limit_bytes: p.memory_limit_bytes,
        })
        .collect()
}

#[cfg(not(feature = "docker"))]
async fn host_pools() -> Vec<HostPool> {
    Vec::new()
}

/// What the backend named `name` cannot do for the programs it runs.
fn limitations(name: &str) -> Vec<String> {
    match name {
        #[cfg(feature = "wasm")]
        "wasm" => crownest_backend_wasm::LIMITATIONS
            .iter()
            .map(|l| (*l).to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    home: String,
    store: String,
    backends: Vec<BackendReport>,
}

/// What `doctor --server` reports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerReport {
    server: String,
    /// `GET /healthz` answered.
    healthy: bool,
    /// Its body, or why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_error: Option<String>,
    /// An authenticated request was accepted.
    authorized: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_error: Option<String>,
    /// What to do about a refused token (the hint every command prints with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_hint: Option<String>,
    /// The server's warm pools (`crownest_sandbox_pool_*` lines of `/metrics`; needs an
    /// admin token).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pools: Vec<String>,
}

/// `crownest doctor --server URL`: `GET /healthz`, then one authenticated request (list one
/// run) so a wrong or missing token is reported too. Exit 0 when both succeed, else 1.
async fn doctor_remote(client: &Client, args: &DoctorArgs) -> anyhow::Result<Exit> {
    let health = client.health().await.map_err(|e| e.chain());
    let mut auth_hint = None;
    let auth = match &health {
        Ok(_) => client
            .list_runs(None, 1, None)
            .await
            .map(|_| ())
            .map_err(|e| {
                auth_hint = crate::exit::auth_hint(&e);
                e.chain()
            }),
        Err(_) => Err("not tried: the server did not answer".to_owned()),
    };
    let pools = match &auth {
        Ok(()) => client
            .metrics()
            .await
            .map(|text| {
                text.lines()
                    .filter(|l| l.starts_with("crownest_sandbox_pool_"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let report = ServerReport {
        pools,
        server: client.base_url().to_owned(),
        healthy: health.is_ok(),
        health_error: health.as_ref().err().cloned(),
        health: health.ok(),
        authorized: auth.is_ok(),
        auth_error: auth.err(),
        auth_hint,
    };
    if args.json {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&report)?
        );
    } else {
        println!("server: {}", report.server);
        match (&report.health, &report.health_error) {
            (Some(v), _) => println!("health: ok {v}"),
            (None, e) => println!("health: FAILED: {}", e.as_deref().unwrap_or("")),
        }
        match &report.auth_error {
            None => println!("auth:   ok (the token is accepted)"),
            Some(e) => println!("auth:   FAILED: {e}"),
        }
        if let Some(hint) = &report.auth_hint {
            println!("hint:   {hint}");
        }
        for line in &report.pools {
            println!("pool:   {line}");
        }
    }
    Ok(if report.healthy && report.authorized {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// `crownest doctor`.
pub(crate) async fn doctor(target: &Target, args: DoctorArgs) -> anyhow::Result<Exit> {
    if let Some(client) = target.server() {
        return doctor_remote(client, &args).await;
    }
    let home_dir = &target.home()?;
    let store = match home::open_store(home_dir).await {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("cannot open: {}", crate::exit::describe(&e)),
    };
    let mut pools = host_pools().await;
    let mut backends = Vec::new();
    for slot in home::backends(home_dir, &home::PoolSettings::default()).await? {
        let report = match &slot.backend {
            Err(why) => BackendReport {
                name: slot.name.to_owned(),
                usable: false,
                reason: Some(why.clone()),
                capabilities: None,
                limitations: limitations(slot.name),
                templates: Vec::new(),
                pools: Vec::new(),
            },
            Ok(b) => match b.templates().await {
                Ok(templates) => BackendReport {
                    name: slot.name.to_owned(),
                    usable: templates.iter().any(|t| t.available),
                    reason: (!templates.iter().any(|t| t.available))
                        .then(|| "no template is available".to_owned()),
                    capabilities: Some(b.capabilities()),
                    limitations: limitations(slot.name),
                    templates,
                    pools: Vec::new(),
                },
                Err(e) => BackendReport {
                    name: slot.name.to_owned(),
                    usable: false,
                    reason: Some(format!("listing templates failed: {}", e.chain())),
                    capabilities: Some(b.capabilities()),
                    limitations: limitations(slot.name),
                    templates: Vec::new(),
                    pools: Vec::new(),
                },
            },
        };
        let mut report = report;
        if slot.name == "docker" {
            report.pools = std::mem::take(&mut pools);
        }
        backends.push(report);
    }
    let report = Report {
        home: home_dir.display().to_string(),
        store,
        backends,
    };
    if args.json {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&report)?
        );
    } else {
        print_human(&report);
    }
    let usable = report.store == "ok" && report.backends.iter().any(|b| b.usable);
    Ok(if usable { Exit::Success } else { Exit::Failure })
}

fn print_human(r: &Report) {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "home:  {}", r.home);
    let _ = writeln!(o, "store: {}", r.store);
    for b in &r.backends {
        let state = if b.usable { "usable" } else { "NOT usable" };
        match &b.reason {
            Some(why) => {
                let _ = writeln!(o, "backend {}: {state}: {why}", b.name);
            }
            None => {
                let _ = writeln!(o, "backend {}: {state}", b.name);
            }
        }
        if let Some(c) = &b.capabilities {
            let mut can = Vec::new();
            let mut cannot = Vec::new();
            for (name, on) in [
                ("network isolation", c.network_isolation),
                ("memory limit", c.memory_limit),
                ("pids limit", c.pids_limit),
                ("filesystem isolation", c.filesystem_isolation),
                ("process tree kill", c.process_tree_kill),
                ("keep sandbox", c.keep_sandbox),
                ("non-root", c.non_root),
                ("security boundary", c.security_boundary),
            ] {
                if on {
                    can.push(name)
                } else {
                    cannot.push(name)
                }
            }
            let _ = writeln!(
                o,
                "  enforces: {}",
                if can.is_empty() {
                    "-".into()
                } else {
                    can.join(", ")
                }
            );
            let _ = writeln!(
                o,
                "  does not: {}",
                if cannot.is_empty() {
                    "-".into()
                } else {
                    cannot.join(", ")
                }
            );
        }
        for l in &b.limitations {
            let _ = writeln!(o, "  cannot: {l}");
        }
        for p in &b.pools {
            let _ = writeln!(
                o,
                "  warm pool {}: {} sandbox(es) of pid {}{}, memory limits {} MiB in all",
                p.template,
                p.sandboxes,
                p.owner_pid,
                if p.owner_alive {
                    ""
                } else {
                    " (gone: the next sweep removes them)"
                },
                p.memory_limit_bytes / (1024 * 1024)
            );
        }
        for t in &b.templates {
            if t.available {
                let _ = writeln!(o, "  template {}: available", t.name);
                if let Some(id) = &t.identity {
                    for (k, v) in &id.facts {
                        let _ = writeln!(o, "    {k} = {v}");
                    }
                }
            } else {
                let _ = writeln!(
                    o,
                    "  template {}: unavailable: {}",
                    t.name,
                    t.reason.as_deref().unwrap_or("no reason given")
                );
            }
        }
    }
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(o.as_bytes());
}
