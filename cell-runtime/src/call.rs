//! `cellbus call SERVICE.VERB JSON`: one request, its reply printed.

use std::time::Duration;

use cellbus_contracts::subject;
use cellbus_contracts::wire::{ErrorBody, Reply, Request};
use cellbus_control::NatsArgs;
use serde_json::Value;

#[derive(Clone, Debug, clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// What to call, as SERVICE.VERB (for example echo.say).
    pub target: String,
    /// The request payload, as JSON.
    #[arg(default_value = "null")]
    pub payload: String,
    /// How long to wait for the reply (500ms, 5s, 1m); also sent as the request's
    /// timeoutMs.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("target `{0}`: expected SERVICE.VERB, such as echo.say")]
    Target(String),
    #[error("target `{target}`: {source}")]
    Subject {
        target: String,
        #[source]
        source: subject::SubjectError,
    },
    #[error("payload: not JSON: {0}")]
    Payload(serde_json::Error),
    #[error(transparent)]
    Connect(#[from] cellbus_control::Error),
    #[error("no cell serves {0} (is it loaded? `cellbus up` prints what it serves)")]
    NoResponders(String),
    #[error("durable request to {subject} (waited up to {timeout:?})")]
    Durable {
        subject: String,
        timeout: Duration,
        #[source]
        source: cellbus_control::Error,
    },
    #[error("{subject} did not answer within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("requesting {subject}")]
    Request {
        subject: String,
        #[source]
        source: async_nats::RequestError,
    },
    #[error("{subject} answered with something that is not a reply envelope: {source}")]
    NotAReply {
        subject: String,
        source: serde_json::Error,
    },
}

/// Sends the request; the reply's payload, or the error envelope it carried.
pub async fn run(args: &CallArgs) -> Result<Result<Value, ErrorBody>, CallError> {
    let (service, verb) = args
        .target
        .split_once('.')
        .ok_or_else(|| CallError::Target(args.target.clone()))?;
    let subject = subject::request_subject(service, verb).map_err(|source| CallError::Subject {
        target: args.target.clone(),
        source,
    })?;
    let payload: Value = serde_json::from_str(&args.payload).map_err(CallError::Payload)?;
    let client = cellbus_control::connect_once(&args.nats, "cellbus call").await?;
    let request = Request::new(service, verb, payload)
        .with_timeout_ms(args.timeout.as_millis().max(1) as u64);
    // A subject some stream captures is a durable verb: publish it through JetStream,
    // as its pods pull it from there.
    let js = async_nats::jetstream::new(client.clone());
    if js.stream_by_subject(subject.clone()).await.is_ok() {
        let reply =
            cellbus_control::nats::durable::durable_request(&client, &js, &request, args.timeout)
                .await
                .map_err(|source| CallError::Durable {
                    subject: subject.clone(),
                    timeout: args.timeout,
                    source,
                })?;
        return Ok(reply.into_result());
    }
    let body = serde_json::to_vec(&request).expect("a request always encodes");
    let reply = tokio::time::timeout(args.timeout, client.request(subject.clone(), body.into()))
        .await
        .map_err(|_| CallError::Timeout {
            subject: subject.clone(),
            timeout: args.timeout,
        })?
        .map_err(|source| match source.kind() {
            async_nats::RequestErrorKind::NoResponders => CallError::NoResponders(subject.clone()),
            async_nats::RequestErrorKind::TimedOut => CallError::Timeout {
                subject: subject.clone(),
                timeout: args.timeout,
            },
            _ => CallError::Request {
                subject: subject.clone(),
                source,
            },
        })?;
    let reply: Reply = serde_json::from_slice(&reply.payload)
        .map_err(|source| CallError::NotAReply { subject, source })?;
    Ok(reply.into_result())
}

/// `500ms`, `5s`, `2m`, or a plain number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| DurationError::NotADuration(text.to_owned()))?;
    let duration = match unit {
        "" | "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        _ => return Err(DurationError::Unit(text.to_owned())),
    };
    if duration.is_zero() {
        return Err(DurationError::Zero);
    }
    Ok(duration)
}

/// Why a flag's text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration such as 500ms, 5s or 1m")]
    NotADuration(String),
    #[error("`{0}`: the unit is ms, s or m")]
    Unit(String),
    #[error("the duration must be above zero")]
    Zero,
}
