//! What runtime pods report back: the load state of each assigned cell, written to the KV
//! bucket `cbs-status` under `{namespace}.{pool}.{pod}`, and the payload of the
//! `cbs.{service}.$ping` reply the operator uses as its readiness check.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// JetStream KV bucket of pod reports.
pub const STATUS_BUCKET: &str = "cbs-status";

/// How often a runtime pod writes its report again, changed or not.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A report not written again for this long is of a pod that is gone (killed, or its
/// node lost): the operator ignores it and deletes it.
pub const REPORT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(90);

/// The KV key of one pod's report: `{namespace}.{pool}.{pod}`, each name a
/// [`crate::kv::key_token`], so no two pods share a key and `status_key(ns, pool, "")` is
/// a prefix of the keys of that pool's pods alone.
pub fn status_key(namespace: &str, pool: &str, pod: &str) -> String {
    crate::kv::key(&[namespace, pool, pod])
}

/// One pod's report on the cells of its pool's assignment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub namespace: String,
    pub pool: String,
    pub pod: String,
    /// When the pod wrote this report.
    pub updated_at: Timestamp,
    /// One entry per assigned cell, ordered by service.
    pub cells: Vec<CellLoadState>,
    /// What this pod's kernel holds process cells to (Linux runtimes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxReport>,
}

/// What a pod's kernel holds process cells to, beside their own users, seccomp and limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxReport {
    /// The kernel's Landlock ABI (0: no Landlock).
    pub landlock_abi: u32,
    /// What it cannot hold cells to, in words; empty when everything holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lacking: Vec<String>,
}

impl SandboxReport {
    /// The report of a kernel with Landlock ABI `landlock_abi`: files need ABI 1, TCP 4,
    /// signals and abstract sockets 6.
    pub fn of(landlock_abi: u32) -> Self {
        let lacking = [
            (
                1,
                "files outside the cell's own (user permissions alone hold them)",
            ),
            (4, "TCP (seccomp alone holds it)"),
            (
                6,
                "signals and abstract sockets past the cell (its user alone holds them)",
            ),
        ]
        .into_iter()
        .filter(|(needs, _)| landlock_abi < *needs)
        .map(|(_, what)| what.to_owned())
        .collect();
        Self {
            landlock_abi,
            lacking,
        }
    }
}

/// Whether a pod serves a cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellLoadState {
    /// Name of the Cell object.
    pub name: String,
    pub service: String,
    /// The digest the assignment asked for.
    pub digest: Option<String>,
    /// `loaded` or `failed`.
    pub state: LoadState,
    /// When the cell was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<Timestamp>,
    /// Why the cell is not loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LoadState {
    Loaded,
    Failed,
}

/// The payload of a `$ping` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingPayload {
    /// The pod that answered.
    pub pod: String,
    pub service: String,
    /// Digest of the module the pod runs for the service.
    pub digest: Option<String>,
    pub loaded_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::SandboxReport;

    #[test]
    fn a_kernel_lacks_what_its_landlock_abi_does_not_reach() {
        assert_eq!(SandboxReport::of(0).lacking.len(), 3);
        assert_eq!(SandboxReport::of(3).lacking.len(), 2);
        assert_eq!(
            SandboxReport::of(5).lacking,
            ["signals and abstract sockets past the cell (its user alone holds them)"]
        );
        assert!(SandboxReport::of(6).lacking.is_empty());
        assert!(SandboxReport::of(7).lacking.is_empty());
    }
}
