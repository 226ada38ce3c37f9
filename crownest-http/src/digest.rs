//! Per-chunk digests of staged transfers: `Content-Digest` (RFC 9530) and
//! `X-Chunk-Sha256`, parsed into the sha256 the engine checks the chunk against.

use base64::Engine as _;
use crownest_core::Sha256Digest;

/// The header a client sends a chunk's sha256 in (RFC 9530).
pub const CONTENT_DIGEST: &str = "content-digest";
/// The simpler alternative: 64 hex digits.
pub const X_CHUNK_SHA256: &str = "x-chunk-sha256";

/// The `sha-256` member of a `Content-Digest` field value, e.g.
/// `sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:` (a structured-field dictionary
/// of byte sequences). Other algorithms are ignored (`Ok(None)` when there is no
/// `sha-256`); a malformed `sha-256` member is an error.
pub fn parse_content_digest(value: &str) -> Result<Option<Sha256Digest>, String> {
    for member in value.split(',') {
        let Some((key, item)) = member.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("sha-256") {
            continue;
        }
        // Parameters (`;k=v`) may follow the byte sequence.
        let item = item.split(';').next().unwrap_or("").trim();
        let b64 = item
            .strip_prefix(':')
            .and_then(|i| i.strip_suffix(':'))
            .ok_or_else(|| {
                format!("sha-256 must be a byte sequence like :BASE64:, got {item:?}")
            })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("sha-256 is not base64: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("sha-256 must be 32 bytes, got {}", b.len()))?;
        return Ok(Some(Sha256Digest::from_bytes(&bytes)));
    }
    Ok(None)
}

/// The `Content-Digest` value of `data`'s sha256.
pub fn content_digest_of(sha256: &Sha256Digest) -> String {
    let raw = hex::decode(sha256.as_str()).unwrap_or_default();
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The sha256 a chunk request declares, from either header; both given must agree.
pub fn declared_chunk_sha256(
    content_digest: Option<&str>,
    x_chunk_sha256: Option<&str>,
) -> Result<Option<Sha256Digest>, String> {
    let a = content_digest
        .map(parse_content_digest)
        .transpose()
        .map_err(|e| format!("Content-Digest: {e}"))?
        .flatten();
    let b = x_chunk_sha256
        .map(|h| Sha256Digest::parse(h.trim()))
        .transpose()
        .map_err(|e| format!("X-Chunk-Sha256: {e}"))?;
    match (a, b) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "Content-Digest (sha256 {a}) and X-Chunk-Sha256 ({b}) disagree"
        )),
        (a, b) => Ok(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn content_digest_members_parse() {
        // RFC 9530 appendix example: sha-256 of `{"hello": "world"}`.
        let want = Sha256Digest::of(b"{\"hello\": \"world\"}");
        let v = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
        assert_eq!(parse_content_digest(v).unwrap(), Some(want.clone()));
        assert_eq!(content_digest_of(&want), v);
        let multi = format!("sha-512=:AAAA:, {v};x=1");
        assert_eq!(parse_content_digest(&multi).unwrap(), Some(want.clone()));
        assert_eq!(parse_content_digest("sha-512=:AAAA:").unwrap(), None);
        for bad in ["sha-256=abc", "sha-256=:!!:", "sha-256=:AAAA:"] {
            assert!(parse_content_digest(bad).is_err(), "{bad}");
        }
        let hex = want.to_string();
        assert_eq!(
            declared_chunk_sha256(Some(v), Some(&hex)).unwrap(),
            Some(want.clone())
        );
        assert_eq!(declared_chunk_sha256(None, Some(&hex)).unwrap(), Some(want));
        assert_eq!(declared_chunk_sha256(None, None).unwrap(), None);
        let other = Sha256Digest::of(b"x").to_string();
        assert!(declared_chunk_sha256(Some(v), Some(&other)).is_err());
        assert!(declared_chunk_sha256(None, Some("zz")).is_err());
    }
}
