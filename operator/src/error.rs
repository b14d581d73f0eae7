//! The operator's one error type: a variant per operation that can fail, carrying what it
//! was working on and, where there is one, the underlying error as its source.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use cellbus_contracts::manifest::ObjectError;
use cellbus_contracts::subject::SubjectError;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serializing {what}")]
    Serialize {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    LoadManifests(#[from] cellbus_control::manifests::LoadError),

    #[error("{}", invalid_objects(.errors))]
    InvalidManifests { errors: Vec<ObjectError> },

    #[error(transparent)]
    StreamPlan(#[from] cellbus_contracts::stream::StreamPlanError),

    #[error("could not {action} {object}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },

    #[error(transparent)]
    Nats(#[from] cellbus_control::Error),

    #[error("{object} is invalid: {message}")]
    InvalidSpec { object: String, message: String },

    #[error("Cell {cell} is not scheduled ({reason}): {message}")]
    NotPlaced {
        cell: String,
        reason: &'static str,
        message: String,
    },

    #[error("listening on {address}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("starting the async runtime")]
    Runtime {
        #[source]
        source: io::Error,
    },

    #[error("database of Cell {cell}")]
    Database {
        cell: String,
        #[source]
        source: cellbus_control::postgres::DatabaseError,
    },

    #[error("lost the leader lease; another replica reconciles now")]
    LostLease,

    #[error("assignment of CellPool {namespace}/{pool}")]
    Assignment {
        namespace: String,
        pool: String,
        #[source]
        source: SubjectError,
    },
}

impl Error {
    /// A short, fixed label for failure counters (`cellbus_operator_failures_total{error}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Serialize { .. } => "serialize",
            Self::Write { .. } => "write",
            Self::LoadManifests(_) => "load_manifests",
            Self::InvalidManifests { .. } => "invalid_manifests",
            Self::StreamPlan(_) => "stream_plan",
            Self::Assignment { .. } => "assignment",
            Self::Kube { .. } => "kube_api",
            Self::Listen { .. } => "listen",
            Self::LostLease => "lost_lease",
            Self::Database { .. } => "database",
            Self::Runtime { .. } => "runtime",
            Self::Nats(_) => "nats",
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::NotPlaced {
                reason: crate::state::conditions::reasons::INVALID_SPEC,
                ..
            } => "invalid_spec",
            Self::NotPlaced { .. } => "not_scheduled",
        }
    }
}

/// One line per broken rule, each naming the object and the field.
fn invalid_objects(errors: &[ObjectError]) -> String {
    let mut text = format!(
        "{} problem{} in the manifests:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for error in errors {
        let _ = write!(text, "\n  {error}");
    }
    text
}
