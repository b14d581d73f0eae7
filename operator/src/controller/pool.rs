//! The CellPool controller: the pool's ServiceAccount, Deployment, metrics Service and
//! PodDisruptionBudget, applied only when the live object lacks something we want; the
//! pool's assignment; and a status read off the Deployment.

use std::sync::Arc;

use cellbus_contracts::resources::{
    CellPoolSpec, CellPoolStatus, Os, PoolCells, Runtime, TrustSource,
};
use cellbus_control::signature;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::controller::Action;
use tracing::Instrument;

use super::children;
use super::write_status;
use crate::builders;
use crate::controller::context::Context;
use crate::state::conditions::{reasons, set_conditions, types, NewCondition, Status};
use crate::state::names;
use crate::state::observed::{ObservedPool, PoolObject};
use crate::state::readiness;
use crate::state::scheduling::ResolvedTrust;
use crate::Error;

/// How metrics and logs name this controller.
pub const CONTROLLER: super::ControllerName = "cellpool";

/// Reconciles one CellPool.
pub async fn reconcile(object: Arc<PoolObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let pool = ObservedPool::from_object(&object);
    let span = tracing::info_span!(
        "reconcile",
        controller = CONTROLLER,
        object = %pool.key(),
        generation = pool.generation()
    );
    async {
        let measure = ctx.metrics.reconcile(CONTROLLER);
        let result = reconcile_pool(&object, &pool, &ctx).await;
        if result.is_ok() {
            ctx.failures.succeeded(&pool.key());
        }
        measure.finish(result.as_ref().map(|_| ()).map_err(Error::metric_label));
        result
    }
    .instrument(span)
    .await
}

async fn reconcile_pool(
    object: &PoolObject,
    pool: &ObservedPool,
    ctx: &Context,
) -> Result<Action, Error> {
    // Kubernetes deletes the children through their owner references; the Cells of the
    // pool hear of it through their own watch of pools and report it.
    if pool.is_deleting() {
        return Ok(Action::await_change());
    }
    let Some(typed) = pool.typed() else {
        let message = pool.spec_errors().unwrap_or_default();
        let invalid = |type_, status| {
            NewCondition::new(type_, status, reasons::INVALID_SPEC, message.clone())
        };
        let status = next_status(
            pool,
            pool.status.clone(),
            [
                invalid(types::PROGRESSING, Status::False),
                invalid(types::DEGRADED, Status::True),
                invalid(types::READY, Status::False),
            ],
            ctx,
        );
        update_status(object, pool, &status, ctx).await?;
        return Err(Error::InvalidSpec {
            object: format!("CellPool {}", pool.key()),
            message,
        });
    };
    let namespace = pool.namespace();
    let objects = builders::pool_objects(&typed, &ctx.config);
    children::apply(ctx, namespace, &objects.service_account).await?;
    let deployment = children::apply(ctx, namespace, &objects.deployment).await?;
    children::apply(ctx, namespace, &objects.service).await?;
    match &objects.pod_disruption_budget {
        Some(budget) => {
            children::apply(ctx, namespace, budget).await?;
        }
        None => {
            children::delete::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(
                ctx,
                namespace,
                &names::child_name(pool.name()),
            )
            .await?
        }
    }

    let trust = read_trust(ctx, pool, &typed.spec).await?;
    ctx.assignments.write(ctx, pool).await?;
    // Reports of pods that stopped reporting would keep old errors in Cells' status.
    ctx.buses
        .get(ctx.config.bus(&typed.spec))
        .await?
        .forget_gone_pods(namespace, pool.name())
        .await?;

    let members: Vec<String> = ctx
        .snapshot()
        .members(pool, &ctx.config)
        .iter()
        .map(|cell| cell.name().to_owned())
        .collect();
    let wanted = typed.spec.replicas;
    let rollout = Rollout::of(&deployment, wanted);
    let sandbox = if typed.spec.runtime == Runtime::Process && typed.spec.os == Os::Linux {
        let statuses = match ctx.buses.get(ctx.config.bus(&typed.spec)).await {
            Ok(bus) => bus.pod_statuses(namespace, pool.name()),
            Err(_) => Vec::new(),
        };
        Some(readiness::sandbox_enforced(&statuses))
    } else {
        None
    };
    let status = next_status(
        pool,
        CellPoolStatus {
            replicas: wanted,
            ready_replicas: rollout.ready,
            selector: Some(names::pool_selector(pool.name())),
            cells: PoolCells {
                count: i32::try_from(members.len()).unwrap_or(i32::MAX),
                names: members,
            },
            ..pool.status.clone()
        },
        rollout
            .conditions(&deployment)
            .into_iter()
            .chain(sandbox)
            .chain(trust),
        ctx,
    );
    update_status(object, pool, &status, ctx).await?;
    Ok(Action::requeue(ctx.timing.resync))
}

/// Reads the sources of the pool's trust and records the trust they make, for placement
/// and the assignment; says how that went (nothing when the trust has no sources). Read
/// at every reconcile, so a rotated bundle takes effect within a resync.
async fn read_trust(
    ctx: &Context,
    pool: &ObservedPool,
    spec: &CellPoolSpec,
) -> Result<Option<NewCondition>, Error> {
    let Some(trust) = spec.trust.as_ref().filter(|trust| !trust.from.is_empty()) else {
        ctx.set_trust(&pool.key(), None);
        return Ok(None);
    };
    let mut values = Vec::with_capacity(trust.from.len());
    for source in &trust.from {
        values.push(source_value(ctx, pool.namespace(), source).await?);
    }
    let mut values = values.into_iter();
    let resolved =
        signature::resolve_trust(trust, |_| values.next().expect("one value per source"));
    Ok(Some(match resolved {
        Ok(effective) => {
            let message = format!(
                "{} keys and {} certificate authorities, with {} sources read",
                effective.keys.len(),
                effective.certificate_authorities.len(),
                trust.from.len()
            );
            ctx.set_trust(
                &pool.key(),
                Some(ResolvedTrust {
                    generation: pool.generation(),
                    trust: effective,
                }),
            );
            NewCondition::new(
                types::TRUST_RESOLVED,
                Status::True,
                reasons::TRUST_RESOLVED,
                message,
            )
        }
        Err(error) => {
            // Its Cells wait, and the pods keep the assignment they have.
            ctx.set_trust(&pool.key(), None);
            NewCondition::new(
                types::TRUST_RESOLVED,
                Status::False,
                error.source.reason(),
                format!(
                    "spec.trust.{}: {}",
                    error.field,
                    cellbus_contracts::error_chain(&error.source)
                ),
            )
        }
    }))
}

/// The value a trust source names in `namespace`, or why there is none; `Err` only when
/// the API could not be asked.
async fn source_value(
    ctx: &Context,
    namespace: &str,
    source: &TrustSource,
) -> Result<Result<String, String>, Error> {
    let read_error = |kind: &str, name: &str| {
        let object = format!("{kind} {namespace}/{name}");
        move |source| Error::Kube {
            action: "read",
            object,
            source,
        }
    };
    match (&source.config_map_key_ref, &source.secret_key_ref) {
        (Some(at), None) => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
            let Some(map) = api
                .get_opt(&at.name)
                .await
                .map_err(read_error("ConfigMap", &at.name))?
            else {
                return Ok(Err(format!(
                    "ConfigMap {} does not exist in namespace {namespace}",
                    at.name
                )));
            };
            Ok(map
                .data
                .and_then(|mut data| data.remove(&at.key))
                .ok_or_else(|| format!("ConfigMap {} has no key {}", at.name, at.key)))
        }
        (None, Some(at)) => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            let Some(secret) = api
                .get_opt(&at.name)
                .await
                .map_err(read_error("Secret", &at.name))?
            else {
                return Ok(Err(format!(
                    "Secret {} does not exist in namespace {namespace}",
                    at.name
                )));
            };
            let Some(bytes) = secret.data.and_then(|mut data| data.remove(&at.key)) else {
                return Ok(Err(format!("Secret {} has no key {}", at.name, at.key)));
            };
            Ok(String::from_utf8(bytes.0)
                .map_err(|_| format!("Secret {} key {} is not text", at.name, at.key)))
        }
        _ => Ok(Err(
            "a trust source names a configMapKeyRef or a secretKeyRef".into(),
        )),
    }
}

/// Where the runtime Deployment's rollout stands.
struct Rollout {
    wanted: i32,
    ready: i32,
    updated: i32,
    rolling: bool,
}

impl Rollout {
    fn of(deployment: &Deployment, wanted: i32) -> Self {
        let status = deployment.status.clone().unwrap_or_default();
        let ready = status.ready_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let seen = status.observed_generation.unwrap_or(0);
        let generation = deployment.metadata.generation.unwrap_or(0);
        // The Deployment controller says `NewReplicaSetAvailable` once every new pod is
        // available, and `ProgressDeadlineExceeded` when it gave up waiting; until then
        // new pods may exist (updated == wanted) and still be starting, which is
        // progress, not degradation (GitOps tools fail a sync on Degraded).
        let deployment_progressing = status.conditions.iter().flatten().any(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.status.as_deref() == Some("True")
                && c.reason.as_deref() != Some("NewReplicaSetAvailable")
        });
        let rolling = seen < generation
            || updated < wanted
            || status.replicas.unwrap_or(0) > wanted
            || deployment_progressing;
        Self {
            wanted,
            ready,
            updated,
            rolling,
        }
    }

    fn conditions(&self, deployment: &Deployment) -> [NewCondition; 3] {
        let name = deployment.metadata.name.as_deref().unwrap_or_default();
        let all_ready = self.ready >= self.wanted;
        let counts = format!("{} of {} runtime pods ready", self.ready, self.wanted);
        let progressing = if self.rolling {
            NewCondition::new(
                types::PROGRESSING,
                Status::True,
                reasons::ROLLING_OUT,
                format!(
                    "Deployment {name}: {} of {} pods updated",
                    self.updated, self.wanted
                ),
            )
        } else {
            NewCondition::new(
                types::PROGRESSING,
                Status::False,
                reasons::ROLLED_OUT,
                format!("Deployment {name} is rolled out"),
            )
        };
        let (degraded, ready) = if all_ready {
            (
                NewCondition::new(
                    types::DEGRADED,
                    Status::False,
                    reasons::REPLICAS_READY,
                    &counts,
                ),
                NewCondition::new(types::READY, Status::True, reasons::REPLICAS_READY, &counts),
            )
        } else {
            // Fewer ready pods than wanted is expected during a rollout; only a finished
            // rollout that left pods unready is degraded.
            let reason = if self.rolling {
                reasons::ROLLING_OUT
            } else {
                reasons::REPLICAS_UNAVAILABLE
            };
            (
                NewCondition::new(
                    types::DEGRADED,
                    !self.rolling,
                    reasons::REPLICAS_UNAVAILABLE,
                    &counts,
                ),
                NewCondition::new(types::READY, Status::False, reason, &counts),
            )
        };
        [progressing, degraded, ready]
    }
}

fn next_status(
    pool: &ObservedPool,
    status: CellPoolStatus,
    conditions: impl IntoIterator<Item = NewCondition>,
    ctx: &Context,
) -> CellPoolStatus {
    let now = ctx.clock.now();
    CellPoolStatus {
        observed_generation: Some(pool.generation()),
        conditions: set_conditions(&status.conditions, conditions, &now, pool.generation()),
        ..status
    }
}

async fn update_status(
    object: &PoolObject,
    pool: &ObservedPool,
    status: &CellPoolStatus,
    ctx: &Context,
) -> Result<bool, Error> {
    write_status(
        ctx,
        object,
        (&pool.status, &pool.status.conditions),
        (status, &status.conditions),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::{Deployment, Rollout};
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use rstest::rstest;

    fn deployment(ready: i32, updated: i32, progressing: Option<(&str, &str)>) -> Deployment {
        let mut deployment = Deployment::default();
        deployment.metadata.name = Some("cellbus-wasm".into());
        deployment.metadata.generation = Some(1);
        deployment.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(updated),
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            conditions: progressing.map(|(status, reason)| {
                vec![DeploymentCondition {
                    type_: Some("Progressing".into()),
                    status: Some(status.into()),
                    reason: Some(reason.into()),
                    ..DeploymentCondition::default()
                }]
            }),
            ..DeploymentStatus::default()
        });
        deployment
    }

    fn statuses(deployment: &Deployment) -> [(String, String); 3] {
        Rollout::of(deployment, 2)
            .conditions(deployment)
            .map(|c| (c.type_.to_owned(), c.status.as_str().to_owned()))
    }

    #[rstest]
    #[case::new_pods_still_starting(0, 2, Some(("True", "ReplicaSetUpdated")), ["True", "False", "False"])]
    #[case::all_ready(2, 2, Some(("True", "NewReplicaSetAvailable")), ["False", "False", "True"])]
    #[case::a_pod_lost_after_the_rollout(1, 2, Some(("True", "NewReplicaSetAvailable")), ["False", "True", "False"])]
    #[case::the_rollout_gave_up(1, 2, Some(("False", "ProgressDeadlineExceeded")), ["False", "True", "False"])]
    #[case::older_pods_being_replaced(1, 1, None, ["True", "False", "False"])]
    #[case::no_progress_condition_yet(0, 2, None, ["False", "True", "False"])]
    fn a_pool_is_degraded_only_when_its_rollout_is_over_and_pods_are_missing(
        #[case] ready: i32,
        #[case] updated: i32,
        #[case] progressing: Option<(&str, &str)>,
        #[case] expected: [&str; 3],
    ) {
        let [progressing, degraded, ready] = statuses(&deployment(ready, updated, progressing));
        assert_eq!(
            [progressing, degraded, ready],
            [
                ("Progressing".to_owned(), expected[0].to_owned()),
                ("Degraded".to_owned(), expected[1].to_owned()),
                ("Ready".to_owned(), expected[2].to_owned()),
            ]
        );
    }
}
