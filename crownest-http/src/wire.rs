//! The response bodies the HTTP layer itself defines (the engine's types are the rest),
//! shared by the server (which writes them) and the client (which reads them).

use crownest_core::event::Event;
use crownest_core::signing::DsseEnvelope;
use crownest_core::{EvidenceBundle, RunId, RunRecord};
use serde::{Deserialize, Serialize};

/// A page of runs (`GET /v1/runs`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    /// Runs, newest first.
    pub runs: Vec<RunRecord>,
    /// Pass as `cursor` for the next page (`null` on the last page).
    pub next_cursor: Option<RunId>,
}

/// A window of events (`GET /v1/runs/{id}/events`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    /// Events after `afterSeq`, in order.
    pub events: Vec<Event>,
    /// Pass as `afterSeq` for the next window (the last seq here, else `afterSeq` again).
    pub next_after_seq: u64,
}

/// The server's evidence-signing key (`GET /v1/host-key`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostKeyInfo {
    /// sha256 of the key bytes: the DSSE envelope's `keyid`.
    pub key_id: String,
    /// The ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// The same key as a SubjectPublicKeyInfo PEM.
    pub public_key_pem: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// An in-toto Statement v1 (`GET /v1/runs/{id}/evidence?format=in-toto`; the format is
/// `docs/evidence.md`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InTotoStatement {
    /// `https://in-toto.io/Statement/v1`.
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// What the statement is about: `{name, digest}` objects.
    pub subject: Vec<serde_json::Value>,
    /// The predicate's type URI.
    pub predicate_type: String,
    /// The predicate.
    pub predicate: serde_json::Value,
}

/// What `GET /v1/runs/{id}/evidence` answers, by `format`: the Evidence Bundle (none or
/// `crownest`), the in-toto Statement (`in-toto`), or that statement in a DSSE envelope
/// signed by the host key (`dsse`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EvidenceDocument {
    /// `format` absent or `crownest`.
    Bundle(Box<EvidenceBundle>),
    /// `format=in-toto`.
    InToto(InTotoStatement),
    /// `format=dsse`.
    Dsse(DsseEnvelope),
}
