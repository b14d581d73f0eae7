//! The Kubernetes objects of a CellPool: the runtime pods (`cellbus serve`) and what they
//! need around them.

use std::collections::BTreeSet;

use cellbus_contracts::resources::{CellPool, Os, Runtime};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PodOS, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, Toleration,
    Volume, VolumeMount, VolumeProjection, WindowsSecurityContextOptions,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::config::Config;
use crate::state::names;

/// Port of a pool's Service. The Service targets the container port by name, so it stays
/// right whatever port the operator is configured to run the runtime on.
pub const SERVICE_PORT: i32 = 9090;

/// How long a request may run when neither the verb, the cell nor the pool sets a
/// deadline: the runtime's default.
const DEFAULT_REQUEST_DEADLINE_MS: u32 = 30_000;
/// Time on top of the longest request for a pod to drain and flush before it is killed.
const DRAIN_SLACK_SECONDS: i64 = 10;
/// Kubernetes' own default grace period, the least a pool gets.
const MIN_GRACE_SECONDS: i64 = 30;

/// Every object of a pool, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolObjects {
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
    pub service: Service,
    /// Present with more than one replica; with one, the reconciler deletes any left over.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
}

/// Builds every object of a pool.
pub fn pool_objects(pool: &CellPool, config: &Config) -> PoolObjects {
    PoolObjects {
        service_account: service_account(pool),
        deployment: deployment(pool, config),
        service: metrics_service(pool),
        pod_disruption_budget: pod_disruption_budget(pool),
    }
}

/// Metadata of a child of `pool`: its name, namespace and labels, and the pool as
/// controller, so Kubernetes deletes the child with the pool.
///
/// A pool read from the API server always has a uid; one without (a manifest read from
/// disk) gets no owner reference, which is why `render` sets a placeholder uid.
fn child_metadata(pool: &CellPool) -> ObjectMeta {
    ObjectMeta {
        name: Some(names::child_name(&pool.name_any())),
        namespace: pool.namespace(),
        labels: Some(names::pool_labels(&pool.name_any())),
        owner_references: pool.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

fn selector(pool: &CellPool) -> LabelSelector {
    LabelSelector {
        match_labels: Some(names::pool_labels(&pool.name_any())),
        ..LabelSelector::default()
    }
}

/// The ServiceAccount a pool's pods run as. It is granted one thing, by
/// [`secret_reader_role`]: reading the database Secrets of the pool's own cells. The token
/// is mounted by the pod spec, not for every pod of the account.
pub fn service_account(pool: &CellPool) -> ServiceAccount {
    ServiceAccount {
        metadata: child_metadata(pool),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The Secret with a pool's NATS credentials: the pool's own; else, for a pool on the
/// operator's default NATS, the operator's default Secret. A pool that names a NATS URL of
/// its own never gets the default credentials, which belong to the default server and
/// would otherwise be sent to whatever server the pool names.
pub fn nats_credentials_secret<'a>(pool: &'a CellPool, config: &'a Config) -> Option<&'a str> {
    let nats = pool.spec.nats.as_ref();
    if let Some(secret) = nats.and_then(|nats| nats.credentials_secret.as_deref()) {
        return Some(secret);
    }
    let own_url = nats.is_some_and(|nats| nats.url.is_some());
    (!own_url)
        .then_some(config.nats_credentials_secret.as_deref())
        .flatten()
}

/// The runtime image of a pool: its own, else the operator's image for its OS and runtime.
/// On Linux, python and process pools get the image with Python in it (python cells need
/// the runtime built with them; process cells need an interpreter, and the plain image has
/// none). Windows has one image, whose runtime runs wasm and process cells.
pub fn runtime_image<'a>(pool: &'a CellPool, config: &'a Config) -> &'a str {
    pool.spec
        .image
        .as_deref()
        .unwrap_or(match (pool.spec.os, pool.spec.runtime) {
            (Os::Windows, _) => &config.runtime_image_windows,
            (Os::Linux, Runtime::Wasm) => &config.runtime_image,
            (Os::Linux, Runtime::Process | Runtime::Python) => &config.runtime_image_python,
        })
}

/// The Deployment of a pool's runtime pods, each running `cellbus serve` for the pool.
///
/// The pods are locked down as far as their OS allows (the restricted Pod Security
/// Standard on Linux), schedule only onto nodes of the pool's OS, get NATS settings and
/// credentials through environment variables, and report health on the `http` port.
pub fn deployment(pool: &CellPool, config: &Config) -> Deployment {
    let spec = &pool.spec;
    let os = spec.os;
    let labels = names::pool_labels(&pool.name_any());

    let mut volumes = vec![empty_dir(names::CACHE_VOLUME)];
    let mut mounts = vec![mount(names::CACHE_VOLUME, names::CACHE_DIR)];
    if os == Os::Linux {
        // The root filesystem is read-only; libraries and process cells that want a
        // scratch file still find a writable /tmp. Windows keeps its root writable.
        volumes.push(empty_dir(names::TMP_VOLUME));
        mounts.push(mount(names::TMP_VOLUME, names::TMP_DIR));
        // The token the runtime reads its cells' database Secrets with, readable by the
        // runtime's user and group (fsGroup) only, never by a cell's.
        volumes.push(service_account_volume());
        mounts.push(VolumeMount {
            read_only: Some(true),
            ..mount(names::SERVICE_ACCOUNT_VOLUME, names::SERVICE_ACCOUNT_DIR)
        });
    }

    let mut env = vec![
        match pool.namespace() {
            Some(namespace) => env_value("CELLBUS_NAMESPACE", namespace),
            // Only a pool never stored by the API server lacks a namespace; the pod's own
            // is the pool's in any case.
            None => env_field("CELLBUS_NAMESPACE", "metadata.namespace"),
        },
        env_value("CELLBUS_POOL", pool.name_any()),
        env_field("POD_NAME", "metadata.name"),
        env_value("NATS_URL", config.bus(&pool.spec)),
    ];
    if let Some(secret) = nats_credentials_secret(pool, config) {
        // Each key is optional: a Secret holds user and password, or a token, or neither,
        // and a missing key leaves its variable unset instead of keeping the pod from
        // starting.
        env.extend([
            env_secret("NATS_USER", secret, names::SECRET_KEY_USER),
            env_secret("NATS_PASSWORD", secret, names::SECRET_KEY_PASSWORD),
            env_secret("NATS_TOKEN", secret, names::SECRET_KEY_TOKEN),
        ]);
        // The whole Secret is mounted too, and the runtime uses whichever of the files
        // `creds`, `nkey` and `ca.crt` it holds: Kubernetes cannot set a variable only
        // when a Secret has a key, and this builder does not read the Secret. The volume
        // is not optional: a Secret that does not exist keeps the pod Pending with an
        // event naming it, which says more than a NATS authorization error would.
        env.push(env_value(
            "NATS_CREDENTIALS_DIR",
            names::NATS_CREDENTIALS_DIR,
        ));
        volumes.push(Volume {
            name: names::NATS_CREDENTIALS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                // The runtime's group (fsGroup) reads it; a process cell, under a user
                // of its own with no groups, does not.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            read_only: Some(true),
            ..mount(names::NATS_CREDENTIALS_VOLUME, names::NATS_CREDENTIALS_DIR)
        });
    }
    env.extend([
        // Windows pods read the same path as C:\var\cache\cellbus, where the volume is.
        env_value("CELLBUS_CACHE_DIR", names::CACHE_DIR),
        env_value(
            "CELLBUS_HTTP_ADDR",
            format!("0.0.0.0:{}", config.runtime_port),
        ),
    ]);

    let container = Container {
        name: names::RUNTIME_CONTAINER.into(),
        image: Some(runtime_image(pool, config).into()),
        // The image's entrypoint is the `cellbus` binary.
        args: Some(vec!["serve".into()]),
        ports: Some(vec![ContainerPort {
            name: Some(names::HTTP_PORT_NAME.into()),
            container_port: i32::from(config.runtime_port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| config.runtime_resources()),
        ),
        liveness_probe: Some(http_probe(names::HEALTHZ_PATH, 10, 3)),
        readiness_probe: Some(http_probe(names::READYZ_PATH, 5, 2)),
        security_context: Some(security_context(os, spec.runtime)),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let mut node_selector = spec.node_selector.clone();
    // The pool's OS wins over a selector that says otherwise: the image and the sandbox
    // are built for that OS.
    node_selector.insert(names::LABEL_NODE_OS.into(), os.as_str().into());

    let mut tolerations = spec.tolerations.clone();
    if os == Os::Windows {
        let windows = windows_toleration();
        if !tolerations.contains(&windows) {
            tolerations.push(windows);
        }
    }

    let pod = PodSpec {
        os: Some(PodOS {
            name: os.as_str().into(),
        }),
        service_account_name: Some(names::child_name(&pool.name_any())),
        // The runtime reads its cells' database Secrets with this token (kubelet rotates
        // it; the runtime reads it anew for every request); the account can read nothing
        // else. Linux pods mount it themselves, readable by the runtime's user alone.
        automount_service_account_token: Some(os == Os::Windows),
        // The runtime reads NATS_* variables; service links would add NATS_SERVICE_HOST,
        // NATS_PORT and the like for a Service named `nats` in the namespace.
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(termination_grace_seconds(pool)),
        node_selector: Some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        containers: vec![container],
        volumes: Some(volumes),
        // Volumes (the NATS credentials, the token) belong to the runtime's group, which
        // no process cell is in.
        security_context: (os == Os::Linux).then(|| PodSecurityContext {
            fs_group: Some(names::LINUX_RUNTIME_UID),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };

    Deployment {
        metadata: child_metadata(pool),
        spec: DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: selector(pool),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The ClusterIP Service in front of a pool's pods, for scraping `/metrics` (a
/// ServiceMonitor selects it) and reaching their health endpoints. Requests to cells go
/// through NATS, not through this Service.
pub fn metrics_service(pool: &CellPool) -> Service {
    Service {
        metadata: child_metadata(pool),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names::pool_labels(&pool.name_any())),
            ports: Some(vec![ServicePort {
                name: Some(names::HTTP_PORT_NAME.into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String(names::HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A PodDisruptionBudget letting node drains take one runtime pod at a time, for pools of
/// more than one replica. With one replica a budget would either block every drain or
/// allow nothing, so there is none.
pub fn pod_disruption_budget(pool: &CellPool) -> Option<PodDisruptionBudget> {
    (pool.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: child_metadata(pool),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(pool)),
            // A pod that is not ready serves nothing; evicting it must not count against
            // the budget, or one stuck pod would block every drain of its node.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The toleration of the taint Windows nodes commonly carry (`os=windows:NoSchedule`).
pub fn windows_toleration() -> Toleration {
    Toleration {
        key: Some(names::WINDOWS_TAINT_KEY.into()),
        operator: Some("Equal".into()),
        value: Some(names::WINDOWS_TAINT_VALUE.into()),
        effect: Some(names::WINDOWS_TAINT_EFFECT.into()),
        ..Toleration::default()
    }
}

/// Long enough for the longest request the pool allows to finish after SIGTERM, when the
/// runtime stops taking new requests and drains.
/// The Role that lets a pool's pods read the database Secrets of its cells and no
/// other Secret. None when no cell of the pool has a database: a rule without
/// `resourceNames` would grant every Secret of the namespace.
pub fn secret_reader_role(pool: &CellPool, secrets: &BTreeSet<String>) -> Option<Role> {
    if secrets.is_empty() {
        return None;
    }
    Some(Role {
        metadata: child_metadata(pool),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["get".into()],
            resource_names: Some(secrets.iter().cloned().collect()),
            ..PolicyRule::default()
        }]),
    })
}

/// Binds [`secret_reader_role`] to the pool's ServiceAccount.
pub fn secret_reader_binding(pool: &CellPool) -> RoleBinding {
    let name = names::child_name(&pool.name_any());
    RoleBinding {
        metadata: child_metadata(pool),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: pool.namespace(),
            ..Subject::default()
        }]),
    }
}

fn termination_grace_seconds(pool: &CellPool) -> i64 {
    let deadline_ms = pool
        .spec
        .sandbox
        .timeout_ms
        .unwrap_or(DEFAULT_REQUEST_DEADLINE_MS);
    (i64::from(deadline_ms.div_ceil(1000)) + DRAIN_SLACK_SECONDS).max(MIN_GRACE_SECONDS)
}

/// The container's security context: everything the restricted Pod Security Standard asks
/// for on Linux, but in process pools. On Windows the API server refuses the Linux-only
/// fields when `spec.os.name` is `windows` (seccompProfile, capabilities,
/// readOnlyRootFilesystem, allowPrivilegeEscalation, runAsUser, runAsGroup and more); what
/// stays is running as the images' built-in non-administrator account, which
/// `runAsNonRoot` then checks.
///
/// A Linux process pool's runtime starts each process cell under a user of its own, for
/// which it holds CAP_SETUID and CAP_SETGID and nothing else: added here, and given to the
/// non-root runtime by the file capabilities of `cellbus` in the process image
/// (`cap_setuid,cap_setgid=p`; Kubernetes sets no ambient capabilities, so an added one is
/// lost at exec without them). File capabilities need `allowPrivilegeEscalation: true`,
/// which the baseline Pod Security Standard allows; the runtime sets no-new-privileges on
/// every cell itself.
fn security_context(os: Os, runtime: Runtime) -> SecurityContext {
    let switches_users = runtime == Runtime::Process;
    match os {
        Os::Linux => SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(names::LINUX_RUNTIME_UID),
            run_as_group: Some(names::LINUX_RUNTIME_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(switches_users),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: switches_users.then(|| vec!["SETUID".into(), "SETGID".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        },
        Os::Windows => SecurityContext {
            run_as_non_root: Some(true),
            windows_options: Some(WindowsSecurityContextOptions {
                run_as_user_name: Some(names::WINDOWS_RUNTIME_USER.into()),
                ..WindowsSecurityContextOptions::default()
            }),
            ..SecurityContext::default()
        },
    }
}

/// The service account's token, the cluster's CA and the namespace, where a pod's
/// automounted token would be, but not readable by every user: mode 0600, to which the
/// kubelet adds group read for the pod's fsGroup (the runtime's group).
fn service_account_volume() -> Volume {
    Volume {
        name: names::SERVICE_ACCOUNT_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o600),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..KeyToPath::default()
                        }]),
                        ..ConfigMapProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                ..ObjectFieldSelector::default()
                            }),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(names::HTTP_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::builders::fixtures::{env_by_name, PoolFixture, NAMESPACE, UID};
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod_spec(deployment: &Deployment) -> &PodSpec {
        deployment.spec.template.spec.as_ref().unwrap()
    }

    fn container(deployment: &Deployment) -> &Container {
        &pod_spec(deployment).containers[0]
    }

    fn value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
        env_by_name(container)
            .get(name)
            .and_then(|var| var.value.as_deref())
    }

    fn field_ref<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
        env_by_name(container)
            .get(name)
            .and_then(|var| var.value_from.as_ref())
            .and_then(|from| from.field_ref.as_ref())
            .map(|field| field.field_path.as_str())
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from(
            [
                ("app.kubernetes.io/name", "cellbus-runtime"),
                ("app.kubernetes.io/instance", "wasm"),
                ("app.kubernetes.io/managed-by", "cellbus-operator"),
                ("cellbus.io/pool", "wasm"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
    }

    #[test]
    fn a_linux_pool_runs_the_linux_image_locked_down_on_linux_nodes() {
        let pool = CellPool::test().replicas(2);
        let deployment = deployment(&pool, &Config::default());

        assert_eq!(deployment.metadata.name.as_deref(), Some("cellbus-wasm"));
        assert_eq!(deployment.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(deployment.metadata.labels.as_ref(), Some(&labels()));
        let spec = &deployment.spec;
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.selector.match_labels.as_ref(), Some(&labels()));
        assert_eq!(
            spec.template.metadata.as_ref().unwrap().labels.as_ref(),
            Some(&labels())
        );

        let pod = pod_spec(&deployment);
        assert_eq!(pod.os.as_ref().unwrap().name, "linux");
        assert_eq!(
            pod.node_selector.as_ref().unwrap(),
            &BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())])
        );
        assert_eq!(pod.tolerations, None);
        assert_eq!(pod.service_account_name.as_deref(), Some("cellbus-wasm"));
        // The token is mounted by the pod itself, for the runtime's user alone.
        assert_eq!(pod.automount_service_account_token, Some(false));
        let token = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "service-account")
            .unwrap();
        let projected = token.projected.as_ref().unwrap();
        assert_eq!(projected.default_mode, Some(0o600));
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(65532));
        let sources = projected.sources.as_ref().unwrap();
        assert_eq!(
            sources[0].service_account_token.as_ref().unwrap().path,
            "token"
        );
        assert_eq!(
            sources[1].config_map.as_ref().unwrap().name,
            "kube-root-ca.crt"
        );
        let runtime = container(&deployment);
        let mount = runtime
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "service-account")
            .unwrap();
        assert_eq!(
            mount.mount_path,
            "/var/run/secrets/kubernetes.io/serviceaccount"
        );
        assert_eq!(mount.read_only, Some(true));

        assert_eq!(
            runtime.image.as_deref(),
            Some("ghcr.io/cellbus/cellbus-runtime:0.1.0")
        );
        assert_eq!(runtime.args.as_deref(), Some(&["serve".to_owned()][..]));
        let security = runtime.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(65532));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(
            security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert_eq!(security.windows_options, None);
        assert_eq!(security.capabilities.as_ref().unwrap().add, None);
    }

    /// A process pool's runtime holds CAP_SETUID and CAP_SETGID, to start each cell under
    /// a user of its own, and nothing else; the file capabilities that give them to a
    /// non-root runtime need privilege escalation allowed. Python pools run cells inside
    /// the runtime and get neither.
    #[test]
    fn a_process_pool_runtime_may_switch_users_and_nothing_more() {
        for (runtime, switches) in [
            (Runtime::Process, true),
            (Runtime::Python, false),
            (Runtime::Wasm, false),
        ] {
            let deployment = deployment(&CellPool::test().runtime(runtime), &Config::default());
            let security = container(&deployment).security_context.clone().unwrap();
            let capabilities = security.capabilities.unwrap();
            assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
            assert_eq!(
                capabilities.add,
                switches.then(|| vec!["SETUID".to_owned(), "SETGID".to_owned()]),
                "{runtime:?}"
            );
            assert_eq!(security.allow_privilege_escalation, Some(switches));
            assert_eq!(security.run_as_user, Some(65532));
            assert_eq!(security.run_as_non_root, Some(true));
        }
    }

    #[test]
    fn a_linux_pool_gets_its_identity_nats_cache_and_http_address_from_the_environment() {
        let deployment = deployment(&CellPool::test(), &Config::default());
        let runtime = container(&deployment);
        assert_eq!(value(runtime, "CELLBUS_NAMESPACE"), Some(NAMESPACE));
        assert_eq!(value(runtime, "CELLBUS_POOL"), Some("wasm"));
        assert_eq!(field_ref(runtime, "POD_NAME"), Some("metadata.name"));
        assert_eq!(
            value(runtime, "NATS_URL"),
            Some("nats://nats.nats.svc:4222")
        );
        assert_eq!(
            value(runtime, "CELLBUS_CACHE_DIR"),
            Some("/var/cache/cellbus")
        );
        assert_eq!(value(runtime, "CELLBUS_HTTP_ADDR"), Some("0.0.0.0:9090"));
        for absent in [
            "NATS_USER",
            "NATS_PASSWORD",
            "NATS_TOKEN",
            "NATS_CREDS",
            "NATS_CREDENTIALS_DIR",
        ] {
            assert!(!env_by_name(runtime).contains_key(absent), "{absent}");
        }

        // The cache is a writable volume, since the root filesystem is not.
        let mounts = runtime.volume_mounts.as_ref().unwrap();
        let cache = mounts.iter().find(|m| m.name == "cache").unwrap();
        assert_eq!(cache.mount_path, "/var/cache/cellbus");
        let volumes = pod_spec(&deployment).volumes.as_ref().unwrap();
        let cache = volumes.iter().find(|v| v.name == "cache").unwrap();
        assert!(cache.empty_dir.is_some());
        assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
    }

    #[test]
    fn the_runtime_is_probed_on_its_http_port() {
        let deployment = deployment(&CellPool::test(), &Config::default());
        let runtime = container(&deployment);
        let port = &runtime.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 9090)
        );
        let probe = |probe: &Option<Probe>| {
            let get = probe.as_ref().unwrap().http_get.clone().unwrap();
            (get.path.unwrap(), get.port)
        };
        let http = IntOrString::String("http".into());
        assert_eq!(
            probe(&runtime.liveness_probe),
            ("/healthz".to_owned(), http.clone())
        );
        assert_eq!(
            probe(&runtime.readiness_probe),
            ("/readyz".to_owned(), http)
        );
    }

    /// A Windows pod, scheduled onto Windows nodes despite their usual taint.
    fn assert_on_windows_nodes(pod: &PodSpec) {
        assert_eq!(pod.os.as_ref().unwrap().name, "windows");
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
            "windows"
        );
        assert_eq!(
            pod.tolerations.as_deref(),
            Some(&[windows_toleration()][..])
        );
    }

    #[test]
    fn a_windows_pool_runs_the_windows_image_on_tolerated_windows_nodes() {
        let pool = CellPool::test().windows();
        let deployment = deployment(&pool, &Config::default());
        let pod = pod_spec(&deployment);
        assert_on_windows_nodes(pod);
        let toleration = windows_toleration();
        assert_eq!(
            (
                toleration.key.as_deref(),
                toleration.operator.as_deref(),
                toleration.value.as_deref(),
                toleration.effect.as_deref()
            ),
            (
                Some("os"),
                Some("Equal"),
                Some("windows"),
                Some("NoSchedule")
            )
        );
        let runtime = container(&deployment);
        assert_eq!(
            runtime.image.as_deref(),
            Some("ghcr.io/cellbus/cellbus-runtime-windows:0.1.0")
        );
        // No /tmp volume: Windows keeps a writable root.
        assert!(!pod.volumes.iter().flatten().any(|v| v.name == "tmp"));
    }

    #[test]
    fn the_default_image_follows_the_pools_os_and_runtime() {
        let config = Config {
            runtime_image: "wasm:1".into(),
            runtime_image_python: "python:1".into(),
            runtime_image_windows: "windows:1".into(),
            ..Config::default()
        };
        let image = |pool: CellPool| {
            container(&deployment(&pool, &config))
                .image
                .clone()
                .unwrap()
        };
        assert_eq!(image(CellPool::test()), "wasm:1");
        assert_eq!(image(CellPool::test().runtime(Runtime::Python)), "python:1");
        assert_eq!(
            image(CellPool::test().runtime(Runtime::Process)),
            "python:1"
        );
        assert_eq!(image(CellPool::test().windows()), "windows:1");
        // A Windows process pool: the Windows image (its runtime starts each cell under
        // cellbus-sandbox.exe), scheduled onto Windows nodes.
        let windows_process = CellPool::test().windows().runtime(Runtime::Process);
        assert_eq!(image(windows_process.clone()), "windows:1");
        assert_on_windows_nodes(pod_spec(&deployment(&windows_process, &config)));
        // The pool's own image wins over every default.
        assert_eq!(
            image(CellPool::test().runtime(Runtime::Python).image("mine:2")),
            "mine:2"
        );
    }

    #[test]
    fn a_windows_pool_sets_none_of_the_fields_windows_pods_refuse() {
        let deployment = deployment(&CellPool::test().windows(), &Config::default());
        assert_eq!(pod_spec(&deployment).security_context, None);
        let security = container(&deployment).security_context.clone().unwrap();
        assert_eq!(
            security,
            SecurityContext {
                run_as_non_root: Some(true),
                windows_options: Some(WindowsSecurityContextOptions {
                    run_as_user_name: Some("ContainerUser".into()),
                    ..WindowsSecurityContextOptions::default()
                }),
                ..SecurityContext::default()
            }
        );
    }

    #[test]
    fn a_windows_toleration_the_pool_lists_is_not_added_twice() {
        let spot = Toleration {
            key: Some("spot".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        let pool = CellPool::test()
            .windows()
            .toleration(windows_toleration())
            .toleration(spot.clone());
        let deployment = deployment(&pool, &Config::default());
        assert_eq!(
            pod_spec(&deployment).tolerations.as_deref(),
            Some(&[windows_toleration(), spot][..])
        );
    }

    #[test]
    fn pool_settings_win_over_the_operator_defaults() {
        let resources = ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("2".into()))])),
            ..ResourceRequirements::default()
        };
        let mut pool = CellPool::test()
            .image("registry.example/runtime:dev")
            .nats(Some("tls://nats.example:4222"), None)
            .node_selector("pool", "cells")
            .node_selector("kubernetes.io/os", "windows");
        pool.spec.resources = Some(resources.clone());
        let config = Config {
            nats_credentials_secret: Some("default-nats".into()),
            ..Config::default()
        };
        let deployment = deployment(&pool, &config);
        let runtime = container(&deployment);
        assert_eq!(
            runtime.image.as_deref(),
            Some("registry.example/runtime:dev")
        );
        assert_eq!(value(runtime, "NATS_URL"), Some("tls://nats.example:4222"));
        assert_eq!(runtime.resources.as_ref(), Some(&resources));
        // The pool's own selector is kept, but its OS label cannot contradict its OS.
        assert_eq!(
            pod_spec(&deployment).node_selector.as_ref().unwrap(),
            &BTreeMap::from([
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ("pool".to_owned(), "cells".to_owned()),
            ])
        );
        // A pool on its own NATS never gets the default server's credentials.
        assert!(!env_by_name(runtime).contains_key("NATS_USER"));
    }

    #[test]
    fn a_pool_without_resources_gets_the_operator_defaults() {
        let deployment = deployment(&CellPool::test(), &Config::default());
        assert_eq!(
            container(&deployment).resources,
            Some(Config::default().runtime_resources())
        );
    }

    #[test]
    fn a_credentials_secret_becomes_optional_variables_and_a_read_only_volume() {
        let config = Config {
            nats_credentials_secret: Some("default-nats".into()),
            ..Config::default()
        };
        for (pool, secret) in [
            (CellPool::test(), "default-nats"),
            (CellPool::test().nats(None, Some("pool-nats")), "pool-nats"),
            (
                CellPool::test().nats(Some("nats://other:4222"), Some("pool-nats")),
                "pool-nats",
            ),
        ] {
            let deployment = deployment(&pool, &config);
            let runtime = container(&deployment);
            let env = env_by_name(runtime);
            for (name, key) in [
                ("NATS_USER", "user"),
                ("NATS_PASSWORD", "password"),
                ("NATS_TOKEN", "token"),
            ] {
                let selector = env[name]
                    .value_from
                    .as_ref()
                    .and_then(|from| from.secret_key_ref.clone())
                    .unwrap_or_else(|| panic!("{name} is not from a Secret"));
                assert_eq!(
                    selector,
                    SecretKeySelector {
                        name: secret.into(),
                        key: key.into(),
                        optional: Some(true),
                    }
                );
            }
            // File credentials are mounted; the runtime looks for them in the directory,
            // and no variable points at a file that may not exist.
            assert_eq!(
                env["NATS_CREDENTIALS_DIR"].value.as_deref(),
                Some("/var/run/cellbus/nats")
            );
            assert!(!env.contains_key("NATS_CREDS"));
            assert!(!env.contains_key("NATS_NKEY_FILE"));
            let mount = runtime
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == "nats-credentials")
                .unwrap();
            assert_eq!(mount.mount_path, "/var/run/cellbus/nats");
            assert_eq!(mount.read_only, Some(true));
            let volume = pod_spec(&deployment)
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == "nats-credentials")
                .unwrap();
            let source = volume.secret.as_ref().unwrap();
            assert_eq!(source.secret_name.as_deref(), Some(secret));
            assert_eq!(source.default_mode, Some(0o440));
            assert_eq!(source.optional, None);
        }
    }

    #[test]
    fn a_pool_disruption_budget_exists_only_with_more_than_one_replica() {
        for replicas in [0, 1] {
            assert_eq!(
                pod_disruption_budget(&CellPool::test().replicas(replicas)),
                None
            );
        }
        let pdb = pod_disruption_budget(&CellPool::test().replicas(3)).unwrap();
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.unwrap().match_labels.as_ref(),
            Some(&labels())
        );
    }

    #[test]
    fn the_service_selects_the_pool_pods_on_the_http_port() {
        let service = metrics_service(&CellPool::test());
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector.as_ref(), Some(&labels()));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.name.as_deref(), Some("http"));
        assert_eq!(port.port, 9090);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
    }

    #[test]
    fn every_child_is_controlled_by_its_pool() {
        let objects = pool_objects(&CellPool::test().replicas(2), &Config::default());
        let metadata = [
            objects.service_account.metadata,
            objects.deployment.metadata,
            objects.service.metadata,
            objects.pod_disruption_budget.unwrap().metadata,
        ];
        for meta in metadata {
            let owners = meta.owner_references.unwrap();
            assert_eq!(owners.len(), 1);
            let owner = &owners[0];
            assert_eq!(
                (
                    owner.api_version.as_str(),
                    owner.kind.as_str(),
                    owner.name.as_str(),
                    owner.uid.as_str(),
                    owner.controller
                ),
                ("cellbus.io/v1alpha1", "CellPool", "wasm", UID, Some(true))
            );
            assert_eq!(meta.name.as_deref(), Some("cellbus-wasm"));
            assert_eq!(meta.namespace.as_deref(), Some(NAMESPACE));
        }
    }

    #[test]
    fn the_service_account_mounts_no_token_by_itself() {
        let account = service_account(&CellPool::test());
        assert_eq!(account.automount_service_account_token, Some(false));
    }

    #[test]
    fn the_pods_may_read_the_database_secrets_of_their_cells_by_name_only() {
        let pool = CellPool::test();
        let secrets = BTreeSet::from(["orders-db".to_owned(), "visits-db".to_owned()]);
        let role = secret_reader_role(&pool, &secrets).expect("a role for two secrets");
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].api_groups, Some(vec![String::new()]));
        assert_eq!(rules[0].resources, Some(vec!["secrets".to_owned()]));
        assert_eq!(rules[0].verbs, vec!["get".to_owned()]);
        assert_eq!(
            rules[0].resource_names,
            Some(vec!["orders-db".to_owned(), "visits-db".to_owned()])
        );
        assert_eq!(role.metadata.name.as_deref(), Some("cellbus-wasm"));

        let binding = secret_reader_binding(&pool);
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.name, "cellbus-wasm");
        let subjects = binding.subjects.expect("subjects");
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "cellbus-wasm");
        assert_eq!(subjects[0].namespace, pool.namespace());
    }

    #[test]
    fn no_role_is_made_without_a_secret_to_read() {
        // A rule without resourceNames would grant every Secret of the namespace.
        assert_eq!(
            secret_reader_role(&CellPool::test(), &BTreeSet::new()),
            None
        );
    }

    #[test]
    fn the_grace_period_outlasts_the_longest_request_of_the_pool() {
        let grace = |pool: &CellPool| {
            pod_spec(&deployment(pool, &Config::default())).termination_grace_period_seconds
        };
        assert_eq!(grace(&CellPool::test()), Some(40));
        assert_eq!(grace(&CellPool::test().timeout_ms(120_500)), Some(131));
        // Never below Kubernetes' default.
        assert_eq!(grace(&CellPool::test().timeout_ms(5_000)), Some(30));
    }

    #[test]
    fn a_pool_named_with_dots_gets_children_with_valid_names() {
        let pool = CellPool::test().named("team.cells");
        let objects = pool_objects(&pool, &Config::default());
        let name = objects.service.metadata.name.unwrap();
        assert!(name.starts_with("cellbus-team-cells-"), "{name}");
        assert_eq!(
            objects.deployment.metadata.name.as_deref(),
            Some(name.as_str())
        );
        let runtime = container(&objects.deployment);
        assert_eq!(value(runtime, "CELLBUS_POOL"), Some("team.cells"));
    }
}
