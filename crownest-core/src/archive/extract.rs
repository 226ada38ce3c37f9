//! The extractor (placeholder until the hardened implementation lands).

use std::io::Read;
use std::path::Path;

use super::{ExtractPolicy, ExtractProgress, ExtractSummary};
use crate::error::{Error, Result};

pub(super) fn run(
    _reader: impl Read,
    _dest: Option<&Path>,
    _policy: &ExtractPolicy,
    _progress: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractSummary> {
    Err(Error::Unsupported {
        operation: "extract".into(),
        backend: "core".into(),
    })
}
