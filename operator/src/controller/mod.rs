//! The operator's I/O: the two controllers and what they share (the [`context`], status
//! writes that happen only when the status changes, Events only when a condition
//! changes, the error policy), the one writer of each pool's [`assignments`], the
//! [`children`] objects they apply, and the [`database`] provisioner.

pub mod assignments;
pub mod cell;
pub mod children;
pub mod context;
pub mod database;
pub mod pool;

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::Resource;
use serde::Serialize;

use crate::controller::context::{transition_event, Context};
use crate::state::conditions::types;
use crate::state::names::FIELD_MANAGER;
use crate::state::observed::Watched;
use crate::Error;

/// Name of a controller, as metrics and logs label it.
pub type ControllerName = &'static str;

/// The error policy of both controllers: retry after a capped exponential backoff per
/// object, so a failing object is retried ever more slowly instead of in a hot loop.
pub fn error_policy<K>(object: Arc<Watched<K>>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = crate::state::index::key_of(&object);
    let delay = ctx.failures.failed(&key);
    tracing::warn!(
        object = key,
        error = %cellbus_contracts::error_chain(error),
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Writes `new` as the status of `object` with server-side apply unless it equals `old`,
/// then publishes an Event for each condition whose status or reason changed. Returns
/// whether it wrote.
pub(crate) async fn write_status<K, S>(
    ctx: &Context,
    object: &Watched<K>,
    (old, old_conditions): (&S, &[Condition]),
    (new, new_conditions): (&S, &[Condition]),
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    S: Serialize + PartialEq,
{
    if old == new {
        return Ok(false);
    }
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
    let kind = K::kind(&());
    let api: Api<Watched<K>> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": kind,
        "status": new,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "update the status of",
        object: format!("{kind} {namespace}/{name}"),
        source,
    })?;
    ctx.wrote(&kind, "patch_status");

    let reference = object.object_ref(&());
    for condition in new_conditions {
        let before = old_conditions.iter().find(|c| c.type_ == condition.type_);
        let changed = before.is_none_or(|before| {
            (&before.status, &before.reason) != (&condition.status, &condition.reason)
        });
        if changed {
            let event = transition_event(
                &condition.type_,
                healthy(condition),
                &condition.reason,
                &condition.message,
            );
            ctx.publish(&reference, event).await;
        }
    }
    Ok(true)
}

/// Whether a condition reports something fine: `Degraded` is good when False,
/// `Progressing` is always fine, every other type is good when True.
fn healthy(condition: &Condition) -> bool {
    match condition.type_.as_str() {
        types::DEGRADED => condition.status != "True",
        types::PROGRESSING => true,
        _ => condition.status == "True",
    }
}
