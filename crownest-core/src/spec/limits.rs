//! [`Limits`] (resolved) and [`LimitOverrides`] (what a run asks for), with their
//! defaults and maxima (DESIGN §5).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Resolved limits of a run. Every field has a default (DESIGN §7); a run may lower or
/// raise each one within the engine's maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Stored output bytes per stream (stdout, stderr); more is dropped with `output_truncated`.
    pub output_bytes_per_stream: u64,
    /// Bytes of one artifact.
    pub artifact_bytes_each: u64,
    /// Bytes of all artifacts of a run.
    pub artifact_bytes_total: u64,
    /// Extracted bytes of the archive.
    pub extracted_bytes: u64,
    /// Entries in the archive, directories implied by deeper paths included.
    pub entries: u64,
    /// Length of an entry path in bytes.
    pub path_length: u64,
    /// Components of an entry path.
    pub path_depth: u64,
    /// Bytes of all entry paths of the archive together, each implied directory's path
    /// included (as if it were written as an entry). Absent in records written before this
    /// limit existed, which read back with the default.
    #[serde(default = "default_path_bytes")]
    pub path_bytes: u64,
    /// Size of one PAX/GNU metadata record.
    pub metadata_record_bytes: u64,
    /// Maximum inflated/compressed ratio, checked after the first 10 MiB of output.
    pub compression_ratio: u64,
    /// Memory of the sandbox, in bytes (enforced where the backend can).
    pub memory_bytes: u64,
    /// Processes/threads in the sandbox (enforced where the backend can).
    pub pids: u64,
    /// Open files per process.
    pub open_files: u64,
    /// Execution deadline in milliseconds (command time only).
    pub timeout_ms: u64,
    /// SIGTERM → SIGKILL grace in milliseconds.
    pub kill_grace_ms: u64,
    /// Budget for finalization (artifacts, destroy, evidence) in milliseconds.
    pub finalization_budget_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            output_bytes_per_stream: 64 * MIB,
            artifact_bytes_each: GIB,
            artifact_bytes_total: 4 * GIB,
            extracted_bytes: 4 * GIB,
            entries: 200_000,
            path_length: 4096,
            path_depth: 64,
            path_bytes: default_path_bytes(),
            metadata_record_bytes: MIB,
            compression_ratio: 200,
            memory_bytes: 2 * GIB,
            pids: 1024,
            open_files: 4096,
            timeout_ms: 600_000,
            kill_grace_ms: 2_000,
            finalization_budget_ms: 60_000,
        }
    }
}

fn default_path_bytes() -> u64 {
    64 * MIB
}

impl Limits {
    /// The engine maxima used when none are configured: 4× every default, and a 24 h timeout.
    pub fn default_maxima() -> Self {
        let d = Self::default();
        Self {
            output_bytes_per_stream: 16 * GIB,
            artifact_bytes_each: 16 * GIB,
            artifact_bytes_total: 64 * GIB,
            extracted_bytes: 64 * GIB,
            entries: 4_000_000,
            path_length: 4096,
            path_depth: 256,
            path_bytes: GIB,
            metadata_record_bytes: 16 * MIB,
            compression_ratio: 10_000,
            memory_bytes: 256 * GIB,
            pids: 65_536,
            open_files: 1 << 20,
            timeout_ms: 24 * 3600 * 1000,
            kill_grace_ms: 60_000,
            finalization_budget_ms: d.finalization_budget_ms * 10,
        }
    }

    fn fields(&self) -> [(&'static str, u64); 16] {
        [
            ("outputBytesPerStream", self.output_bytes_per_stream),
            ("artifactBytesEach", self.artifact_bytes_each),
            ("artifactBytesTotal", self.artifact_bytes_total),
            ("extractedBytes", self.extracted_bytes),
            ("entries", self.entries),
            ("pathLength", self.path_length),
            ("pathDepth", self.path_depth),
            ("pathBytes", self.path_bytes),
            ("metadataRecordBytes", self.metadata_record_bytes),
            ("compressionRatio", self.compression_ratio),
            ("memoryBytes", self.memory_bytes),
            ("pids", self.pids),
            ("openFiles", self.open_files),
            ("timeoutMs", self.timeout_ms),
            ("killGraceMs", self.kill_grace_ms),
            ("finalizationBudgetMs", self.finalization_budget_ms),
        ]
    }

    /// Applies a run's overrides on top of `self` (the engine defaults), refusing any value
    /// above `maxima` or equal to zero with a typed error.
    pub fn resolve(&self, overrides: &LimitOverrides, maxima: &Limits) -> Result<Limits> {
        let mut out = *self;
        macro_rules! apply {
            ($($f:ident),*) => {$(
                if let Some(v) = overrides.$f { out.$f = v; }
            )*};
        }
        apply!(
            output_bytes_per_stream,
            artifact_bytes_each,
            artifact_bytes_total,
            extracted_bytes,
            entries,
            path_length,
            path_depth,
            path_bytes,
            metadata_record_bytes,
            compression_ratio,
            memory_bytes,
            pids,
            open_files,
            timeout_ms,
            kill_grace_ms,
            finalization_budget_ms
        );
        for ((name, v), (_, max)) in out.fields().into_iter().zip(maxima.fields()) {
            if v == 0 {
                return Err(Error::invalid(
                    format!("limits.{name}"),
                    "must be greater than zero",
                ));
            }
            if v > max {
                return Err(Error::invalid(
                    format!("limits.{name}"),
                    format!("{v} is above the engine maximum {max}"),
                ));
            }
        }
        Ok(out)
    }
}

/// Per-run overrides of [`Limits`]; absent fields take the engine default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes_per_stream: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_bytes_each: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_bytes_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_depth: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_record_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalization_budget_ms: Option<u64>,
}
