//! `cellbus-operator render`: what the operator would make of a set of Cell and CellPool
//! manifests, computed without a cluster by the same builders the controllers use. The
//! Kubernetes objects come out as a multi-document YAML stream; what lives in NATS (pool
//! assignments, streams) comes out as commented YAML between them, so the stream stays
//! something `kubectl apply --dry-run` and validators accept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use cellbus_contracts::assignment::{PoolAssignment, ASSIGNMENTS_BUCKET};
use cellbus_contracts::manifest::{self, Object, ObjectRef, PoolChoiceError};
use cellbus_contracts::resources::{CellPool, CellPoolSpec, CellSpec};
use serde::Serialize;
use serde_json::Value;

use crate::builders::{self, PoolObjects, StreamPlan};
use crate::config::Config;
use crate::state::conditions;
use crate::Error;

/// What the operator would do for a set of manifests.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// Each CellPool with its objects and its assignment, in manifest order.
    pub pools: Vec<RenderedPool>,
    /// Each Cell's plan, in manifest order.
    pub cells: Vec<CellPlan>,
    /// Documents that are not Cellbus objects, which the operator leaves alone.
    pub passed_over: Vec<ObjectRef>,
}

/// One CellPool's share of [`Rendered`].
#[derive(Clone, Debug)]
pub struct RenderedPool {
    /// The pool as read, with its namespace and a placeholder uid.
    pub pool: CellPool,
    pub objects: PoolObjects,
    /// The value the operator writes to the KV bucket `cbs-assignments`.
    pub assignment: PoolAssignment,
}

/// What the operator does in NATS for one Cell.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CellPlan {
    /// `{namespace}/{name}` of the Cell.
    pub cell: String,
    pub service: String,
    /// The subjects it answers on.
    pub subjects: Vec<String>,
    /// The CellPool that runs it, when one in the manifests does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The key of its pool's assignment in the KV bucket `cbs-assignments`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment_key: Option<String>,
    /// Why no pool in the manifests runs it, as its Scheduled condition would say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_scheduled: Option<NotScheduled>,
    /// The stream of its durable verbs; none without durable verbs.
    pub stream: Option<StreamPlan>,
}

/// A Scheduled=False condition, in short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotScheduled {
    pub reason: &'static str,
    pub message: String,
}

/// The uid `render` gives a CellPool, since only an API server assigns real ones: a UUID
/// v5 of the pool's API path, so the same pool always renders the same.
pub fn placeholder_uid(namespace: &str, name: &str) -> String {
    let path = format!("/apis/cellbus.io/v1alpha1/namespaces/{namespace}/cellpools/{name}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, path.as_bytes()).to_string()
}

/// The YAML documents of every `.yaml`/`.yml` file under `paths`.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Value>, Error> {
    Ok(cellbus_control::manifests::load(paths)?)
}

/// Checks `documents` as a cluster would and builds what the operator would make of them.
/// Any broken rule fails the whole render with every error, each naming its object and
/// field.
pub fn render(documents: &[Value], config: &Config) -> Result<Rendered, Error> {
    let checked = manifest::check_with(
        documents,
        &cellbus_control::signature::SignatureCheck::with_documents(documents),
    );
    if !checked.errors.is_empty() {
        return Err(Error::InvalidManifests {
            errors: checked.errors,
        });
    }

    let mut pools: Vec<(ObjectRef, CellPoolSpec)> = Vec::new();
    let mut cells: Vec<(ObjectRef, CellSpec)> = Vec::new();
    for object in checked.objects {
        match object {
            Object::CellPool { at, spec } => pools.push((at, spec)),
            Object::Cell { at, spec } => cells.push((at, spec)),
        }
    }

    // Which pool runs each cell, by the rule the controller applies: its poolRef, else
    // the one pool in its namespace with its runtime and OS.
    let mut plans = Vec::new();
    let mut members: BTreeMap<(String, String), Vec<(&str, &CellSpec)>> = BTreeMap::new();
    for (at, spec) in &cells {
        let candidates: Vec<(&str, &CellPoolSpec)> = pools
            .iter()
            .filter(|(pool, _)| pool.namespace == at.namespace)
            .map(|(pool, spec)| (pool.name.as_str(), spec))
            .collect();
        let choice = manifest::select_pool(spec, &candidates).map(|(name, _)| name.to_owned());
        if let Ok(pool) = &choice {
            members
                .entry((at.namespace.clone(), pool.clone()))
                .or_default()
                .push((at.name.as_str(), spec));
        }
        plans.push(cell_plan(at, spec, choice, config.replicas)?);
    }

    let mut rendered_pools = Vec::new();
    for (at, spec) in pools {
        let cells = members
            .remove(&(at.namespace.clone(), at.name.clone()))
            .unwrap_or_default();
        let assignment =
            PoolAssignment::new(&at.namespace, &at.name, &spec, cells).map_err(|source| {
                Error::Assignment {
                    namespace: at.namespace.clone(),
                    pool: at.name.clone(),
                    source,
                }
            })?;
        let mut pool = CellPool::new(&at.name, spec);
        pool.metadata.namespace = Some(at.namespace.clone());
        pool.metadata.uid = Some(placeholder_uid(&at.namespace, &at.name));
        let objects = builders::pool_objects(&pool, config);
        rendered_pools.push(RenderedPool {
            pool,
            objects,
            assignment,
        });
    }

    Ok(Rendered {
        pools: rendered_pools,
        cells: plans,
        passed_over: checked.others,
    })
}

fn cell_plan(
    at: &ObjectRef,
    spec: &CellSpec,
    choice: Result<String, PoolChoiceError>,
    replicas: u8,
) -> Result<CellPlan, Error> {
    let (pool, assignment_key, not_scheduled) = match choice {
        Ok(pool) => {
            let key = cellbus_contracts::assignment::assignment_key(&at.namespace, &pool);
            (Some(pool), Some(key), None)
        }
        Err(error) => {
            let not_scheduled = NotScheduled {
                reason: conditions::pool_choice_reason(&error),
                message: error.to_string(),
            };
            (None, None, Some(not_scheduled))
        }
    };
    Ok(CellPlan {
        cell: format!("{}/{}", at.namespace, at.name),
        service: spec.service.clone(),
        subjects: builders::request_subjects(spec)?,
        pool,
        assignment_key,
        not_scheduled,
        stream: builders::stream_config(spec, replicas)?,
    })
}

impl Rendered {
    /// The multi-document YAML stream `render` prints: a header saying how it was made,
    /// then per pool its objects, its assignment and its cells' plans as comments, then
    /// the plans of cells no pool in the manifests runs.
    pub fn to_yaml(&self) -> Result<String, Error> {
        let mut out = String::from(HEADER);
        if !self.passed_over.is_empty() {
            out.push_str("#\n# Passed over, as not Cellbus objects:\n");
            for other in &self.passed_over {
                let _ = writeln!(out, "#   {other}");
            }
        }
        for pool in &self.pools {
            let objects = &pool.objects;
            document(&mut out, &objects.service_account)?;
            document(&mut out, &objects.deployment)?;
            document(&mut out, &objects.service)?;
            if let Some(pdb) = &objects.pod_disruption_budget {
                document(&mut out, pdb)?;
            }
            let assignment = &pool.assignment;
            comment(
                &mut out,
                &format!(
                    "Assignment of CellPool {}/{} (NATS KV {ASSIGNMENTS_BUCKET}, key {}):",
                    assignment.namespace,
                    assignment.pool,
                    assignment.key()
                ),
                assignment,
            )?;
            for plan in self
                .cells
                .iter()
                .filter(|plan| plan.assignment_key.as_deref() == Some(&assignment.key()))
            {
                cell_comment(&mut out, plan)?;
            }
        }
        for plan in self.cells.iter().filter(|plan| plan.pool.is_none()) {
            cell_comment(&mut out, plan)?;
        }
        Ok(out)
    }
}

const HEADER: &str = "\
# Rendered by `cellbus-operator render`: the objects the operator applies for these
# manifests, computed without a cluster.
#
# metadata.uid of each CellPool is a placeholder, a UUID v5 of the pool's namespace and
# name, since only an API server assigns real ones; the ownerReferences below point at
# it. Do not apply these objects as they are: the garbage collector deletes objects whose
# owner does not exist under that uid. In a cluster the operator uses the pool's real uid.
#
# Pool assignments and streams live in NATS, not in Kubernetes, so they are shown as
# commented YAML.
";

fn cell_comment(out: &mut String, plan: &CellPlan) -> Result<(), Error> {
    let title = match &plan.not_scheduled {
        None => format!("NATS plan of Cell {}:", plan.cell),
        Some(_) => format!(
            "NATS plan of Cell {}, which no pool in these manifests runs:",
            plan.cell
        ),
    };
    comment(out, &title, plan)
}

fn document(out: &mut String, object: &impl Serialize) -> Result<(), Error> {
    out.push_str("---\n");
    out.push_str(&yaml(object)?);
    Ok(())
}

fn comment(out: &mut String, title: &str, value: &impl Serialize) -> Result<(), Error> {
    let _ = writeln!(out, "#\n# {title}");
    for line in yaml(value)?.lines() {
        let _ = writeln!(out, "#   {line}");
    }
    Ok(())
}

fn yaml(value: &impl Serialize) -> Result<String, Error> {
    let text = serde_saphyr::to_string(value).map_err(|source| Error::Serialize {
        what: std::any::type_name_of_val(value).to_owned(),
        source: source.into(),
    })?;
    Ok(if text.ends_with('\n') {
        text
    } else {
        text + "\n"
    })
}

/// Loads, checks and renders the manifests under `paths`.
pub fn render_paths(paths: &[PathBuf], config: &Config) -> Result<String, Error> {
    render(&load(paths)?, config)?.to_yaml()
}
