//! Types both resources use: the runtime and OS a pool offers, and the sandbox limits a
//! pool sets as defaults and ceilings and a cell may lower.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity;

/// What executes a cell's code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// WebAssembly components run by the shared wasmtime engine.
    #[default]
    Wasm,
    /// Native executables speaking JSON lines on stdin/stdout, each in an OS sandbox.
    Process,
    /// Python cells embedded in the runtime with CPython.
    Python,
}

impl Runtime {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Wasm => "wasm",
            Self::Process => "process",
            Self::Python => "python",
        }
    }
}

/// The operating system of the nodes a pool runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    /// Linux nodes: the Linux sandbox (rlimits, cgroup v2, seccomp).
    #[default]
    Linux,
    /// Windows nodes: native cells run in one Job Object per cell.
    Windows,
}

impl Os {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Windows => "windows",
        }
    }
}

/// Sandbox limits for one cell. On a CellPool they are the defaults for its cells and the
/// most a cell may ask for; on a Cell they lower the pool's values for that cell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLimits {
    /// Memory one instance or process may use, as a Kubernetes quantity (`64Mi`, `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(quantity::MEMORY_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": "!isQuantity(self) || quantity(self).isLessThan(quantity('16Ei'))",
            "messageExpression": "'`' + self + '` is not a memory quantity such as 64Mi or 1Gi'"
        }])
    )]
    pub memory: Option<String>,
    /// CPU one process may use, as a Kubernetes quantity (`500m`, `2`). Applies to process
    /// and Python cells (cgroup `cpu.max`, Job Object CPU rate); wasm cells are bounded by
    /// their deadline instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        pattern(quantity::CPU_PATTERN),
        extend("x-kubernetes-validations" = [{
            "rule": "!isQuantity(self) || quantity(self).isLessThan(quantity('18446744073709551616m'))",
            "messageExpression": "'`' + self + '` is not a CPU quantity such as 500m or 2'"
        }])
    )]
    pub cpu: Option<String>,
    /// Deadline of one request in milliseconds when neither the verb nor the caller sets a
    /// shorter one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 900_000))]
    pub timeout_ms: Option<u32>,
    /// WebAssembly fuel (roughly, instructions) one request may burn; unset means the
    /// deadline alone bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000_000u64))]
    pub fuel: Option<u64>,
    /// Requests one cell runs at once in one pod; more are answered `resource_exhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_in_flight: Option<u32>,
    /// Largest reply one request may produce, in bytes (the whole reply envelope). A
    /// larger reply is answered `resource_exhausted` instead. Never above the bus's own
    /// `max_payload`, which the runtime reads from the server; on a pool, the default
    /// and the most a cell may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 67_108_864))]
    pub max_reply_bytes: Option<u32>,
}

impl SandboxLimits {
    /// The limits a cell runs with: its own values where set, the pool's elsewhere.
    pub fn over(&self, pool: &SandboxLimits) -> SandboxLimits {
        SandboxLimits {
            memory: self.memory.clone().or_else(|| pool.memory.clone()),
            cpu: self.cpu.clone().or_else(|| pool.cpu.clone()),
            timeout_ms: self.timeout_ms.or(pool.timeout_ms),
            fuel: self.fuel.or(pool.fuel),
            max_in_flight: self.max_in_flight.or(pool.max_in_flight),
            max_reply_bytes: self.max_reply_bytes.or(pool.max_reply_bytes),
        }
    }
}

/// One environment variable handed to a cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!self.name.startsWith('LD_') && self.name != 'GLIBC_TUNABLES'",
    "messageExpression": "'`' + self.name + '` steers the dynamic loader; a cell may not set it'",
    "fieldPath": ".name"
}]))]
pub struct EnvVar {
    /// Variable name: letters, digits and `_`, not starting with a digit.
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub name: String,
    /// Variable value.
    #[serde(default)]
    #[schemars(length(max = 32_768))]
    pub value: String,
}

/// Whether `name` is read by the dynamic loader (or the C library) of every program
/// started with it: `LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT` and the rest of `LD_*`,
/// and `GLIBC_TUNABLES`. A Cell may not set one.
pub fn steers_the_loader(name: &str) -> bool {
    name.starts_with("LD_") || name == "GLIBC_TUNABLES"
}
