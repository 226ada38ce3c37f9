//! Verifying a bundle against its run's events, under the rules of the bundle's schema.
//!
//! * every schema: the chain verifies (seqs gap-free from 1, every hash recomputed,
//!   `terminal` last), its count and head are the bundle's `events`, and its last event is
//!   the bundle's `terminalEvent`;
//! * v2: the bundle equals the one [`super::derive`] recomputes from the events, field by
//!   field (each difference is reported with the field's path), and the terminal event's
//!   `bundleDigest` is the bundle's [`content digest`](super::content_digest_of);
//! * v1 and v1.1: the bundle's status, exit code, signal and failure are the terminal
//!   event's, and its artifact list is the `artifact_collected` events' (the fields those
//!   layouts bound; the others were not provable).

use serde_json::Value;

use super::{EvidenceArtifact, EvidenceBundle, content_digest_of, derive};
use crate::event::{Event, EventKind};

/// Most field differences reported for one bundle.
const MAX_FIELD_PROBLEMS: usize = 32;

/// One reason a bundle does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceProblem {
    /// The bundle field concerned, as a path (`template.identity.facts.imageId`,
    /// `artifacts[0].sha256`), when the problem is one field's.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for EvidenceProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field {field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn problem(field: Option<&str>, message: impl Into<String>) -> EvidenceProblem {
    EvidenceProblem {
        field: field.map(str::to_owned),
        message: message.into(),
    }
}

/// Verifies `bundle` (the JSON as stored or exported: fields this build does not know are
/// differences too) against the run's complete event list. Returns every problem found;
/// empty means the bundle holds.
pub fn verify(bundle: &Value, events: &[Event]) -> Vec<EvidenceProblem> {
    let typed: EvidenceBundle = match serde_json::from_value(bundle.clone()) {
        Ok(b) => b,
        Err(e) => return vec![problem(None, format!("not an Evidence Bundle: {e}"))],
    };
    let mut problems = Vec::new();
    if let Some(p) = typed.schema_problem() {
        problems.push(problem(Some("schema"), p));
        return problems;
    }
    if let Err(e) = typed.verify_events(events) {
        problems.push(problem(Some("events"), format!("event chain: {e}")));
    }
    if typed.is_v2() {
        verify_v2(bundle, events, &mut problems);
    } else if is_v2_chain(events) {
        // The chain binds every field (it opens with `spec`, its end carries a bundle
        // digest): an older schema's weaker rules must not apply to it.
        problems.push(problem(
            Some("schema"),
            format!(
                "the events are an evidence v2 chain, but the bundle says {}",
                typed.schema
            ),
        ));
    } else {
        verify_v1(&typed, events, &mut problems);
    }
    problems
}

/// A chain written for evidence v2: it opens with `spec`, or its terminal event carries a
/// bundle digest.
fn is_v2_chain(events: &[Event]) -> bool {
    matches!(
        events.first().map(|e| &e.kind),
        Some(EventKind::Spec { .. })
    ) || events.iter().any(|e| {
        matches!(
            &e.kind,
            EventKind::Terminal {
                bundle_digest: Some(_),
                ..
            }
        )
    })
}

fn verify_v2(bundle: &Value, events: &[Event], problems: &mut Vec<EvidenceProblem>) {
    let expected = match derive(events) {
        Ok(b) => serde_json::to_value(&b).unwrap_or(Value::Null),
        Err(e) => {
            problems.push(problem(
                None,
                format!("the events do not make a bundle: {e}"),
            ));
            return;
        }
    };
    let mut diffs = Vec::new();
    diff("", bundle, &expected, &mut diffs);
    // Name the artifact a difference inside `artifacts[i]` is about.
    for d in &mut diffs {
        if let Some(path) = d.field.as_deref().and_then(|f| artifact_path(f, &expected)) {
            d.message = format!("artifact {path}: {}", d.message);
        }
    }
    problems.extend(diffs);
    let recorded = events.last().and_then(|e| match &e.kind {
        EventKind::Terminal { bundle_digest, .. } => bundle_digest.clone(),
        _ => None,
    });
    let actual = content_digest_of(bundle);
    match recorded {
        Some(d) if d == actual => {}
        Some(d) => problems.push(problem(
            Some("bundleDigest"),
            format!("the terminal event binds bundle digest {d}, this bundle's is {actual}"),
        )),
        None => problems.push(problem(
            Some("bundleDigest"),
            "the terminal event carries no bundle digest",
        )),
    }
}

/// Records the paths where `got` (the bundle) differs from `want` (derived).
fn diff(path: &str, got: &Value, want: &Value, out: &mut Vec<EvidenceProblem>) {
    if out.len() >= MAX_FIELD_PROBLEMS || got == want {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let mut keys: Vec<&String> = g.keys().chain(w.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (g.get(k), w.get(k)) {
                    (Some(a), Some(b)) => diff(&join(k), a, b, out),
                    (Some(a), None) => out.push(problem(
                        Some(&join(k)),
                        format!("the bundle has {}, the events have nothing", short(a)),
                    )),
                    (None, Some(b)) => out.push(problem(
                        Some(&join(k)),
                        format!("missing from the bundle; the events say {}", short(b)),
                    )),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                diff(&format!("{path}[{i}]"), a, b, out);
            }
        }
        _ => out.push(problem(
            Some(if path.is_empty() { "(bundle)" } else { path }),
            format!(
                "the bundle says {}, the events say {}",
                short(got),
                short(want)
            ),
        )),
    }
}

/// The requested path of the artifact a field path like `artifacts[2].sha256` is in.
fn artifact_path(field: &str, expected: &Value) -> Option<String> {
    let rest = field.strip_prefix("artifacts[")?;
    let index: usize = rest.split(']').next()?.parse().ok()?;
    expected["artifacts"][index]["path"]
        .as_str()
        .map(str::to_owned)
}

/// A value for a message, cut at 160 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 160 {
        s
    } else {
        let cut: String = s.chars().take(157).collect();
        format!("{cut}...")
    }
}

fn verify_v1(bundle: &EvidenceBundle, events: &[Event], problems: &mut Vec<EvidenceProblem>) {
    match &bundle.terminal_event.kind {
        EventKind::Terminal {
            status,
            exit_code,
            signal,
            failure,
            ..
        } => {
            if *status != bundle.status
                || *exit_code != bundle.exit_code
                || *signal != bundle.signal
                || *failure != bundle.failure
            {
                problems.push(problem(
                    Some("status"),
                    format!(
                        "the bundle says {} (exit {:?}), its terminal event says {status} (exit {exit_code:?})",
                        bundle.status, bundle.exit_code
                    ),
                ));
            }
        }
        other => problems.push(problem(
            Some("terminalEvent"),
            format!(
                "the bundle's terminal event is a {} event",
                other.type_name()
            ),
        )),
    }
    let collected: Vec<EvidenceArtifact> = events
        .iter()
        .filter_map(|e| EvidenceArtifact::of_event(&e.kind))
        .collect();
    if collected.len() != bundle.artifacts.len() {
        problems.push(problem(
            Some("artifacts"),
            format!(
                "the bundle lists {} artifact(s), the events record {}",
                bundle.artifacts.len(),
                collected.len()
            ),
        ));
    }
    for (i, (ev, rec)) in collected.iter().zip(&bundle.artifacts).enumerate() {
        if ev != rec {
            problems.push(problem(
                Some(&format!("artifacts[{i}]")),
                format!(
                    "the bundle says {} at {} bytes sha256 {}, the event says {} at {} bytes sha256 {}",
                    rec.path, rec.size_bytes, rec.sha256, ev.path, ev.size_bytes, ev.sha256
                ),
            ));
        }
    }
}
