//! A loaded cell and the path of one request through it: envelope, verb, in-flight limit,
//! input schema, the sandboxed call, output checks, reply. Every failure on the way is an
//! error envelope with its code; none stops the cell serving the next request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellbus_contracts::assignment::AssignedCell;
use cellbus_contracts::resources::Delivery;
use cellbus_contracts::wire::{ErrorBody, ErrorCode, Reply, Request};
use jiff::Timestamp;
use jsonschema::Validator;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// One verb, with its schemas compiled once per load.
struct Verb {
    input: Option<Validator>,
    output: Option<Validator>,
    timeout: Option<Duration>,
    durable: bool,
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
    pub fn new(spec: AssignedCell, code: CellCode) -> Result<Self, SchemaError> {
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
        Ok(Self {
            spec,
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

    /// Answers one request received on the subject of `verb`; refused with
    /// `resource_exhausted` when every in-flight permit is taken.
    pub async fn answer(
        &self,
        executor: &Executor,
        client: Option<async_nats::Client>,
        verb: &str,
        body: &[u8],
    ) -> Reply {
        self.answer_inner(None, executor, client, verb, body).await
    }

    /// [`LoadedCell::answer`] with a permit already taken from [`LoadedCell::permits`].
    pub async fn answer_with(
        &self,
        permit: OwnedSemaphorePermit,
        executor: &Executor,
        client: Option<async_nats::Client>,
        verb: &str,
        body: &[u8],
    ) -> Reply {
        self.answer_inner(Some(permit), executor, client, verb, body)
            .await
    }

    async fn answer_inner(
        &self,
        permit: Option<OwnedSemaphorePermit>,
        executor: &Executor,
        client: Option<async_nats::Client>,
        verb: &str,
        body: &[u8],
    ) -> Reply {
        let request = match Request::parse(body, self.service(), verb) {
            Ok(request) => request,
            Err(error) => return Reply::error_for_raw(body, error),
        };
        match self.run(permit, executor, client, &request).await {
            Ok(payload) => Reply::ok(&request, payload),
            Err(error) => Reply::error(&request, error),
        }
    }

    async fn run(
        &self,
        permit: Option<OwnedSemaphorePermit>,
        executor: &Executor,
        client: Option<async_nats::Client>,
        request: &Request,
    ) -> Result<Value, ErrorBody> {
        let Some(verb) = self.verbs.get(&request.verb) else {
            return Err(ErrorBody::new(
                ErrorCode::UnknownVerb,
                format!(
                    "{} has no verb {}; it answers {}",
                    self.service(),
                    request.verb,
                    self.verb_names()
                ),
            ));
        };
        let _permit = match permit {
            Some(permit) => permit,
            None => self.try_permit()?,
        };
        if let Some(schema) = &verb.input {
            let violations = schema_violations(schema, &request.payload);
            if !violations.is_empty() {
                return Err(ErrorBody::new(
                    ErrorCode::SchemaViolation,
                    format!(
                        "payload does not match the input schema of {}",
                        request.verb
                    ),
                )
                .with_details(json!(violations)));
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
                let payload = request.payload.to_string();
                let output = executor
                    .invoke(code, &request.verb, &payload, context)
                    .await?;
                serde_json::from_str(&output).map_err(|e| {
                    ErrorBody::new(
                        ErrorCode::CellFailed,
                        format!("the cell's output is not JSON: {e}"),
                    )
                })?
            }
            CellCode::Process(code) => code.invoke(request, context.deadline).await?,
            #[cfg(feature = "python")]
            CellCode::Python(code) => {
                code.invoke(&request.verb, &request.payload, context.deadline)
                    .await?
            }
        };
        if let Some(schema) = &verb.output {
            let violations = schema_violations(schema, &output);
            if !violations.is_empty() {
                return Err(ErrorBody::new(
                    ErrorCode::CellFailed,
                    format!(
                        "the cell's output does not match the output schema of {}",
                        request.verb
                    ),
                )
                .with_details(json!(violations)));
            }
        }
        Ok(output)
    }

    fn try_permit(&self) -> Result<OwnedSemaphorePermit, ErrorBody> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ErrorBody::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "{} is running as many requests as it may ({})",
                    self.service(),
                    self.max_in_flight()
                ),
            )
        })
    }

    fn verb_names(&self) -> String {
        let mut names: Vec<&str> = self.verbs.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
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
