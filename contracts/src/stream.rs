//! The JetStream stream of a cell's durable verbs, as plain data. The NATS side
//! (`cellbus-control`) maps a [`StreamPlan`] onto its stream configuration; the operator
//! and `cellbus up` both derive plans here, so the same Cell gets the same stream.

use crate::resources::{CellSpec, Delivery};
use crate::subject;
use serde::{Deserialize, Serialize};

/// Why a cell's stream cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum StreamPlanError {
    #[error("service {service} has durable verbs but no spec.stream")]
    MissingStream { service: String },
    #[error("subjects of service {service}")]
    Subjects {
        service: String,
        #[source]
        source: subject::SubjectError,
    },
}

/// The stream a cell with durable verbs needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPlan {
    /// `CBS_{SERVICE}`.
    pub name: String,
    /// `cbs.{service}.{verb}` of each durable verb, in the order the cell lists them. Only
    /// these: a request verb's subject in the stream would be captured and run twice.
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub storage: Storage,
    /// Window in which a request published again with the same `Nats-Msg-Id` (the
    /// envelope id) is dropped.
    pub duplicate_window_seconds: u32,
    /// Oldest message kept; none keeps messages until they are acknowledged (the server
    /// takes 0 for that).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
    /// Most bytes kept; none means only the server's limit (the server takes -1 for that).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
    /// Copies of each message in a clustered NATS.
    pub replicas: u8,
}

/// How long the stream keeps a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Retention {
    /// Until a consumer acknowledges it, each message to one consumer: the pods of the
    /// pool share one durable consumer, so each request runs once.
    WorkQueue,
}

/// Where the stream keeps messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Storage {
    /// On disk, so accepted requests survive a NATS restart.
    File,
}

/// The stream a cell's durable verbs go through, or `None` for a cell without durable
/// verbs. The cell is expected to have passed validation, which makes `spec.stream`
/// present exactly when a verb is durable; a spec that slipped past it is an error here,
/// not a stream with made-up settings.
pub fn stream_plan(cell: &CellSpec) -> Result<Option<StreamPlan>, StreamPlanError> {
    stream_plan_with(cell, 1)
}

/// The same, with `replicas` copies where the Cell's `spec.stream.replicas` says none: the
/// operator's and `cellbus up`'s `--replicas`.
pub fn stream_plan_with(
    cell: &CellSpec,
    replicas: u8,
) -> Result<Option<StreamPlan>, StreamPlanError> {
    if !cell.has_durable_verbs() {
        return Ok(None);
    }
    let service = &cell.service;
    let Some(stream) = &cell.stream else {
        return Err(StreamPlanError::MissingStream {
            service: service.clone(),
        });
    };
    let subject_error = |source| StreamPlanError::Subjects {
        service: service.clone(),
        source,
    };
    let subjects = cell
        .verbs
        .iter()
        .filter(|verb| verb.delivery == Delivery::Durable)
        .map(|verb| subject::request_subject(service, &verb.name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(subject_error)?;
    Ok(Some(StreamPlan {
        name: subject::stream_name(service).map_err(subject_error)?,
        subjects,
        retention: Retention::WorkQueue,
        storage: Storage::File,
        duplicate_window_seconds: stream.duplicate_window_seconds,
        max_age_seconds: stream.max_age_seconds,
        max_bytes: stream.max_bytes,
        replicas: stream.replicas.unwrap_or(replicas),
    }))
}

/// `cbs.{service}.{verb}` of every verb of a cell, as its status lists them.
pub fn request_subjects(cell: &CellSpec) -> Result<Vec<String>, StreamPlanError> {
    cell.verbs
        .iter()
        .map(|verb| subject::request_subject(&cell.service, &verb.name))
        .collect::<Result<_, _>>()
        .map_err(|source| StreamPlanError::Subjects {
            service: cell.service.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cell(extra: serde_json::Value) -> CellSpec {
        let mut spec = json!({
            "service": "echo",
            "verbs": [{"name": "say"}],
            "module": {"digest": format!("sha256:{}", "a".repeat(64))},
        });
        if let (serde_json::Value::Object(spec), serde_json::Value::Object(extra)) =
            (&mut spec, extra)
        {
            spec.extend(extra);
        }
        serde_json::from_value(spec).unwrap()
    }

    fn durable() -> CellSpec {
        cell(json!({
            "verbs": [{"name": "say"}, {"name": "ingest", "delivery": "durable"}, {"name": "replay", "delivery": "durable"}],
            "stream": {},
        }))
    }

    #[test]
    fn a_durable_cell_gets_a_work_queue_stream_of_its_durable_subjects_only() {
        assert_eq!(
            stream_plan(&durable()).unwrap().unwrap(),
            StreamPlan {
                name: "CBS_ECHO".into(),
                // Not cbs.echo.say: a request verb's subject must stay out of the stream.
                subjects: vec!["cbs.echo.ingest".into(), "cbs.echo.replay".into()],
                retention: Retention::WorkQueue,
                storage: Storage::File,
                duplicate_window_seconds: 120,
                max_age_seconds: None,
                max_bytes: None,
                replicas: 1,
            }
        );
    }

    #[test]
    fn stream_limits_come_from_the_cell_spec() {
        let spec = cell(json!({
            "service": "order-book",
            "verbs": [{"name": "ingest", "delivery": "durable"}],
            "stream": {"maxAgeSeconds": 86_400, "maxBytes": 1_048_576, "duplicateWindowSeconds": 600, "replicas": 3},
        }));
        let plan = stream_plan(&spec).unwrap().unwrap();
        assert_eq!(plan.name, "CBS_ORDER_BOOK");
        assert_eq!(plan.subjects, ["cbs.order-book.ingest"]);
        assert_eq!(plan.duplicate_window_seconds, 600);
        assert_eq!(plan.max_age_seconds, Some(86_400));
        assert_eq!(plan.max_bytes, Some(1_048_576));
        assert_eq!(plan.replicas, 3);
    }

    #[test]
    fn a_cell_without_durable_verbs_needs_no_stream() {
        assert_eq!(stream_plan(&cell(json!({}))).unwrap(), None);
    }

    #[test]
    fn durable_verbs_without_a_stream_spec_are_an_error_not_a_guess() {
        let mut spec = durable();
        spec.stream = None;
        assert_eq!(
            stream_plan(&spec).unwrap_err().to_string(),
            "service echo has durable verbs but no spec.stream"
        );
    }

    #[test]
    fn the_plan_serializes_in_camel_case_without_unset_limits() {
        let spec =
            cell(json!({"verbs": [{"name": "ingest", "delivery": "durable"}], "stream": {}}));
        assert_eq!(
            serde_json::to_value(stream_plan(&spec).unwrap().unwrap()).unwrap(),
            json!({
                "name": "CBS_ECHO",
                "subjects": ["cbs.echo.ingest"],
                "retention": "workQueue",
                "storage": "file",
                "duplicateWindowSeconds": 120,
                "replicas": 1,
            })
        );
    }

    #[test]
    fn request_subjects_list_every_verb() {
        assert_eq!(
            request_subjects(&durable()).unwrap(),
            ["cbs.echo.say", "cbs.echo.ingest", "cbs.echo.replay"]
        );
    }
}
