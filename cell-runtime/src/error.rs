//! The runtime's failures that leave its own code: why a cell did not load (reported in
//! the pod's status) and why one request failed (answered as an error envelope, whose code
//! and `retryable` are decided here alone).

use std::sync::Arc;

use cellbus_contracts::subject::SubjectError;
use cellbus_contracts::wire::{ErrorBody, ErrorCode};
use cellbus_control::postgres::tls::{ConnectError, TlsError};
use cellbus_control::signature::{SignatureError, TrustError};
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

use crate::cell::{ReplyLimit, SchemaError};
use crate::db::rows::RowsError;
use crate::db::secrets::SourceError;
use crate::db::session::Leftover;
use crate::db::statement::SessionStatement;
use crate::db::values::ValueError;
use crate::modules::FetchError;
use crate::process::{ProcessError, StopReason};

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

/// Why one request was answered with an error envelope rather than the cell's output.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    // The caller's request.
    /// The envelope, as the wire contract refused it.
    #[error("{}", .0.message)]
    Envelope(ErrorBody),
    #[error("{service} has no verb {verb}; it answers {verbs}")]
    UnknownVerb {
        service: String,
        verb: String,
        verbs: String,
    },
    #[error("request of {size} bytes is over the {limit}-byte limit")]
    RequestTooLarge { size: usize, limit: usize },
    #[error("payload does not match the input schema of {verb}")]
    InputSchema {
        verb: String,
        violations: Vec<Value>,
    },

    // This pod.
    #[error("{service} is not loaded in this pod")]
    NotLoaded { service: String },
    #[error("{service} is running as many requests as it may ({max_in_flight})")]
    Full { service: String, max_in_flight: u32 },

    // What the cell answered.
    /// An error envelope the cell wrote, or one a service it called answered with:
    /// passed on as written.
    #[error("{}", .0.message)]
    Answered(ErrorBody),
    #[error("the cell's output is not JSON")]
    OutputNotJson(#[source] serde_json::Error),
    #[error("the cell's output cannot be encoded")]
    OutputNotEncodable(#[source] serde_json::Error),
    #[error("the cell's output does not match the output schema of {verb}")]
    OutputSchema {
        verb: String,
        violations: Vec<Value>,
    },
    #[error(
        "the reply of {size} bytes is over the {}-byte limit ({})",
        limit.bytes,
        limit.source
    )]
    ReplyTooLarge { size: usize, limit: ReplyLimit },

    // A wasm cell.
    #[error("the cell tried to grow its memory past its limit")]
    MemoryExceeded,
    #[error("the cell did not answer before its deadline")]
    Interrupted,
    #[error("the cell ran out of fuel")]
    OutOfFuel,
    #[error("no room for another instance of the cell")]
    NoInstanceRoom,
    #[error("the cell trapped")]
    Trapped(#[source] wasmtime::Trap),
    #[error("no instance slot free in this runtime")]
    NoInstanceSlot(#[source] wasmtime::Error),
    #[error("the cell failed")]
    Failed(#[source] wasmtime::Error),
    #[error("setting fuel")]
    Fuel(#[source] wasmtime::Error),

    // A process cell.
    #[error("cannot start the process")]
    ProcessStart(#[source] std::io::Error),
    #[error(transparent)]
    ProcessStopped(#[from] StopReason),
    #[error("the process stopped")]
    ProcessGone,
    #[error("the process did not answer before the request's deadline; it was stopped")]
    ProcessDeadline,
    #[error("the process stopped and is restarted in {in_ms} ms, after this request's deadline")]
    RestartAfterDeadline { in_ms: u128 },
    #[error("the cell was replaced or removed")]
    CellReplaced,
    #[error("the cell's previous process had not exited by this request's deadline")]
    PreviousProcess,

    // A Python cell.
    #[cfg(feature = "python")]
    #[error("the Python call failed")]
    PythonTask(#[source] tokio::task::JoinError),
    #[cfg(feature = "python")]
    #[error(transparent)]
    PythonInterpreter(pyo3::PyErr),
    #[error("the cell did not return before the request's deadline")]
    PythonDeadline,
    /// The exception the cell raised, as Python describes it.
    #[error("{0}")]
    Raised(String),
    #[error("the reply is not JSON")]
    ReplyNotJson(#[source] serde_json::Error),

    // A call from a cell to another service.
    #[error(transparent)]
    CallTarget(SubjectError),
    #[error("the cell may not call {subject}; grant it in spec.capabilities.call")]
    CallNotGranted { subject: String },
    #[error("call payload is not JSON")]
    CallPayload(#[source] serde_json::Error),
    #[error("no time left for the call")]
    NoTimeForCall,
    #[error("no bus to call through")]
    NoBus,
    #[error("{subject} did not answer in time")]
    CallTimeout { subject: String },
    #[error("calling {subject} through its stream")]
    CallThroughStream {
        subject: String,
        #[source]
        source: cellbus_control::Error,
    },
    #[error(transparent)]
    EncodeCall(serde_json::Error),
    #[error("calling {subject}")]
    Call {
        subject: String,
        #[source]
        source: async_nats::RequestError,
    },
    #[error("{subject} answered with something that is not a reply")]
    NotAReply {
        subject: String,
        #[source]
        source: serde_json::Error,
    },

    // The cell's database.
    #[error("the cell has no database; give its Cell spec.database")]
    NoDatabase,
    #[error(transparent)]
    StatementRefused(SessionStatement),
    #[error(transparent)]
    Value(ValueError),
    #[error(transparent)]
    Rows(RowsError),
    #[error("the database refused the statement or could not run it")]
    Database(#[source] tokio_postgres::Error),
    #[error("waiting for a database connection")]
    NoConnectionInTime,
    #[error("the statement did not finish before the request's deadline")]
    StatementDeadline,
    #[error("the statement ran, but its commit did not finish before the request's deadline")]
    CommitDeadline,
    #[error("{}: {}", .0, .0.advice())]
    Leftover(Leftover),
    #[error("the database pool is closed")]
    PoolClosed,
    #[error("cannot connect to the cell's database")]
    Connect(#[source] ConnectError),
    #[error("reading the database Secret {namespace}/{secret}")]
    ReadSecret {
        namespace: String,
        secret: String,
        #[source]
        source: SourceError,
    },
    #[error(
        "the database Secret {namespace}/{secret} does not exist yet (the operator makes it \
         once the database is provisioned)"
    )]
    NoSecret { namespace: String, secret: String },
    #[error("DATABASE_URL of the Secret {namespace}/{secret} cannot be used")]
    SecretUrl {
        namespace: String,
        secret: String,
        #[source]
        source: TlsError,
    },
}

impl RequestError {
    /// What a person reads: the error and its causes, each said once (some errors print
    /// their cause themselves as well as giving it as their source).
    fn message(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            let said = error.to_string();
            if !text.ends_with(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            cause = error.source();
        }
        text
    }
}

/// The envelope of a failed request: the one place that decides its code and whether
/// sending it again may help. The caller's mistakes are `bad_request` (or the more exact
/// `schema_violation`, `forbidden`, `unknown_verb`); a limit is `resource_exhausted`; what
/// the cell did is `cell_failed`; the runtime's, the pooler's or the server's troubles are
/// `unavailable`, `timeout` or `internal`.
impl From<&RequestError> for ErrorBody {
    fn from(error: &RequestError) -> Self {
        use ErrorCode as C;
        use RequestError as E;
        let (code, retryable) = match error {
            E::Envelope(body) | E::Answered(body) => return body.clone(),
            E::Database(error) => return database_error(error),

            E::UnknownVerb { .. } => (C::UnknownVerb, false),
            E::RequestTooLarge { .. } => (C::ResourceExhausted, false),
            E::InputSchema { .. } => (C::SchemaViolation, false),
            E::CallTarget(_) | E::CallPayload(_) => (C::BadRequest, false),
            E::StatementRefused(_) | E::Value(_) | E::Leftover(_) => (C::BadRequest, false),
            E::Rows(rows) if rows.details().is_some() => (C::ResourceExhausted, false),
            E::Rows(_) => (C::BadRequest, false),
            E::CallNotGranted { .. } | E::NoDatabase => (C::Forbidden, false),

            E::ReplyTooLarge { .. } | E::MemoryExceeded | E::OutOfFuel => {
                (C::ResourceExhausted, false)
            }
            E::Full { .. } | E::NoInstanceRoom | E::NoInstanceSlot(_) => {
                (C::ResourceExhausted, true)
            }

            E::OutputNotJson(_)
            | E::OutputNotEncodable(_)
            | E::OutputSchema { .. }
            | E::Trapped(_)
            | E::Failed(_)
            | E::ProcessStart(_)
            | E::ProcessStopped(_)
            | E::ProcessGone
            | E::Raised(_)
            | E::ReplyNotJson(_) => (C::CellFailed, false),

            E::Interrupted
            | E::ProcessDeadline
            | E::PythonDeadline
            | E::NoTimeForCall
            | E::CallTimeout { .. }
            | E::NoConnectionInTime
            | E::StatementDeadline
            | E::CommitDeadline => (C::Timeout, true),
            E::Call { source, .. } if source.kind() == async_nats::RequestErrorKind::TimedOut => {
                (C::Timeout, true)
            }

            E::NotLoaded { .. }
            | E::RestartAfterDeadline { .. }
            | E::CellReplaced
            | E::PreviousProcess
            | E::NoBus
            | E::CallThroughStream { .. }
            | E::Call { .. }
            | E::PoolClosed
            | E::Connect(_)
            | E::ReadSecret { .. }
            | E::NoSecret { .. }
            | E::SecretUrl { .. } => (C::Unavailable, true),

            E::Fuel(_) | E::EncodeCall(_) | E::NotAReply { .. } => (C::Internal, false),
            #[cfg(feature = "python")]
            E::PythonTask(_) | E::PythonInterpreter(_) => (C::Internal, false),
        };
        let details = match error {
            E::InputSchema { violations, .. } | E::OutputSchema { violations, .. } => {
                Some(json!(violations))
            }
            E::ReplyTooLarge { size, limit } => Some(json!({"size": size, "limit": limit.bytes})),
            E::Rows(rows) => rows.details(),
            _ => None,
        };
        let body = ErrorBody::new(code, error.message()).with_retryable(retryable);
        match details {
            Some(details) => body.with_details(details),
            None => body,
        }
    }
}

/// A statement the database refused or could not run: the class of its SQLSTATE decides
/// the code, and the state itself goes into the details so a cell can tell a unique
/// violation from a syntax error.
fn database_error(error: &tokio_postgres::Error) -> ErrorBody {
    let Some(db) = error.as_db_error() else {
        return ErrorBody::new(
            ErrorCode::Unavailable,
            format!("the database connection failed: {error}"),
        )
        .with_retryable(true);
    };
    let state = db.code();
    let class = &state.code()[..2];
    let (code, retryable) = if *state == SqlState::INSUFFICIENT_PRIVILEGE {
        (ErrorCode::Forbidden, false)
    } else if *state == SqlState::DUPLICATE_PSTATEMENT {
        // The driver's own statement names: a cell cannot prepare (PREPARE is refused),
        // so a clash is a pooler handing over a server connection with another client's
        // statements on it.
        (ErrorCode::Unavailable, true)
    } else {
        match class {
            // Serialization failures and deadlocks succeed when tried again.
            "40" => (ErrorCode::Unavailable, true),
            // Too many connections, out of memory or disk.
            "53" | "54" => (ErrorCode::ResourceExhausted, true),
            // The server is shutting down or cancelled the statement.
            "57" => (ErrorCode::Unavailable, true),
            "08" => (ErrorCode::Unavailable, true),
            // A statement the driver prepared is gone: a pooler moved the call to
            // another server connection.
            "26" => (ErrorCode::Unavailable, true),
            "XX" | "58" | "F0" => (ErrorCode::Internal, false),
            // Syntax, unknown names, bad data, constraint violations: the cell's request.
            _ => (ErrorCode::BadRequest, false),
        }
    };
    let mut details = json!({ "sqlstate": state.code() });
    if let Some(detail) = db.detail() {
        details["detail"] = json!(detail);
    }
    if let Some(hint) = db.hint() {
        details["hint"] = json!(hint);
    }
    ErrorBody::new(code, db.message().to_owned())
        .with_details(details)
        .with_retryable(retryable)
}
