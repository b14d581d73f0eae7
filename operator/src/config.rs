//! The operator's settings: the defaults a CellPool falls back to (images, NATS, pod
//! resources) and where the operator itself works (namespaces, lease). Every flag also
//! reads an environment variable, so the Helm chart can set them either way.

use cellbus_contracts::quantity;
use cellbus_contracts::resources::CellPoolSpec;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Runtime image of Linux pools without `spec.image`.
pub const DEFAULT_RUNTIME_IMAGE: &str = "ghcr.io/cellbus/cellbus-runtime:0.1.0";
/// Runtime image of Linux `python` and `process` pools without `spec.image`: the runtime
/// built with Python cells, with python3 and the Python SDK for process cells.
pub const DEFAULT_RUNTIME_IMAGE_PYTHON: &str = "ghcr.io/cellbus/cellbus-runtime-python:0.1.0";
/// Runtime image of Windows pools without `spec.image`.
pub const DEFAULT_RUNTIME_IMAGE_WINDOWS: &str = "ghcr.io/cellbus/cellbus-runtime-windows:0.1.0";
/// NATS of pools without `spec.nats.url`: the NATS Helm chart's Service in namespace `nats`.
pub const DEFAULT_NATS_URL: &str = "nats://nats.nats.svc:4222";
/// Name of the Lease the operator's replicas elect a leader on.
pub const DEFAULT_LEASE_NAME: &str = "cellbus-operator";
/// Port of the runtime's `/healthz`, `/readyz` and `/metrics` (`cellbus serve`'s default).
pub const DEFAULT_RUNTIME_PORT: u16 = 9090;
/// CPU a runtime pod requests when its pool sets no resources.
pub const DEFAULT_RUNTIME_CPU_REQUEST: &str = "100m";
/// Memory a runtime pod requests when its pool sets no resources.
pub const DEFAULT_RUNTIME_MEMORY_REQUEST: &str = "128Mi";
/// Memory limit of a runtime pod when its pool sets no resources.
pub const DEFAULT_RUNTIME_MEMORY_LIMIT: &str = "1Gi";

/// Operator settings, from flags or environment variables.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Runtime image of Linux wasm pools that set no spec.image.
    #[arg(long, env = "CELLBUS_RUNTIME_IMAGE", default_value = DEFAULT_RUNTIME_IMAGE)]
    pub runtime_image: String,

    /// Runtime image of Linux python and process pools that set no spec.image.
    #[arg(long, env = "CELLBUS_RUNTIME_IMAGE_PYTHON", default_value = DEFAULT_RUNTIME_IMAGE_PYTHON)]
    pub runtime_image_python: String,

    /// Runtime image of Windows pools that set no spec.image.
    #[arg(long, env = "CELLBUS_RUNTIME_IMAGE_WINDOWS", default_value = DEFAULT_RUNTIME_IMAGE_WINDOWS)]
    pub runtime_image_windows: String,

    /// NATS URL of pools that set no spec.nats.url; the operator connects to it too,
    /// unless --operator-nats-url says otherwise.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL, hide_env_values = true)]
    pub nats_url: String,

    /// Secret with NATS credentials for pools on the default NATS URL that name no Secret
    /// of their own: keys user and password, or token. It must exist in each such pool's
    /// namespace, and is also mounted into their pods at /var/run/cellbus/nats.
    #[arg(long, env = "NATS_CREDENTIALS_SECRET")]
    pub nats_credentials_secret: Option<String>,

    /// Copies JetStream keeps of each bucket (assignments, pod reports, modules): 1 on one
    /// server, 3 on a three-node cluster. A bucket keeping another number is changed to it.
    #[arg(
        long,
        env = "CELLBUS_REPLICAS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=5)
    )]
    pub replicas: u8,

    /// Namespaces to watch, comma separated; none means all.
    #[arg(
        long = "watch-namespace",
        env = "WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,

    /// Name of the Lease for leader election, in the operator's namespace.
    #[arg(long, env = "CELLBUS_LEASE_NAME", default_value = DEFAULT_LEASE_NAME)]
    pub lease_name: String,

    /// Port of the runtime's /healthz, /readyz and /metrics.
    #[arg(long, env = "CELLBUS_RUNTIME_PORT", default_value_t = DEFAULT_RUNTIME_PORT)]
    pub runtime_port: u16,

    /// CPU request of runtime pods whose pool sets no resources.
    #[arg(long, env = "CELLBUS_RUNTIME_CPU_REQUEST", default_value = DEFAULT_RUNTIME_CPU_REQUEST, value_parser = cpu)]
    pub runtime_cpu_request: String,

    /// CPU limit of runtime pods whose pool sets no resources; none by default, since a
    /// CPU limit throttles a busy pod even on an idle node.
    #[arg(long, env = "CELLBUS_RUNTIME_CPU_LIMIT", value_parser = cpu)]
    pub runtime_cpu_limit: Option<String>,

    /// Memory request of runtime pods whose pool sets no resources.
    #[arg(long, env = "CELLBUS_RUNTIME_MEMORY_REQUEST", default_value = DEFAULT_RUNTIME_MEMORY_REQUEST, value_parser = memory)]
    pub runtime_memory_request: String,

    /// Memory limit of runtime pods whose pool sets no resources.
    #[arg(long, env = "CELLBUS_RUNTIME_MEMORY_LIMIT", default_value = DEFAULT_RUNTIME_MEMORY_LIMIT, value_parser = memory)]
    pub runtime_memory_limit: String,
}

impl Default for Config {
    /// The values the flags default to, without reading the environment: for tests.
    fn default() -> Self {
        Self {
            runtime_image: DEFAULT_RUNTIME_IMAGE.into(),
            runtime_image_python: DEFAULT_RUNTIME_IMAGE_PYTHON.into(),
            runtime_image_windows: DEFAULT_RUNTIME_IMAGE_WINDOWS.into(),
            nats_url: DEFAULT_NATS_URL.into(),
            nats_credentials_secret: None,
            replicas: 1,
            watch_namespaces: Vec::new(),
            lease_name: DEFAULT_LEASE_NAME.into(),
            runtime_port: DEFAULT_RUNTIME_PORT,
            runtime_cpu_request: DEFAULT_RUNTIME_CPU_REQUEST.into(),
            runtime_cpu_limit: None,
            runtime_memory_request: DEFAULT_RUNTIME_MEMORY_REQUEST.into(),
            runtime_memory_limit: DEFAULT_RUNTIME_MEMORY_LIMIT.into(),
        }
    }
}

impl Config {
    /// The NATS a pool's pods use: its own URL, or the operator's default.
    pub fn bus<'a>(&'a self, pool: &'a CellPoolSpec) -> &'a str {
        pool.nats
            .as_ref()
            .and_then(|nats| nats.url.as_deref())
            .unwrap_or(&self.nats_url)
    }

    /// Requests and limits of runtime pods whose pool sets no `spec.resources`.
    pub fn runtime_resources(&self) -> ResourceRequirements {
        let quantities = |pairs: &[(&str, Option<&String>)]| {
            pairs
                .iter()
                .filter_map(|(name, value)| {
                    value.map(|v| ((*name).to_owned(), Quantity(v.clone())))
                })
                .collect()
        };
        ResourceRequirements {
            requests: Some(quantities(&[
                ("cpu", Some(&self.runtime_cpu_request)),
                ("memory", Some(&self.runtime_memory_request)),
            ])),
            limits: Some(quantities(&[
                ("cpu", self.runtime_cpu_limit.as_ref()),
                ("memory", Some(&self.runtime_memory_limit)),
            ])),
            ..ResourceRequirements::default()
        }
    }

    /// Whether the operator watches every namespace.
    pub fn watches_all_namespaces(&self) -> bool {
        self.watch_namespaces.is_empty()
    }
}

// Quantities are checked when the operator starts, so a typo in the chart's values fails
// at once instead of in every Deployment the operator later applies.
fn cpu(text: &str) -> Result<String, quantity::QuantityError> {
    quantity::cpu_millis(text).map(|_| text.to_owned())
}

fn memory(text: &str) -> Result<String, quantity::QuantityError> {
    quantity::memory_bytes(text).map(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn default_matches_what_the_flags_default_to() {
        // The defaults as clap declares them, without reading this process's environment
        // (NATS_URL may well be set where the tests run).
        let command = Cli::command();
        let default_of = |id: &str| -> Vec<String> {
            command
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .unwrap_or_else(|| panic!("no argument {id}"))
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect()
        };
        let config = Config::default();
        assert_eq!(default_of("runtime_image"), [config.runtime_image]);
        assert_eq!(
            default_of("runtime_image_python"),
            [config.runtime_image_python]
        );
        assert_eq!(
            default_of("runtime_image_windows"),
            [config.runtime_image_windows]
        );
        assert_eq!(default_of("nats_url"), [config.nats_url]);
        assert_eq!(default_of("lease_name"), [config.lease_name]);
        assert_eq!(
            default_of("runtime_port"),
            [config.runtime_port.to_string()]
        );
        assert_eq!(
            default_of("runtime_cpu_request"),
            [config.runtime_cpu_request]
        );
        assert_eq!(
            default_of("runtime_memory_request"),
            [config.runtime_memory_request]
        );
        assert_eq!(
            default_of("runtime_memory_limit"),
            [config.runtime_memory_limit]
        );
        assert!(default_of("nats_credentials_secret").is_empty());
        assert!(default_of("watch_namespaces").is_empty());
    }

    #[test]
    fn flags_set_every_field_and_namespaces_split_on_commas() {
        let matches = Cli::command()
            .try_get_matches_from([
                "operator",
                "--runtime-image=img:1",
                "--runtime-image-python=py:1",
                "--runtime-image-windows=win:1",
                "--nats-url=nats://n:4222",
                "--nats-credentials-secret=nats-creds",
                "--watch-namespace=a,b",
                "--replicas=3",
                "--lease-name=lease",
                "--runtime-port=8080",
                "--runtime-cpu-request=250m",
                "--runtime-cpu-limit=2",
                "--runtime-memory-request=256Mi",
                "--runtime-memory-limit=2Gi",
            ])
            .unwrap();
        let config = Cli::from_arg_matches(&matches).unwrap().config;
        assert_eq!(
            config,
            Config {
                runtime_image: "img:1".into(),
                runtime_image_python: "py:1".into(),
                runtime_image_windows: "win:1".into(),
                nats_url: "nats://n:4222".into(),
                nats_credentials_secret: Some("nats-creds".into()),
                replicas: 3,
                watch_namespaces: vec!["a".into(), "b".into()],
                lease_name: "lease".into(),
                runtime_port: 8080,
                runtime_cpu_request: "250m".into(),
                runtime_cpu_limit: Some("2".into()),
                runtime_memory_request: "256Mi".into(),
                runtime_memory_limit: "2Gi".into(),
            }
        );
        assert!(!config.watches_all_namespaces());
    }

    #[test]
    fn a_quantity_that_is_not_one_is_refused_at_start() {
        let error = Cli::command()
            .try_get_matches_from(["operator", "--runtime-memory-limit=lots"])
            .unwrap_err();
        assert!(
            error.to_string().contains("not a memory quantity"),
            "{error}"
        );
    }

    #[test]
    fn default_resources_request_cpu_and_memory_and_limit_memory_only() {
        let resources = Config::default().runtime_resources();
        let requests = resources.requests.unwrap();
        let limits = resources.limits.unwrap();
        assert_eq!(requests["cpu"], Quantity("100m".into()));
        assert_eq!(requests["memory"], Quantity("128Mi".into()));
        assert_eq!(limits["memory"], Quantity("1Gi".into()));
        assert!(!limits.contains_key("cpu"));
    }
}
