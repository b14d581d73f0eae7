//! The JetStream stream of a cell's durable verbs, as plain data. The NATS side
//! (`cellbus-control`) maps a [`StreamPlan`] onto its stream configuration, so this crate
//! needs no NATS types and the plan is tested here without a server.

use cellbus_contracts::resources::{CellSpec, Delivery};
use cellbus_contracts::subject;
use serde::Serialize;

use crate::Error;

/// The stream a cell with durable verbs needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Retention {
    /// Until a consumer acknowledges it, each message to one consumer: the pods of the
    /// pool share one durable consumer, so each request runs once.
    WorkQueue,
}

/// Where the stream keeps messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Storage {
    /// On disk, so accepted requests survive a NATS restart.
    File,
}

/// The stream a cell's durable verbs go through, or `None` for a cell without durable
/// verbs. The cell is expected to have passed validation, which makes `spec.stream`
/// present exactly when a verb is durable; a spec that slipped past it is an error here,
/// not a stream with made-up settings.
pub fn stream_config(cell: &CellSpec) -> Result<Option<StreamPlan>, Error> {
    if !cell.has_durable_verbs() {
        return Ok(None);
    }
    let service = &cell.service;
    let Some(stream) = &cell.stream else {
        return Err(Error::MissingStream {
            service: service.clone(),
        });
    };
    let subject_error = |source| Error::Subjects {
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
        replicas: stream.replicas,
    }))
}

/// `cbs.{service}.{verb}` of every verb of a cell, as its status lists them.
pub fn request_subjects(cell: &CellSpec) -> Result<Vec<String>, Error> {
    cell.verbs
        .iter()
        .map(|verb| subject::request_subject(&cell.service, &verb.name))
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Subjects {
            service: cell.service.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::CellFixture;
    use serde_json::json;

    #[test]
    fn a_durable_cell_gets_a_work_queue_stream_of_its_durable_subjects_only() {
        let cell = CellSpec::test()
            .durable_verb("ingest")
            .durable_verb("replay");
        let plan = stream_config(&cell).unwrap().unwrap();
        assert_eq!(
            plan,
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
        let mut cell = CellSpec::test().durable_verb("ingest").stream(json!({
            "maxAgeSeconds": 86_400,
            "maxBytes": 1_048_576,
            "duplicateWindowSeconds": 600,
            "replicas": 3,
        }));
        cell.service = "order-book".into();
        let plan = stream_config(&cell).unwrap().unwrap();
        assert_eq!(plan.name, "CBS_ORDER_BOOK");
        assert_eq!(plan.subjects, ["cbs.order-book.ingest"]);
        assert_eq!(plan.duplicate_window_seconds, 600);
        assert_eq!(plan.max_age_seconds, Some(86_400));
        assert_eq!(plan.max_bytes, Some(1_048_576));
        assert_eq!(plan.replicas, 3);
    }

    #[test]
    fn a_cell_without_durable_verbs_needs_no_stream() {
        assert_eq!(stream_config(&CellSpec::test()).unwrap(), None);
    }

    #[test]
    fn durable_verbs_without_a_stream_spec_are_an_error_not_a_guess() {
        let mut cell = CellSpec::test().durable_verb("ingest");
        cell.stream = None;
        let error = stream_config(&cell).unwrap_err();
        assert_eq!(
            error.to_string(),
            "service echo has durable verbs but no spec.stream"
        );
    }

    #[test]
    fn the_plan_serializes_in_camel_case_without_unset_limits() {
        let plan = stream_config(&CellSpec::test().durable_verb("ingest"))
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&plan).unwrap(),
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
        let cell = CellSpec::test().durable_verb("ingest");
        assert_eq!(
            request_subjects(&cell).unwrap(),
            ["cbs.echo.say", "cbs.echo.ingest"]
        );
    }
}
