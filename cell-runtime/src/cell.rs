//! A loaded cell and the path of one request through it: envelope, verb, in-flight limit,
//! input schema, the sandboxed call, output checks, reply. Every failure on the way is an
//! error envelope with its code; none stops the cell serving the next request.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellbus_contracts::assignment::AssignedCell;
use cellbus_contracts::resources::Delivery;
use cellbus_contracts::wire::{ErrorBody, ErrorCode, ErrorReply, RawRequest, Reply};
use jiff::Timestamp;
use jsonschema::Validator;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::error::RequestError;
use crate::metrics::{Metrics, VerbMetrics};
use crate::process::ProcessCell;
use crate::wasm::{CallContext, Executor, WasmCell};

/// What runs a cell's requests.
pub enum CellCode {
    Wasm(WasmCell),
    Process(ProcessCell),
    #[cfg(feature = "python")]
    Python(Arc<crate::python::PythonCell>),
}

/// Deadline of a request when neither the verb, the cell, the pool nor the caller sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// In-flight limit of a cell when neither it nor its pool sets one.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// What a cell answered: JSON text as it wrote it, checked to be JSON but not built into
/// a value, so the host holds the cell's output once, at the size the cell's reply limit
/// allows.
pub type Output = Box<RawValue>;

/// The largest reply the cell may send: its `limits.maxReplyBytes`, never more than the
/// bus carries (`bus_max_payload`, the server's `max_payload`).
pub fn reply_limit(spec: &AssignedCell, bus_max_payload: usize) -> ReplyLimit {
    match spec.limits.max_reply_bytes {
        Some(bytes) if (bytes as usize) < bus_max_payload => ReplyLimit {
            bytes: bytes as usize,
            source: "the cell's limits.maxReplyBytes",
        },
        _ => ReplyLimit {
            bytes: bus_max_payload,
            source: "the bus's max_payload",
        },
    }
}

/// The most bytes a reply may have, and what set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimit {
    pub bytes: usize,
    pub source: &'static str,
}

impl ReplyLimit {
    /// Whether a reply of `size` bytes is over the limit.
    pub fn check(&self, size: usize) -> Result<(), RequestError> {
        if size <= self.bytes {
            return Ok(());
        }
        Err(RequestError::ReplyTooLarge { size, limit: *self })
    }
}

/// A reply ready for the bus.
#[derive(Debug)]
pub enum Answer {
    /// A success reply, encoded.
    Ok(Bytes),
    /// An error reply.
    Err(ErrorReply),
}

impl Answer {
    fn error(reply: Reply) -> Self {
        match reply {
            Reply::Err(error) => Self::Err(error),
            Reply::Ok(_) => unreachable!("built from an error"),
        }
    }

    /// The refusal of `raw`, a request not read further: correlated by the ids it carries.
    pub fn refusal(raw: &[u8], error: &RequestError) -> Self {
        Self::error(Reply::error_for_raw(raw, error.into()))
    }

    /// The reply's bytes.
    pub fn body(&self) -> Bytes {
        match self {
            Self::Ok(body) => body.clone(),
            Self::Err(error) => {
                Bytes::from(serde_json::to_vec(error).expect("an error envelope serializes"))
            }
        }
    }

    /// `ok`, or the error's code: the outcome label of the request metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Ok(_) => "ok",
            Self::Err(error) => error.error.code.as_str(),
        }
    }
}

/// One verb, with its schemas compiled once per load.
struct Verb {
    input: Option<Validator>,
    output: Option<Validator>,
    timeout: Option<Duration>,
    durable: bool,
    /// Its series, resolved at its first request.
    metrics: OnceLock<VerbMetrics>,
}

/// A cell a pod serves.
pub struct LoadedCell {
    /// The assignment entry this cell was loaded from.
    pub spec: AssignedCell,
    pub loaded_at: Timestamp,
    verbs: HashMap<String, Verb>,
    permits: Arc<Semaphore>,
    code: CellCode,
    default_timeout: Duration,
    reply_limit: ReplyLimit,
}

/// Why a verb's schema cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("verb {verb}: {which} schema: {message}")]
pub struct SchemaError {
    verb: String,
    which: &'static str,
    message: String,
}

impl LoadedCell {
    /// A cell whose replies the bus carries up to `bus_max_payload` bytes.
    pub fn new(
        spec: AssignedCell,
        code: CellCode,
        bus_max_payload: usize,
    ) -> Result<Self, SchemaError> {
        let compile = |verb: &str, which, schema: &Option<serde_json::Map<String, Value>>| {
            schema
                .as_ref()
                .map(|s| {
                    jsonschema::validator_for(&Value::Object(s.clone())).map_err(|e| SchemaError {
                        verb: verb.to_owned(),
                        which,
                        message: e.to_string(),
                    })
                })
                .transpose()
        };
        let mut verbs = HashMap::new();
        for verb in &spec.verbs {
            verbs.insert(
                verb.name.clone(),
                Verb {
                    input: compile(&verb.name, "input", &verb.input)?,
                    output: compile(&verb.name, "output", &verb.output)?,
                    timeout: verb.timeout_ms.map(|ms| Duration::from_millis(ms.into())),
                    durable: verb.delivery == Delivery::Durable,
                    metrics: OnceLock::new(),
                },
            );
        }
        let max_in_flight = spec
            .limits
            .max_in_flight
            .map_or(DEFAULT_MAX_IN_FLIGHT, |n| n as usize);
        let default_timeout = spec
            .limits
            .timeout_ms
            .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(ms.into()));
        let reply_limit = reply_limit(&spec, bus_max_payload);
        Ok(Self {
            spec,
            reply_limit,
            loaded_at: Timestamp::now(),
            verbs,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            code,
            default_timeout,
        })
    }

    pub fn service(&self) -> &str {
        &self.spec.service
    }

    pub fn digest(&self) -> Option<&str> {
        self.spec.module.digest.as_deref()
    }

    /// Whether `verb` goes through the cell's stream, which core subscriptions must leave
    /// alone.
    pub fn is_durable(&self, verb: &str) -> bool {
        self.verbs.get(verb).is_some_and(|v| v.durable)
    }

    /// The series of `verb`'s requests, or none for a verb the cell does not have.
    pub fn verb_metrics(&self, metrics: &Metrics, verb: &str) -> Option<&VerbMetrics> {
        let (name, found) = self.verbs.get_key_value(verb)?;
        Some(
            found
                .metrics
                .get_or_init(|| metrics.verb(self.service(), name)),
        )
    }

    /// The in-flight permits: a durable worker takes one before it fetches a request.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    /// Most requests the cell runs at once.
    pub fn max_in_flight(&self) -> u32 {
        self.spec
            .limits
            .max_in_flight
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT as u32)
    }

    /// Answers one request received on the subject of `verb`, holding `permit`, one of
    /// [`LoadedCell::permits`] taken (by [`LoadedCell::admit`] or a durable worker) before
    /// the request was read.
    pub async fn answer(
        &self,
        permit: OwnedSemaphorePermit,
        executor: &Executor,
        client: Option<async_nats::Client>,
        verb_name: &str,
        body: &[u8],
    ) -> Answer {
        let _permit = permit;
        let refuse = |error| Answer::refusal(body, &error);
        let Some(verb) = self.verbs.get(verb_name) else {
            return refuse(self.unknown_verb(verb_name));
        };
        // The payload stays text: a wasm or process cell is given it as it came, and a
        // value is built only for a schema to check or a Python cell.
        let request = match RawRequest::parse(body, self.service(), verb_name) {
            Ok(request) => request,
            Err(error) => return refuse(RequestError::Envelope(error)),
        };
        // Whatever the cell logs, and the runtime logs for it, carries these.
        let span = tracing::info_span!(
            "request",
            service = %request.service,
            verb = %request.verb,
            id = %request.id,
            correlation_id = %request.correlation_id.unwrap_or(request.id),
        );
        let encoded = self
            .run(verb, executor, client, &request)
            .instrument(span)
            .await
            .and_then(|output| {
                let body = Reply::encode_ok(&request, &output);
                self.reply_limit.check(body.len())?;
                Ok(body)
            });
        match encoded {
            Ok(body) => Answer::Ok(Bytes::from(body)),
            Err(error) => {
                let reply = Reply::error(&request, (&error).into());
                // An error the cell wrote is bounded by the same limit as its output.
                let size = serde_json::to_vec(&reply).map_or(0, |body| body.len());
                match self.reply_limit.check(size) {
                    Ok(()) => Answer::error(reply),
                    Err(error) => Answer::error(Reply::error(&request, (&error).into())),
                }
            }
        }
    }

    /// One of the cell's in-flight permits for a request to `verb`, or why the request is
    /// refused without being read: the verb does not exist, or the cell is full.
    pub fn admit(&self, verb: &str) -> Result<OwnedSemaphorePermit, RequestError> {
        if !self.verbs.contains_key(verb) {
            return Err(self.unknown_verb(verb));
        }
        self.try_permit()
    }

    fn unknown_verb(&self, verb: &str) -> RequestError {
        RequestError::UnknownVerb {
            service: self.service().to_owned(),
            verb: verb.to_owned(),
            verbs: self.verb_names(),
        }
    }

    async fn run(
        &self,
        verb: &Verb,
        executor: &Executor,
        client: Option<async_nats::Client>,
        request: &RawRequest,
    ) -> Result<Output, RequestError> {
        if let Some(schema) = &verb.input {
            let violations = schema_violations(schema, &payload_value(request)?);
            if !violations.is_empty() {
                return Err(RequestError::InputSchema {
                    verb: request.verb.clone(),
                    violations,
                });
            }
        }

        let mut timeout = verb.timeout.unwrap_or(self.default_timeout);
        if let Some(ms) = request.timeout_ms {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        let context = CallContext {
            service: self.service().to_owned(),
            verb: request.verb.clone(),
            correlation_id: request.reply_correlation_id(),
            deadline: Instant::now() + timeout,
            client,
        };
        let output = match &self.code {
            CellCode::Wasm(code) => {
                let output = executor
                    .invoke(code, &request.verb, request.payload.get(), context)
                    .await?;
                // Checked before it is parsed: text past the limit is refused unread.
                self.reply_limit.check(output.len())?;
                RawValue::from_string(output).map_err(RequestError::OutputNotJson)?
            }
            CellCode::Process(code) => code.invoke(request, context.deadline).await?,
            #[cfg(feature = "python")]
            CellCode::Python(code) => {
                let output = code
                    .invoke(&request.verb, &payload_value(request)?, context.deadline)
                    .await?;
                serde_json::value::to_raw_value(&output)
                    .map_err(RequestError::OutputNotEncodable)?
            }
        };
        if let Some(schema) = &verb.output {
            // Only a verb with an output schema builds the output as a value, and only
            // output already within the reply limit.
            let value: Value =
                serde_json::from_str(output.get()).map_err(RequestError::OutputNotJson)?;
            let violations = schema_violations(schema, &value);
            if !violations.is_empty() {
                return Err(RequestError::OutputSchema {
                    verb: request.verb.clone(),
                    violations,
                });
            }
        }
        Ok(output)
    }

    fn try_permit(&self) -> Result<OwnedSemaphorePermit, RequestError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| RequestError::Full {
                service: self.service().to_owned(),
                max_in_flight: self.max_in_flight(),
            })
    }

    fn verb_names(&self) -> String {
        let mut names: Vec<&str> = self.verbs.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

/// The payload of `request` as a value. [`RawRequest::parse`] bounded its nesting as
/// reading it does, so this fails only if the two disagree; a `bad_request` then too.
fn payload_value(request: &RawRequest) -> Result<Value, RequestError> {
    serde_json::from_str(request.payload.get()).map_err(|error| {
        RequestError::Envelope(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("request is not JSON: {error}"),
        ))
    })
}

/// Each failing location of `value`, as `{path, message}` with `path` a JSON pointer.
fn schema_violations(schema: &Validator, value: &Value) -> Vec<Value> {
    schema
        .iter_errors(value)
        .map(|error| {
            json!({
                "path": error.instance_path().as_str(),
                "message": error.to_string(),
            })
        })
        .collect()
}
