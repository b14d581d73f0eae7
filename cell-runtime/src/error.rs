//! The runtime's failures that leave its own code: why a cell did not load (reported in
//! the pod's status) and why one request failed (answered as an error envelope, whose code
//! and `retryable` are decided here alone).

use std::sync::Arc;

use cellbus_control::signature::{SignatureError, TrustError};

use crate::cell::SchemaError;
use crate::modules::FetchError;
use crate::process::ProcessError;

/// Why a cell assigned to this pod is not served; reported with its sources as the cell's
/// `reason`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the pool's trust cannot be read")]
    Trust(#[source] Arc<TrustError>),
    #[error("signature refused ({})", .0.reason())]
    Signature(#[source] SignatureError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("compiling")]
    CompileTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Wasm(#[from] crate::wasm::LoadError),
    #[error("storing the executable")]
    StoreExecutable(#[source] std::io::Error),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[cfg(feature = "python")]
    #[error("loading the Python module")]
    PythonTask(#[source] tokio::task::JoinError),
    #[cfg(feature = "python")]
    #[error(transparent)]
    Python(#[from] crate::python::PythonLoadError),
    #[cfg(not(feature = "python"))]
    #[error("python cells need a runtime built with the `python` feature")]
    PythonNotBuilt,
    #[error(transparent)]
    Schema(#[from] SchemaError),
}
