//! The JSON envelopes on `cbs.{service}.{verb}`: the request, the reply (success or
//! error) and the closed set of error codes. Constructors apply the correlation rule, so
//! no caller computes a reply's `correlationId` by hand: it is the request's
//! `correlationId`, or the request's `id` when it had none.

use std::collections::BTreeMap;

use jiff::Timestamp;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use crate::subject::{self, SubjectError};

/// NATS header names the envelopes travel with.
pub mod headers {
    /// W3C trace context of the caller.
    pub const TRACEPARENT: &str = "traceparent";
    /// JetStream de-duplication key: the envelope id, so a resend is not run twice.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Where the reply to a durable request goes: the subject its caller waits on.
    pub const REPLY_TO: &str = "Cbs-Reply-To";
}

/// A request envelope, with its payload as a JSON value.
pub type Request = Envelope<Value>;

/// A request envelope with its payload kept as the text it arrived as: what a cell that
/// takes JSON text is given, with no value built from it and printed again.
pub type RawRequest = Envelope<Box<RawValue>>;

/// A request envelope; `P` holds the payload ([`Request`], [`RawRequest`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "Request", description = "A request envelope.")]
pub struct Envelope<P = Value> {
    /// Unique id of this request, a UUID v4.
    pub id: Uuid,
    /// Id of the conversation this request belongs to; replies carry it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// Service addressed; must match the subject.
    pub service: String,
    /// Verb addressed; must match the subject.
    pub verb: String,
    /// When the caller sent the request (RFC 3339).
    pub sent_at: Timestamp,
    /// How long the caller waits for the reply, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// The verb's input.
    pub payload: P,
    /// Free-form string metadata passed through to the cell.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl Request {
    /// A new request with a fresh v4 id, sent now.
    pub fn new(service: impl Into<String>, verb: impl Into<String>, payload: Value) -> Self {
        Self {
            id: Uuid::new_v4(),
            correlation_id: None,
            service: service.into(),
            verb: verb.into(),
            sent_at: Timestamp::now(),
            timeout_ms: None,
            payload,
            meta: BTreeMap::new(),
        }
    }
}

impl Request {
    /// Reads a request received on the subject of `service` and `verb`. Anything that is
    /// not such an envelope is a `bad_request` error naming what is wrong.
    pub fn parse(bytes: &[u8], service: &str, verb: &str) -> Result<Self, ErrorBody> {
        Self::parse_envelope(bytes, service, verb)
    }
}

/// How deep a payload may nest: serde_json reads 127 levels, one of which is the
/// envelope, so that a payload kept as text is refused exactly when one read as a value
/// would be.
pub const MAX_PAYLOAD_DEPTH: usize = 126;

impl RawRequest {
    /// [`Request::parse`], keeping the payload as text. Its nesting is bounded as a
    /// value's would be: a cell never gets input its caller could not have had parsed.
    pub fn parse(bytes: &[u8], service: &str, verb: &str) -> Result<Self, ErrorBody> {
        let request = Self::parse_envelope(bytes, service, verb)?;
        if nesting_depth(request.payload.get()) > MAX_PAYLOAD_DEPTH {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!(
                    "request is not JSON: its payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"
                ),
            ));
        }
        Ok(request)
    }
}

/// The deepest nesting of arrays and objects in `json`, which is valid JSON.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    deepest
}

impl<P> Envelope<P> {
    /// Continues the conversation `correlation_id` (a request made while serving another).
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    /// The correlation id a reply to this request carries.
    pub fn reply_correlation_id(&self) -> Uuid {
        self.correlation_id.unwrap_or(self.id)
    }

    /// The subject this request is published on.
    pub fn subject(&self) -> Result<String, SubjectError> {
        subject::request_subject(&self.service, &self.verb)
    }

    /// An envelope of the subject of `service` and `verb`, or the `bad_request` error
    /// naming what is wrong.
    fn parse_envelope(bytes: &[u8], service: &str, verb: &str) -> Result<Self, ErrorBody>
    where
        P: serde::de::DeserializeOwned,
    {
        let request: Self = serde_json::from_slice(bytes).map_err(|error| {
            let what = if serde_json::from_slice::<Value>(bytes).is_err() {
                "not JSON"
            } else {
                "not a request envelope"
            };
            ErrorBody::new(ErrorCode::BadRequest, format!("request is {what}: {error}"))
        })?;
        if request.id.get_version() != Some(uuid::Version::Random) {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("request id {} is not a UUID v4", request.id),
            ));
        }
        if request.timeout_ms == Some(0) {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "timeoutMs must be at least 1 (leave it out to use the verb's deadline)",
            ));
        }
        if request.service != service || request.verb != verb {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!(
                    "envelope addresses {}.{} but arrived on the subject of {service}.{verb}",
                    request.service, request.verb
                ),
            ));
        }
        Ok(request)
    }
}

/// A reply: `{"ok": true, "payload"}` or `{"ok": false, "error"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Reply {
    Ok(OkReply),
    Err(ErrorReply),
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OkReply {
    /// Unique id of this reply, a UUID v4.
    pub id: Uuid,
    /// The request's correlationId, or its id when it had none.
    pub correlation_id: Uuid,
    /// Always `true`.
    pub ok: Flag<true>,
    /// The verb's output.
    pub payload: Value,
}

/// An error reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorReply {
    /// Unique id of this reply, a UUID v4.
    pub id: Uuid,
    /// The request's correlationId, or its id when it had none; the nil UUID when the
    /// request was unreadable and carried no id.
    pub correlation_id: Uuid,
    /// Always `false`.
    pub ok: Flag<false>,
    /// What went wrong.
    pub error: ErrorBody,
}

impl Reply {
    /// The success reply to `request`.
    pub fn ok<P>(request: &Envelope<P>, payload: Value) -> Self {
        Self::Ok(OkReply {
            id: Uuid::new_v4(),
            correlation_id: request.reply_correlation_id(),
            ok: Flag,
            payload,
        })
    }

    /// The error reply to `request`.
    pub fn error<P>(request: &Envelope<P>, error: ErrorBody) -> Self {
        Self::error_correlated(request.reply_correlation_id(), error)
    }

    /// The error reply to bytes that did not parse as a request: correlated with whatever
    /// id they carry (`correlationId`, else `id`), or the nil UUID. Only those two fields
    /// are read; the rest is skipped without being built, so refusing a large request
    /// costs a scan of it and no allocation of its size.
    pub fn error_for_raw(raw: &[u8], error: ErrorBody) -> Self {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Ids<'a> {
            #[serde(default, borrow)]
            id: Option<&'a str>,
            #[serde(default, borrow)]
            correlation_id: Option<&'a str>,
        }
        let readable = serde_json::from_slice::<Ids>(raw).ok().and_then(|ids| {
            [ids.correlation_id, ids.id]
                .into_iter()
                .find_map(|id| id?.parse::<Uuid>().ok())
        });
        Self::error_correlated(readable.unwrap_or(Uuid::nil()), error)
    }

    /// The encoded success reply to `request` around `payload`, JSON text taken as the
    /// cell wrote it: the same bytes a [`Reply::ok`] would serialize to, without building
    /// the payload as a value.
    pub fn encode_ok<P>(request: &Envelope<P>, payload: &RawValue) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct RawOkReply<'a> {
            id: Uuid,
            correlation_id: Uuid,
            ok: Flag<true>,
            payload: &'a RawValue,
        }
        serde_json::to_vec(&RawOkReply {
            id: Uuid::new_v4(),
            correlation_id: request.reply_correlation_id(),
            ok: Flag,
            payload,
        })
        .expect("a reply envelope serializes")
    }

    fn error_correlated(correlation_id: Uuid, error: ErrorBody) -> Self {
        Self::Err(ErrorReply {
            id: Uuid::new_v4(),
            correlation_id,
            ok: Flag,
            error,
        })
    }

    pub fn id(&self) -> Uuid {
        match self {
            Self::Ok(r) => r.id,
            Self::Err(r) => r.id,
        }
    }

    pub fn correlation_id(&self) -> Uuid {
        match self {
            Self::Ok(r) => r.correlation_id,
            Self::Err(r) => r.correlation_id,
        }
    }

    pub fn into_result(self) -> Result<Value, ErrorBody> {
        match self {
            Self::Ok(r) => Ok(r.payload),
            Self::Err(r) => Err(r.error),
        }
    }
}

/// The error of an error reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorBody {
    /// One of the closed set of error codes.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// Structured detail, such as the failing schema paths of a `schema_violation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// Whether the same request may succeed if sent again.
    pub retryable: bool,
}

impl ErrorBody {
    /// An error whose `retryable` is the code's default.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            retryable: code.retryable_by_default(),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
}

/// The closed set of error codes a reply can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an envelope, or service/verb in the body differ from the subject.
    BadRequest,
    /// The payload does not match the verb's input schema; details list the failing paths.
    SchemaViolation,
    /// The service has no such verb.
    UnknownVerb,
    /// The cell is not loaded or is draining.
    Unavailable,
    /// The deadline passed before the cell answered.
    Timeout,
    /// A limit was hit: fuel, memory, payload size or in-flight requests.
    ResourceExhausted,
    /// The cell trapped, crashed or returned output that breaks its output schema.
    CellFailed,
    /// The cell lacks the capability it tried to use.
    Forbidden,
    /// A fault in Cellbus itself.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        Self::BadRequest,
        Self::SchemaViolation,
        Self::UnknownVerb,
        Self::Unavailable,
        Self::Timeout,
        Self::ResourceExhausted,
        Self::CellFailed,
        Self::Forbidden,
        Self::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::SchemaViolation => "schema_violation",
            Self::UnknownVerb => "unknown_verb",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::ResourceExhausted => "resource_exhausted",
            Self::CellFailed => "cell_failed",
            Self::Forbidden => "forbidden",
            Self::Internal => "internal",
        }
    }

    /// Transient conditions are worth a retry; a request that is wrong stays wrong.
    pub const fn retryable_by_default(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::Timeout | Self::ResourceExhausted
        )
    }
}

/// A boolean that is always `B`: the `ok` discriminator of a reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flag<const B: bool>;

impl<const B: bool> Serialize for Flag<B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(B)
    }
}

impl<'de, const B: bool> Deserialize<'de> for Flag<B> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if bool::deserialize(deserializer)? == B {
            Ok(Flag)
        } else {
            Err(serde::de::Error::custom(format_args!("expected `{B}`")))
        }
    }
}

impl<const B: bool> JsonSchema for Flag<B> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        if B { "True" } else { "False" }.into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({ "type": "boolean", "const": B })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    /// An envelope whose payload nests `depth` arrays, after a string full of brackets.
    fn nested(depth: usize) -> Vec<u8> {
        let payload = format!(
            r#"{{"noise":"[[{{\\\"]]","deep":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        format!(
            r#"{{"id":"{}","service":"echo","verb":"say","sentAt":"2026-01-01T00:00:00Z","payload":{payload}}}"#,
            Uuid::new_v4()
        )
        .into_bytes()
    }

    #[test]
    fn a_payload_kept_as_text_is_refused_at_the_depth_a_value_is() {
        for depth in 120..135 {
            let body = nested(depth);
            let as_value = Request::parse(&body, "echo", "say");
            let as_text = RawRequest::parse(&body, "echo", "say");
            assert_eq!(
                as_value.is_ok(),
                as_text.is_ok(),
                "depth {depth}: {as_value:?} / {as_text:?}"
            );
            if let Err(error) = as_text {
                assert_eq!(error.code, ErrorCode::BadRequest);
            }
        }
        let kept = RawRequest::parse(&nested(3), "echo", "say").unwrap();
        let value = Request::parse(&nested(3), "echo", "say").unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(kept.payload.get()).unwrap(),
            value.payload
        );
    }

    #[test]
    fn reply_correlates_with_the_request_id_when_the_request_has_no_correlation_id() {
        let request = Request::new("echo", "say", json!({"text": "hi"}));
        let reply = Reply::ok(&request, json!({"text": "hi"}));
        assert_eq!(reply.correlation_id(), request.id);
        assert_ne!(reply.id(), request.id);
        assert_eq!(reply.id().get_version(), Some(uuid::Version::Random));
    }

    #[test]
    fn reply_carries_the_request_correlation_id_when_present() {
        let conversation = Uuid::new_v4();
        let request = Request::new("echo", "say", json!(1)).with_correlation_id(conversation);
        let error = Reply::error(&request, ErrorBody::new(ErrorCode::Timeout, "late"));
        assert_eq!(error.correlation_id(), conversation);
    }

    #[test]
    fn envelopes_serialize_in_camel_case_with_the_ok_discriminator() {
        let request = Request::new("echo", "say", json!({"text": "hi"})).with_timeout_ms(500);
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(value["timeoutMs"], 500);
        assert!(value.get("sentAt").unwrap().is_string());
        assert!(value.get("correlationId").is_none());

        let ok = serde_json::to_value(Reply::ok(&request, json!(7))).unwrap();
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["payload"], 7);
        assert_eq!(ok["correlationId"], json!(request.id));

        let err = serde_json::to_value(Reply::error(
            &request,
            ErrorBody::new(ErrorCode::SchemaViolation, "bad").with_details(json!(["/text"])),
        ))
        .unwrap();
        assert_eq!(err["ok"], false);
        assert_eq!(err["error"]["code"], "schema_violation");
        assert_eq!(err["error"]["retryable"], false);
        assert_eq!(err["error"]["details"], json!(["/text"]));
    }

    #[test]
    fn replies_round_trip_and_the_ok_flag_decides_the_variant() {
        let request = Request::new("echo", "say", json!(null));
        for reply in [
            Reply::ok(&request, json!({"a": 1})),
            Reply::error(&request, ErrorBody::new(ErrorCode::Internal, "boom")),
        ] {
            let text = serde_json::to_string(&reply).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
        }
        let lying = json!({"id": Uuid::new_v4(), "correlationId": Uuid::new_v4(), "ok": false, "payload": 1});
        assert!(serde_json::from_value::<Reply>(lying).is_err());
    }

    #[test]
    fn a_reply_encoded_around_raw_json_reads_back_as_the_same_reply() {
        let request = Request::new("echo", "say", json!(null));
        let payload =
            serde_json::value::RawValue::from_string(r#"{"a": [1, 2.5, "x"]}"#.into()).unwrap();
        let encoded = Reply::encode_ok(&request, &payload);
        let Reply::Ok(reply) = serde_json::from_slice::<Reply>(&encoded).unwrap() else {
            panic!("not an ok reply");
        };
        assert_eq!(reply.correlation_id, request.id);
        assert_eq!(reply.id.get_version(), Some(uuid::Version::Random));
        assert_eq!(reply.payload, json!({"a": [1, 2.5, "x"]}));
    }

    #[rstest]
    #[case::correlation_id_first(
        r#"{"correlationId": "C", "id": "I", "payload": [1, {"id": 2}]}"#,
        "C"
    )]
    #[case::id_only(r#"{"payload": {"id": "nested"}, "id": "I"}"#, "I")]
    #[case::unreadable_correlation_id(r#"{"correlationId": "no", "id": "I"}"#, "I")]
    #[case::no_ids(r#"{"payload": 1}"#, "nil")]
    #[case::not_an_object("[1, 2]", "nil")]
    #[case::not_json("{\"id\": ", "nil")]
    fn an_unreadable_request_is_answered_with_what_ids_it_carries(
        #[case] raw: &str,
        #[case] expected: &str,
    ) {
        let (id, conversation) = (Uuid::new_v4(), Uuid::new_v4());
        let raw = raw
            .replace("\"C\"", &format!("\"{conversation}\""))
            .replace("\"I\"", &format!("\"{id}\""));
        let reply =
            Reply::error_for_raw(raw.as_bytes(), ErrorBody::new(ErrorCode::BadRequest, "x"));
        let wanted = match expected {
            "C" => conversation,
            "I" => id,
            _ => Uuid::nil(),
        };
        assert_eq!(reply.correlation_id(), wanted);
    }

    #[test]
    fn error_codes_are_a_closed_snake_case_set() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
        assert!(serde_json::from_value::<ErrorCode>(json!("teapot")).is_err());
        let retryable: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|c| c.retryable_by_default())
            .map(ErrorCode::as_str)
            .collect();
        assert_eq!(retryable, ["unavailable", "timeout", "resource_exhausted"]);
    }

    #[test]
    fn a_well_formed_request_parses() {
        let request = Request::new("echo", "say", json!({"text": "hi"}));
        let bytes = serde_json::to_vec(&request).unwrap();
        assert_eq!(Request::parse(&bytes, "echo", "say"), Ok(request));
    }

    #[rstest]
    #[case::not_json(b"{not json".to_vec(), "request is not JSON")]
    #[case::not_an_envelope(br#"{"hello": "world"}"#.to_vec(), "request is not a request envelope")]
    #[case::unknown_field(
        serde_json::to_vec(&{ let mut v = serde_json::to_value(Request::new("echo", "say", json!(1))).unwrap(); v["extra"] = json!(1); v }).unwrap(),
        "unknown field `extra`"
    )]
    #[case::uuid_v1_id(
        serde_json::to_vec(&{ let mut r = Request::new("echo", "say", json!(1)); r.id = Uuid::from_u128(0x6ba7b810_9dad_11d1_80b4_00c04fd430c8); r }).unwrap(),
        "is not a UUID v4"
    )]
    #[case::zero_timeout(
        serde_json::to_vec(&Request::new("echo", "say", json!(1)).with_timeout_ms(0)).unwrap(),
        "timeoutMs must be at least 1"
    )]
    #[case::wrong_service(serde_json::to_vec(&Request::new("other", "say", json!(1))).unwrap(), "envelope addresses other.say")]
    #[case::wrong_verb(serde_json::to_vec(&Request::new("echo", "shout", json!(1))).unwrap(), "envelope addresses echo.shout")]
    fn malformed_requests_are_bad_requests(#[case] bytes: Vec<u8>, #[case] message: &str) {
        let error = Request::parse(&bytes, "echo", "say").unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(!error.retryable);
        assert!(
            error.message.contains(message),
            "{:?} lacks {message:?}",
            error.message
        );
    }

    #[test]
    fn an_unreadable_request_is_answered_with_whatever_id_it_carries() {
        let id = Uuid::new_v4();
        let raw = serde_json::to_vec(&json!({"id": id, "payload": 1})).unwrap();
        let error = ErrorBody::new(ErrorCode::BadRequest, "bad");
        assert_eq!(
            Reply::error_for_raw(&raw, error.clone()).correlation_id(),
            id
        );
        assert_eq!(
            Reply::error_for_raw(b"garbage", error).correlation_id(),
            Uuid::nil()
        );
    }
}
