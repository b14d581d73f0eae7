//! Whether something already answers a service on a bus, asked before `cellbus up` writes
//! anything: a second responder in the queue group would take part of the service's
//! requests, and a foreign subscriber on `cbs.{service}.>` would see all of them.

use std::fmt;
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use cellbus_contracts::status::PingPayload;
use cellbus_contracts::subject;
use cellbus_contracts::wire::{Reply, Request};

use crate::Error;

/// Who answered a service's `$ping`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Responder {
    /// A Cellbus runtime, naming its pod and the module it serves.
    Cellbus { pod: String, digest: Option<String> },
    /// Something else subscribed to the service's subjects that replies.
    Foreign,
}

impl fmt::Display for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cellbus { pod, digest } => {
                write!(f, "the Cellbus runtime of pod {pod}")?;
                if let Some(digest) = digest {
                    write!(f, " (module {digest})")?;
                }
                Ok(())
            }
            Self::Foreign => f.write_str("a responder that is not a Cellbus runtime"),
        }
    }
}

/// The first responder to the `$ping` of `service`, if any answers within `wait`.
///
/// `cbs.{service}.$ping` reaches a runtime serving the service and anything subscribed to
/// `cbs.{service}.*` or `cbs.{service}.>`, and unlike a verb's subject it is never
/// captured by a stream nor runs a cell. With no subscriber at all the server says so at
/// once (no responders), so a free service costs one round trip; a subscriber that stays
/// silent for `wait` (a tap such as `nats sub '>'`) answers nothing and takes nothing.
pub async fn responder(
    client: &Client,
    service: &str,
    wait: Duration,
) -> Result<Option<Responder>, Error> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Ping {
        service: service.to_owned(),
        source,
    };
    let subject = subject::ping_subject(service).map_err(|e| error(e.into()))?;
    let request = Request::new(service, subject::PING_VERB, serde_json::Value::Null);
    let body = serde_json::to_vec(&request).map_err(|e| error(e.into()))?;
    let sent = client
        .send_request(
            subject,
            async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(wait)),
        )
        .await;
    match sent {
        Ok(message) => Ok(Some(
            match serde_json::from_slice::<Reply>(&message.payload) {
                Ok(Reply::Ok(reply)) => {
                    match serde_json::from_value::<PingPayload>(reply.payload) {
                        Ok(pong) => Responder::Cellbus {
                            pod: pong.pod,
                            digest: pong.digest,
                        },
                        Err(_) => Responder::Foreign,
                    }
                }
                _ => Responder::Foreign,
            },
        )),
        Err(e)
            if matches!(
                e.kind(),
                RequestErrorKind::NoResponders | RequestErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(error(e.into())),
    }
}
