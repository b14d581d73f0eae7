//! `Cell`: one service on the bus, its verbs, its module and what it may use.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::{EnvVar, Os, Runtime, SandboxLimits};
use super::schema::json_schema_document;
use crate::subject;

/// A service on the Cellbus bus: requests on `cbs.{service}.{verb}` are answered by the
/// cell's module, run by the pods of a CellPool.
// Each `printcolumn(...)` repeats `type_`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "cellbus.io",
        version = "v1alpha1",
        kind = "Cell",
        namespaced,
        status = "CellStatus",
        category = "cellbus",
        doc = "A service on the Cellbus bus, answered by a WebAssembly or native module run by a CellPool.",
        printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
        printcolumn(name = "Pool", type_ = "string", json_path = ".status.pool"),
        printcolumn(
            name = "Ready",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].status"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!self.verbs.exists(v, has(v.delivery) && v.delivery == 'durable') || has(self.stream)",
        "message": "a durable verb needs spec.stream",
        "fieldPath": ".stream",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "!has(self.stream) || self.verbs.exists(v, has(v.delivery) && v.delivery == 'durable')",
        "message": "spec.stream is set but no verb has delivery: durable",
        "fieldPath": ".stream"
    },
    {
        "rule": "!has(self.database) || (has(self.database.schema) ? !(self.database.schema in ['public', 'information_schema'] || self.database.schema.startsWith('pg_')) : !(self.service == 'public' || self.service.startsWith('pg-')))",
        "messageExpression": "'`' + (has(self.database.schema) ? self.database.schema : self.service.replace('-', '_')) + '` is shared by the whole database; name a schema of the cell\\'s own'",
        "fieldPath": ".database.schema"
    }
]))]
pub struct CellSpec {
    /// Service name on the bus, a DNS label. Requests arrive on `cbs.{service}.{verb}`.
    /// One Cell per service per NATS; immutable.
    #[schemars(
        length(min = 1, max = 63),
        pattern(subject::SERVICE_PATTERN),
        extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "service is immutable"}])
    )]
    pub service: String,
    /// Runtime the module needs. Defaults to the pool's runtime when `poolRef` is set,
    /// otherwise to `wasm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// OS the module needs. Defaults to the pool's OS when `poolRef` is set, otherwise to
    /// `linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Os>,
    /// Name of the CellPool in this namespace that runs the cell. Without it, the one pool
    /// whose runtime and OS match is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub pool_ref: Option<String>,
    /// The verbs the cell answers; names are unique.
    #[schemars(
        length(min = 1, max = 64),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub verbs: Vec<VerbSpec>,
    /// The code that runs.
    pub module: ModuleSpec,
    /// The module's detached signature, as `cellbus module sign` writes it; required when
    /// the pool has a `trust`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<super::ModuleSignature>,
    /// Limits below the pool's defaults for this cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<SandboxLimits>,
    /// The JetStream stream `CBS_{SERVICE}` that holds durable verbs. Required when a verb
    /// is durable, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamSpec>,
    /// A PostgreSQL (Supabase) role and schema of the cell's own, handed over as the
    /// Secret `{cell}-db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,
    /// Environment variables the cell sees.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 128),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub env: Vec<EnvVar>,
    /// What the cell may use beyond computing on its input.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// Object names: DNS subdomains (RFC 1123).
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Namespace names: DNS labels (RFC 1123), at most 63 characters.
pub const NAMESPACE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// One verb of a cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.retry) || (has(self.delivery) && self.delivery == 'durable')",
        "message": "retry applies to durable verbs only; set delivery: durable or remove retry",
        "fieldPath": ".retry"
    }
]))]
pub struct VerbSpec {
    /// Verb name: one subject token of letters, digits, `_` and `-`.
    #[schemars(length(min = 1, max = 64), pattern(subject::VERB_PATTERN))]
    pub name: String,
    /// JSON Schema the request payload must match; violations are answered
    /// `schema_violation` with the failing paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "json_schema_document")]
    pub input: Option<Map<String, Value>>,
    /// JSON Schema the cell's output must match; violations are answered `cell_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "json_schema_document")]
    pub output: Option<Map<String, Value>>,
    /// Deadline of one request in milliseconds; the caller's own timeout wins when shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 900_000))]
    pub timeout_ms: Option<u32>,
    /// `request`: NATS request/reply, at most once. `durable`: captured by the cell's
    /// stream, delivered at least once and retried.
    #[serde(default)]
    pub delivery: Delivery,
    /// Redelivery of a durable verb that failed with a retryable error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

/// How requests for a verb are delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// NATS request/reply through the queue group `cbs.{service}`.
    #[default]
    Request,
    /// JetStream: persisted, acknowledged after the reply, retried, dead-lettered.
    Durable,
}

/// Redelivery of a durable verb.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.backoffMs) || size(self.backoffMs) < (has(self.maxDeliver) ? self.maxDeliver : 5)",
        "messageExpression": "string(size(self.backoffMs)) + ' backoff entries need maxDeliver above ' + string(size(self.backoffMs))",
        "fieldPath": ".backoffMs"
    }
]))]
pub struct RetrySpec {
    /// Deliveries before the request moves to `cbs.$dlq.{service}.{verb}`.
    #[serde(default = "default_max_deliver")]
    #[schemars(range(min = 1, max = 100))]
    pub max_deliver: u32,
    /// Wait before each redelivery in milliseconds; the last value repeats. Fewer entries
    /// than `maxDeliver`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(range(min = 1, max = 3_600_000)))]
    pub backoff_ms: Vec<u32>,
}

fn default_max_deliver() -> u32 {
    5
}

/// The code of a cell and where to get it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.digest) || has(self.command)", "message": "module needs a digest (or, for process cells, a command)", "fieldPath": ".digest", "reason": "FieldValueRequired"},
    {"rule": "!(has(self.url) && has(self.command))", "message": "module takes a url or a command, not both", "fieldPath": ".url"},
    {"rule": "!has(self.command) || size(self.command) == 0 || self.command[0].trim() != ''", "message": "command needs a program to run", "fieldPath": ".command"}
]))]
pub struct ModuleSpec {
    /// `sha256:` and 64 lowercase hex digits of the module's bytes. Bytes with another
    /// digest are never run. Without `url` the module is fetched from the JetStream object
    /// store `cbs-modules` by this digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DIGEST_PATTERN))]
    pub digest: Option<String>,
    /// An https URL to fetch the module from instead of the object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^https://[^\s]+$"))]
    pub url: Option<String>,
    /// For process cells: a command in the pool image (program and arguments) to run
    /// instead of a fetched executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub command: Option<Vec<String>>,
}

/// `sha256:` followed by 64 lowercase hex digits.
pub const DIGEST_PATTERN: &str = r"^sha256:[a-f0-9]{64}$";

/// The JetStream stream of a cell with durable verbs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.maxAgeSeconds) || (has(self.duplicateWindowSeconds) ? self.duplicateWindowSeconds : 120) <= self.maxAgeSeconds",
        "messageExpression": "'duplicate window of ' + string(has(self.duplicateWindowSeconds) ? self.duplicateWindowSeconds : 120) + 's is longer than maxAgeSeconds (' + string(self.maxAgeSeconds) + 's)'",
        "fieldPath": ".duplicateWindowSeconds"
    }
]))]
pub struct StreamSpec {
    /// Oldest message the stream keeps, in seconds; unset keeps messages until acked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub max_age_seconds: Option<u64>,
    /// Most bytes the stream holds; unset means no limit but the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub max_bytes: Option<i64>,
    /// Window in seconds in which a resent request (same envelope id) is dropped.
    #[serde(default = "default_duplicate_window")]
    #[schemars(range(min = 1, max = 86_400))]
    pub duplicate_window_seconds: u32,
    /// Copies of each message in a clustered NATS; unset takes the operator's
    /// `--replicas` (`cellbus up --replicas`), 1 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: Option<u8>,
    /// `Delete` removes the stream with the Cell; `Retain` keeps it.
    #[serde(default = "DeletionPolicy::delete")]
    pub deletion_policy: DeletionPolicy,
}

fn default_duplicate_window() -> u32 {
    120
}

/// What happens to a resource outside Kubernetes when its Cell is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep it.
    Retain,
    /// Remove it.
    Delete,
}

impl DeletionPolicy {
    fn delete() -> Self {
        Self::Delete
    }

    fn retain() -> Self {
        Self::Retain
    }
}

/// A PostgreSQL role and schema of the cell's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Schema the role works in; defaults to the service name with `-` as `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z_][a-z0-9_]*$"))]
    pub schema: Option<String>,
    /// `readOnly`: read tables. `readWrite`: also write rows. `ddl`: also create tables.
    #[serde(default)]
    pub access: DatabaseAccess,
    /// `Retain` keeps the role when the Cell is deleted; `Delete` drops it.
    #[serde(default = "DeletionPolicy::retain")]
    pub deletion_policy: DeletionPolicy,
    /// With `deletionPolicy: Delete`, also drop the schema and its data.
    #[serde(default)]
    pub drop_schema: bool,
    /// Most connections the role may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub connection_limit: Option<u32>,
    /// Change this value (a counter or a timestamp) to rotate the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub rotate: Option<String>,
    /// Rotate the password on a schedule as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSpec>,
}

/// A schedule of password rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// How often, in whole hours from 1h to 8760h: `720h` rotates every 30 days,
    /// counted from the last rotation.
    #[schemars(pattern(r"^([1-9][0-9]{0,2}|[1-7][0-9]{3}|8[0-6][0-9]{2}|87[0-5][0-9]|8760)h$"))]
    pub every: String,
}

impl RotationSpec {
    /// The period, or `None` when `every` is not 1h to 8760h.
    pub fn period(&self) -> Option<std::time::Duration> {
        let hours: u64 = self.every.strip_suffix('h')?.parse().ok()?;
        (1..=8760)
            .contains(&hours)
            .then(|| std::time::Duration::from_secs(hours * 3600))
    }
}

/// Connections a cell's role may hold when its Cell sets no `connectionLimit`.
pub const DEFAULT_CONNECTION_LIMIT: u32 = 5;

impl DatabaseSpec {
    /// Connections the role may hold: the spec's limit, or the default.
    pub fn role_connection_limit(&self) -> u32 {
        self.connection_limit.unwrap_or(DEFAULT_CONNECTION_LIMIT)
    }
}

/// Privileges of a cell's database role on its schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DatabaseAccess {
    #[default]
    ReadOnly,
    ReadWrite,
    Ddl,
}

/// Capabilities a cell is granted; anything not granted is answered `forbidden`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Subjects the cell may send requests to (`cbs.ledger.append`); `*` matches one
    /// token and a final `>` the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::call_patterns")]
    pub call: Vec<String>,
    /// Write log lines into the runtime's logs.
    #[serde(default = "granted")]
    pub log: bool,
    /// Read wall and monotonic clocks.
    #[serde(default)]
    pub clocks: bool,
    /// Read random bytes.
    #[serde(default)]
    pub random: bool,
    /// Open network connections of its own (process cells). Without it a process cell
    /// has no network at all: it reaches the bus and its database through the runtime
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
}

/// The network a process cell may use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.allow) || size(self.allow) == 0",
    "message": "network.allow (host:port) is not enforced yet; grant egress: true or leave network out",
    "fieldPath": ".allow"
}]))]
pub struct Network {
    /// Outbound TCP and UDP connections to anywhere.
    #[serde(default)]
    pub egress: bool,
    /// Only these `host:port` destinations. Refused for now: the sandbox cannot yet hold
    /// a cell to a list of hosts, and a list it does not enforce would be a promise broken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

impl Network {
    /// Whether the cell may open sockets of its own.
    pub fn granted(network: Option<&Network>) -> bool {
        network.is_some_and(|network| network.egress)
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            call: Vec::new(),
            log: true,
            clocks: false,
            random: false,
            network: None,
        }
    }
}

fn granted() -> bool {
    true
}

impl CellSpec {
    /// Whether any verb goes through the stream.
    pub fn has_durable_verbs(&self) -> bool {
        self.verbs.iter().any(|v| v.delivery == Delivery::Durable)
    }

    /// The database schema the cell works in, when it has a database.
    pub fn database_schema(&self) -> Option<String> {
        let database = self.database.as_ref()?;
        Some(
            database
                .schema
                .clone()
                .unwrap_or_else(|| self.service.replace('-', "_")),
        )
    }
}

#[cfg(feature = "kube")]
pub use status::{CellStatus, DurableVerbStatus};

#[cfg(feature = "kube")]
mod status {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// The backlog of one durable verb.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct DurableVerbStatus {
        /// The durable verb.
        pub verb: String,
        /// Requests in the stream: waiting for a pod, or being run and not yet
        /// acknowledged.
        pub pending: u64,
        /// Requests in `cbs.$dlq.{service}.{verb}` (kept 14 days).
        pub dead_letters: u64,
    }

    /// What the operator observed of a Cell.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct CellStatus {
        /// The `metadata.generation` this status describes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub observed_generation: Option<i64>,
        /// The CellPool that runs the cell.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pool: Option<String>,
        /// Subjects the cell answers on.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub subjects: Vec<String>,
        /// The JetStream stream of its durable verbs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stream: Option<String>,
        /// The Secret holding the cell's database credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub database_secret: Option<String>,
        /// Requests waiting and dead letters of each durable verb, as last observed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["verb"]))]
        pub durable: Vec<DurableVerbStatus>,
        /// Scheduled, ModuleVerified, StreamReady, DatabaseReady and Ready.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
        pub conditions: Vec<Condition>,
    }
}
