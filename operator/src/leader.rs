//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one reconciles. [`decide`] is the rule, [`try_acquire`] one round of
//! it against the API server, and [`spawn`] the loop that keeps a [`Leadership`] current.
//!
//! Expiry is judged from the Lease's `renewTime`, so replicas' clocks are assumed to
//! agree to well within a lease duration (as they do on NTP-synchronised nodes).
//!
//! Ours rather than a crate's: `kube-lease-manager` 0.13 supports kube 5, but a leader
//! that cannot reach the API server goes on reporting leadership after its Lease lapsed
//! (its loop logs the error and retries), and it renews with a patch that carries no
//! resourceVersion, so a replica that lost the Lease can renew the winner's. Here a
//! leader steps down once a lease duration passed without a renewal, and every write is
//! conditional on the resourceVersion read (see the tests of both).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::state::names::FIELD_MANAGER;

/// Which Lease to compete for, under what name, and how often to touch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease, usually the operator's own.
    pub namespace: String,
    /// Name of the Lease all replicas compete for.
    pub name: String,
    /// This replica's `holderIdentity`; unique among replicas, so the pod name.
    pub identity: String,
    /// How long the lease stays ours after a renewal; written to the Lease as
    /// `leaseDurationSeconds`, rounded up to whole seconds. A leader that has not renewed
    /// for this long stops leading, because from then on another replica may take over.
    pub lease_duration: Duration,
    /// How often the leader renews. Well below `lease_duration`, so that a failed renewal
    /// is retried before the lease lapses.
    pub renew_every: Duration,
    /// How often a replica that does not lead looks whether the lease has become free.
    pub retry_every: Duration,
}

impl LeaseSettings {
    /// Settings with the usual timings: a 15 s lease renewed every 5 s, and 2 s between
    /// attempts while another replica leads.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }

    /// `lease_duration` as the Lease states it: whole seconds, rounded up so that the
    /// Lease never promises others less than we wait ourselves.
    fn lease_duration_seconds(&self) -> i32 {
        let seconds =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds).unwrap_or(i32::MAX)
    }
}

/// What one round of the election does, given the Lease as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it with us as holder.
    Create,
    /// We hold the Lease: renew it.
    Renew,
    /// Nobody holds the Lease, or its holder let it lapse: take it.
    TakeOver,
    /// Another replica holds the Lease, which lapses in `expires_in` unless renewed.
    Standby {
        /// The replica that leads.
        holder: String,
        /// Time left until the Lease lapses by our clock, if its holder does not renew.
        expires_in: Duration,
    },
}

/// Decides what `identity` does with `lease` at `now`.
///
/// A Lease held by someone else lapses at `renewTime + leaseDurationSeconds`. One without
/// a `renewTime`, or whose duration is missing, zero or negative, gives no time during
/// which it is valid, so it is taken over rather than waited on forever.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let no_spec = LeaseSpec::default();
    let spec = lease.spec.as_ref().unwrap_or(&no_spec);
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return Decision::TakeOver;
    };
    let duration =
        SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0).into());
    let remaining = duration - now.duration_since(renewed);
    if remaining.is_positive() {
        Decision::Standby {
            holder: holder.to_owned(),
            expires_in: remaining.unsigned_abs(),
        }
    } else {
        Decision::TakeOver
    }
}

/// One round of the election: reads the Lease and, as [`decide`] says, creates, renews or
/// takes it over. `Ok(true)` when we hold the Lease afterwards, `Ok(false)` when another
/// replica does, including when it won a race for the same write (409 Conflict).
pub async fn try_acquire(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(&settings.name).await?;
    let next = match decide(current.as_ref(), &settings.identity, now) {
        Decision::Standby { holder, expires_in } => {
            tracing::debug!(lease = %settings.name, %holder, ?expires_in, "another replica leads");
            return Ok(false);
        }
        Decision::Create => None,
        Decision::Renew => current.map(|lease| renewed(lease, settings, now)),
        Decision::TakeOver => current.map(|lease| taken_over(lease, settings, now)),
    };
    // `replace` sends the resourceVersion we read, so the API server refuses the write if
    // another replica changed the Lease in between: at most one of us wins a round.
    let written = match next {
        Some(lease) => api.replace(&settings.name, &post_params(), &lease).await,
        None => api.create(&post_params(), &created(settings, now)).await,
    };
    match written {
        Ok(_) => Ok(true),
        Err(error) if is_conflict(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Gives the Lease up if we hold it, so that a successor takes over at once instead of
/// waiting for it to lapse. `Ok(true)` when it was ours and is now free; a Lease that is
/// missing, held by another replica, or changed under us is left alone (`Ok(false)`).
pub async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let Some(lease) = api.get_opt(&settings.name).await? else {
        return Ok(false);
    };
    if holder(&lease) != Some(settings.identity.as_str()) {
        return Ok(false);
    }
    match api
        .replace(&settings.name, &post_params(), &released(lease))
        .await
    {
        Ok(_) => Ok(true),
        Err(error) if is_conflict(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Whether this replica leads, as the election loop of [`spawn`] last found.
///
/// Cloning is cheap; the loop runs while any clone is alive, and when the last one is
/// dropped it gives the Lease up and ends.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
}

impl Leadership {
    /// Whether this replica leads right now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits until this replica leads. `false` if the election loop has ended instead
    /// (its task panicked or was aborted): then it never will.
    pub async fn wait_until_leader(&mut self) -> bool {
        self.leading.wait_for(|leading| *leading).await.is_ok()
    }

    /// Waits until this replica does not lead; returns at once if it does not. Whoever
    /// reconciles should stop when this returns: another replica may be about to start.
    pub async fn lost(&mut self) {
        // An ended loop no longer renews, so its leadership is lost too.
        let _ = self.leading.wait_for(|leading| !*leading).await;
    }
}

/// Starts the election loop for this replica with `client`; the [`Leadership`] tells
/// whether it leads.
///
/// The loop renews every `renew_every` while leading and retries every `retry_every`
/// while not. A leader whose renewals fail steps down once `lease_duration` has passed
/// since its last successful one, before another replica can take over. Drop every
/// clone of the `Leadership` and await the handle to have the Lease released.
pub fn spawn(client: Client, settings: LeaseSettings) -> (Leadership, JoinHandle<()>) {
    let (sender, leading) = watch::channel(false);
    let api = Api::namespaced(client, &settings.namespace);
    let task = tokio::spawn(run(api, settings, sender));
    (Leadership { leading }, task)
}

async fn run(api: Api<Lease>, settings: LeaseSettings, leading: watch::Sender<bool>) {
    let lease = settings.name.as_str();
    // While we lead: when our Lease lapses unless renewed. Both the `renewTime` we write
    // and `started` are read before the request goes out, so by our clock we stop no
    // later than the Lease lapses for the other replicas.
    let mut lapses_at: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let round = try_acquire(&api, &settings, Timestamp::now());
        // A renewal that hangs must not keep us leading past the lapse.
        let outcome = match lapses_at {
            Some(deadline) => tokio::time::timeout_at(deadline, round).await.ok(),
            None => Some(round.await),
        };
        match outcome {
            Some(Ok(true)) => {
                lapses_at = Some(started + settings.lease_duration);
                if !leading.send_replace(true) {
                    tracing::info!(lease, identity = %settings.identity, "acquired the leader lease");
                }
            }
            Some(Ok(false)) => {
                lapses_at = None;
                if leading.send_replace(false) {
                    tracing::info!(lease, identity = %settings.identity, "lost the leader lease to another replica");
                }
            }
            Some(Err(error)) => {
                tracing::warn!(lease, %error, "could not read or write the leader lease");
            }
            None => {
                tracing::warn!(lease, "renewing the leader lease took until it lapsed");
            }
        }
        if lapses_at.is_some_and(|at| Instant::now() >= at) {
            lapses_at = None;
            if leading.send_replace(false) {
                tracing::info!(lease, identity = %settings.identity, "stepped down: the leader lease could not be renewed in time");
            }
        }
        let wake = match lapses_at {
            Some(at) => (Instant::now() + settings.renew_every).min(at),
            None => Instant::now() + settings.retry_every,
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = leading.closed() => break,
        }
    }
    if lapses_at.is_some() {
        // Past the lease duration the Lease has lapsed anyway, so waiting longer on the
        // release would only hold up shutdown.
        match tokio::time::timeout(settings.lease_duration, release(&api, &settings)).await {
            Ok(Ok(true)) => tracing::info!(lease, "released the leader lease"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(lease, %error, "could not release the leader lease"),
            Err(_) => tracing::warn!(lease, "releasing the leader lease timed out"),
        }
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// Both a stale resourceVersion (`Conflict`) and a Lease created first by another
/// replica (`AlreadyExists`) come back as 409; either way we lost the round.
fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// A new Lease held by us from `now`.
fn created(settings: &LeaseSettings, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(settings.lease_duration_seconds()),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// `lease`, which we hold, renewed at `now`.
fn renewed(mut lease: Lease, settings: &LeaseSettings, now: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_default();
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(settings.lease_duration_seconds());
    lease
}

/// `lease`, free or lapsed, acquired by us at `now`: one more transition between holders.
fn taken_over(mut lease: Lease, settings: &LeaseSettings, now: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_default();
    spec.holder_identity = Some(settings.identity.clone());
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(settings.lease_duration_seconds());
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    lease
}

/// `lease` with no holder, which [`decide`] lets anyone take at once.
fn released(mut lease: Lease) -> Lease {
    lease.spec.get_or_insert_default().holder_identity = None;
    lease
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use http::{Method, StatusCode};
    use rstest::rstest;
    use serde_json::{json, Value};

    use super::*;
    use crate::mock_api::{mock_client, ApiServer, Call};

    const NAMESPACE: &str = "cellbus";
    const NAME: &str = "cellbus-operator";
    const US: &str = "operator-0";
    const THEM: &str = "operator-1";
    const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/cellbus/leases";
    const LEASE_PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/cellbus/leases/cellbus-operator";
    /// How long a test waits for something that should happen at once.
    const PATIENCE: Duration = Duration::from_secs(5);

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    fn ago(seconds: i64) -> Timestamp {
        now() - SignedDuration::from_secs(seconds)
    }

    fn settings() -> LeaseSettings {
        LeaseSettings::new(NAMESPACE, NAME, US)
    }

    /// Chainable Lease fixtures: `Lease::test().held_by(THEM).renewed_at(ago(3))`.
    trait LeaseFixture {
        /// Our Lease as the API server stores it: resourceVersion 7, 15 s duration, three
        /// transitions so far, acquired a minute ago; no holder yet.
        fn test() -> Self;
        fn held_by(self, holder: &str) -> Self;
        fn renewed_at(self, at: Timestamp) -> Self;
        fn never_renewed(self) -> Self;
        fn duration_seconds(self, seconds: Option<i32>) -> Self;
    }

    impl LeaseFixture for Lease {
        fn test() -> Self {
            Lease {
                metadata: ObjectMeta {
                    name: Some(NAME.into()),
                    namespace: Some(NAMESPACE.into()),
                    resource_version: Some("7".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    acquire_time: Some(MicroTime(ago(60))),
                    renew_time: Some(MicroTime(ago(60))),
                    lease_duration_seconds: Some(15),
                    lease_transitions: Some(3),
                    ..LeaseSpec::default()
                }),
            }
        }

        fn held_by(mut self, holder: &str) -> Self {
            self.spec.get_or_insert_default().holder_identity = Some(holder.into());
            self
        }

        fn renewed_at(mut self, at: Timestamp) -> Self {
            self.spec.get_or_insert_default().renew_time = Some(MicroTime(at));
            self
        }

        fn never_renewed(mut self) -> Self {
            self.spec.get_or_insert_default().renew_time = None;
            self
        }

        fn duration_seconds(mut self, seconds: Option<i32>) -> Self {
            self.spec.get_or_insert_default().lease_duration_seconds = seconds;
            self
        }
    }

    // ----- decide -----

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, US, now()), Decision::Create);
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_it_has_lapsed() {
        let fresh = Lease::test().held_by(US).renewed_at(ago(1));
        let lapsed = Lease::test().held_by(US).renewed_at(ago(600));

        assert_eq!(decide(Some(&fresh), US, now()), Decision::Renew);
        assert_eq!(decide(Some(&lapsed), US, now()), Decision::Renew);
    }

    #[test]
    fn a_lease_without_a_holder_is_taken_over() {
        let released = Lease::test().renewed_at(ago(1));
        let empty_holder = Lease::test().held_by("").renewed_at(ago(1));
        let no_spec = Lease {
            spec: None,
            ..Lease::test()
        };

        assert_eq!(decide(Some(&released), US, now()), Decision::TakeOver);
        assert_eq!(decide(Some(&empty_holder), US, now()), Decision::TakeOver);
        assert_eq!(decide(Some(&no_spec), US, now()), Decision::TakeOver);
    }

    #[test]
    fn a_fresh_lease_of_another_replica_is_waited_on_until_it_lapses() {
        let lease = Lease::test().held_by(THEM).renewed_at(ago(5));

        assert_eq!(
            decide(Some(&lease), US, now()),
            Decision::Standby {
                holder: THEM.into(),
                expires_in: Duration::from_secs(10),
            }
        );
    }

    #[test]
    fn a_lease_another_replica_let_lapse_is_taken_over() {
        let lease = Lease::test().held_by(THEM).renewed_at(ago(16));

        assert_eq!(decide(Some(&lease), US, now()), Decision::TakeOver);
    }

    #[test]
    fn a_lease_lapsing_this_instant_is_taken_over() {
        let lease = Lease::test().held_by(THEM).renewed_at(ago(15));

        assert_eq!(decide(Some(&lease), US, now()), Decision::TakeOver);
    }

    #[test]
    fn a_lease_of_another_replica_without_renew_time_is_taken_over() {
        let lease = Lease::test().held_by(THEM).never_renewed();

        assert_eq!(decide(Some(&lease), US, now()), Decision::TakeOver);
    }

    #[rstest]
    #[case::zero(Some(0))]
    #[case::negative(Some(-15))]
    #[case::missing(None)]
    fn a_lease_of_another_replica_with_no_positive_duration_is_taken_over(
        #[case] seconds: Option<i32>,
    ) {
        let lease = Lease::test()
            .held_by(THEM)
            .renewed_at(now())
            .duration_seconds(seconds);

        assert_eq!(decide(Some(&lease), US, now()), Decision::TakeOver);
    }

    #[test]
    fn a_lease_renewed_in_the_future_by_a_fast_clock_is_waited_on() {
        let lease = Lease::test()
            .held_by(THEM)
            .renewed_at(now() + SignedDuration::from_secs(2));

        assert_eq!(
            decide(Some(&lease), US, now()),
            Decision::Standby {
                holder: THEM.into(),
                expires_in: Duration::from_secs(17),
            }
        );
    }

    #[test]
    fn a_sub_second_lease_duration_is_rounded_up_in_the_lease() {
        let mut settings = settings();
        settings.lease_duration = Duration::from_millis(1500);

        assert_eq!(settings.lease_duration_seconds(), 2);
    }

    // ----- one round against a fake API server -----

    fn api() -> (Api<Lease>, ApiServer) {
        let (client, server) = mock_client();
        (Api::namespaced(client, NAMESPACE), server)
    }

    async fn within<F: Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(PATIENCE, future)
            .await
            .unwrap_or_else(|_| panic!("{what} did not happen within {PATIENCE:?}"))
    }

    /// What the Lease tests read of a request.
    trait LeaseRequest {
        fn spec(&self, field: &str) -> &Value;
        fn spec_time(&self, field: &str) -> Timestamp;
        /// The write must name our field manager.
        fn assert_field_manager(&self);
    }

    impl LeaseRequest for Call {
        fn spec(&self, field: &str) -> &Value {
            &self.body["spec"][field]
        }

        fn spec_time(&self, field: &str) -> Timestamp {
            self.spec(field)
                .as_str()
                .unwrap_or_else(|| panic!("spec.{field} is not a string in {}", self.body))
                .parse()
                .expect("a timestamp")
        }

        fn assert_field_manager(&self) {
            assert_eq!(self.field_manager(), Some(FIELD_MANAGER));
        }
    }

    fn lease_json(lease: &Lease) -> Value {
        serde_json::to_value(lease).unwrap()
    }

    fn failure(code: StatusCode, reason: &str) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": format!("leases.coordination.k8s.io \"{NAME}\": {reason}"),
            "reason": reason,
            "code": code.as_u16(),
        })
    }

    /// Runs `round` against a server played by `serve`, and returns its result once the
    /// server has seen everything it expected and nothing else.
    async fn against<T, S>(
        serve: impl FnOnce(ApiServer) -> S,
        round: impl AsyncFnOnce(&Api<Lease>) -> T,
    ) -> T
    where
        S: Future<Output = ApiServer> + Send + 'static,
    {
        let (api, server) = api();
        let script = serve(server);
        let served = tokio::spawn(async move { script.await.expect_no_more_requests().await });
        let result = within("the round", round(&api)).await;
        drop(api);
        // The server's assertions come first: a failed one also fails the round.
        if let Err(error) = within("the fake API server", served).await {
            std::panic::resume_unwind(error.into_panic());
        }
        result
    }

    #[tokio::test]
    async fn an_absent_lease_is_created_with_us_as_holder_and_we_lead() {
        let leading = against(
            |mut server| async move {
                server.expect(Method::GET, LEASE_PATH).await.answer(
                    StatusCode::NOT_FOUND,
                    &failure(StatusCode::NOT_FOUND, "NotFound"),
                );
                let create = server.expect(Method::POST, LEASES_PATH).await;
                create.assert_field_manager();
                assert_eq!(create.body["metadata"]["name"], NAME);
                assert_eq!(create.spec("holderIdentity"), US);
                assert_eq!(create.spec("leaseDurationSeconds"), 15);
                assert_eq!(create.spec("leaseTransitions"), 0);
                assert_eq!(create.spec_time("acquireTime"), now());
                assert_eq!(create.spec_time("renewTime"), now());
                create.accept(StatusCode::CREATED);
                server
            },
            async |api| try_acquire(api, &settings(), now()).await,
        )
        .await;

        assert!(leading.expect("no API error"));
    }

    #[tokio::test]
    async fn our_lease_is_renewed_at_its_resource_version_and_we_lead() {
        let leading = against(
            |mut server| async move {
                let ours = Lease::test().held_by(US).renewed_at(ago(5));
                server
                    .expect(Method::GET, LEASE_PATH)
                    .await
                    .answer(StatusCode::OK, &lease_json(&ours));
                let renew = server.expect(Method::PUT, LEASE_PATH).await;
                renew.assert_field_manager();
                assert_eq!(renew.body["metadata"]["resourceVersion"], "7");
                assert_eq!(renew.spec("holderIdentity"), US);
                assert_eq!(
                    renew.spec("leaseTransitions"),
                    3,
                    "a renewal is no transition"
                );
                assert_eq!(renew.spec_time("renewTime"), now());
                assert_eq!(renew.spec_time("acquireTime"), ago(60));
                renew.accept(StatusCode::OK);
                server
            },
            async |api| try_acquire(api, &settings(), now()).await,
        )
        .await;

        assert!(leading.expect("no API error"));
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_not_written_and_we_do_not_lead() {
        let leading = against(
            |mut server| async move {
                let theirs = Lease::test().held_by(THEM).renewed_at(ago(5));
                server
                    .expect(Method::GET, LEASE_PATH)
                    .await
                    .answer(StatusCode::OK, &lease_json(&theirs));
                server
            },
            async |api| try_acquire(api, &settings(), now()).await,
        )
        .await;

        assert!(!leading.expect("no API error"));
    }

    #[tokio::test]
    async fn a_lapsed_lease_of_another_replica_is_taken_over_with_one_more_transition() {
        let leading = against(
            |mut server| async move {
                let theirs = Lease::test().held_by(THEM).renewed_at(ago(20));
                server
                    .expect(Method::GET, LEASE_PATH)
                    .await
                    .answer(StatusCode::OK, &lease_json(&theirs));
                let take = server.expect(Method::PUT, LEASE_PATH).await;
                take.assert_field_manager();
                assert_eq!(take.body["metadata"]["resourceVersion"], "7");
                assert_eq!(take.spec("holderIdentity"), US);
                assert_eq!(take.spec("leaseTransitions"), 4);
                assert_eq!(take.spec_time("acquireTime"), now());
                assert_eq!(take.spec_time("renewTime"), now());
                take.accept(StatusCode::OK);
                server
            },
            async |api| try_acquire(api, &settings(), now()).await,
        )
        .await;

        assert!(leading.expect("no API error"));
    }

    #[tokio::test]
    async fn a_take_over_answered_with_conflict_means_another_replica_won_and_we_do_not_lead() {
        let leading = against(
            |mut server| async move {
                let theirs = Lease::test().held_by(THEM).renewed_at(ago(20));
                server
                    .expect(Method::GET, LEASE_PATH)
                    .await
                    .answer(StatusCode::OK, &lease_json(&theirs));
                server.expect(Method::PUT, LEASE_PATH).await.answer(
                    StatusCode::CONFLICT,
                    &failure(StatusCode::CONFLICT, "Conflict"),
                );
                server
            },
            async |api| try_acquire(api, &settings(), now()).await,
        )
        .await;

        assert!(!leading.expect("a conflict is no error"));
    }

    #[tokio::test]
    async fn a_create_answered_with_already_exists_means_another_replica_won_and_we_do_not_lead() {
        let leading = against(
            |mut server| async move {
                server.expect(Method::GET, LEASE_PATH).await.answer(
                    StatusCode::NOT_FOUND,
                    &failure(StatusCode::NOT_FOUND, "NotFound"),
                );
                server.expect(Method::POST, LEASES_PATH).await.answer(
                    StatusCode::CONFLICT,
                    &failure(StatusCode::CONFLICT, "AlreadyExists"),
                );
                server
            },
            async |api| try_acquire(api, &settings(), now()).await,
        )
        .await;

        assert!(!leading.expect("a lost race is no error"));
    }

    #[tokio::test]
    async fn a_server_error_is_returned_rather_than_taken_for_a_lost_round() {
        let result = against(
            |mut server| async move {
                server.expect(Method::GET, LEASE_PATH).await.answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
                );
                server
            },
            async |api| try_acquire(api, &settings(), now()).await,
        )
        .await;

        let error = result.expect_err("a 500 is an error");
        assert!(
            matches!(&error, kube::Error::Api(status) if status.code == 500),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn release_clears_the_holder_of_our_lease() {
        let released = against(
            |mut server| async move {
                let ours = Lease::test().held_by(US).renewed_at(ago(1));
                server
                    .expect(Method::GET, LEASE_PATH)
                    .await
                    .answer(StatusCode::OK, &lease_json(&ours));
                let release = server.expect(Method::PUT, LEASE_PATH).await;
                release.assert_field_manager();
                assert_eq!(release.body["metadata"]["resourceVersion"], "7");
                assert_eq!(release.spec("holderIdentity"), &Value::Null);
                assert_eq!(release.spec("leaseTransitions"), 3);
                release.accept(StatusCode::OK);
                server
            },
            async |api| release(api, &settings()).await,
        )
        .await;

        assert!(released.expect("no API error"));
    }

    #[tokio::test]
    async fn release_leaves_a_lease_of_another_replica_alone() {
        let released = against(
            |mut server| async move {
                let theirs = Lease::test().held_by(THEM).renewed_at(ago(1));
                server
                    .expect(Method::GET, LEASE_PATH)
                    .await
                    .answer(StatusCode::OK, &lease_json(&theirs));
                server
            },
            async |api| release(api, &settings()).await,
        )
        .await;

        assert!(!released.expect("no API error"));
    }

    // ----- the loop -----

    /// Timings short enough for a test and long enough for a loaded CI machine.
    fn quick_settings() -> LeaseSettings {
        LeaseSettings {
            lease_duration: Duration::from_millis(600),
            renew_every: Duration::from_millis(50),
            retry_every: Duration::from_millis(50),
            ..settings()
        }
    }

    #[tokio::test]
    async fn the_loop_leads_once_it_created_the_lease_and_releases_it_when_leadership_is_dropped() {
        let (client, mut server) = mock_client();
        let (mut leadership, task) = spawn(client, quick_settings());
        assert!(
            !leadership.is_leader(),
            "nobody leads before the first round"
        );

        let served = tokio::spawn(async move {
            server.expect(Method::GET, LEASE_PATH).await.answer(
                StatusCode::NOT_FOUND,
                &failure(StatusCode::NOT_FOUND, "NotFound"),
            );
            let create = server.expect(Method::POST, LEASES_PATH).await;
            let mut lease = create.body.clone();
            create.accept(StatusCode::CREATED);
            // Renewals until the loop is told to stop, then the release.
            loop {
                server
                    .expect(Method::GET, LEASE_PATH)
                    .await
                    .answer(StatusCode::OK, &lease);
                let write = server.expect(Method::PUT, LEASE_PATH).await;
                write.assert_field_manager();
                lease = write.body.clone();
                let holder = write.spec("holderIdentity").clone();
                write.accept(StatusCode::OK);
                if holder.is_null() {
                    break;
                }
                assert_eq!(holder, US);
            }
            server.expect_no_more_requests().await;
        });

        assert!(within("leading", leadership.wait_until_leader()).await);
        assert!(leadership.is_leader());
        drop(leadership);
        within("the loop's end", task)
            .await
            .expect("the loop ends cleanly");
        within("the fake API server", served)
            .await
            .expect("the API server saw a release");
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_once_its_lease_duration_has_passed() {
        let settings = quick_settings();
        let (client, mut server) = mock_client();
        let (mut leadership, _task) = spawn(client, settings.clone());

        let served = tokio::spawn(async move {
            server.expect(Method::GET, LEASE_PATH).await.answer(
                StatusCode::NOT_FOUND,
                &failure(StatusCode::NOT_FOUND, "NotFound"),
            );
            server
                .expect(Method::POST, LEASES_PATH)
                .await
                .accept(StatusCode::CREATED);
            // From now on the API server is down.
            server.serve_with(|_| {
                let code = StatusCode::SERVICE_UNAVAILABLE;
                (code.as_u16(), failure(code, "ServiceUnavailable"))
            });
        });

        assert!(within("leading", leadership.wait_until_leader()).await);
        let led_at = Instant::now();
        within("stepping down", leadership.lost()).await;
        let led_for = led_at.elapsed();

        assert!(!leadership.is_leader());
        assert!(
            led_for >= settings.lease_duration / 2 && led_for <= settings.lease_duration * 2,
            "stepped down after {led_for:?}, with a {:?} lease",
            settings.lease_duration
        );
        served.abort();
    }
}
