//! Every name, label, port and path the operator stamps on the objects it owns, in one
//! place, so the builders, the reconcilers and the tests cannot drift apart. Names derived
//! from a pool always come out valid for the object they name, whatever the pool is called.

use std::collections::BTreeMap;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "cellbus-operator";

/// `app.kubernetes.io/name` of runtime pods and their objects.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the pool.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/managed-by`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The pool a runtime pod belongs to.
pub const LABEL_POOL: &str = "cellbus.io/pool";
/// Node label Kubernetes sets to the node's OS.
pub const LABEL_NODE_OS: &str = "kubernetes.io/os";

/// Value of [`LABEL_NAME`].
pub const RUNTIME_APP: &str = "cellbus-runtime";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "cellbus-operator";

/// Name of the runtime container in a pool's pods.
pub const RUNTIME_CONTAINER: &str = "runtime";
/// Name of the runtime's HTTP port (`/healthz`, `/readyz`, `/metrics`).
pub const HTTP_PORT_NAME: &str = "http";
/// Liveness endpoint of the runtime.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness endpoint of the runtime: connected to NATS and the assignment applied.
pub const READYZ_PATH: &str = "/readyz";

/// Volume and mount path of the runtime's compiled-code cache.
pub const CACHE_VOLUME: &str = "cache";
pub const CACHE_DIR: &str = "/var/cache/cellbus";
/// Volume and mount path of the service account's token on Linux pods: where the
/// automounted one would be.
pub const SERVICE_ACCOUNT_VOLUME: &str = "service-account";
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Volume and mount path of a writable `/tmp` on Linux pods.
pub const TMP_VOLUME: &str = "tmp";
pub const TMP_DIR: &str = "/tmp";
/// Volume and mount path of the pool's NATS credentials Secret.
pub const NATS_CREDENTIALS_VOLUME: &str = "nats-credentials";
pub const NATS_CREDENTIALS_DIR: &str = "/var/run/cellbus/nats";

/// Keys of a NATS credentials Secret (see `NatsSpec::credentials_secret`).
pub const SECRET_KEY_USER: &str = "user";
pub const SECRET_KEY_PASSWORD: &str = "password";
pub const SECRET_KEY_TOKEN: &str = "token";

/// Taint key, value and effect Windows nodes commonly carry so that Linux pods stay off.
pub const WINDOWS_TAINT_KEY: &str = "os";
pub const WINDOWS_TAINT_VALUE: &str = "windows";
pub const WINDOWS_TAINT_EFFECT: &str = "NoSchedule";

/// Non-root user of the Linux runtime image (distroless `nonroot`).
pub const LINUX_RUNTIME_UID: i64 = 65532;
/// Built-in non-administrator account of Windows container base images.
pub const WINDOWS_RUNTIME_USER: &str = "ContainerUser";

/// The longest name a Service may have (an RFC 1035 label), and so every child's.
const MAX_CHILD_NAME: usize = 63;
/// The longest label value.
const MAX_LABEL_VALUE: usize = 63;
const CHILD_PREFIX: &str = "cellbus-";

/// Name of every Kubernetes object the operator makes for a pool: its ServiceAccount,
/// Deployment, Service and PodDisruptionBudget.
///
/// `cellbus-{pool}`: the prefix keeps the operator from taking over a user's own
/// Deployment called like the pool (server-side apply with force would), and makes the
/// name start with a letter as a Service name must. Pool names are DNS subdomains, which
/// Service names are not: a name with `.` or too long for 63 characters is made fit and
/// ends in a hash of the full pool name, so two pools never share children.
pub fn child_name(pool: &str) -> String {
    let plain = format!("{CHILD_PREFIX}{pool}");
    if plain.len() <= MAX_CHILD_NAME && !pool.contains('.') {
        return plain;
    }
    fit(&plain.replace('.', "-"), pool, MAX_CHILD_NAME)
}

/// The pool's name as a label value: the name itself when it fits in 63 characters, else
/// a shortened form ending in a hash of the full name.
pub fn pool_label_value(pool: &str) -> String {
    if pool.len() <= MAX_LABEL_VALUE {
        return pool.to_owned();
    }
    fit(pool, pool, MAX_LABEL_VALUE)
}

/// `text` cut to leave room for `-` and 8 hex digits of a hash of `full`, then those.
fn fit(text: &str, full: &str, max: usize) -> String {
    let hash = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, full.as_bytes()).simple();
    let hash = &hash.to_string()[..8];
    let keep = max - hash.len() - 1;
    // Names are ASCII (the API server holds them to DNS subdomains); the boundary check
    // only keeps a name that is not from panicking. A cut must not leave a trailing `-`
    // or `.`, which names and label values cannot end with.
    let mut cut = text.len().min(keep);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = text[..cut].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// Labels of a pool's runtime pods, which are also the selector of its Deployment, Service
/// and PodDisruptionBudget. A Deployment's selector is immutable: change these only with a
/// migration.
pub fn pool_labels(pool: &str) -> BTreeMap<String, String> {
    let pool = pool_label_value(pool);
    BTreeMap::from([
        (LABEL_NAME.to_owned(), RUNTIME_APP.to_owned()),
        (LABEL_INSTANCE.to_owned(), pool.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_POOL.to_owned(), pool),
    ])
}

/// [`pool_labels`] as a label selector string (`k=v,k=v`), as the CellPool's scale
/// subresource reports it in `status.selector`.
pub fn pool_selector(pool: &str) -> String {
    pool_labels(pool)
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_a_plain_pool_are_named_cellbus_and_the_pool() {
        assert_eq!(child_name("wasm"), "cellbus-wasm");
        assert_eq!(child_name("9lives"), "cellbus-9lives");
        assert_eq!(pool_label_value("wasm"), "wasm");
    }

    #[test]
    fn pools_with_dots_or_long_names_get_distinct_names_that_fit() {
        let dotted = child_name("a.b");
        assert!(dotted.starts_with("cellbus-a-b-"), "{dotted}");
        assert_ne!(dotted, child_name("a-b"));

        let long = "p".repeat(200);
        let name = child_name(&long);
        assert_eq!(name.len(), 63);
        assert_ne!(name, child_name(&"p".repeat(201)));
        let label = pool_label_value(&long);
        assert!(label.len() <= 63);
        assert_eq!(child_name(&long), name, "names are stable");
    }

    #[test]
    fn a_cut_never_leaves_a_trailing_dash() {
        // 54 characters kept, the last of them a `-`.
        let pool = format!("{}-{}", "a".repeat(45), "b".repeat(30));
        let name = child_name(&pool);
        assert!(!name.contains("--"), "{name}");
        assert!(name.len() <= 63);
    }

    #[test]
    fn the_selector_string_lists_every_pool_label() {
        assert_eq!(
            pool_selector("wasm"),
            "app.kubernetes.io/instance=wasm,app.kubernetes.io/managed-by=cellbus-operator,\
             app.kubernetes.io/name=cellbus-runtime,cellbus.io/pool=wasm"
        );
    }
}
