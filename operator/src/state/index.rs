//! What the watches show of Cells and CellPools, indexed by what placement asks (pure
//! state, no I/O): objects by key, Cells by service, by database schema and by namespace,
//! and the pools' trusts as their last reconciles read them.
//!
//! The watch streams feed it event by event ([`Index::cell_event`],
//! [`Index::pool_event`]), so each object is judged once per change and a reconcile looks
//! up the few objects it concerns instead of rebuilding a view of every one (which made
//! a pass over n Cells cost n²). Each event also says which Cells may be placed
//! differently because of it, for the Cell controller to look at again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use kube::runtime::watcher::Event;

use crate::state::observed::{CellObject, ObservedCell, ObservedPool, PoolObject, Watched};
use crate::state::scheduling::ResolvedTrust;

/// A Cell's `namespace/name`, allocated once and shared by every index that names it.
type Key = Arc<str>;

/// The Cells and CellPools the watches have shown, indexed.
#[derive(Default)]
pub struct Index {
    cells: HashMap<Key, Arc<ObservedCell>>,
    /// By key, so that pools are visited in one order whatever order they arrived in.
    pools: BTreeMap<String, Arc<ObservedPool>>,
    /// Valid Cells by the service they name: nearly always one, so a list rather than a
    /// set (a set's first node would cost more than the Cell's key).
    by_service: HashMap<String, Vec<Key>>,
    /// Valid Cells by the database schema they would get.
    by_schema: HashMap<String, Vec<Key>>,
    /// Every Cell by namespace.
    by_namespace: HashMap<String, BTreeSet<Key>>,
    /// The trusts with their sources read, by pool key: the caches hold no ConfigMaps or
    /// Secrets, so the pool controller records what it read.
    trusts: HashMap<String, ResolvedTrust>,
    /// Keys seen since a watch of a scope started listing again, by scope (a namespace,
    /// or `None` for all): what it does not list again is gone.
    relisted_cells: HashMap<Option<String>, HashSet<String>>,
    relisted_pools: HashMap<Option<String>, HashSet<String>>,
}

impl Index {
    /// Takes in one event of a watch of Cells in `scope` (a namespace, or `None` for all)
    /// and returns the keys of the other Cells whose placement it may change: those that
    /// claim the same service or schema, when the Cell came, went, or changed its spec or
    /// its deletion.
    pub fn cell_event(&mut self, scope: Option<&str>, event: &Event<CellObject>) -> Vec<String> {
        match event {
            Event::Apply(object) => self.apply_cell(ObservedCell::from_object(object)),
            Event::Delete(object) => self.remove_cell(&key_of(object)),
            Event::Init => {
                self.relisted_cells
                    .insert(scope.map(str::to_owned), HashSet::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                let cell = ObservedCell::from_object(object);
                if let Some(seen) = self.relisted_cells.get_mut(&scope.map(str::to_owned)) {
                    seen.insert(cell.key());
                }
                self.apply_cell(cell)
            }
            Event::InitDone => {
                let seen = self
                    .relisted_cells
                    .remove(&scope.map(str::to_owned))
                    .unwrap_or_default();
                let gone: Vec<String> = self
                    .cells
                    .iter()
                    .filter(|(key, cell)| {
                        in_scope(scope, cell.namespace()) && !seen.contains(&***key)
                    })
                    .map(|(key, _)| key.to_string())
                    .collect();
                let mut again = BTreeSet::new();
                for key in gone {
                    again.extend(self.remove_cell(&key));
                }
                again.into_iter().collect()
            }
        }
    }

    /// Takes in one event of a watch of CellPools in `scope` and returns the keys of the
    /// Cells whose placement it may change: every Cell of the pool's namespace.
    pub fn pool_event(&mut self, scope: Option<&str>, event: &Event<PoolObject>) -> Vec<String> {
        let namespaces: BTreeSet<String> = match event {
            Event::Apply(object) => BTreeSet::from([self.apply_pool(object)]),
            Event::Delete(object) => {
                self.pools.remove(&key_of(object));
                BTreeSet::from([object.metadata.namespace.clone().unwrap_or_default()])
            }
            Event::Init => {
                self.relisted_pools
                    .insert(scope.map(str::to_owned), HashSet::new());
                BTreeSet::new()
            }
            Event::InitApply(object) => {
                let namespace = self.apply_pool(object);
                if let Some(seen) = self.relisted_pools.get_mut(&scope.map(str::to_owned)) {
                    seen.insert(key_of(object));
                }
                BTreeSet::from([namespace])
            }
            Event::InitDone => {
                let seen = self
                    .relisted_pools
                    .remove(&scope.map(str::to_owned))
                    .unwrap_or_default();
                let mut namespaces = BTreeSet::new();
                self.pools.retain(|key, pool| {
                    let keep = !in_scope(scope, pool.namespace()) || seen.contains(key);
                    if !keep {
                        namespaces.insert(pool.namespace().to_owned());
                    }
                    keep
                });
                namespaces
            }
        };
        namespaces
            .iter()
            .flat_map(|namespace| self.cells_in(namespace))
            .map(|cell| cell.key())
            .collect()
    }

    fn apply_cell(&mut self, cell: ObservedCell) -> Vec<String> {
        let key: Key = cell.key().into();
        let cell = Arc::new(cell);
        let old = self.cells.insert(key.clone(), cell.clone());
        if let Some(old) = &old {
            self.unindex(old, &key);
        }
        self.index(&cell, &key);
        let moved = old.as_ref().is_none_or(|old| {
            old.generation() != cell.generation() || old.is_deleting() != cell.is_deleting()
        });
        if !moved {
            return Vec::new();
        }
        self.rivals(old.iter().chain([&cell]), &key)
    }

    fn remove_cell(&mut self, key: &str) -> Vec<String> {
        match self.cells.remove_entry(key) {
            Some((key, old)) => {
                self.unindex(&old, &key);
                self.rivals([&old], &key)
            }
            None => Vec::new(),
        }
    }

    /// The Cells other than `key` that claim a service or schema any of `versions` claims.
    fn rivals<'a>(
        &self,
        versions: impl IntoIterator<Item = &'a Arc<ObservedCell>>,
        key: &str,
    ) -> Vec<String> {
        let mut rivals: BTreeSet<&str> = BTreeSet::new();
        for cell in versions {
            let Ok(spec) = &cell.spec else { continue };
            rivals.extend(
                self.by_service
                    .get(&spec.service)
                    .into_iter()
                    .flatten()
                    .map(|k| &**k),
            );
            if let Some(schema) = spec.database_schema() {
                rivals.extend(
                    self.by_schema
                        .get(&schema)
                        .into_iter()
                        .flatten()
                        .map(|k| &**k),
                );
            }
        }
        rivals.remove(key);
        rivals.into_iter().map(str::to_owned).collect()
    }

    fn index(&mut self, cell: &ObservedCell, key: &Key) {
        self.by_namespace
            .entry(cell.namespace().to_owned())
            .or_default()
            .insert(key.clone());
        if let Ok(spec) = &cell.spec {
            add_to(&mut self.by_service, &spec.service, key);
            if let Some(schema) = spec.database_schema() {
                add_to(&mut self.by_schema, &schema, key);
            }
        }
    }

    fn unindex(&mut self, cell: &ObservedCell, key: &Key) {
        if let Some(keys) = self.by_namespace.get_mut(cell.namespace()) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_namespace.remove(cell.namespace());
            }
        }
        if let Ok(spec) = &cell.spec {
            remove_from(&mut self.by_service, &spec.service, key);
            if let Some(schema) = spec.database_schema() {
                remove_from(&mut self.by_schema, &schema, key);
            }
        }
    }

    /// Records a pool and returns its namespace.
    fn apply_pool(&mut self, object: &PoolObject) -> String {
        let pool = ObservedPool::from_object(object);
        let namespace = pool.namespace().to_owned();
        self.pools.insert(pool.key(), Arc::new(pool));
        namespace
    }

    /// The Cell `namespace/name`.
    pub fn cell(&self, key: &str) -> Option<&Arc<ObservedCell>> {
        self.cells.get(key)
    }

    /// The pool `name` of `namespace`, valid or not.
    pub fn pool(&self, namespace: &str, name: &str) -> Option<&Arc<ObservedPool>> {
        self.pools.get(&format!("{namespace}/{name}"))
    }

    /// The pools of `namespace`, by name.
    pub fn pools_in<'a>(
        &'a self,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Arc<ObservedPool>> + use<'a> {
        let namespace = namespace.to_owned();
        self.pools
            .values()
            .filter(move |pool| pool.namespace() == namespace)
    }

    /// The Cells of `namespace`, valid or not.
    pub fn cells_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Arc<ObservedCell>> {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|key| self.cells.get(&**key))
    }

    /// The valid Cells that name `service`, in any namespace.
    pub fn claimants(&self, service: &str) -> impl Iterator<Item = &Arc<ObservedCell>> {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|key| self.cells.get(&**key))
    }

    /// The valid Cells whose database schema would be `schema`, in any namespace.
    pub fn schema_claimants(&self, schema: &str) -> impl Iterator<Item = &Arc<ObservedCell>> {
        self.by_schema
            .get(schema)
            .into_iter()
            .flatten()
            .filter_map(|key| self.cells.get(&**key))
    }

    /// The trust pool `key`'s sources were last read into.
    pub fn trust(&self, pool: &str) -> Option<&ResolvedTrust> {
        self.trusts.get(pool)
    }

    /// Records the trust a pool's sources were read into (`None`: they could not be),
    /// and returns whether that changed anything.
    pub fn set_trust(&mut self, pool: &str, trust: Option<ResolvedTrust>) -> bool {
        let changed = self.trusts.get(pool) != trust.as_ref();
        match trust {
            Some(trust) => self.trusts.insert(pool.to_owned(), trust),
            None => self.trusts.remove(pool),
        };
        changed
    }
}

/// `namespace/name` of a watched object, read off its metadata: a deleted object needs
/// no judging to be forgotten.
pub fn key_of<K>(object: &Watched<K>) -> String {
    format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or_default(),
        object.metadata.name.as_deref().unwrap_or_default()
    )
}

fn in_scope(scope: Option<&str>, namespace: &str) -> bool {
    scope.is_none_or(|scope| scope == namespace)
}

fn add_to(index: &mut HashMap<String, Vec<Key>>, entry: &str, key: &Key) {
    let keys = index.entry(entry.to_owned()).or_default();
    if !keys.contains(key) {
        keys.push(key.clone());
    }
}

fn remove_from(index: &mut HashMap<String, Vec<Key>>, entry: &str, key: &Key) {
    if let Some(keys) = index.get_mut(entry) {
        keys.retain(|other| other != key);
        if keys.is_empty() {
            index.remove(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn object<K>(
        kind: &str,
        namespace: &str,
        name: &str,
        generation: i64,
        spec: Value,
    ) -> Watched<K> {
        serde_json::from_value(json!({
            "apiVersion": "cellbus.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "generation": generation},
            "spec": spec,
        }))
        .unwrap()
    }

    fn cell(namespace: &str, name: &str, service: &str) -> CellObject {
        cell_at(namespace, name, service, 1)
    }

    fn cell_at(namespace: &str, name: &str, service: &str, generation: i64) -> CellObject {
        object(
            "Cell",
            namespace,
            name,
            generation,
            json!({"service": service, "verbs": [{"name": "get"}], "module": {"digest": format!("sha256:{}", "e".repeat(64))}}),
        )
    }

    fn with_database(mut object: CellObject) -> CellObject {
        let mut spec: Value = serde_json::from_str(object.spec.as_ref().unwrap().get()).unwrap();
        spec["database"] = json!({});
        object.spec = Some(serde_json::value::to_raw_value(&spec).unwrap());
        object
    }

    fn pool(namespace: &str, name: &str) -> PoolObject {
        object("CellPool", namespace, name, 1, json!({"runtime": "wasm"}))
    }

    fn keys<'a>(cells: impl Iterator<Item = &'a Arc<ObservedCell>>) -> Vec<String> {
        let mut keys: Vec<String> = cells.map(|cell| cell.key()).collect();
        keys.sort();
        keys
    }

    #[test]
    fn a_cell_is_found_by_key_service_and_namespace_until_it_is_deleted() {
        let mut index = Index::default();
        index.cell_event(None, &Event::Apply(cell("apps", "a", "orders")));
        index.cell_event(None, &Event::Apply(cell("apps", "b", "stock")));
        index.cell_event(None, &Event::Apply(cell("ops", "c", "orders")));

        assert_eq!(index.cell("apps/a").unwrap().name(), "a");
        assert_eq!(keys(index.claimants("orders")), ["apps/a", "ops/c"]);
        assert_eq!(keys(index.cells_in("apps")), ["apps/a", "apps/b"]);
        assert_eq!(keys(index.cells_in("ops")), ["ops/c"]);

        index.cell_event(None, &Event::Delete(cell("apps", "a", "orders")));
        assert!(index.cell("apps/a").is_none());
        assert_eq!(keys(index.claimants("orders")), ["ops/c"]);
        assert_eq!(keys(index.cells_in("apps")), ["apps/b"]);
    }

    #[test]
    fn a_changed_service_moves_the_cell_between_claims() {
        let mut index = Index::default();
        index.cell_event(None, &Event::Apply(cell("apps", "a", "orders")));
        index.cell_event(None, &Event::Apply(cell_at("apps", "a", "stock", 2)));
        assert_eq!(index.claimants("orders").count(), 0);
        assert_eq!(keys(index.claimants("stock")), ["apps/a"]);
    }

    #[test]
    fn an_invalid_cell_is_in_its_namespace_but_claims_nothing() {
        let mut index = Index::default();
        let invalid = object(
            "Cell",
            "apps",
            "bad",
            1,
            json!({"service": "Not A Service"}),
        );
        index.cell_event(None, &Event::Apply(invalid));
        assert!(index.cell("apps/bad").unwrap().spec.is_err());
        assert_eq!(keys(index.cells_in("apps")), ["apps/bad"]);
        assert_eq!(index.claimants("Not A Service").count(), 0);
    }

    #[test]
    fn rivals_are_looked_at_again_when_a_claim_comes_changes_or_goes() {
        let mut index = Index::default();
        assert!(index
            .cell_event(None, &Event::Apply(cell("apps", "a", "orders")))
            .is_empty());
        assert_eq!(
            index.cell_event(None, &Event::Apply(cell("ops", "b", "orders"))),
            ["apps/a"]
        );
        // A status write changes no claim: nobody else needs a look.
        let mut status_only = cell("ops", "b", "orders");
        status_only.metadata.resource_version = Some("2".into());
        assert!(index
            .cell_event(None, &Event::Apply(status_only))
            .is_empty());
        // Moving away from a service frees it for whoever claimed it too.
        assert_eq!(
            index.cell_event(None, &Event::Apply(cell_at("ops", "b", "stock", 2))),
            ["apps/a"]
        );
        assert!(index
            .cell_event(None, &Event::Delete(cell_at("ops", "b", "stock", 2)))
            .is_empty());
        assert_eq!(
            index.cell_event(None, &Event::Apply(cell("ops", "b", "orders"))),
            ["apps/a"]
        );
        assert_eq!(
            index.cell_event(None, &Event::Delete(cell("apps", "a", "orders"))),
            ["ops/b"]
        );
    }

    #[test]
    fn a_schema_is_claimed_across_namespaces() {
        let mut index = Index::default();
        index.cell_event(
            None,
            &Event::Apply(with_database(cell("apps", "a", "ledger"))),
        );
        let again = index.cell_event(
            None,
            &Event::Apply(with_database(cell("ops", "a", "ledger"))),
        );
        assert_eq!(again, ["apps/a"]);
        let schema = index
            .cell("apps/a")
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .database_schema()
            .unwrap();
        assert_eq!(keys(index.schema_claimants(&schema)), ["apps/a", "ops/a"]);
    }

    #[test]
    fn a_pool_event_looks_again_at_every_cell_of_its_namespace() {
        let mut index = Index::default();
        index.cell_event(None, &Event::Apply(cell("apps", "a", "orders")));
        index.cell_event(None, &Event::Apply(cell("apps", "b", "stock")));
        index.cell_event(None, &Event::Apply(cell("ops", "c", "audit")));
        let again = index.pool_event(None, &Event::Apply(pool("apps", "wasm")));
        assert_eq!(again, ["apps/a", "apps/b"]);
        assert_eq!(index.pool("apps", "wasm").unwrap().name(), "wasm");
        assert_eq!(index.pools_in("apps").count(), 1);
        assert_eq!(index.pools_in("ops").count(), 0);
        let again = index.pool_event(None, &Event::Delete(pool("apps", "wasm")));
        assert_eq!(again, ["apps/a", "apps/b"]);
        assert!(index.pool("apps", "wasm").is_none());
    }

    #[test]
    fn a_relist_forgets_what_it_no_longer_lists_in_its_scope_only() {
        let mut index = Index::default();
        index.cell_event(Some("apps"), &Event::Apply(cell("apps", "kept", "orders")));
        index.cell_event(Some("apps"), &Event::Apply(cell("apps", "gone", "stock")));
        index.cell_event(Some("ops"), &Event::Apply(cell("ops", "other", "audit")));
        index.pool_event(Some("apps"), &Event::Apply(pool("apps", "old")));
        index.pool_event(Some("ops"), &Event::Apply(pool("ops", "theirs")));

        index.cell_event(Some("apps"), &Event::Init);
        index.cell_event(
            Some("apps"),
            &Event::InitApply(cell("apps", "kept", "orders")),
        );
        index.cell_event(Some("apps"), &Event::InitDone);
        index.pool_event(Some("apps"), &Event::Init);
        let again = index.pool_event(Some("apps"), &Event::InitDone);

        assert_eq!(keys(index.cells_in("apps")), ["apps/kept"]);
        assert_eq!(index.claimants("stock").count(), 0);
        assert!(index.cell("ops/other").is_some());
        assert!(index.pool("apps", "old").is_none());
        assert!(index.pool("ops", "theirs").is_some());
        assert_eq!(again, ["apps/kept"]);
    }

    #[test]
    fn a_trust_is_recorded_once_and_forgotten() {
        let mut index = Index::default();
        let trust = ResolvedTrust {
            generation: 1,
            trust: Default::default(),
        };
        assert!(index.set_trust("apps/wasm", Some(trust.clone())));
        assert!(!index.set_trust("apps/wasm", Some(trust)));
        assert!(index.trust("apps/wasm").is_some());
        assert!(index.set_trust("apps/wasm", None));
        assert!(index.trust("apps/wasm").is_none());
    }
}
