//! Archives: the direct upload, attach and dedupe by digest, staged transfers.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use crownest_core::{ArchiveDescriptor, RunRecord, Sha256Digest, TransferId, TransferStatus};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Deserialize;

use super::{AppState, header_str, run_id};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiBytes, ApiJson, ApiPath, ApiQuery};

/// Upload the run's archive in one request (a `.tar.gz` or `.tar`).
///
/// The bytes are streamed, counted and hashed, and the tar is checked against the
/// extraction policy before the run becomes `archive_ready`. `Content-Length` is required
/// (411 without it): the size is checked against the limit before the body is read.
#[utoipa::path(
    put,
    path = "/v1/runs/{id}/archive",
    tag = "uploads",
    params(
        ("id" = String, Path, description = "Run id (`run_...`)."),
        ("X-Archive-Sha256" = String, Header, pattern = "^[0-9a-fA-F]{64}$",
         description = "sha256 of the body, 64 hex digits."),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "The archive's bytes."),
    responses(
        (status = 200, description = "The run, `archive_ready`.", body = RunRecord),
        (status = 400, description = "`bad_request` or `invalid_spec`: a missing or malformed X-Archive-Sha256 or Content-Length.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the run is not `awaiting_archive`.", body = ErrorBody),
        (status = 411, description = "`length_required`: no Content-Length.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded` (`directUploadMaxBytes`) or `archive_rejected` (`too_large`).", body = ErrorBody),
        (status = 422, description = "`archive_rejected`: size or digest mismatch (`reason`), or a hostile archive (`reason`, `entry`).", body = ErrorBody),
    )
)]
pub(crate) async fn put_archive(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = run_id(&id)?;
    let sha = header_str(&headers, "x-archive-sha256")?
        .ok_or_else(|| ApiError::bad_request("X-Archive-Sha256 is required"))?;
    let sha256 = Sha256Digest::parse(sha)?;
    let size_bytes: u64 = header_str(&headers, "content-length")?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "Content-Length is required",
            )
        })?
        .parse()
        .map_err(|_| ApiError::bad_request("Content-Length must be a number"))?;
    let max = s.engine.config().direct_upload_max_bytes;
    if size_bytes > max {
        return Err(ApiError::from(crownest_core::Error::LimitExceeded {
            limit: "directUploadMaxBytes",
            max,
        }));
    }
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .boxed();
    let run = s
        .engine
        .upload_archive_stream(&id, &ArchiveDescriptor { size_bytes, sha256 }, stream)
        .await?;
    Ok(Json(run).into_response())
}

/// Attach an archive the server already stores, by its size and digest.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/archive/attach",
    tag = "uploads",
    params(("id" = String, Path, description = "Run id (`run_...`).")),
    request_body(content = ArchiveDescriptor, content_type = "application/json"),
    responses(
        (status = 200, description = "The run, `archive_ready`.", body = RunRecord),
        (status = 400, description = "`bad_request`: malformed JSON.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such run.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the run is not `awaiting_archive`.", body = ErrorBody),
        (status = 413, description = "`too_large` (the JSON body) or `limit_exceeded`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 422, description = "`not_found` (`kind: archive`): no stored archive has this sha256; `archive_rejected`: the stored archive is not the declared one.", body = ErrorBody),
    )
)]
pub(crate) async fn attach_archive(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(desc): ApiJson<ArchiveDescriptor>,
) -> ApiResult<Json<RunRecord>> {
    match s.engine.attach_archive(&run_id(&id)?, &desc).await {
        Ok(run) => Ok(Json(run)),
        // The run is there; the body names an archive that is not: the request's content
        // is what cannot be processed (the body stays `not_found`, kind `archive`).
        Err(
            e @ crownest_core::Error::NotFound {
                kind: "archive", ..
            },
        ) => Err(ApiError::from(e).with_status(StatusCode::UNPROCESSABLE_ENTITY)),
        Err(e) => Err(e.into()),
    }
}

/// Is this archive stored? (`X-Archive-Size` when it is.)
#[utoipa::path(
    head,
    path = "/v1/archives/{sha256}",
    tag = "uploads",
    params(("sha256" = String, Path, pattern = "^[0-9a-fA-F]{64}$",
            description = "sha256 of the archive, 64 hex digits.")),
    responses(
        (status = 200, description = "Stored.",
         headers(("X-Archive-Size" = u64, description = "Its size in bytes."))),
        (status = 400, description = "Not a sha256 (no body: HEAD)."),
        (status = 404, description = "Not stored (no body: HEAD)."),
    )
)]
pub(crate) async fn head_archive(
    State(s): State<AppState>,
    ApiPath(sha): ApiPath<String>,
) -> ApiResult<Response> {
    let sha = Sha256Digest::parse(&sha)?;
    match s.engine.has_archive(&sha).await? {
        Some(size) => Ok((StatusCode::OK, [("x-archive-size", size.to_string())]).into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// Begin a staged (chunked) transfer of the run's archive.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/transfers",
    tag = "uploads",
    params(("id" = String, Path, description = "Run id (`run_...`).")),
    request_body(content = ArchiveDescriptor, content_type = "application/json"),
    responses(
        (status = 201, description = "The transfer: its id, chunk size and missing ranges.", body = TransferStatus),
        (status = 400, description = "`bad_request`: malformed JSON.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the run is not `awaiting_archive`.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded` (`stagedUploadMaxBytes`) or `too_large` (the JSON body).", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
        (status = 429, description = "`limit_exceeded`: `openTransfersPerRun` or `stagedBytesPerEngine` (what is open now; may pass later).", body = ErrorBody),
    )
)]
pub(crate) async fn begin_transfer(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(desc): ApiJson<ArchiveDescriptor>,
) -> ApiResult<Response> {
    let t = s.engine.begin_transfer(&run_id(&id)?, &desc).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct OffsetQuery {
    offset: u64,
}

/// Send one chunk of a staged transfer (idempotent; any order).
///
/// Every chunk but the last has exactly the transfer's `chunkSizeBytes`. A digest header
/// makes the server refuse a chunk corrupted on the way instead of storing it.
#[utoipa::path(
    put,
    path = "/v1/transfers/{tid}",
    tag = "uploads",
    params(
        ("tid" = String, Path, description = "Transfer id (`xfer_...`)."),
        ("offset" = u64, Query, description = "The chunk's byte offset in the archive."),
        ("Content-Digest" = Option<String>, Header,
         description = "RFC 9530: `sha-256=:BASE64:` of the chunk."),
        ("X-Chunk-Sha256" = Option<String>, Header, pattern = "^[0-9a-fA-F]{64}$",
         description = "The chunk's sha256, 64 hex digits (the simpler alternative)."),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "The chunk's bytes."),
    responses(
        (status = 200, description = "The transfer's status.", body = TransferStatus),
        (status = 400, description = "`bad_request` (a malformed digest header or offset) or `invalid_spec` (a chunk that does not fit the transfer).", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`chunk_rejected` (`reason`: `digest_mismatch` or `conflict`; `offset`): nothing stored changes.", body = ErrorBody),
        (status = 413, description = "`too_large`: the chunk is over the chunk size.", body = ErrorBody),
        (status = 422, description = "`archive_rejected`: the chunk does not fit the declared archive.", body = ErrorBody),
    )
)]
pub(crate) async fn put_chunk(
    State(s): State<AppState>,
    ApiPath(tid): ApiPath<String>,
    ApiQuery(q): ApiQuery<OffsetQuery>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Json<TransferStatus>> {
    let tid = TransferId::parse(&tid)?;
    let declared = crate::digest::declared_chunk_sha256(
        header_str(&headers, crate::digest::CONTENT_DIGEST)?,
        header_str(&headers, crate::digest::X_CHUNK_SHA256)?,
    )
    .map_err(ApiError::bad_request)?;
    let status = s
        .engine
        .put_chunk_checked(&tid, q.offset, body, declared.as_ref())
        .await?;
    Ok(Json(status))
}

/// A staged transfer's received and missing ranges.
#[utoipa::path(
    get,
    path = "/v1/transfers/{tid}",
    tag = "uploads",
    params(("tid" = String, Path, description = "Transfer id (`xfer_...`).")),
    responses(
        (status = 200, description = "The transfer's status.", body = TransferStatus),
        (status = 404, description = "`not_found`.", body = ErrorBody),
    )
)]
pub(crate) async fn get_transfer(
    State(s): State<AppState>,
    ApiPath(tid): ApiPath<String>,
) -> ApiResult<Json<TransferStatus>> {
    Ok(Json(
        s.engine.transfer_status(&TransferId::parse(&tid)?).await?,
    ))
}

/// Complete a staged transfer: verify the whole archive and attach it to its run.
#[utoipa::path(
    post,
    path = "/v1/transfers/{tid}/complete",
    tag = "uploads",
    params(("tid" = String, Path, description = "Transfer id (`xfer_...`).")),
    responses(
        (status = 200, description = "The run, `archive_ready`.", body = RunRecord),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`transfer_incomplete` (`missing`: byte ranges; the transfer is kept), or `invalid_transition`.", body = ErrorBody),
        (status = 413, description = "`archive_rejected` (`too_large`).", body = ErrorBody),
        (status = 422, description = "`archive_rejected`: size or digest mismatch of the whole, or a hostile archive (the transfer is discarded).", body = ErrorBody),
    )
)]
pub(crate) async fn complete_transfer(
    State(s): State<AppState>,
    ApiPath(tid): ApiPath<String>,
) -> ApiResult<Json<RunRecord>> {
    Ok(Json(
        s.engine
            .complete_transfer(&TransferId::parse(&tid)?)
            .await?,
    ))
}
