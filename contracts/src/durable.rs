//! Durable verbs on JetStream, as plain data shared by the runtime (which pulls and
//! answers them), callers (which publish them) and the operator (which reports on them):
//! the consumer a verb is pulled through, its redelivery policy and the dead-letter record.
//!
//! A caller publishes the request envelope to `cbs.{service}.{verb}` through JetStream
//! with `Nats-Msg-Id` set to the envelope id (a resend inside the stream's duplicate
//! window is dropped) and `Cbs-Reply-To` naming the subject it waits on. The pool's pods
//! share one durable pull consumer per verb; a pod runs the cell, publishes the reply to
//! `Cbs-Reply-To`, and only then acknowledges.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resources::VerbSpec;
use crate::wire::ErrorReply;

/// The stream every dead letter goes to, under `cbs.$dlq.{service}.{verb}`.
pub const DEAD_LETTER_STREAM: &str = "CBS_DLQ";
/// The subjects of [`DEAD_LETTER_STREAM`].
pub const DEAD_LETTER_SUBJECTS: &str = "cbs.$dlq.>";
/// How long a dead letter is kept.
pub const DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Redelivery waits when a verb's `retry` sets none; the last repeats.
pub const DEFAULT_BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];
/// Deliveries of a verb without `retry`: a pod killed mid-request must not cost the
/// request, so even a verb that never asks for retries gets redelivered.
pub const DEFAULT_MAX_DELIVER: u32 = 5;

/// Name of the durable consumer the pods of a pool pull `verb` through.
pub fn consumer_name(verb: &str) -> String {
    format!("cbs-{verb}")
}

/// How often a durable request is delivered and how long each redelivery waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redelivery {
    pub max_deliver: u32,
    pub backoff: Vec<Duration>,
}

impl Redelivery {
    /// The policy of `verb`: its `retry`, else the defaults.
    pub fn of(verb: &VerbSpec) -> Self {
        let (max_deliver, backoff_ms) = match &verb.retry {
            Some(retry) => (retry.max_deliver.max(1), retry.backoff_ms.as_slice()),
            None => (DEFAULT_MAX_DELIVER, [].as_slice()),
        };
        let backoff = if backoff_ms.is_empty() {
            DEFAULT_BACKOFF.to_vec()
        } else {
            backoff_ms
                .iter()
                .map(|&ms| Duration::from_millis(ms.into()))
                .collect()
        };
        Self {
            max_deliver,
            backoff,
        }
    }

    /// The wait before the delivery after delivery number `delivered` (1 is the first).
    pub fn delay(&self, delivered: u64) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or_default()
    }

    /// Whether delivery number `delivered` is the last one.
    pub fn is_last(&self, delivered: u64) -> bool {
        delivered >= u64::from(self.max_deliver)
    }
}

/// A durable request that will not be run again, as stored in [`DEAD_LETTER_STREAM`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub service: String,
    pub verb: String,
    /// Deliveries it got.
    pub deliveries: u64,
    pub failed_at: Timestamp,
    /// The reply its last delivery ended with.
    pub error: ErrorReply,
    /// The request as published: its JSON, or its bytes as a string when not JSON.
    pub request: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verb(retry: Value) -> VerbSpec {
        serde_json::from_value(
            serde_json::json!({"name": "append", "delivery": "durable", "retry": retry}),
        )
        .unwrap()
    }

    #[test]
    fn backoff_follows_the_list_and_repeats_its_last_value() {
        let policy = Redelivery::of(&verb(
            serde_json::json!({"maxDeliver": 4, "backoffMs": [100, 2000]}),
        ));
        assert_eq!(policy.max_deliver, 4);
        let delays: Vec<u64> = (1..=4)
            .map(|n| policy.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 2000, 2000, 2000]);
        assert!(!policy.is_last(3));
        assert!(policy.is_last(4));
        assert!(policy.is_last(9));
    }

    #[test]
    fn a_verb_without_retry_still_survives_a_lost_delivery() {
        let plain: VerbSpec =
            serde_json::from_value(serde_json::json!({"name": "append", "delivery": "durable"}))
                .unwrap();
        let policy = Redelivery::of(&plain);
        assert_eq!(policy.max_deliver, DEFAULT_MAX_DELIVER);
        assert_eq!(policy.delay(1), Duration::from_secs(1));
        assert_eq!(policy.delay(50), Duration::from_secs(30));
    }

    #[test]
    fn consumers_are_named_by_verb() {
        assert_eq!(consumer_name("append"), "cbs-append");
    }
}
