//! The one writer of each pool's assignment (in the `cbs-assignments` bucket) and of the
//! Role that lets the pool's pods read its Cells' database Secrets. Both controllers only
//! ask it to bring a pool up to date ([`Assignments::write`]); it computes from the index
//! and writes, one write at a time per pool, and one write answers every request made
//! before it began.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cellbus_contracts::assignment::PoolAssignment;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

use super::children;
use crate::controller::context::Context;
use crate::state::names;
use crate::state::observed::ObservedPool;
use crate::{builders, Error};

/// The writers of every pool, made on first use.
#[derive(Default)]
pub struct Assignments {
    writers: Mutex<HashMap<String, Arc<Writer>>>,
}

/// The state of one pool's writer.
#[derive(Default)]
struct Writer {
    /// Requests made so far; each gets the next number.
    requested: AtomicU64,
    /// Every request numbered up to this one has had a write begun after it succeed.
    written: AtomicU64,
    /// Held while computing and writing, so an older view never overwrites a newer one.
    turn: tokio::sync::Mutex<()>,
    /// The database Secrets the pool's Role was last made to list, if this process made
    /// it: an unchanged set costs no request.
    secret_access: Mutex<Option<BTreeSet<String>>>,
}

impl Assignments {
    fn writer(&self, pool: &str) -> Arc<Writer> {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pool.to_owned())
            .or_default()
            .clone()
    }

    /// Brings `pool`'s assignment and Secret access up to what the index shows now, and
    /// returns once a write that began after this call succeeded (this one's or another
    /// caller's). Nothing is written when KV already holds the assignment.
    pub async fn write(&self, ctx: &Context, pool: &ObservedPool) -> Result<(), Error> {
        let writer = self.writer(&pool.key());
        let ticket = writer.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = writer.turn.lock().await;
        if writer.written.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every request numbered up to here was made before the index is read below.
        let covers = writer.requested.load(Ordering::SeqCst);
        write_pool(ctx, pool, &writer).await?;
        writer.written.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

async fn write_pool(ctx: &Context, pool: &ObservedPool, writer: &Writer) -> Result<(), Error> {
    let Some(pool_spec) = pool.spec.as_ref().ok() else {
        return Ok(());
    };
    let assignment = {
        let snapshot = ctx.snapshot();
        // The reconciled pool may be fresher than the index's, or the index's fresher.
        let Some(indexed) = snapshot.pool(pool.namespace(), pool.name()).cloned() else {
            return Ok(());
        };
        snapshot.assignment(&indexed, &ctx.config)
    };
    let Some(assignment) = assignment else {
        return Ok(());
    };
    let assignment = assignment.map_err(|source| Error::Assignment {
        namespace: pool.namespace().to_owned(),
        pool: pool.name().to_owned(),
        source,
    })?;
    // The pods may read the new cells' Secrets before they learn of the cells.
    sync_secret_access(ctx, pool, &assignment, writer).await?;
    let bus = ctx.buses.get(ctx.config.bus(pool_spec)).await?;
    if cellbus_control::write_assignment(&bus.buckets.assignments, &assignment).await? {
        tracing::info!(
            pool = %pool.key(),
            cells = assignment.cells.len(),
            "wrote the pool assignment"
        );
    }
    Ok(())
}

/// Keeps the pool's Role listing exactly the database Secrets of the cells in
/// `assignment`, bound to the pool's ServiceAccount; without such cells, neither exists.
async fn sync_secret_access(
    ctx: &Context,
    pool: &ObservedPool,
    assignment: &PoolAssignment,
    writer: &Writer,
) -> Result<(), Error> {
    let Some(typed) = pool.typed() else {
        return Ok(());
    };
    let secrets: BTreeSet<String> = assignment
        .cells
        .iter()
        .filter_map(|cell| cell.database.as_ref().map(|db| db.secret.clone()))
        .collect();
    let applied = writer
        .secret_access
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if applied.as_ref() == Some(&secrets) || (secrets.is_empty() && applied.is_none()) {
        return Ok(());
    }
    let namespace = pool.namespace();
    match builders::secret_reader_role(&typed, &secrets) {
        Some(role) => {
            children::apply(ctx, namespace, &role).await?;
            children::apply(ctx, namespace, &builders::secret_reader_binding(&typed)).await?;
        }
        None => {
            let name = names::child_name(pool.name());
            children::delete::<RoleBinding>(ctx, namespace, &name).await?;
            children::delete::<Role>(ctx, namespace, &name).await?;
        }
    }
    *writer
        .secret_access
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(secrets);
    Ok(())
}
