//! Prometheus metrics of the runtime, all prefixed `cellbus_runtime_`.

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Requests answered, by service, verb and outcome (`ok` or the error code).
    pub requests: IntCounterVec,
    /// Time from receiving a request to publishing its reply, by service and verb.
    pub request_seconds: HistogramVec,
    /// Requests being run, by service.
    pub in_flight: IntGaugeVec,
    /// Messages dropped without a reply, by reason.
    pub dropped: IntCounterVec,
    /// Time to instantiate a cell for one request.
    pub instantiate_seconds: Histogram,
    /// Modules compiled.
    pub module_compiles: IntCounter,
    /// Modules whose compiled code came from the disk cache.
    pub module_cache_hits: IntCounter,
    /// Time to compile a module.
    pub compile_seconds: Histogram,
    /// Requests whose sandbox was stopped, by reason (deadline, fuel, memory, trap, error).
    pub sandbox_kills: IntCounterVec,
    /// 1 when process cells get cgroup limits (the runtime's cgroup is delegated), 0 when
    /// they run with rlimits alone; unset until the first process cell starts.
    pub process_cgroup_limits: IntGauge,
    /// The Landlock ABI process cells are confined with: 0 without Landlock (their files,
    /// TCP, signals and abstract sockets held by user and seccomp alone), 1 and up files,
    /// 4 and up TCP, 6 and up signals and abstract sockets; unset until the first process
    /// cell arrives.
    pub process_landlock_abi: IntGauge,
    /// Durable requests waiting or handed out and not yet settled, by service and verb.
    pub durable_pending: IntGaugeVec,
    /// Durable requests delivered again, by service and verb.
    pub durable_redeliveries: IntCounterVec,
    /// Durable requests moved to the dead-letter stream, by service and verb.
    pub dead_letters: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("cellbus_runtime".into()), None)
            .expect("a fixed prefix is a valid registry prefix");
        Self::register(registry)
    }

    /// Creates every metric and registers it with `registry`.
    pub fn register(registry: Registry) -> Self {
        let fast = exponential_buckets(0.000_01, 2.0, 20).expect("valid buckets");
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new("requests_total", "Requests answered, by outcome."),
                &["service", "verb", "outcome"],
            )
            .expect("valid metric"),
            request_seconds: HistogramVec::new(
                HistogramOpts::new("request_duration_seconds", "Time to answer a request.")
                    .buckets(fast.clone()),
                &["service", "verb"],
            )
            .expect("valid metric"),
            in_flight: IntGaugeVec::new(
                Opts::new("in_flight", "Requests being run."),
                &["service"],
            )
            .expect("valid metric"),
            dropped: IntCounterVec::new(
                Opts::new("dropped_total", "Messages dropped without a reply."),
                &["reason"],
            )
            .expect("valid metric"),
            instantiate_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "instantiate_duration_seconds",
                    "Time to instantiate a cell.",
                )
                .buckets(fast),
            )
            .expect("valid metric"),
            module_compiles: IntCounter::new("module_compiles_total", "Modules compiled.")
                .expect("valid metric"),
            module_cache_hits: IntCounter::new(
                "module_cache_hits_total",
                "Modules loaded from the compiled code cache.",
            )
            .expect("valid metric"),
            compile_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "module_compile_duration_seconds",
                    "Time to compile a module.",
                )
                .buckets(exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
            )
            .expect("valid metric"),
            sandbox_kills: IntCounterVec::new(
                Opts::new("sandbox_kills_total", "Requests whose sandbox was stopped."),
                &["reason"],
            )
            .expect("valid metric"),
            process_cgroup_limits: IntGauge::new(
                "process_cgroup_limits",
                "Whether process cells run in cgroup leaves with memory, cpu and pids limits.",
            )
            .expect("valid metric"),
            process_landlock_abi: IntGauge::new(
                "process_landlock_abi",
                "The Landlock ABI process cells are confined with (0: none).",
            )
            .expect("valid metric"),
            durable_pending: IntGaugeVec::new(
                Opts::new(
                    "durable_pending",
                    "Durable requests waiting in the stream or handed out and not yet settled.",
                ),
                &["service", "verb"],
            )
            .expect("valid metric"),
            durable_redeliveries: IntCounterVec::new(
                Opts::new(
                    "durable_redeliveries_total",
                    "Durable requests delivered again.",
                ),
                &["service", "verb"],
            )
            .expect("valid metric"),
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "dead_letters_total",
                    "Durable requests moved to the dead-letter stream.",
                ),
                &["service", "verb"],
            )
            .expect("valid metric"),
            registry,
        };
        for collector in [
            Box::new(metrics.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.request_seconds.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.dropped.clone()),
            Box::new(metrics.instantiate_seconds.clone()),
            Box::new(metrics.module_compiles.clone()),
            Box::new(metrics.module_cache_hits.clone()),
            Box::new(metrics.compile_seconds.clone()),
            Box::new(metrics.sandbox_kills.clone()),
            Box::new(metrics.process_cgroup_limits.clone()),
            Box::new(metrics.process_landlock_abi.clone()),
            Box::new(metrics.durable_pending.clone()),
            Box::new(metrics.durable_redeliveries.clone()),
            Box::new(metrics.dead_letters.clone()),
        ] {
            metrics
                .registry
                .register(collector)
                .expect("each metric is registered once");
        }
        metrics
    }

    /// The text exposition of every metric.
    /// Counts one answered request and how long it took.
    /// Counts one answered request; `outcome` is `ok` or the error's code.
    pub fn answered(&self, service: &str, verb: &str, outcome: &str, took: std::time::Duration) {
        self.requests
            .with_label_values(&[service, verb, outcome])
            .inc();
        self.request_seconds
            .with_label_values(&[service, verb])
            .observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        cellbus_control::metrics::render(&self.registry)
    }
}

/// The series one verb's requests update, resolved once per loaded verb: a request that
/// succeeds then looks up no labels.
pub struct VerbMetrics {
    service: String,
    verb: String,
    /// Made on the first success, so a verb that never succeeded shows no `ok` series.
    answered_ok: OnceLock<IntCounter>,
    seconds: Histogram,
    in_flight: IntGauge,
}

impl Metrics {
    /// The series of `service`'s `verb`.
    pub fn verb(&self, service: &str, verb: &str) -> VerbMetrics {
        VerbMetrics {
            service: service.to_owned(),
            verb: verb.to_owned(),
            answered_ok: OnceLock::new(),
            seconds: self.request_seconds.with_label_values(&[service, verb]),
            in_flight: self.in_flight.with_label_values(&[service]),
        }
    }
}

impl VerbMetrics {
    /// Requests of the service being run.
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// Counts one answered request of `outcome`, which took `took`.
    pub fn answered(&self, metrics: &Metrics, outcome: &str, took: std::time::Duration) {
        if outcome == "ok" {
            self.answered_ok
                .get_or_init(|| {
                    metrics
                        .requests
                        .with_label_values(&[&self.service, &self.verb, "ok"])
                })
                .inc();
        } else {
            metrics
                .requests
                .with_label_values(&[&self.service, &self.verb, outcome])
                .inc();
        }
        self.seconds.observe(took.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
