//! `cellbus bench`: the same request/reply load, side by side in one run, against a raw
//! async-nats echo responder in a queue group and against the `echo` cell served by this
//! runtime, both through one nats-server on loopback. It prints requests per second and
//! latency percentiles of each and their ratios, and the CPU each side costs per request:
//! this process's (the load generator and the responder, or the load generator and the
//! runtime, so the difference is the runtime's overhead over a raw responder) and the
//! NATS servers' it started.
//!
//! `cellbus bench --durable` does the same for durable requests: the raw side is the
//! least a JetStream service does (publish to a work-queue stream and wait for the
//! publish ack, a pull consumer that replies and acks), the cellbus side is the echo cell
//! with a durable verb; both streams are on file storage.
//!
//! `--cluster` runs either on a private three-node JetStream cluster instead of one
//! server, with three copies of every stream and bucket (`--replicas` sets another
//! count, also for a cluster given with `--nats-url`).

use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use cellbus_contracts::assignment::PoolAssignment;
use cellbus_contracts::resources::{CellPoolSpec, CellSpec};
use cellbus_contracts::status::LoadState;
use cellbus_contracts::wire::Request;
use cellbus_control::NatsArgs;
use futures::StreamExt;
use serde_json::json;

use crate::call::parse_duration;
use crate::server::Identity;
use crate::up::LocalNats;
use crate::{EngineArgs, Node};

/// The echo cell of examples/echo, built into the binary so the bench needs no files.
pub const ECHO_WASM: &[u8] = include_bytes!("../../examples/echo/echo.wasm");
const RAW_SUBJECT: &str = "bench.raw.echo";
const RAW_DURABLE_SUBJECT: &str = "bench.raw.durable";
const RAW_STREAM: &str = "BENCH_RAW";

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Requesters running at once, each waiting for its reply before the next request.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Bytes of text in each request's payload.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// How long each side is measured.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load sent to each side before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Durable requests through JetStream instead of request/reply.
    #[arg(long)]
    pub durable: bool,
    /// Run on a private three-node JetStream cluster (three copies of each stream).
    #[arg(long, conflicts_with = "nats_url")]
    pub cluster: bool,
    /// Copies of each stream and bucket: 3 with --cluster, 1 otherwise.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: Option<u8>,
    /// NATS to use instead of starting a private server (several URLs comma-separated).
    #[arg(long = "nats-url", env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Up(#[from] crate::up::UpError),
    #[error(transparent)]
    Runtime(#[from] crate::Error),
    #[error(transparent)]
    Control(#[from] cellbus_control::Error),
    #[error("the echo cell did not load: {0}")]
    NotLoaded(String),
    #[error("subscribing the raw responder")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("setting up the raw JetStream side: {0}")]
    RawJetStream(String),
    #[error(transparent)]
    StreamPlan(#[from] cellbus_contracts::stream::StreamPlanError),
}

/// What one side measured.
#[derive(Debug, Clone)]
pub struct Side {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Sorted latencies in microseconds.
    latencies: Vec<u32>,
    /// CPU time this process spent while the side ran.
    pub cpu: Duration,
    /// CPU time the NATS servers spent meanwhile, when the bench started them.
    pub server_cpu: Option<Duration>,
}

impl Side {
    /// CPU microseconds per answered request of `cpu`.
    fn per_request(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }

    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of latency in microseconds.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies[index])
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    /// What was measured: request/reply or durable, on what.
    pub kind: String,
    pub raw: Side,
    pub cellbus: Side,
}

impl Report {
    /// The table `cellbus bench` prints.
    pub fn table(&self, args: &BenchArgs) -> String {
        let server_cpu = |side: &Side| {
            side.server_cpu.map_or_else(
                || "-".to_owned(),
                |cpu| format!("{:.1}", side.per_request(cpu)),
            )
        };
        let row = |name: &str, side: &Side| {
            format!(
                "{name:<10} {:>12.0} {:>10.0} {:>10.0} {:>10.0} {:>8} {:>10.1} {:>10}\n",
                side.per_second(),
                side.quantile(0.5),
                side.quantile(0.99),
                side.quantile(0.999),
                side.errors,
                side.per_request(side.cpu),
                server_cpu(side),
            )
        };
        let (raw_cpu, cellbus_cpu) = (
            self.raw.per_request(self.raw.cpu),
            self.cellbus.per_request(self.cellbus.cpu),
        );
        let ratio = |a: f64, b: f64| a / b;
        format!(
            "{}, {} concurrent, {} B payload, {:?} per side\n\
             {:<10} {:>12} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10}\n{}{}\
             ratios (cellbus / raw): throughput {:.2}, p50 {:.2}, p99 {:.2}, p99.9 {:.2}\n\
             CPU per request in this process (load generator + responder): raw {:.1} µs, \
             cellbus {:.1} µs; the runtime's overhead {:.1} µs\n",
            self.kind,
            args.concurrency,
            args.payload,
            args.duration,
            "side",
            "req/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "errors",
            "cpu µs/req",
            "nats µs/req",
            row("raw", &self.raw),
            row("cellbus", &self.cellbus),
            ratio(self.cellbus.per_second(), self.raw.per_second()),
            ratio(self.cellbus.quantile(0.5), self.raw.quantile(0.5)),
            ratio(self.cellbus.quantile(0.99), self.raw.quantile(0.99)),
            ratio(self.cellbus.quantile(0.999), self.raw.quantile(0.999)),
            raw_cpu,
            cellbus_cpu,
            cellbus_cpu - raw_cpu,
        )
    }
}

/// Nodes of the private cluster `--cluster` starts.
const CLUSTER_NODES: usize = 3;

impl BenchArgs {
    fn replicas(&self) -> u8 {
        self.replicas
            .unwrap_or(if self.cluster { CLUSTER_NODES as u8 } else { 1 })
    }

    /// What the sides ran on, for the report's first line.
    fn setting(&self) -> String {
        let nats = match (&self.nats_url, self.cluster) {
            (Some(_), _) => "the given NATS",
            (None, true) => "a private three-node cluster",
            (None, false) => "a private nats-server",
        };
        match self.replicas() {
            1 => nats.to_owned(),
            n => format!("{nats}, {n} copies"),
        }
    }
}

pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let local = match (&args.nats_url, args.cluster) {
        (Some(_), _) => None,
        (None, true) => Some(LocalNats::start_cluster(CLUSTER_NODES)?),
        (None, false) => Some(LocalNats::start()?),
    };
    let url = args
        .nats_url
        .clone()
        .or_else(|| local.as_ref().map(|l| l.url.clone()))
        .expect("a URL is given or a server was started");
    let nats = NatsArgs::url(&url);
    let replicas = args.replicas();
    if replicas > 1 || args.cluster {
        make_buckets(&nats, replicas, local.is_some()).await?;
    }
    let node = Node::start(&nats, &args.engine, "cellbus bench runtime").await?;

    // The echo cell, in a pool of its own, with room for every requester.
    let digest = cellbus_control::push_module(&node.shared.buckets.modules, ECHO_WASM).await?;
    let pool: CellPoolSpec =
        serde_json::from_value(json!({"runtime": "wasm"})).expect("a literal pool spec parses");
    let mut cell: CellSpec = serde_json::from_value(json!({
        "service": "echo",
        "verbs": [{"name": "say"}],
        "module": {"digest": digest},
        "limits": {"maxInFlight": (args.concurrency * 2).min(10_000)},
    }))
    .expect("a literal cell spec parses");
    if args.durable {
        cell = serde_json::from_value(json!({
            "service": "echo",
            "verbs": [{"name": "say", "delivery": "durable"}],
            "module": {"digest": digest},
            "stream": {},
            "limits": {"maxInFlight": (args.concurrency * 2).min(10_000)},
        }))
        .expect("a literal cell spec parses");
        let js = async_nats::jetstream::new(node.shared.client.clone());
        if let Some(plan) = cellbus_contracts::stream::stream_plan_with(&cell, replicas)? {
            cellbus_control::ensure_stream(&js, &plan).await?;
        }
    }
    let assignment = PoolAssignment::new("bench", "bench", &pool, [("echo", &cell)])
        .expect("echo is a valid service");
    cellbus_control::write_assignment(&node.shared.buckets.assignments, &assignment).await?;
    let server = node.serve_pool(Identity {
        namespace: "bench".into(),
        pool: "bench".into(),
        pod: "bench".into(),
    });
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        match server.states().first() {
            Some(state) if state.state == LoadState::Loaded => break,
            Some(state) => {
                return Err(BenchError::NotLoaded(
                    state.reason.clone().unwrap_or_default(),
                ))
            }
            None if Instant::now() > limit => {
                return Err(BenchError::NotLoaded("no load state after 60 s".into()))
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }

    let clock = CpuClock {
        servers: local.as_ref().map(LocalNats::pids).unwrap_or_default(),
    };
    if args.durable {
        let report = durable(args, &nats, &clock).await;
        server.shutdown().await;
        drop(local);
        return report;
    }

    // The raw responder: the least a NATS service can do, replying with what it got.
    let responder = cellbus_control::connect_once(&nats, "cellbus bench raw").await?;
    let mut requests = responder
        .queue_subscribe(RAW_SUBJECT, "bench.raw".into())
        .await
        .map_err(BenchError::Subscribe)?;
    let echo_client = responder.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = echo_client.publish(reply, message.payload).await;
            }
        }
    });

    let requester = cellbus_control::connect_once(&nats, "cellbus bench load").await?;
    let body = Bytes::from(
        serde_json::to_vec(&Request::new(
            "echo",
            "say",
            json!({"text": "x".repeat(args.payload)}),
        ))
        .expect("a request encodes"),
    );
    load(
        &requester,
        RAW_SUBJECT,
        &body,
        args.concurrency,
        args.warmup,
    )
    .await;
    load(
        &requester,
        "cbs.echo.say",
        &body,
        args.concurrency,
        args.warmup,
    )
    .await;
    let raw = clock
        .measure(load(
            &requester,
            RAW_SUBJECT,
            &body,
            args.concurrency,
            args.duration,
        ))
        .await;
    let cellbus = clock
        .measure(load(
            &requester,
            "cbs.echo.say",
            &body,
            args.concurrency,
            args.duration,
        ))
        .await;
    server.shutdown().await;
    drop(local);
    Ok(Report {
        kind: format!("request/reply on {}", args.setting()),
        raw,
        cellbus,
    })
}

/// The buckets with `replicas` copies each. A cluster just `started` answers JetStream
/// requests only once it has elected its meta leader: asked again for a while.
async fn make_buckets(nats: &NatsArgs, replicas: u8, started: bool) -> Result<(), BenchError> {
    let client = cellbus_control::connect_once(nats, "cellbus bench setup").await?;
    let js = async_nats::jetstream::new(client);
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        match cellbus_control::ensure_buckets_replicated(&js, usize::from(replicas)).await {
            Ok(_) => return Ok(()),
            Err(_) if started && Instant::now() < limit => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Both durable sides: the raw JetStream service, set up here, and the echo cell's
/// durable verb, already served.
async fn durable(
    args: &BenchArgs,
    nats: &NatsArgs,
    clock: &CpuClock,
) -> Result<Report, BenchError> {
    use async_nats::jetstream::{self, consumer, stream};

    let raw_error = |e: &dyn std::fmt::Display| BenchError::RawJetStream(e.to_string());
    let service = cellbus_control::connect_once(nats, "cellbus bench raw").await?;
    let js = jetstream::new(service.clone());
    let _ = js.delete_stream(RAW_STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: RAW_STREAM.into(),
            subjects: vec![RAW_DURABLE_SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            num_replicas: usize::from(args.replicas()),
            ..Default::default()
        })
        .await
        .map_err(|e| raw_error(&e))?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: (args.concurrency * 2) as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| raw_error(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| raw_error(&e))?;
    let replier = service.clone();
    let responder = tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let reply_to = message
                .headers
                .as_ref()
                .and_then(|h| h.get(cellbus_contracts::wire::headers::REPLY_TO))
                .map(|v| v.as_str().to_owned());
            if let Some(reply_to) = reply_to {
                let _ = replier.publish(reply_to, message.payload.clone()).await;
            }
            let _ = message.ack().await;
        }
    });

    let requester = cellbus_control::connect_once(nats, "cellbus bench load").await?;
    let payload = json!({"text": "x".repeat(args.payload)});
    let targets = [RAW_DURABLE_SUBJECT, "cbs.echo.say"];
    for subject in targets {
        load_durable(&requester, subject, &payload, args.concurrency, args.warmup).await;
    }
    let raw = clock
        .measure(load_durable(
            &requester,
            RAW_DURABLE_SUBJECT,
            &payload,
            args.concurrency,
            args.duration,
        ))
        .await;
    let cellbus = clock
        .measure(load_durable(
            &requester,
            "cbs.echo.say",
            &payload,
            args.concurrency,
            args.duration,
        ))
        .await;
    responder.abort();
    let _ = js.delete_stream(RAW_STREAM).await;
    Ok(Report {
        kind: format!(
            "durable (JetStream publish, pull, reply, ack) on {}",
            args.setting()
        ),
        raw,
        cellbus,
    })
}

/// `concurrency` callers, each publishing a fresh request envelope to `subject` through
/// JetStream (with its id as `Nats-Msg-Id` and its own reply subject), waiting for the
/// publish ack and then the reply, until `duration` has passed.
async fn load_durable(
    client: &Client,
    subject: &'static str,
    payload: &serde_json::Value,
    concurrency: usize,
    duration: Duration,
) -> Side {
    use cellbus_contracts::wire::headers;

    let started = Instant::now();
    let end = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let js = async_nats::jetstream::new(client.clone());
                let inbox = client.new_inbox();
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
                    return (latencies, 1);
                };
                while Instant::now() < end {
                    let request = Request::new("echo", "say", payload.clone());
                    let body =
                        Bytes::from(serde_json::to_vec(&request).expect("a request encodes"));
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(headers::MSG_ID, request.id.to_string().as_str());
                    headers.insert(headers::REPLY_TO, inbox.as_str());
                    let sent = Instant::now();
                    let stored = match js.publish_with_headers(subject, headers, body).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    let replied = stored
                        && matches!(
                            tokio::time::timeout(Duration::from_secs(5), replies.next()).await,
                            Ok(Some(_))
                        );
                    if replied {
                        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    collect(workers, started).await
}

/// `concurrency` requesters, each sending `body` to `subject` and waiting for the reply,
/// until `duration` has passed.
async fn load(
    client: &Client,
    subject: &'static str,
    body: &Bytes,
    concurrency: usize,
    duration: Duration,
) -> Side {
    let started = Instant::now();
    let end = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < end {
                    let sent = Instant::now();
                    match client.request(subject, body.clone()).await {
                        Ok(reply) if !reply.payload.is_empty() => latencies
                            .push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    collect(workers, started).await
}

/// One side's figures from its workers' latencies and error counts.
async fn collect(workers: Vec<tokio::task::JoinHandle<(Vec<u32>, u64)>>, started: Instant) -> Side {
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((mut mine, failed)) = worker.await {
            latencies.append(&mut mine);
            errors += failed;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Side {
        requests: latencies.len() as u64,
        errors,
        elapsed,
        latencies,
        cpu: Duration::ZERO,
        server_cpu: None,
    }
}

/// Reads the CPU time of this process and of the NATS servers the bench started.
struct CpuClock {
    servers: Vec<u32>,
}

/// CPU time spent so far.
#[derive(Clone, Copy)]
struct CpuTime {
    process: Duration,
    servers: Option<Duration>,
}

impl CpuClock {
    fn now(&self) -> CpuTime {
        let process = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        let servers = if self.servers.is_empty() {
            None
        } else {
            self.servers.iter().map(|pid| server_cpu(*pid)).sum()
        };
        CpuTime {
            process: Duration::new(
                u64::try_from(process.tv_sec).unwrap_or_default(),
                u32::try_from(process.tv_nsec).unwrap_or_default(),
            ),
            servers,
        }
    }

    /// `side` run, with the CPU time spent while it ran.
    async fn measure(&self, side: impl std::future::Future<Output = Side>) -> Side {
        let before = self.now();
        let mut side = side.await;
        let after = self.now();
        side.cpu = after.process.saturating_sub(before.process);
        side.server_cpu = after
            .servers
            .zip(before.servers)
            .map(|(after, before)| after.saturating_sub(before));
        side
    }
}

/// User and system CPU time of process `pid`, from `/proc/{pid}/stat` (in clock ticks,
/// 10 ms each: fine over seconds of load).
fn server_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses; the fields after its last `)` start
    // with the state, the third field, so utime and stime (14 and 15) are 11 and 12 here.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}
