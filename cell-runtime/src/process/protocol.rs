//! The JSON-lines protocol between the runtime and a process cell. The runtime writes one
//! request envelope per line to the process's stdin; the process writes one reply per line
//! to its stdout, carrying the `id` of the request it answers, in any order, several in
//! flight at once. stderr is free text for the logs.
//!
//! A request line is the wire request envelope (`id`, `correlationId`, `service`, `verb`,
//! `sentAt`, `timeoutMs` — what is left of the deadline — and `payload`). A reply line is
//! `{"id": ID, "ok": true, "payload": VALUE}` or `{"id": ID, "ok": false, "error": {"code":
//! …, "message": …, "details"?: …, "retryable"?: …}}`.

use cellbus_contracts::wire::{ErrorBody, ErrorCode, RawRequest};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

/// One reply line as a process writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyLine {
    id: Uuid,
    ok: bool,
    /// Kept as the text the process wrote: checked to be JSON, not built into a value.
    /// Present means present: `"payload": null` is the reply `null`.
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ErrorLine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorLine {
    code: ErrorCode,
    message: String,
    #[serde(default)]
    details: Option<Value>,
    #[serde(default)]
    retryable: Option<bool>,
}

fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(field).map(Some)
}

/// A reply line, understood.
#[derive(Debug)]
pub struct ProcessReply {
    pub id: Uuid,
    pub outcome: Result<Box<RawValue>, ErrorBody>,
}

/// Why a line from a process is not a reply.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("a line that is not a reply: {0}")]
    NotAReply(String),
    #[error("a reply with ok: true and no payload")]
    NoPayload,
    #[error("a reply with ok: false and no error")]
    NoError,
}

/// Reads one line (without its newline) a process wrote.
pub fn parse_reply(line: &[u8]) -> Result<ProcessReply, LineError> {
    let reply: ReplyLine =
        serde_json::from_slice(line).map_err(|e| LineError::NotAReply(e.to_string()))?;
    let outcome = if reply.ok {
        Ok(reply.payload.ok_or(LineError::NoPayload)?)
    } else {
        let error = reply.error.ok_or(LineError::NoError)?;
        let mut body = ErrorBody::new(error.code, error.message);
        body.details = error.details;
        if let Some(retryable) = error.retryable {
            body.retryable = retryable;
        }
        Err(body)
    };
    Ok(ProcessReply {
        id: reply.id,
        outcome,
    })
}

/// The line (with its newline) that asks a process to run `request`, under the id `id`
/// (the runtime's own, so that a request delivered twice never has two answers matched to
/// it), with `remaining_ms` of its deadline left.
pub fn request_line(request: &RawRequest, id: Uuid, remaining_ms: u64) -> Vec<u8> {
    let mut envelope = request.clone();
    envelope.correlation_id = Some(request.reply_correlation_id());
    envelope.id = id;
    envelope.timeout_ms = Some(remaining_ms.max(1));
    let mut line = serde_json::to_vec(&envelope).expect("a request envelope serializes");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    const ID: &str = "2f1d7a4e-9c1b-4a51-8f6e-0d7c3b2a1e90";

    #[test]
    fn an_ok_reply_carries_its_payload() {
        let reply =
            parse_reply(format!(r#"{{"id":"{ID}","ok":true,"payload":{{"n":1}}}}"#).as_bytes())
                .unwrap();
        assert_eq!(reply.id.to_string(), ID);
        assert_eq!(reply.outcome.unwrap().get(), r#"{"n":1}"#);
    }

    #[test]
    fn a_null_payload_is_the_reply_null() {
        let reply =
            parse_reply(format!(r#"{{"id":"{ID}","ok":true,"payload":null}}"#).as_bytes()).unwrap();
        assert_eq!(reply.outcome.unwrap().get(), "null");
    }

    #[test]
    fn an_error_reply_keeps_code_details_and_retryable() {
        let line = format!(
            r#"{{"id":"{ID}","ok":false,"error":{{"code":"unavailable","message":"db down","details":{{"a":1}},"retryable":false}}}}"#
        );
        let error = parse_reply(line.as_bytes()).unwrap().outcome.unwrap_err();
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert_eq!(error.message, "db down");
        assert_eq!(error.details, Some(json!({"a": 1})));
        assert!(!error.retryable);
        let defaulted =
            format!(r#"{{"id":"{ID}","ok":false,"error":{{"code":"timeout","message":"slow"}}}}"#);
        assert!(
            parse_reply(defaulted.as_bytes())
                .unwrap()
                .outcome
                .unwrap_err()
                .retryable
        );
    }

    #[rstest]
    #[case::not_json("hello")]
    #[case::no_id(r#"{"ok":true,"payload":1}"#)]
    #[case::bad_id(r#"{"id":"nope","ok":true,"payload":1}"#)]
    #[case::unknown_field(
        r#"{"id":"2f1d7a4e-9c1b-4a51-8f6e-0d7c3b2a1e90","ok":true,"payload":1,"extra":2}"#
    )]
    #[case::unknown_code(r#"{"id":"2f1d7a4e-9c1b-4a51-8f6e-0d7c3b2a1e90","ok":false,"error":{"code":"oops","message":"x"}}"#)]
    #[case::ok_without_payload(r#"{"id":"2f1d7a4e-9c1b-4a51-8f6e-0d7c3b2a1e90","ok":true}"#)]
    #[case::error_without_error(r#"{"id":"2f1d7a4e-9c1b-4a51-8f6e-0d7c3b2a1e90","ok":false}"#)]
    fn lines_that_are_not_replies_are_refused(#[case] line: &str) {
        assert!(parse_reply(line.as_bytes()).is_err(), "{line}");
    }

    #[test]
    fn the_request_line_is_the_envelope_under_the_runtimes_id() {
        let request: RawRequest = serde_json::from_value(json!({
            "id": ID, "service": "echo", "verb": "say",
            "sentAt": "2026-12-01T10:00:00Z", "payload": {"text": "hi"}
        }))
        .unwrap();
        let id = Uuid::new_v4();
        let line = request_line(&request, id, 900);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let sent: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(sent["id"], json!(id.to_string()));
        assert_eq!(sent["correlationId"], json!(ID));
        assert_eq!(sent["timeoutMs"], json!(900));
        assert_eq!(sent["payload"], json!({"text": "hi"}));
    }
}
