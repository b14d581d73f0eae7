//! The rules a schema cannot state: relations between fields, between a Cell and its
//! pool, and whether an embedded JSON Schema is one. The operator and `cellbus up` both
//! call these, so a manifest is judged the same in a cluster and on a laptop. Every error
//! names the field it is about, as a path from the object root (`spec.verbs[1].name`).

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::quantity;
use crate::resources::{
    steers_the_loader, CellPoolSpec, CellSpec, Delivery, Runtime, SandboxLimits,
};
use crate::subject;

/// One rule a field breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field from the object root, such as `spec.verbs[0].input`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every rule an object breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<FieldError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects errors and turns them into a result.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// Checks a Cell spec on its own.
pub fn cell(spec: &CellSpec) -> Result<(), Invalid> {
    let mut errors = Errors::default();
    if let Err(error) = subject::check_service(&spec.service) {
        errors.add("spec.service", error.to_string());
    }

    let mut seen = BTreeSet::new();
    for (i, verb) in spec.verbs.iter().enumerate() {
        let at = format!("spec.verbs[{i}]");
        if let Err(error) = subject::check_verb(&verb.name) {
            errors.add(format!("{at}.name"), error.to_string());
        }
        if !seen.insert(verb.name.as_str()) {
            errors.add(
                format!("{at}.name"),
                format!("verb `{}` is listed twice", verb.name),
            );
        }
        for (field, schema) in [("input", &verb.input), ("output", &verb.output)] {
            if let Some(schema) = schema {
                if let Err(message) = check_json_schema(schema) {
                    errors.add(format!("{at}.{field}"), message);
                }
            }
        }
        if let Some(retry) = &verb.retry {
            if verb.delivery != Delivery::Durable {
                errors.add(
                    format!("{at}.retry"),
                    "retry applies to durable verbs only; set delivery: durable or remove retry",
                );
            }
            if retry.backoff_ms.len() >= retry.max_deliver as usize {
                errors.add(
                    format!("{at}.retry.backoffMs"),
                    format!(
                        "{} backoff entries need maxDeliver above {}",
                        retry.backoff_ms.len(),
                        retry.backoff_ms.len()
                    ),
                );
            }
        }
    }

    match (&spec.stream, spec.has_durable_verbs()) {
        (None, true) => errors.add("spec.stream", "a durable verb needs spec.stream"),
        (Some(_), false) => errors.add(
            "spec.stream",
            "spec.stream is set but no verb has delivery: durable",
        ),
        (Some(stream), true) => {
            if let Some(max_age) = stream.max_age_seconds {
                if u64::from(stream.duplicate_window_seconds) > max_age {
                    errors.add(
                        "spec.stream.duplicateWindowSeconds",
                        format!(
                            "duplicate window of {}s is longer than maxAgeSeconds ({max_age}s)",
                            stream.duplicate_window_seconds
                        ),
                    );
                }
            }
        }
        (None, false) => {}
    }

    let module = &spec.module;
    if module.digest.is_none() && module.command.is_none() {
        errors.add(
            "spec.module.digest",
            "module needs a digest (or, for process cells, a command)",
        );
    }
    if module.url.is_some() && module.command.is_some() {
        errors.add(
            "spec.module.url",
            "module takes a url or a command, not both",
        );
    }
    if let Some(command) = &module.command {
        if command
            .first()
            .is_none_or(|program| program.trim().is_empty())
        {
            errors.add("spec.module.command", "command needs a program to run");
        }
    }

    if let Some(limits) = &spec.limits {
        check_limits("spec.limits", limits, &mut errors);
    }
    for (i, pattern) in spec.capabilities.call.iter().enumerate() {
        if let Err(error) = subject::check_subject_pattern(pattern) {
            errors.add(format!("spec.capabilities.call[{i}]"), error.to_string());
        }
    }
    let mut names = BTreeSet::new();
    for (i, var) in spec.env.iter().enumerate() {
        if !names.insert(var.name.as_str()) {
            errors.add(
                format!("spec.env[{i}].name"),
                format!("`{}` is set twice", var.name),
            );
        }
        if steers_the_loader(&var.name) {
            errors.add(
                format!("spec.env[{i}].name"),
                format!(
                    "`{}` steers the dynamic loader; a cell may not set it",
                    var.name
                ),
            );
        }
    }
    if let Some(network) = &spec.capabilities.network {
        if !network.allow.is_empty() {
            errors.add(
                "spec.capabilities.network.allow",
                "network.allow (host:port) is not enforced yet; grant egress: true or leave network out",
            );
        }
    }
    if let Some(rotation) = spec.database.as_ref().and_then(|d| d.rotation.as_ref()) {
        if rotation.period().is_none() {
            errors.add(
                "spec.database.rotation.every",
                format!(
                    "`{}` is not a period of whole hours from 1h to 8760h, such as 720h",
                    rotation.every
                ),
            );
        }
    }
    if let Some(schema) = spec.database_schema() {
        if schema == "public" || schema == "information_schema" || schema.starts_with("pg_") {
            errors.add(
                "spec.database.schema",
                format!(
                    "`{schema}` is shared by the whole database; name a schema of the cell's own"
                ),
            );
        }
    }
    errors.finish()
}

/// Checks a CellPool spec on its own.
pub fn pool(spec: &CellPoolSpec) -> Result<(), Invalid> {
    let mut errors = Errors::default();
    check_limits("spec.sandbox", &spec.sandbox, &mut errors);
    if let Some(trust) = &spec.trust {
        if trust.keys.is_empty()
            && trust.certificate_authorities.is_empty()
            && trust.from.is_empty()
        {
            errors.add(
                "spec.trust",
                "a trust lists at least one key, certificate authority or source",
            );
        }
        for (index, source) in trust.from.iter().enumerate() {
            if source.config_map_key_ref.is_some() == source.secret_key_ref.is_some() {
                errors.add(
                    format!("spec.trust.from[{index}]"),
                    "a trust source is a configMapKeyRef or a secretKeyRef",
                );
            }
        }
        if let Some(signers) = &trust.signers {
            if trust.certificate_authorities.is_empty() && trust.from.is_empty() {
                errors.add(
                    "spec.trust.signers",
                    "signers constrain certificates; list the certificateAuthorities that issue them",
                );
            }
            if signers.common_names.is_empty() && signers.subject_alt_names.is_empty() {
                errors.add(
                    "spec.trust.signers",
                    "signers name at least one common name or subject alternative name",
                );
            }
        }
    }
    errors.finish()
}

/// Checks that the pool `pool_name` can run the cell: same runtime and OS, limits within
/// the pool's, a module the runtime can load. Signatures are the
/// [`Verifier`](crate::manifest::Verifier)'s.
pub fn cell_in_pool(cell: &CellSpec, pool_name: &str, pool: &CellPoolSpec) -> Result<(), Invalid> {
    let mut errors = Errors::default();
    if let Some(runtime) = cell.runtime.filter(|r| *r != pool.runtime) {
        errors.add(
            "spec.runtime",
            format!(
                "cell needs runtime {} but pool {pool_name} runs {}",
                runtime.as_str(),
                pool.runtime.as_str()
            ),
        );
    }
    if let Some(os) = cell.os.filter(|os| *os != pool.os) {
        errors.add(
            "spec.os",
            format!(
                "cell needs OS {} but pool {pool_name} runs on {}",
                os.as_str(),
                pool.os.as_str()
            ),
        );
    }
    if cell.capabilities.network.is_some() && pool.runtime != Runtime::Process {
        errors.add(
            "spec.capabilities.network",
            format!(
                "network is granted to process cells, whose sandbox holds it back otherwise; \
                 pool {pool_name} runs {} cells",
                pool.runtime.as_str()
            ),
        );
    }
    match (pool.runtime, &cell.module.command) {
        (Runtime::Process, _) => {}
        (runtime, Some(_)) => errors.add(
            "spec.module.command",
            format!(
                "a command runs in process pools only; pool {pool_name} runs {}",
                runtime.as_str()
            ),
        ),
        (_, None) => {}
    }
    if let Some(limits) = &cell.limits {
        check_within("spec.limits", limits, &pool.sandbox, pool_name, &mut errors);
    }
    if let Some(ceiling) = pool.sandbox.timeout_ms {
        for (i, verb) in cell.verbs.iter().enumerate() {
            if let Some(timeout) = verb.timeout_ms.filter(|t| *t > ceiling) {
                errors.add(
                    format!("spec.verbs[{i}].timeoutMs"),
                    format!("{timeout} is above the {ceiling} ms pool {pool_name} allows"),
                );
            }
        }
    }
    errors.finish()
}

/// Compiles an embedded JSON Schema (draft 2020-12 unless it names another `$schema`).
fn check_json_schema(schema: &Map<String, Value>) -> Result<(), String> {
    jsonschema::validator_for(&Value::Object(schema.clone()))
        .map(drop)
        .map_err(|error| format!("not a JSON Schema: {error}"))
}

fn check_limits(at: &str, limits: &SandboxLimits, errors: &mut Errors) {
    if let Some(memory) = &limits.memory {
        if let Err(error) = quantity::memory_bytes(memory) {
            errors.add(format!("{at}.memory"), error.to_string());
        }
    }
    if let Some(cpu) = &limits.cpu {
        if let Err(error) = quantity::cpu_millis(cpu) {
            errors.add(format!("{at}.cpu"), error.to_string());
        }
    }
}

fn check_within(
    at: &str,
    cell: &SandboxLimits,
    pool: &SandboxLimits,
    pool_name: &str,
    errors: &mut Errors,
) {
    let mut above = |field: &str, wanted: String, allowed: String| {
        errors.add(
            format!("{at}.{field}"),
            format!("{wanted} is above the {allowed} pool {pool_name} allows"),
        );
    };
    if let (Some(want), Some(allow)) = (&cell.memory, &pool.memory) {
        if let (Ok(w), Ok(a)) = (quantity::memory_bytes(want), quantity::memory_bytes(allow)) {
            if w > a {
                above("memory", want.clone(), allow.clone());
            }
        }
    }
    if let (Some(want), Some(allow)) = (&cell.cpu, &pool.cpu) {
        if let (Ok(w), Ok(a)) = (quantity::cpu_millis(want), quantity::cpu_millis(allow)) {
            if w > a {
                above("cpu", want.clone(), allow.clone());
            }
        }
    }
    if let (Some(w), Some(a)) = (cell.timeout_ms, pool.timeout_ms) {
        if w > a {
            above("timeoutMs", format!("{w} ms"), format!("{a} ms"));
        }
    }
    if let (Some(w), Some(a)) = (cell.fuel, pool.fuel) {
        if w > a {
            above("fuel", w.to_string(), a.to_string());
        }
    }
    if let (Some(w), Some(a)) = (cell.max_in_flight, pool.max_in_flight) {
        if w > a {
            above("maxInFlight", w.to_string(), a.to_string());
        }
    }
    if let (Some(w), Some(a)) = (cell.max_reply_bytes, pool.max_reply_bytes) {
        if w > a {
            above("maxReplyBytes", format!("{w} bytes"), format!("{a} bytes"));
        }
    }
}
