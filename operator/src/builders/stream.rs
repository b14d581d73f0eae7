//! The stream of a cell's durable verbs: planned by the contracts
//! (`cellbus_contracts::stream`), so the operator and `cellbus up` plan the same stream for
//! the same Cell; here it gets the operator's error type.

use cellbus_contracts::resources::CellSpec;
pub use cellbus_contracts::stream::{Retention, Storage, StreamPlan};

use crate::Error;

/// The stream a cell's durable verbs go through, or `None` for a cell without durable
/// verbs; `replicas` copies unless the Cell says (the operator's `--replicas`).
pub fn stream_config(cell: &CellSpec, replicas: u8) -> Result<Option<StreamPlan>, Error> {
    Ok(cellbus_contracts::stream::stream_plan_with(cell, replicas)?)
}

/// `cbs.{service}.{verb}` of every verb of a cell, as its status lists them.
pub fn request_subjects(cell: &CellSpec) -> Result<Vec<String>, Error> {
    Ok(cellbus_contracts::stream::request_subjects(cell)?)
}
