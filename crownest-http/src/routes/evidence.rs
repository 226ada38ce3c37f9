//! Evidence: the bundle and its views, the host key, artifacts.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use crownest_core::ArtifactId;
use serde::Deserialize;

use super::{AppState, run_id};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::wire::{EvidenceDocument, HostKeyInfo};

/// The views of the evidence.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum EvidenceFormat {
    /// The Evidence Bundle (the default).
    Crownest,
    /// The in-toto Statement view.
    InToto,
    /// That statement in a DSSE envelope signed by the host key.
    Dsse,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EvidenceQuery {
    format: Option<EvidenceFormat>,
}

/// The run's Evidence Bundle, or one of its views.
///
/// `format=in-toto`: the in-toto Statement; `format=dsse`: the DSSE envelope signed in the
/// run's terminal commit by the engine's host key (a run that ended without one is signed
/// now with the server's key). Formats: `docs/evidence.md`.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/evidence",
    tag = "evidence",
    params(
        ("id" = String, Path, description = "Run id (`run_...`)."),
        ("format" = Option<EvidenceFormat>, Query, description = "`crownest` (default), `in-toto` or `dsse`."),
    ),
    responses(
        (status = 200, description = "The bundle, statement or envelope.", body = EvidenceDocument),
        (status = 400, description = "`bad_request`: an unknown format.", body = ErrorBody),
        (status = 404, description = "`not_found`, or `no_host_key` (format=dsse on a server without a host key).", body = ErrorBody),
        (status = 409, description = "`not_terminal`: the run has not ended.", body = ErrorBody),
    )
)]
pub(crate) async fn evidence(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EvidenceQuery>,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    let bundle = s.engine.evidence(&id).await?;
    match q.format.unwrap_or(EvidenceFormat::Crownest) {
        EvidenceFormat::Crownest => Ok(Json(bundle).into_response()),
        EvidenceFormat::InToto => Ok(Json(bundle.to_in_toto()).into_response()),
        // The envelope signed in the run's terminal commit; a run ended without a key (or
        // before evidence v2) is signed now.
        EvidenceFormat::Dsse => match s.engine.evidence_envelope(&id).await? {
            Some(stored) => Ok(Json(stored).into_response()),
            None => Ok(Json(bundle.to_dsse(signing_key(&s)?)).into_response()),
        },
    }
}

fn signing_key(s: &AppState) -> ApiResult<&crownest_core::signing::HostKey> {
    s.config.signing_key.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_host_key",
            "this server has no host key to sign evidence with",
        )
    })
}

/// The ed25519 public key that signs `format=dsse` evidence.
#[utoipa::path(
    get,
    path = "/v1/host-key",
    tag = "evidence",
    responses(
        (status = 200, description = "The key.", body = HostKeyInfo),
        (status = 404, description = "`no_host_key`: this server signs nothing.", body = ErrorBody),
    )
)]
pub(crate) async fn host_key(State(s): State<AppState>) -> ApiResult<Json<HostKeyInfo>> {
    let public = signing_key(&s)?.public_key();
    Ok(Json(HostKeyInfo {
        key_id: public.key_id(),
        public_key: public.to_hex(),
        public_key_pem: public.to_pem(),
    }))
}

/// An artifact's bytes (a directory artifact is a tar).
#[utoipa::path(
    get,
    path = "/v1/artifacts/{id}",
    tag = "evidence",
    params(("id" = String, Path, description = "Artifact id (`art_...`).")),
    responses(
        (status = 200, description = "The bytes.", content_type = "application/octet-stream", body = Vec<u8>,
         headers(
             ("X-Artifact-Sha256" = String, description = "sha256 of the bytes."),
             ("X-Artifact-Path" = String, description = "The requested path."),
         )),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(crate) async fn artifact(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let (a, reader) = s.engine.open_artifact(&ArtifactId::parse(&id)?).await?;
    let body = Body::from_stream(crownest_core::engine::reader_stream(reader));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.size_bytes));
    if let Ok(v) = HeaderValue::from_str(a.sha256.as_str()) {
        h.insert("x-artifact-sha256", v);
    }
    if let Ok(v) = HeaderValue::from_str(&a.path) {
        h.insert("x-artifact-path", v);
    }
    Ok(resp)
}
