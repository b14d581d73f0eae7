//! Which pool runs each Cell, decided from the watch caches alone (pure, no I/O).
//!
//! A Cell is placed when its spec is valid, one pool of its namespace is chosen for it
//! (`spec.poolRef`, or the one pool with its runtime and OS) and fits it, and no older
//! Cell already serves its service on the same NATS. Services share one subject space per
//! NATS, so a second claim would split the first one's traffic: the oldest claim (by
//! creation time, then namespace and name) keeps serving and every later one gets
//! `Conflict`. The same rule decides a pool's assignment, so the Cell's condition and
//! what the pods serve always agree. A database schema is claimed the same way, across
//! every namespace, since all Cells' schemas live in the operator's one admin database.

use std::sync::{Arc, RwLockReadGuard};

use cellbus_contracts::assignment::PoolAssignment;
use cellbus_contracts::manifest::{select_pool, PoolChoiceError};
use cellbus_contracts::resources::{CellPoolSpec, CellSpec, TrustSpec};
use cellbus_contracts::subject::SubjectError;
use cellbus_contracts::validate;
use cellbus_control::signature::{SignatureCheck, SignatureError, Signer};
use k8s_openapi::jiff::Timestamp;

use crate::state::conditions::{pool_choice_reason, reasons};
use crate::state::index::Index;
use crate::state::observed::{ObservedCell, ObservedPool};
use crate::Config;

/// Why a Cell runs nowhere: a reason from [`reasons`] and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotPlaced {
    pub reason: &'static str,
    pub message: String,
    /// The module's signature is what keeps it out: ModuleVerified says so too.
    pub unverified: bool,
}

impl NotPlaced {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            unverified: false,
        }
    }

    fn unverified(pool: &str, error: &SignatureError) -> Self {
        Self {
            reason: error.reason(),
            message: format!(
                "{}: CellPool {pool} does not run this module: {}",
                match error {
                    SignatureError::NotSignable => "spec.module.digest",
                    _ => "spec.signature",
                },
                cellbus_contracts::error_chain(error)
            ),
            unverified: true,
        }
    }
}

/// The index as one reconcile reads it, judging signatures at one moment. It holds the
/// index's read lock, so it lives only between two awaits.
pub struct Snapshot<'a> {
    index: RwLockReadGuard<'a, Index>,
    /// Signatures are judged at this moment: certificates expire.
    signatures: SignatureCheck,
}

/// A pool's trust with its sources read (by its last reconcile): keys and authorities
/// only, naming no source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTrust {
    /// The pool generation whose spec was resolved.
    pub generation: i64,
    pub trust: TrustSpec,
}

impl<'a> Snapshot<'a> {
    /// A view of `index` judging signatures at `now`.
    pub fn new(index: RwLockReadGuard<'a, Index>, now: std::time::SystemTime) -> Self {
        let mut signatures = SignatureCheck::now();
        signatures.now = now;
        Self { index, signatures }
    }

    /// The trust in effect in `pool` (none: signatures are not checked), or why Cells wait:
    /// its sources have not been read for its current generation.
    pub fn trust(
        &self,
        pool: &ObservedPool,
        spec: &CellPoolSpec,
    ) -> Result<Option<TrustSpec>, NotPlaced> {
        match &spec.trust {
            None => Ok(None),
            Some(trust) if trust.from.is_empty() => Ok(Some(trust.clone())),
            Some(_) => self
                .index
                .trust(&pool.key())
                .filter(|resolved| resolved.generation == pool.generation())
                .map(|resolved| Some(resolved.trust.clone()))
                .ok_or_else(|| NotPlaced {
                    reason: SignatureError::TrustUnresolved.reason(),
                    message: format!(
                        "waiting for CellPool {} to read its trust sources (see its TrustResolved condition)",
                        pool.name()
                    ),
                    unverified: true,
                }),
        }
    }

    /// Who signed `cell`'s module, when its pool `pool` trusts signers.
    pub fn signer(&self, cell: &CellSpec, pool: &ObservedPool) -> Option<Signer> {
        let spec = pool.spec.as_ref().ok()?;
        let trust = self.trust(pool, spec).ok()?;
        self.signatures
            .verify_cell(cell, trust.as_ref())
            .ok()
            .flatten()
    }

    /// The pool `name` of `namespace`, valid or not.
    pub fn pool(&self, namespace: &str, name: &str) -> Option<&Arc<ObservedPool>> {
        self.index.pool(namespace, name)
    }

    /// The pool chosen for `cell` and that pool's spec, before looking at other Cells.
    fn candidate<'s, 'c>(
        &'s self,
        cell: &'c ObservedCell,
    ) -> Result<(&'c CellSpec, &'s Arc<ObservedPool>, &'s CellPoolSpec), NotPlaced> {
        let spec = cell.spec.as_ref().map_err(|_| {
            NotPlaced::new(
                reasons::INVALID_SPEC,
                cell.spec_errors().unwrap_or_default(),
            )
        })?;
        if let Some(name) = &spec.pool_ref {
            if let Some(message) = self
                .pool(cell.namespace(), name)
                .and_then(|pool| pool.spec_errors())
            {
                return Err(NotPlaced::new(
                    reasons::POOL_INVALID,
                    format!("CellPool {name} is invalid: {message}"),
                ));
            }
        }
        let candidates: Vec<(&'s str, &'s CellPoolSpec)> = self
            .index
            .pools_in(cell.namespace())
            .filter_map(|pool| Some((pool.name(), pool.spec.as_ref().ok()?)))
            .collect();
        let (name, pool_spec) = select_pool(spec, &candidates).map_err(|error| {
            let message = match &error {
                PoolChoiceError::NotFound { .. } => {
                    format!("{error}; create it or change spec.poolRef")
                }
                PoolChoiceError::NoneMatch { .. } => {
                    format!("{error} in namespace {}; create one", cell.namespace())
                }
                PoolChoiceError::Several { .. } => error.to_string(),
            };
            NotPlaced::new(pool_choice_reason(&error), message)
        })?;
        validate::cell_in_pool(spec, name, pool_spec)
            .map_err(|invalid| NotPlaced::new(reasons::INVALID_SPEC, invalid.to_string()))?;
        let pool = self
            .pool(cell.namespace(), name)
            .expect("select_pool chose a pool of the snapshot");
        // A Cell whose module no trusted signer vouches for never enters the assignment.
        let trust = self.trust(pool, pool_spec)?;
        self.signatures
            .verify_cell(spec, trust.as_ref())
            .map_err(|error| NotPlaced::unverified(name, &error))?;
        Ok((spec, pool, pool_spec))
    }

    /// The Cell that holds `service` on `bus`: the oldest live claim.
    fn holder(&self, service: &str, bus_url: &str, config: &Config) -> Option<&ObservedCell> {
        self.index
            .claimants(service)
            .map(Arc::as_ref)
            .filter(|cell| !cell.is_deleting())
            .filter(|cell| {
                self.candidate(cell)
                    .is_ok_and(|(_, _, pool)| config.bus(pool) == bus_url)
            })
            .min_by_key(|cell| rank(cell))
    }

    /// The pool `cell` runs in, or why it runs nowhere.
    pub fn placement(
        &self,
        cell: &ObservedCell,
        config: &Config,
    ) -> Result<&Arc<ObservedPool>, NotPlaced> {
        if cell.is_deleting() {
            return Err(NotPlaced::new(
                reasons::DELETING,
                "the Cell is being deleted",
            ));
        }
        let (spec, pool, pool_spec) = self.candidate(cell)?;
        let bus_url = config.bus(pool_spec);
        match self.holder(&spec.service, bus_url, config) {
            Some(holder) if holder.key() != cell.key() => Err(NotPlaced::new(
                reasons::SERVICE_CONFLICT,
                format!(
                    "service {} is already served on {} by Cell {}; rename spec.service or delete that Cell",
                    spec.service,
                    cellbus_control::redact_url(bus_url),
                    holder.key()
                ),
            )),
            _ => Ok(pool),
        }
    }

    /// The Cell that holds the database schema `schema`: the oldest placed claim, in any
    /// namespace. A Cell that runs nowhere provisions nothing, so it holds nothing.
    pub fn schema_holder(&self, schema: &str, config: &Config) -> Option<&ObservedCell> {
        self.index
            .schema_claimants(schema)
            .map(Arc::as_ref)
            .filter(|cell| self.placement(cell, config).is_ok())
            .min_by_key(|cell| rank(cell))
    }

    /// Why `cell` may not have its database schema, when another Cell holds it.
    pub fn schema_conflict(&self, cell: &ObservedCell, config: &Config) -> Option<NotPlaced> {
        let schema = cell.spec.as_ref().ok()?.database_schema()?;
        let holder = self.schema_holder(&schema, config)?;
        (holder.key() != cell.key()).then(|| {
            NotPlaced::new(
                reasons::SCHEMA_CONFLICT,
                format!(
                    "schema {schema} is already the database schema of Cell {}; set spec.database.schema to a schema of this Cell's own or delete that Cell",
                    holder.key()
                ),
            )
        })
    }

    /// The Cells placed in `pool`, by name.
    pub fn members(&self, pool: &ObservedPool, config: &Config) -> Vec<&ObservedCell> {
        let mut members: Vec<&ObservedCell> = self
            .index
            .cells_in(pool.namespace())
            .map(Arc::as_ref)
            .filter(|cell| could_run_in(cell, pool))
            .filter(|cell| {
                self.placement(cell, config)
                    .is_ok_and(|placed| placed.name() == pool.name())
            })
            .collect();
        members.sort_by(|a, b| a.name().cmp(b.name()));
        members
    }

    /// What `pool`'s pods should serve; `None` when the pool's own spec is invalid.
    pub fn assignment(
        &self,
        pool: &ObservedPool,
        config: &Config,
    ) -> Option<Result<PoolAssignment, SubjectError>> {
        let pool_spec = pool.spec.as_ref().ok()?;
        // Until its sources are read, the pods keep the assignment they have.
        let trust = self.trust(pool, pool_spec).ok()?;
        let pool_spec = CellPoolSpec {
            trust,
            ..pool_spec.clone()
        };
        let members = self.members(pool, config);
        let cells = members
            .iter()
            .filter_map(|cell| Some((cell.name(), cell.spec.as_ref().ok()?)));
        Some(PoolAssignment::new(
            pool.namespace(),
            pool.name(),
            &pool_spec,
            cells,
        ))
    }
}

/// A cheap first look: whether `pool` is the pool `cell` names, or one of its runtime and
/// OS when it names none. Placing a Cell costs far more, so a pool's members are found by
/// placing only the Cells that pass this.
fn could_run_in(cell: &ObservedCell, pool: &ObservedPool) -> bool {
    let (Ok(spec), Ok(pool_spec)) = (&cell.spec, &pool.spec) else {
        return false;
    };
    match &spec.pool_ref {
        Some(name) => name == pool.name(),
        None => {
            spec.runtime.unwrap_or_default() == pool_spec.runtime
                && spec.os.unwrap_or_default() == pool_spec.os
        }
    }
}

/// Older claims first; objects without a creation time (never from a real API server)
/// after every dated one.
fn rank(cell: &ObservedCell) -> (bool, Option<Timestamp>, &str, &str) {
    let created = cell.meta.creation_timestamp.as_ref().map(|time| time.0);
    (created.is_none(), created, cell.namespace(), cell.name())
}
