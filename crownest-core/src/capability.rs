//! Capabilities are data: what a backend can enforce ([`Capabilities`]), what a run asks of
//! it ([`Requirement`]s, from `RunSpec::requirements`), the engine's rule at `create`
//! ([`unenforceable`]: refuse what the run requires and the backend cannot enforce), what
//! one sandbox actually enforced ([`IsolationReport`]), and what the evidence records as
//! not enforced ([`not_enforced`]). This module depends on nothing else in the crate.
//!
//! Which spec fields are hard requirements (the rule is written here once, and documented
//! in `docs/engine.md`):
//!
//! | the spec says | needs | when the backend cannot |
//! |---|---|---|
//! | `limits.memoryBytes` (set by the run) | [`Capability::MemoryLimit`] | refused (`Error::NotEnforceable`), unless `bestEffort` lists `memory_limit` |
//! | `limits.pids` (set by the run) | [`Capability::PidsLimit`] | refused, unless `bestEffort` lists `pids_limit` |
//! | `network: enabled` | [`Capability::NetworkAccess`] | refused |
//! | `keepSandbox` | [`Capability::KeepSandbox`] | refused |
//! | `network: none` (every spec's default) | [`Capability::NetworkIsolation`] | best-effort: the run goes on, the evidence says `network: not_isolated` and `notEnforced: [network_isolation]` |
//! | nothing (the engine's default memory and pids limits) | [`Capability::MemoryLimit`], [`Capability::PidsLimit`] | best-effort: recorded in `notEnforced` |
//!
//! The rule: what the run asked for explicitly is a hard requirement; a default it merely
//! inherited (the deny-by-default `network: none`, the engine's limits) is applied where the
//! backend can and recorded as not enforced where it cannot. `bestEffort` turns an explicit
//! limit into the second kind.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a backend can enforce. Capabilities are data: the engine refuses a run that
/// requires what its backend lacks ([`unenforceable`]), the conformance suite skips (by name) only
/// what a backend declares it cannot do, and a sandbox's [`IsolationReport`] never claims
/// more ([`overclaims`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The command cannot reach any network when the spec says `none`.
    pub network_isolation: bool,
    /// The command can reach the network when the spec says `enabled`.
    #[serde(default)]
    pub network_access: bool,
    /// Memory is capped (`limits.memoryBytes`).
    pub memory_limit: bool,
    /// Process count is capped (`limits.pids`).
    pub pids_limit: bool,
    /// The command cannot read host files outside its workspace.
    pub filesystem_isolation: bool,
    /// Every process the command started is killed, including ones that left its group.
    pub process_tree_kill: bool,
    /// `keepSandbox` is supported.
    pub keep_sandbox: bool,
    /// The command runs as a non-root user.
    pub non_root: bool,
    /// This backend is a security boundary against hostile code.
    pub security_boundary: bool,
    /// A command that dies of a signal the sandbox did not send is reported as
    /// `Signaled(n)`, not as the exit code `128 + n` (Docker's init cannot tell them apart).
    #[serde(default)]
    pub exit_signal: bool,
}

impl Capabilities {
    /// Whether the backend declares `capability`.
    pub fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::NetworkIsolation => self.network_isolation,
            Capability::NetworkAccess => self.network_access,
            Capability::MemoryLimit => self.memory_limit,
            Capability::PidsLimit => self.pids_limit,
            Capability::FilesystemIsolation => self.filesystem_isolation,
            Capability::ProcessTreeKill => self.process_tree_kill,
            Capability::KeepSandbox => self.keep_sandbox,
            Capability::NonRoot => self.non_root,
            Capability::SecurityBoundary => self.security_boundary,
            Capability::ExitSignal => self.exit_signal,
        }
    }
}

/// One field of [`Capabilities`], by name (wire value: snake_case, e.g. `memory_limit`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// [`Capabilities::network_isolation`].
    NetworkIsolation,
    /// [`Capabilities::network_access`].
    NetworkAccess,
    /// [`Capabilities::memory_limit`].
    MemoryLimit,
    /// [`Capabilities::pids_limit`].
    PidsLimit,
    /// [`Capabilities::filesystem_isolation`].
    FilesystemIsolation,
    /// [`Capabilities::process_tree_kill`].
    ProcessTreeKill,
    /// [`Capabilities::keep_sandbox`].
    KeepSandbox,
    /// [`Capabilities::non_root`].
    NonRoot,
    /// [`Capabilities::security_boundary`].
    SecurityBoundary,
    /// [`Capabilities::exit_signal`].
    ExitSignal,
}

impl Capability {
    /// The wire name (`memory_limit`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkIsolation => "network_isolation",
            Self::NetworkAccess => "network_access",
            Self::MemoryLimit => "memory_limit",
            Self::PidsLimit => "pids_limit",
            Self::FilesystemIsolation => "filesystem_isolation",
            Self::ProcessTreeKill => "process_tree_kill",
            Self::KeepSandbox => "keep_sandbox",
            Self::NonRoot => "non_root",
            Self::SecurityBoundary => "security_boundary",
            Self::ExitSignal => "exit_signal",
        }
    }

    /// The capabilities a run may accept as best-effort (`RunSpec::best_effort`).
    pub const BEST_EFFORT: [Capability; 3] = [
        Capability::NetworkIsolation,
        Capability::MemoryLimit,
        Capability::PidsLimit,
    ];
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a sandbox did about the network (wire values `none`, `enabled`, `not_isolated`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NetworkIsolation {
    /// The spec asked `none` and the command cannot reach any network.
    #[default]
    None,
    /// The spec asked `enabled`; the command has the network the backend provides.
    Enabled,
    /// The spec asked `none`, and this backend could not isolate the command.
    NotIsolated,
}

/// How a sandbox contains the command's processes (wire values snake_case). A value this
/// version does not know (written by another backend or version) is kept as it was read,
/// so evidence round-trips unchanged.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum ProcessContainment {
    /// A PID namespace (the process backend's strongest).
    PidNamespace,
    /// A cgroup per command.
    Cgroup,
    /// The process group plus a descendant scan (processes can escape).
    ProcessGroup,
    /// A container (its own PID namespace and cgroup).
    Container,
    /// A WebAssembly guest: no processes at all.
    Wasm,
    /// Nothing real: the scripted test backend.
    #[default]
    Simulated,
    /// A value this version does not know.
    Other(String),
}

impl ProcessContainment {
    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::PidNamespace => "pid_namespace",
            Self::Cgroup => "cgroup",
            Self::ProcessGroup => "process_group",
            Self::Container => "container",
            Self::Wasm => "wasm",
            Self::Simulated => "simulated",
            Self::Other(s) => s,
        }
    }

    /// The value of a wire string (unknown strings are [`ProcessContainment::Other`]).
    pub fn from_wire(s: &str) -> Self {
        match s {
            "pid_namespace" => Self::PidNamespace,
            "cgroup" => Self::Cgroup,
            "process_group" => Self::ProcessGroup,
            "container" => Self::Container,
            "wasm" => Self::Wasm,
            "simulated" => Self::Simulated,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ProcessContainment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ProcessContainment {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<ProcessContainment> for &str {
    fn eq(&self, other: &ProcessContainment) -> bool {
        *self == other.as_str()
    }
}

impl Serialize for ProcessContainment {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProcessContainment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::from_wire(&s))
    }
}

/// What one sandbox actually enforced (the `isolation` of `environment` events and of the
/// Evidence Bundle, `docs/evidence.md` §2.2). It never claims more than its backend's
/// [`Capabilities`] ([`overclaims`] is empty; a conformance case checks it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct IsolationReport {
    /// Backend name.
    pub backend: String,
    /// What was done about the network.
    pub network: NetworkIsolation,
    /// Memory cap in bytes, when enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Pids cap, when enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// How processes are contained.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub process_containment: ProcessContainment,
    /// User the command ran as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// True when this is a security boundary against hostile code.
    pub security_boundary: bool,
    /// True when the sandbox came from the backend's warm pool (created before the run,
    /// with the same enforcement as a fresh one, used by this run only). Absent = false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pooled: bool,
    /// What the run's spec asked for (explicitly or by default) and this sandbox did not
    /// enforce, sorted; filled by the engine ([`not_enforced`]), never by a backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_enforced: Vec<Capability>,
    /// Anything else worth recording (`readOnlyRoot`, `capDrop`, `rlimits`, survivors ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

/// One thing a run asks of its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// The capability it needs.
    pub capability: Capability,
    /// The spec field that asks for it (`limits.memoryBytes`, `network`, ...).
    pub field: &'static str,
    /// Hard (refused at create when the backend lacks the capability) or best-effort
    /// (applied where possible, recorded in `notEnforced` where not).
    pub hard: bool,
}

/// The first hard requirement `capabilities` cannot meet: the engine refuses the run at
/// `create` with `Error::NotEnforceable` naming its field and capability.
pub fn unenforceable(
    requirements: &[Requirement],
    capabilities: &Capabilities,
) -> Option<Requirement> {
    requirements
        .iter()
        .find(|r| r.hard && !capabilities.has(r.capability))
        .copied()
}

/// Whether `report` shows `capability` enforced. Capabilities a report does not describe
/// (keeping a sandbox, a tree kill) count as enforced: the engine checks those elsewhere.
pub fn enforces(report: &IsolationReport, capability: Capability) -> bool {
    match capability {
        Capability::NetworkIsolation => report.network == NetworkIsolation::None,
        Capability::NetworkAccess => report.network == NetworkIsolation::Enabled,
        Capability::MemoryLimit => report.memory_bytes.is_some(),
        Capability::PidsLimit => report.pids.is_some(),
        Capability::SecurityBoundary => report.security_boundary,
        _ => true,
    }
}

/// The requirements (hard or best-effort) that `report` does not show enforced, sorted and
/// without repeats: what the evidence records as `notEnforced`.
pub fn not_enforced(requirements: &[Requirement], report: &IsolationReport) -> Vec<Capability> {
    requirements
        .iter()
        .filter(|r| !enforces(report, r.capability))
        .map(|r| r.capability)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What `report` claims that `capabilities` does not declare (empty for an honest backend).
pub fn overclaims(report: &IsolationReport, capabilities: &Capabilities) -> Vec<Capability> {
    [
        (
            Capability::NetworkIsolation,
            report.network == NetworkIsolation::None,
        ),
        (
            Capability::NetworkAccess,
            report.network == NetworkIsolation::Enabled,
        ),
        (Capability::MemoryLimit, report.memory_bytes.is_some()),
        (Capability::PidsLimit, report.pids.is_some()),
        (Capability::SecurityBoundary, report.security_boundary),
    ]
    .into_iter()
    .filter(|(c, claimed)| *claimed && !capabilities.has(*c))
    .map(|(c, _)| c)
    .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn defaults() -> Vec<Requirement> {
        [
            Capability::MemoryLimit,
            Capability::PidsLimit,
            Capability::NetworkIsolation,
        ]
        .map(|capability| Requirement {
            capability,
            field: "f",
            hard: false,
        })
        .to_vec()
    }

    #[test]
    fn unenforceable_finds_the_first_hard_requirement_missing() {
        let mut reqs = defaults();
        assert_eq!(unenforceable(&reqs, &Capabilities::default()), None);
        reqs[1].hard = true;
        assert_eq!(
            unenforceable(&reqs, &Capabilities::default()).map(|r| r.capability),
            Some(Capability::PidsLimit)
        );
        let caps = Capabilities {
            pids_limit: true,
            ..Capabilities::default()
        };
        assert_eq!(unenforceable(&reqs, &caps), None);
    }

    #[test]
    fn not_enforced_lists_what_the_report_lacks() {
        let report = IsolationReport {
            network: NetworkIsolation::NotIsolated,
            ..IsolationReport::default()
        };
        assert_eq!(
            not_enforced(&defaults(), &report),
            [
                Capability::NetworkIsolation,
                Capability::MemoryLimit,
                Capability::PidsLimit
            ]
        );
        let report = IsolationReport {
            network: NetworkIsolation::None,
            memory_bytes: Some(1),
            pids: Some(1),
            ..IsolationReport::default()
        };
        assert!(not_enforced(&defaults(), &report).is_empty());
    }

    #[test]
    fn overclaims_compare_the_report_with_the_capabilities() {
        let report = IsolationReport {
            network: NetworkIsolation::None,
            memory_bytes: Some(1),
            security_boundary: true,
            ..IsolationReport::default()
        };
        assert_eq!(
            overclaims(&report, &Capabilities::default()),
            [
                Capability::NetworkIsolation,
                Capability::MemoryLimit,
                Capability::SecurityBoundary
            ]
        );
        let all = Capabilities {
            network_isolation: true,
            memory_limit: true,
            security_boundary: true,
            ..Capabilities::default()
        };
        assert!(overclaims(&report, &all).is_empty());
    }

    #[test]
    fn wire_values_stay_snake_case_strings() {
        let report = IsolationReport {
            backend: "process".into(),
            network: NetworkIsolation::NotIsolated,
            process_containment: ProcessContainment::PidNamespace,
            not_enforced: vec![Capability::MemoryLimit],
            ..IsolationReport::default()
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["network"], "not_isolated");
        assert_eq!(json["processContainment"], "pid_namespace");
        assert_eq!(json["notEnforced"], serde_json::json!(["memory_limit"]));
        let other: IsolationReport = serde_json::from_value(serde_json::json!({
            "backend": "vm", "network": "none", "processContainment": "microvm",
            "securityBoundary": true
        }))
        .unwrap();
        assert_eq!(
            other.process_containment,
            ProcessContainment::Other("microvm".into())
        );
        assert_eq!(
            serde_json::to_value(&other).unwrap()["processContainment"],
            "microvm"
        );
        for c in Capability::BEST_EFFORT {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
