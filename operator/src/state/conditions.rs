//! Status conditions of Cells and CellPools: the type and reason names, and the one
//! function that folds a new observation into the conditions an object already has.
//! `lastTransitionTime` moves only when a condition's status changes, so a reconcile that
//! observes nothing new computes the same conditions and writes nothing.

use cellbus_contracts::manifest::PoolChoiceError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types, shared with the contracts so the CRD docs and the operator agree.
pub use cellbus_contracts::resources::condition as types;

/// Reasons: PascalCase, one word a person (or an alert) can match on. Each says why a
/// condition has its status; the message says what to do about it.
pub mod reasons {
    /// Scheduled=True: the cell is in its pool's assignment.
    pub const SCHEDULED: &str = "Scheduled";
    /// Scheduled=False: `spec.poolRef` names a CellPool that does not exist.
    pub const POOL_NOT_FOUND: &str = "PoolNotFound";
    /// Scheduled=False: no CellPool runs the cell's runtime on its OS.
    pub const NO_MATCHING_POOL: &str = "NoMatchingPool";
    /// Scheduled=False: several CellPools would do and `spec.poolRef` does not choose.
    pub const SEVERAL_POOLS: &str = "SeveralPools";
    /// Scheduled=False: the CellPool `spec.poolRef` names has an invalid spec.
    pub const POOL_INVALID: &str = "PoolInvalid";
    /// Scheduled=False: the Cell is being deleted.
    pub const DELETING: &str = "Deleting";
    /// ModuleVerified=True: the pods fetch the module from `spec.module.url` and check
    /// its digest themselves.
    pub const MODULE_URL: &str = "ModuleUrl";
    /// ModuleVerified=True: the module is a command in the pool's image.
    pub const MODULE_COMMAND: &str = "ModuleCommand";
    /// ModuleVerified, StreamReady or Ready Unknown: NATS could not be reached.
    pub const NATS_UNAVAILABLE: &str = "NatsUnavailable";
    /// CellPool Progressing=True: the runtime Deployment is rolling out.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// CellPool Progressing=False: the rollout is complete.
    pub const ROLLED_OUT: &str = "RolledOut";
    /// DatabaseReady=True: the role, schema and Secret match the spec.
    pub const DATABASE_READY: &str = "DatabaseReady";
    /// DatabaseReady=False: the admin database cannot be reached or refused a statement.
    pub const DATABASE_UNAVAILABLE: &str = "DatabaseUnavailable";
    /// DatabaseReady=False: the operator was given no admin database.
    pub const DATABASE_NOT_CONFIGURED: &str = "DatabaseNotConfigured";
    /// Any type, False: the spec breaks a rule the CRD schema cannot state.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Scheduled=False: another Cell on the same bus already serves the service.
    pub const SERVICE_CONFLICT: &str = "Conflict";
    /// DatabaseReady (and Ready): an older Cell, in any namespace, has the schema.
    pub const SCHEMA_CONFLICT: &str = "Conflict";
    /// ModuleVerified=True: the module with the cell's digest is in the store.
    pub const MODULE_FOUND: &str = "ModuleFound";
    /// ModuleVerified=True: a signer the pool trusts signed the module, and the module
    /// with its digest is in the store (or fetched by URL and checked by the pods).
    /// ModuleVerified=False has the reason the signature is refused instead:
    /// `cellbus_control::signature::SignatureError::reason`.
    pub const SIGNED: &str = "Signed";
    /// ModuleVerified=False: no module with the cell's digest is in the store yet.
    pub const MODULE_MISSING: &str = "ModuleMissing";
    /// StreamReady=True: the stream of the durable verbs exists with the planned config.
    pub const STREAM_READY: &str = "StreamReady";
    /// StreamReady=False: creating or updating the stream failed.
    pub const STREAM_FAILED: &str = "StreamFailed";
    /// StreamReady=True: the cell has no durable verbs, so it needs no stream.
    pub const NO_DURABLE_VERBS: &str = "NoDurableVerbs";
    /// Ready=True: the cell's pods answer its `$ping`.
    pub const SERVING: &str = "Serving";
    /// Ready=False: pods of the pool report that loading the cell failed.
    pub const NOT_LOADED: &str = "NotLoaded";
    /// Ready or Progressing: waiting for pods, a rollout or the first load.
    pub const WAITING: &str = "Waiting";
    /// CellPool Ready=True: every wanted runtime pod is ready.
    pub const REPLICAS_READY: &str = "ReplicasReady";
    /// CellPool Ready=False, Degraded=True: fewer runtime pods are ready than wanted.
    pub const REPLICAS_UNAVAILABLE: &str = "ReplicasUnavailable";
    /// CellPool TrustResolved=True: the trust's ConfigMaps and Secrets were read. False
    /// has the reason they could not be (`TrustSourceUnavailable`, `BadKey`, `WeakKey`,
    /// `BadCertificate`), and the pool's Cells wait (`TrustPending`).
    pub const TRUST_RESOLVED: &str = "TrustResolved";
    /// SandboxEnforced=True: every pod's kernel holds process cells with Landlock.
    pub const LANDLOCK: &str = "Landlock";
    /// SandboxEnforced=False: a pod's kernel lacks (some of) Landlock; its process cells
    /// are held by their own users, seccomp and limits, without the rest.
    pub const KERNEL_LACKS_LANDLOCK: &str = "KernelLacksLandlock";
}

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    /// As Kubernetes spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(value: bool) -> Self {
        if value {
            Self::True
        } else {
            Self::False
        }
    }
}

/// One observation of a condition, before it is folded into an object's conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition {
    /// A type from [`types`].
    pub type_: &'static str,
    pub status: Status,
    /// A reason from [`reasons`].
    pub reason: &'static str,
    /// What a person should know or do.
    pub message: String,
}

impl NewCondition {
    pub fn new(
        type_: &'static str,
        status: impl Into<Status>,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: status.into(),
            reason,
            message: message.into(),
        }
    }
}

/// A source of the current time, so tests can fix it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Time;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        Time(k8s_openapi::jiff::Timestamp::now())
    }
}

/// A clock stopped at one instant.
#[derive(Clone, Debug)]
pub struct FixedClock(pub Time);

impl Clock for FixedClock {
    fn now(&self) -> Time {
        self.0.clone()
    }
}

/// `existing` with `new` folded in, for an object at `generation`.
///
/// The condition of the same type is replaced in place (a new type is added), with
/// `observedGeneration` set to `generation`. Its `lastTransitionTime` stays as it was when
/// the status is unchanged and becomes `now` when it changes, so the time says since when
/// the condition has held, not when it was last looked at. `Ready` is kept last, as a
/// summary of the others. Conditions of other types are left as they are.
pub fn set_condition(
    existing: &[Condition],
    new: NewCondition,
    now: Time,
    generation: i64,
) -> Vec<Condition> {
    let previous = existing.iter().find(|c| c.type_ == new.type_);
    let last_transition_time = match previous {
        Some(previous) if previous.status == new.status.as_str() => {
            previous.last_transition_time.clone()
        }
        _ => now,
    };
    let condition = Condition {
        type_: new.type_.to_owned(),
        status: new.status.as_str().to_owned(),
        reason: new.reason.to_owned(),
        message: new.message,
        observed_generation: Some(generation),
        last_transition_time,
    };
    let mut conditions: Vec<Condition> = existing.to_vec();
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(slot) => *slot = condition,
        None => conditions.push(condition),
    }
    // A stable sort on "is Ready" keeps every other condition where it was.
    conditions.sort_by_key(|c| c.type_ == types::READY);
    conditions
}

/// [`set_condition`] for several observations taken at the same instant.
pub fn set_conditions(
    existing: &[Condition],
    new: impl IntoIterator<Item = NewCondition>,
    now: &Time,
    generation: i64,
) -> Vec<Condition> {
    new.into_iter().fold(existing.to_vec(), |conditions, new| {
        set_condition(&conditions, new, now.clone(), generation)
    })
}

/// The condition of a type, if the object has one.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The Scheduled=False reason for a cell no single pool can run.
pub fn pool_choice_reason(error: &PoolChoiceError) -> &'static str {
    match error {
        PoolChoiceError::NotFound { .. } => reasons::POOL_NOT_FOUND,
        PoolChoiceError::NoneMatch { .. } => reasons::NO_MATCHING_POOL,
        PoolChoiceError::Several { .. } => reasons::SEVERAL_POOLS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn scheduled(status: bool, message: &str) -> NewCondition {
        let reason = if status {
            reasons::SCHEDULED
        } else {
            reasons::POOL_NOT_FOUND
        };
        NewCondition::new(types::SCHEDULED, status, reason, message)
    }

    #[test]
    fn a_new_condition_starts_its_transition_now() {
        let conditions = set_condition(&[], scheduled(true, "in pool wasm"), at(100), 3);
        assert_eq!(conditions.len(), 1);
        let c = &conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Scheduled", "True", "Scheduled")
        );
        assert_eq!(c.message, "in pool wasm");
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time, at(100));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = set_condition(&[], scheduled(true, "in pool wasm"), at(100), 1);

        // Same status, new message and generation: the time stays.
        let same = set_condition(&first, scheduled(true, "in pool wasm2"), at(200), 2);
        assert_eq!(same[0].last_transition_time, at(100));
        assert_eq!(same[0].message, "in pool wasm2");
        assert_eq!(same[0].observed_generation, Some(2));

        // Status flips: the time moves.
        let flipped = set_condition(
            &same,
            scheduled(false, "CellPool x does not exist"),
            at(300),
            2,
        );
        assert_eq!(flipped[0].last_transition_time, at(300));
        assert_eq!(flipped[0].status, "False");
        assert_eq!(flipped[0].reason, "PoolNotFound");

        // Flips back: moves again.
        let back = set_condition(&flipped, scheduled(true, "in pool wasm"), at(400), 3);
        assert_eq!(back[0].last_transition_time, at(400));
    }

    #[test]
    fn observing_the_same_thing_again_changes_nothing() {
        let first = set_condition(&[], scheduled(true, "in pool wasm"), at(100), 1);
        let again = set_condition(&first, scheduled(true, "in pool wasm"), at(999), 1);
        assert_eq!(first, again);
    }

    #[test]
    fn other_conditions_are_kept_and_ready_stays_last() {
        let now = at(100);
        let conditions = set_conditions(
            &[],
            [
                NewCondition::new(types::READY, false, reasons::WAITING, "waiting for pods"),
                scheduled(true, "in pool wasm"),
                NewCondition::new(types::STREAM_READY, true, reasons::NO_DURABLE_VERBS, ""),
            ],
            &now,
            1,
        );
        let order: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(order, ["Scheduled", "StreamReady", "Ready"]);

        let later = set_condition(
            &conditions,
            NewCondition::new(types::READY, true, reasons::SERVING, "2 pods answer $ping"),
            at(200),
            1,
        );
        assert_eq!(later.len(), 3);
        assert_eq!(find(&later, "Scheduled"), find(&conditions, "Scheduled"));
        let ready = find(&later, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.clone()),
            ("True", at(200))
        );
        assert_eq!(later.last().unwrap().type_, "Ready");
    }

    #[test]
    fn a_fixed_clock_tells_the_same_time() {
        let clock = FixedClock(at(42));
        assert_eq!(clock.now(), at(42));
        assert_eq!(clock.now(), at(42));
    }

    #[test]
    fn pool_choice_errors_map_to_scheduling_reasons() {
        let not_found = PoolChoiceError::NotFound { name: "x".into() };
        let none = PoolChoiceError::NoneMatch {
            runtime: "wasm",
            os: "linux",
        };
        let several = PoolChoiceError::Several {
            runtime: "wasm",
            os: "linux",
            names: vec!["a".into(), "b".into()],
        };
        assert_eq!(pool_choice_reason(&not_found), "PoolNotFound");
        assert_eq!(pool_choice_reason(&none), "NoMatchingPool");
        assert_eq!(pool_choice_reason(&several), "SeveralPools");
    }
}
