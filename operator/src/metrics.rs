//! Prometheus metrics of the operator, all prefixed `cellbus_operator_`, in a registry of
//! their own so that `/metrics` shows the operator's and nothing a library registered
//! globally.

use std::time::Instant;

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
};

/// `result` label of a reconcile that succeeded.
const RESULT_OK: &str = "ok";
/// `result` label of a reconcile that failed; the reason goes to `failures_total`.
const RESULT_ERROR: &str = "error";

/// Every metric the operator exports, and the registry they are registered with.
pub struct Metrics {
    /// The registry [`Metrics::render`] gathers, holding only the metrics below.
    pub registry: Registry,
    /// Reconciles finished, by controller and result (`ok` or `error`).
    pub reconciles: IntCounterVec,
    /// Time one reconcile took, by controller.
    pub reconcile_seconds: HistogramVec,
    /// Failed reconciles, by controller and a short error label
    /// (`Error::metric_label`), so a dashboard can tell a NATS outage from a bad spec.
    pub failures: IntCounterVec,
    /// 1 while this replica holds the leader lease, 0 otherwise.
    pub leader: IntGauge,
    /// Writes to the Kubernetes API, by kind and verb: a reconcile loop that keeps
    /// writing shows up here before it shows up in the API server's audit log.
    pub writes: IntCounterVec,
}

impl Metrics {
    /// Metrics in a fresh registry with the `cellbus_operator` prefix.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("cellbus_operator".into()), None)
            .expect("a fixed prefix is a valid registry prefix");
        Self::register(registry)
    }

    /// Creates every metric and registers it with `registry`.
    pub fn register(registry: Registry) -> Self {
        let metrics = Self {
            reconciles: IntCounterVec::new(
                Opts::new("reconciles_total", "Reconciles finished, by result."),
                &["controller", "result"],
            )
            .expect("valid metric"),
            reconcile_seconds: HistogramVec::new(
                HistogramOpts::new("reconcile_duration_seconds", "Time to reconcile an object.")
                    // 1 ms to about 30 s: a reconcile is a handful of API calls, and one
                    // that waits on a slow NATS or database should still land in a bucket.
                    .buckets(exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
                &["controller"],
            )
            .expect("valid metric"),
            failures: IntCounterVec::new(
                Opts::new("failures_total", "Failed reconciles, by error."),
                &["controller", "error"],
            )
            .expect("valid metric"),
            leader: IntGauge::new("leader", "1 when this replica is the leader.")
                .expect("valid metric"),
            writes: IntCounterVec::new(
                Opts::new("writes_total", "Writes to the Kubernetes API."),
                &["kind", "verb"],
            )
            .expect("valid metric"),
            registry,
        };
        for collector in [
            Box::new(metrics.reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.reconcile_seconds.clone()),
            Box::new(metrics.failures.clone()),
            Box::new(metrics.leader.clone()),
            Box::new(metrics.writes.clone()),
        ] {
            metrics
                .registry
                .register(collector)
                .expect("each metric is registered once");
        }
        metrics
    }

    /// Starts timing a reconcile of `controller`; call [`ReconcileMeasure::finish`] with
    /// its outcome. A measure dropped without `finish` (a cancelled reconcile) records
    /// nothing.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileMeasure {
        ReconcileMeasure {
            controller,
            started: Instant::now(),
            reconciles: self.reconciles.clone(),
            reconcile_seconds: self.reconcile_seconds.clone(),
            failures: self.failures.clone(),
        }
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts one write to the Kubernetes API, e.g. `("Deployment", "apply")`.
    pub fn write(&self, kind: &str, verb: &str) {
        self.writes.with_label_values(&[kind, verb]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        cellbus_control::metrics::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One reconcile being timed; see [`Metrics::reconcile`].
///
/// It owns handles to the metrics rather than borrowing [`Metrics`], so it can live
/// across the awaits of a reconcile without tying the future to a borrow.
#[must_use = "a measure records nothing until `finish` is called"]
pub struct ReconcileMeasure {
    controller: &'static str,
    started: Instant,
    reconciles: IntCounterVec,
    reconcile_seconds: HistogramVec,
    failures: IntCounterVec,
}

impl ReconcileMeasure {
    /// Records the reconcile's duration and result; `Err` carries the short error label
    /// counted in `failures_total`.
    pub fn finish(self, result: Result<(), &'static str>) {
        let controller = self.controller;
        self.reconcile_seconds
            .with_label_values(&[controller])
            .observe(self.started.elapsed().as_secs_f64());
        let label = match result {
            Ok(()) => RESULT_OK,
            Err(error) => {
                self.failures.with_label_values(&[controller, error]).inc();
                RESULT_ERROR
            }
        };
        self.reconciles
            .with_label_values(&[controller, label])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ok_and_a_failed_reconcile_show_up_as_counters_with_their_labels() {
        let metrics = Metrics::new();

        metrics.reconcile("cellpool").finish(Ok(()));
        metrics
            .reconcile("cellpool")
            .finish(Err("apply_deployment"));

        let text = metrics.render();
        for line in [
            r#"cellbus_operator_reconciles_total{controller="cellpool",result="ok"} 1"#,
            r#"cellbus_operator_reconciles_total{controller="cellpool",result="error"} 1"#,
            r#"cellbus_operator_failures_total{controller="cellpool",error="apply_deployment"} 1"#,
            r#"cellbus_operator_reconcile_duration_seconds_count{controller="cellpool"} 2"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
    }

    #[test]
    fn an_ok_reconcile_counts_no_failure() {
        let metrics = Metrics::new();

        metrics.reconcile("cell").finish(Ok(()));

        assert!(!metrics
            .render()
            .contains("cellbus_operator_failures_total{"));
    }

    #[test]
    fn leader_gauge_and_writes_are_rendered() {
        let metrics = Metrics::new();

        metrics.set_leader(true);
        metrics.write("Deployment", "apply");
        metrics.write("Deployment", "apply");

        let text = metrics.render();
        assert!(
            text.lines().any(|l| l == "cellbus_operator_leader 1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == r#"cellbus_operator_writes_total{kind="Deployment",verb="apply"} 2"#),
            "{text}"
        );
    }
}
