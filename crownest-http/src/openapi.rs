//! The OpenAPI 3.1 document served at `/v1/openapi.json` (kept in sync with
//! [`crate::ROUTES`] by a test).

/// The document.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");
