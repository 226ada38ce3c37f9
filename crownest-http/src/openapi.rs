//! The OpenAPI 3.1 document of the API, generated from the code: each handler's
//! `#[utoipa::path]` (its parameters, headers, bodies and statuses) and the wire types'
//! `ToSchema` (crownest-core's behind its `openapi` feature). Served at `/v1/openapi.json`;
//! `docs/openapi.json` is a committed copy a test keeps current, so API changes show in
//! diffs.
//!
//! What every operation shares is added here rather than on each handler: the bearer
//! security and the scope the route needs (`x-crownest-scope`, from
//! [`Scope::required_for`]), and the statuses any authenticated route may answer (401, 403,
//! 500, 503).

use std::sync::LazyLock;

use axum::http::Method;
use serde_json::{Map, Value, json};
use utoipa::OpenApi as _;

use crate::routes;
use crate::tokens::Scope;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "CrowNest",
        description = "Run untrusted repo-shaped work in sandboxes, with a durable, verifiable record: \
                       the HTTP + SSE API. Every error is an ErrorBody.",
    ),
    paths(
        routes::ops::healthz,
        crate::metrics::render,
        crate::readiness::readyz,
        routes::ops::openapi,
        routes::runs::create_run,
        routes::runs::list_runs,
        routes::runs::get_run,
        routes::runs::delete_run,
        routes::runs::start_run,
        routes::runs::cancel_run,
        routes::uploads::put_archive,
        routes::uploads::attach_archive,
        routes::uploads::head_archive,
        routes::uploads::begin_transfer,
        routes::uploads::put_chunk,
        routes::uploads::get_transfer,
        routes::uploads::complete_transfer,
        routes::events::list_events,
        routes::events::stream_events,
        routes::evidence::evidence,
        routes::evidence::host_key,
        routes::evidence::artifact,
    ),
    components(schemas(
        crate::ErrorBody,
        crownest_core::Event,
        crownest_core::RunStatus,
        routes::evidence::EvidenceFormat,
        routes::runs::LabelFilter,
    )),
    tags(
        (name = "runs", description = "Create, list, start, cancel and delete runs."),
        (name = "uploads", description = "The source archive: direct, by digest, or staged in chunks."),
        (name = "events", description = "The run's hash-chained events: a window, or SSE."),
        (name = "evidence", description = "The Evidence Bundle, its signed views, the host key, artifacts."),
        (name = "ops", description = "Liveness, metrics, this document."),
    )
)]
struct ApiDoc;

static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
static JSON: LazyLock<String> = LazyLock::new(|| {
    let mut s = serde_json::to_string_pretty(&*DOCUMENT).unwrap_or_default();
    s.push('\n');
    s
});

/// The document.
pub fn document() -> &'static Value {
    &DOCUMENT
}

/// The document as served (pretty JSON, keys sorted, a final newline): byte for byte the
/// committed `docs/openapi.json`.
pub fn json() -> &'static str {
    &JSON
}

fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let error_ref = json!({"$ref": "#/components/schemas/ErrorBody"});
    let error_response = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": error_ref.clone()}},
        })
    };
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                let Some(op) = op.as_object_mut() else {
                    continue;
                };
                let responses = op
                    .entry("responses")
                    .or_insert_with(|| Value::Object(Map::new()));
                let Some(responses) = responses.as_object_mut() else {
                    continue;
                };
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status)
                        .or_insert_with(|| error_response(description));
                };
                add(
                    "500",
                    "`internal`, `store_error`, `io_error`, `backend_error`: the server failed (details in its log).",
                );
                if path == "/healthz" || path == "/readyz" {
                    continue;
                }
                add(
                    "503",
                    "`shutting_down`: the server is stopping; try another or later.",
                );
                add("401", "`unauthorized`: no or unknown bearer token.");
                let scope = Method::from_bytes(method.to_uppercase().as_bytes())
                    .map(|m| Scope::required_for(&m, path))
                    .unwrap_or(Scope::Admin);
                add(
                    "403",
                    &format!("`forbidden` (`scope`): the token lacks the `{scope}` scope."),
                );
                op.insert("security".into(), json!([{"bearer": []}]));
                op.insert("x-crownest-scope".into(), json!(scope.as_str()));
            }
        }
    }
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        components.insert(
            "securitySchemes".into(),
            json!({"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token of `crownest serve` (the single admin token, or one of the tokens file with its scopes).",
            }}),
        );
        if let Some(schemas) = components.get_mut("schemas") {
            request_only_members(schemas);
            // Until nothing changes: a merge can make another part plain.
            for _ in 0..4 {
                let snapshot = schemas.clone();
                merge_flattened(schemas, &snapshot);
                if *schemas == snapshot {
                    break;
                }
            }
        }
    }
    binary_bodies(&mut doc);
    unsigned_integers(&mut doc);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut() {
                parameters_not_null(op);
                event_stream_items(op);
            }
        }
    }
    doc
}

/// An unsigned Rust integer derives to `format: int64` (or `int32`) with `minimum: 0`, whose
/// range a validator takes as the signed one; the server accepts the whole unsigned range.
/// Each such integer without its own maximum says so: `uint64` / `uint32` and the maximum.
fn unsigned_integers(node: &mut Value) {
    match node {
        Value::Object(map) => {
            let integer = match map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            let unsigned = map.get("minimum").and_then(Value::as_u64) == Some(0);
            if integer && unsigned && !map.contains_key("maximum") {
                match map.get("format").and_then(Value::as_str) {
                    Some("int64") => {
                        map.insert("format".into(), json!("uint64"));
                        map.insert("maximum".into(), json!(u64::MAX));
                    }
                    Some("int32") => {
                        map.insert("format".into(), json!("uint32"));
                        map.insert("maximum".into(), json!(u32::MAX));
                    }
                    _ => {}
                }
            }
            map.values_mut().for_each(unsigned_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_integers),
        _ => {}
    }
}

/// A query or header value is never JSON `null`: an optional parameter is one that may be
/// absent (`required: false`), not a nullable one.
fn parameters_not_null(op: &mut Value) {
    let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    for schema in params.iter_mut().filter_map(|p| p.get_mut("schema")) {
        let Some(obj) = schema.as_object_mut() else {
            continue;
        };
        if let Some(Value::Array(types)) = obj.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let only = types.remove(0);
                obj.insert("type".into(), only);
            }
        }
        if let Some(Value::Array(alts)) = obj.get("oneOf") {
            let non_null: Vec<Value> = alts
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                .cloned()
                .collect();
            if let [only] = non_null.as_slice() {
                let only = only.clone();
                obj.remove("oneOf");
                if let Some(o) = only.as_object() {
                    obj.extend(o.clone());
                }
            }
        }
    }
}

/// Each block of an event stream: `id` (the seq), `event` (the type) and `data` (the
/// event's JSON, or an `ErrorDetail` for `event: stream_error`).
fn event_stream_items(op: &mut Value) {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for response in responses.values_mut() {
        if let Some(media) = response
            .pointer_mut("/content/text~1event-stream")
            .and_then(Value::as_object_mut)
        {
            media.insert(
                "schema".into(),
                json!({
                    "type": "object",
                    "description": "One Server-Sent Events block.",
                    "properties": {
                        "id": {"type": "string", "description": "The event's seq."},
                        "event": {"type": "string", "description": "The event's type, or `stream_error`."},
                        "data": {
                            "type": "string",
                            "description": "The event's JSON (an ErrorDetail for `stream_error`).",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/Event"},
                        },
                        "retry": {"type": "integer"},
                    },
                    "required": ["data"],
                }),
            );
        }
    }
}

/// Members a request takes but no response carries: the derive leaves out a field serde
/// never serializes (`RunSpec::secrets`), so it is described here, `writeOnly`.
fn request_only_members(schemas: &mut Value) {
    if let Some(props) = schemas
        .pointer_mut("/RunSpec/properties")
        .and_then(Value::as_object_mut)
    {
        props.insert(
            "secrets".into(),
            json!({
                "type": "object",
                "additionalProperties": {"type": "string"},
                "writeOnly": true,
                "description": "Secret values, by variable name: passed to the command's \
                    environment, masked as `***` in its output (an accidental-echo guard only: a \
                    command can always reveal a value it was given), never stored, never in a \
                    response; only the names are recorded (`secretNames`). Names are portable \
                    (`[A-Za-z_][A-Za-z0-9_]*`) and distinct from `env`'s.",
            }),
        );
    }
}

/// Raw bodies (`application/octet-stream`: archives, chunks, artifacts) are bytes, not the
/// array of integers a `Vec<u8>` derives to.
fn binary_bodies(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if let Some(media) = map
                .get_mut("application/octet-stream")
                .and_then(Value::as_object_mut)
            {
                media.insert(
                    "schema".into(),
                    json!({"type": "string", "format": "binary"}),
                );
            }
            for v in map.values_mut() {
                binary_bodies(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(binary_bodies),
        _ => {}
    }
}

/// A serde `flatten` comes out of the derive as `allOf: [the flattened type, the rest]`. Where
/// the flattened struct denies unknown members (`additionalProperties: false`) no object could
/// satisfy both parts, and an `allOf` over alternatives (an internally tagged enum: `Event`)
/// is beyond most generators. So each `allOf` of plain objects becomes the one object it
/// means (the members and required names of all its parts), and one with a `oneOf` part
/// becomes a `oneOf` of such objects, one per alternative.
fn merge_flattened(node: &mut Value, schemas: &Value) {
    match node {
        Value::Object(map) => {
            if let Some(merged) = map.get("allOf").and_then(|all| merge_all_of(all, schemas)) {
                map.remove("allOf");
                for (k, v) in merged {
                    map.insert(k, v);
                }
            }
            for v in map.values_mut() {
                merge_flattened(v, schemas);
            }
        }
        Value::Array(items) => {
            for v in items {
                merge_flattened(v, schemas);
            }
        }
        _ => {}
    }
}

fn resolve<'a>(part: &'a Value, schemas: &'a Value) -> Option<&'a Value> {
    match part.get("$ref").and_then(Value::as_str) {
        Some(r) => schemas.get(r.strip_prefix("#/components/schemas/")?),
        None => Some(part),
    }
}

/// A plain object schema: `type: object`, no alternatives.
fn plain(schema: &Value) -> Option<&Map<String, Value>> {
    let obj = schema.as_object()?;
    let alternatives = obj
        .keys()
        .any(|k| k == "oneOf" || k == "anyOf" || k == "allOf");
    (obj.get("type").and_then(Value::as_str) == Some("object") && !alternatives).then_some(obj)
}

fn merge_all_of(all: &Value, schemas: &Value) -> Option<Map<String, Value>> {
    let mut objects = Vec::new();
    let mut alternatives: Option<Vec<&Map<String, Value>>> = None;
    for part in all.as_array()? {
        let part = resolve(part, schemas)?;
        if let Some(obj) = plain(part) {
            objects.push(obj);
        } else if let Some(one_of) = part.get("oneOf").and_then(Value::as_array) {
            if alternatives.is_some() {
                return None;
            }
            let alts: Option<Vec<_>> = one_of
                .iter()
                .map(|alt| resolve(alt, schemas).and_then(plain))
                .collect();
            alternatives = Some(alts?);
        } else {
            return None;
        }
    }
    let Some(alternatives) = alternatives else {
        return Some(merge_objects(&objects, None));
    };
    let one_of: Vec<Value> = alternatives
        .into_iter()
        .map(|alt| Value::Object(merge_objects(&objects, Some(alt))))
        .collect();
    let mut out = Map::new();
    out.insert("oneOf".into(), Value::Array(one_of));
    Some(out)
}

fn merge_objects(
    objects: &[&Map<String, Value>],
    alternative: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut properties = Map::new();
    let mut required: Vec<Value> = Vec::new();
    for obj in objects.iter().copied().chain(alternative) {
        if let Some(p) = obj.get("properties").and_then(Value::as_object) {
            properties.extend(p.clone());
        }
        if let Some(r) = obj.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
    }
    let mut out = Map::new();
    if let Some(d) = alternative.and_then(|a| a.get("description")) {
        out.insert("description".into(), d.clone());
    }
    out.insert("type".into(), json!("object"));
    out.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        out.insert("required".into(), Value::Array(required));
    }
    out
}
