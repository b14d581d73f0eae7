//! The objects the operator owns in the API (a pool's Deployment, its Role, …): applied
//! only when the live object lacks something we want, so an unchanged pass writes
//! nothing, and deleted only when present.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::controller::context::Context;
use crate::state::names::FIELD_MANAGER;
use crate::Error;

/// The annotation on each child holding the sha256 of the intent last applied to it.
pub const APPLIED_ANNOTATION: &str = "cellbus.io/applied";

/// Applies `desired` with server-side apply unless the live object already holds every
/// field of it, and returns the live object. Comparing first is what makes a reconcile
/// of an unchanged pool write nothing. The intent's hash travels in an annotation, so that
/// a field the pool no longer asks for (a node selector entry, a toleration, a limit),
/// which the live object still holds, changes the hash and is applied, and server-side
/// apply then removes it.
pub async fn apply<K>(ctx: &Context, namespace: &str, desired: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&());
    let describe = || format!("{kind} {namespace}/{name}");
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let live = api.get_opt(&name).await.map_err(|source| Error::Kube {
        action: "read",
        object: describe(),
        source,
    })?;
    let serialize = |object: &K| {
        serde_json::to_value(object).map_err(|e| Error::Serialize {
            what: describe(),
            source: e.into(),
        })
    };
    let mut desired = desired.clone();
    let intent = cellbus_control::digest_of(serialize(&desired)?.to_string().as_bytes());
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_ANNOTATION.into(), intent);
    let desired = &desired;
    if let Some(live) = live {
        if contains(&serialize(&live)?, &serialize(desired)?) {
            return Ok(live);
        }
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(|source| Error::Kube {
            action: "apply",
            object: describe(),
            source,
        })?;
    ctx.wrote(&kind, "apply");
    Ok(applied)
}

/// Deletes a child we no longer want; fine when it is not there.
pub async fn delete<K>(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let kind = K::kind(&());
    let describe = || format!("{kind} {namespace}/{name}");
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    // Reading first keeps an unchanged pool's reconcile free of writes.
    let live = api.get_opt(name).await.map_err(|source| Error::Kube {
        action: "read",
        object: describe(),
        source,
    })?;
    if live.is_none() {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.wrote(&kind, "delete");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: "delete",
            object: describe(),
            source,
        }),
    }
}

/// Whether `live` holds every field of `desired` with the same value. Lists must match
/// element by element; the API server's defaults and other managers' fields may add to
/// `live` freely.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(live), Value::Object(desired)) => desired.iter().all(|(key, want)| {
            live.get(key)
                .map_or(want.is_null(), |have| contains(have, want))
        }),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len()
                && live
                    .iter()
                    .zip(desired)
                    .all(|(have, want)| contains(have, want))
        }
        (live, desired) => live == desired,
    }
}

#[cfg(test)]
mod tests {
    use super::contains;
    use serde_json::json;

    #[test]
    fn live_objects_with_defaults_contain_what_we_apply() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "runtime", "image": "a"}]}}}});
        let live = json!({"metadata": {"uid": "x"}, "spec": {"replicas": 2, "strategy": {}, "template": {"spec": {"containers": [{"name": "runtime", "image": "a", "terminationMessagePath": "/dev/termination-log"}]}}}, "status": {}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_or_missing_field_is_not_contained() {
        let desired = json!({"spec": {"replicas": 2, "containers": [{"image": "b"}]}});
        assert!(!contains(
            &json!({"spec": {"replicas": 3, "containers": [{"image": "b"}]}}),
            &desired
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 2, "containers": [{"image": "a"}]}}),
            &desired
        ));
        assert!(!contains(
            &json!({"spec": {"containers": [{"image": "b"}]}}),
            &desired
        ));
        // A list with an extra element is a different list.
        assert!(!contains(
            &json!({"spec": {"replicas": 2, "containers": [{"image": "b"}, {"image": "c"}]}}),
            &desired
        ));
    }
}
