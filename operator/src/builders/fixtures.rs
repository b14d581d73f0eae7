//! Chainable test values: `CellPool::test().windows().replicas(3)`,
//! `CellSpec::test().durable_verb("ingest")`.

use std::collections::BTreeMap;

use cellbus_contracts::resources::{CellPool, CellPoolSpec, NatsSpec, Os, Runtime};
use k8s_openapi::api::core::v1::{Container, EnvVar, Toleration};
use serde_json::json;

pub const NAMESPACE: &str = "apps";
pub const UID: &str = "6b0e2f43-1c1d-4c64-9d3e-0f5e1f6f6a01";

pub trait PoolFixture: Sized {
    /// A wasm pool `wasm` on Linux with one replica, as the API server would return it.
    fn test() -> Self;
    fn named(self, name: &str) -> Self;
    fn windows(self) -> Self;
    fn runtime(self, runtime: Runtime) -> Self;
    fn replicas(self, replicas: i32) -> Self;
    fn image(self, image: &str) -> Self;
    fn nats(self, url: Option<&str>, credentials_secret: Option<&str>) -> Self;
    fn node_selector(self, key: &str, value: &str) -> Self;
    fn toleration(self, toleration: Toleration) -> Self;
    fn timeout_ms(self, timeout_ms: u32) -> Self;
}

impl PoolFixture for CellPool {
    fn test() -> Self {
        let spec: CellPoolSpec =
            serde_json::from_value(json!({"runtime": "wasm"})).expect("a minimal pool spec");
        let mut pool = CellPool::new("wasm", spec);
        pool.metadata.namespace = Some(NAMESPACE.into());
        pool.metadata.uid = Some(UID.into());
        pool.metadata.generation = Some(1);
        pool
    }

    fn named(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.into());
        self
    }

    fn windows(mut self) -> Self {
        self.spec.os = Os::Windows;
        self
    }

    fn runtime(mut self, runtime: Runtime) -> Self {
        self.spec.runtime = runtime;
        self
    }

    fn replicas(mut self, replicas: i32) -> Self {
        self.spec.replicas = replicas;
        self
    }

    fn image(mut self, image: &str) -> Self {
        self.spec.image = Some(image.into());
        self
    }

    fn nats(mut self, url: Option<&str>, credentials_secret: Option<&str>) -> Self {
        self.spec.nats = Some(NatsSpec {
            url: url.map(Into::into),
            credentials_secret: credentials_secret.map(Into::into),
        });
        self
    }

    fn node_selector(mut self, key: &str, value: &str) -> Self {
        self.spec.node_selector.insert(key.into(), value.into());
        self
    }

    fn toleration(mut self, toleration: Toleration) -> Self {
        self.spec.tolerations.push(toleration);
        self
    }

    fn timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.spec.sandbox.timeout_ms = Some(timeout_ms);
        self
    }
}

/// A container's environment variables by name.
pub fn env_by_name(container: &Container) -> BTreeMap<&str, &EnvVar> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.as_str(), var))
        .collect()
}
