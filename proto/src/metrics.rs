//! Metrics: one set per process (every role of `all` shares it), exposed
//! as Prometheus/OpenMetrics text by the edge's `/metrics` and by each
//! service role's `--metrics-addr`.
//!
//! What is measured, and where it is counted:
//! - `switchboard_connections{endpoint}`: open WebSocket connections (edge).
//! - `switchboard_messages_total{direction}`: client messages in and out (edge).
//! - `switchboard_client_errors_total{kind}`: errors a client was told of,
//!   by code (`invalid_json`, `service_unavailable`, …) (edge).
//! - `switchboard_grpc_client_duration_seconds{method}` and
//!   `switchboard_grpc_server_duration_seconds{method}`: gRPC latency
//!   histograms, until the response headers (the [`Timed`] layer).
//! - `switchboard_nats_publish_failures_total`: publishes NATS refused (bus).
//! - `switchboard_outbound_drops_total{queue}`: messages or clients dropped
//!   because a bounded queue was full (`hub_client`, `room_member`,
//!   `local_bus`).

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A connection gauge, as [`Metrics::connection`] hands it out.
pub use prometheus_client::metrics::gauge::Gauge as ConnectionGauge;

type Histograms = Family<MethodLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    pub connections: Family<EndpointLabel, Gauge>,
    pub messages: Family<DirectionLabel, Counter>,
    pub client_errors: Family<KindLabel, Counter>,
    pub grpc_client_duration: Histograms,
    pub grpc_server_duration: Histograms,
    pub nats_publish_failures: Counter,
    pub outbound_drops: Family<QueueLabel, Counter>,
    pub refused_connections: Family<ReasonLabel, Counter>,
    /// Every outbound drop, whatever the queue: the edge's report (and the
    /// console) shows one number.
    drops_total: AtomicU64,
    /// Every client error, whatever the kind, for the same report.
    client_errors_total: AtomicU64,
    /// `messages{direction="in"}` and `{direction="out"}`, resolved once:
    /// they are counted for every WebSocket message.
    messages_in: Counter,
    messages_out: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let messages: Family<DirectionLabel, Counter> = Family::default();
    let direction = |direction: &str| {
        messages
            .get_or_create(&DirectionLabel {
                direction: direction.to_owned(),
            })
            .clone()
    };
    let (messages_in, messages_out) = (direction("in"), direction("out"));
    Metrics {
        connections: Family::default(),
        messages,
        messages_in,
        messages_out,
        client_errors: Family::default(),
        grpc_client_duration: Family::new_with_constructor(latency_histogram),
        grpc_server_duration: Family::new_with_constructor(latency_histogram),
        nats_publish_failures: Counter::default(),
        outbound_drops: Family::default(),
        refused_connections: Family::default(),
        drops_total: AtomicU64::new(0),
        client_errors_total: AtomicU64::new(0),
    }
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    pub fn client_error(&self, kind: &str) {
        self.client_errors_total.fetch_add(1, Ordering::Relaxed);
        self.client_errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn outbound_drop(&self, queue: &str) {
        self.drops_total.fetch_add(1, Ordering::Relaxed);
        self.outbound_drops
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .inc();
    }

    /// Outbound drops of every queue since the process started.
    pub fn drops(&self) -> u64 {
        self.drops_total.load(Ordering::Relaxed)
    }

    /// Client errors of every kind since the process started.
    pub fn client_errors(&self) -> u64 {
        self.client_errors_total.load(Ordering::Relaxed)
    }

    /// A connection refused before it was read (`max_connections`,
    /// `per_ip`, `connect_rate`).
    pub fn refused_connection(&self, reason: &str) {
        self.refused_connections
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn message(&self, direction: &'static str) {
        match direction {
            "in" => self.messages_in.inc(),
            "out" => self.messages_out.inc(),
            other => self
                .messages
                .get_or_create(&DirectionLabel {
                    direction: other.to_owned(),
                })
                .inc(),
        };
    }

    pub fn connection(&self, endpoint: &str) -> Gauge {
        self.connections
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .clone()
    }
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric as OpenMetrics text.
pub fn encode() -> String {
    let metrics = metrics();
    let mut registry = Registry::with_prefix("switchboard");
    registry.register(
        "connections",
        "Open WebSocket connections",
        metrics.connections.clone(),
    );
    registry.register(
        "messages",
        "Client messages in and out",
        metrics.messages.clone(),
    );
    registry.register(
        "client_errors",
        "Errors a client was told of, by code",
        metrics.client_errors.clone(),
    );
    registry.register(
        "grpc_client_duration_seconds",
        "gRPC calls made, until their response headers",
        metrics.grpc_client_duration.clone(),
    );
    registry.register(
        "grpc_server_duration_seconds",
        "gRPC calls served, until their response headers",
        metrics.grpc_server_duration.clone(),
    );
    registry.register(
        "nats_publish_failures",
        "Publishes NATS refused",
        metrics.nats_publish_failures.clone(),
    );
    registry.register(
        "outbound_drops",
        "Messages or clients dropped because a bounded queue was full",
        metrics.outbound_drops.clone(),
    );
    registry.register(
        "refused_connections",
        "Connections refused before they were read, by reason",
        metrics.refused_connections.clone(),
    );
    // Tasks alive in this process's runtime: each connection has its own,
    // so a number that does not come back down when clients leave is a leak.
    let alive_tasks = Gauge::<i64>::default();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        alive_tasks.set(i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
    }
    registry.register(
        "runtime_alive_tasks",
        "Tasks alive in the process's async runtime",
        alive_tasks,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
    text
}

/// Which side of a gRPC call a [`Timed`] service measures.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Client,
    Server,
}

fn observe_call(side: Side, method: &MethodLabel, took: Duration) {
    let histograms = match side {
        Side::Client => &metrics().grpc_client_duration,
        Side::Server => &metrics().grpc_server_duration,
    };
    histograms.get_or_create(method).observe(took.as_secs_f64());
}

/// Counts a call to `method` (its path, `/package.Service/Method`) that
/// took `took` to answer, on `side`, as [`Timed`] does for calls through
/// it: for a call made in this process without the gRPC stack
/// ([`crate::in_process::StepSessions`]).
pub fn record_call(side: Side, method: &str, took: Duration) {
    let method = MethodLabel {
        method: method.to_owned(),
    };
    observe_call(side, &method, took);
}

/// A tower layer that times every gRPC call by method.
#[derive(Clone, Copy, Debug)]
pub struct TimedLayer(pub Side);

impl<S> tower::Layer<S> for TimedLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timed {
            inner,
            side: self.0,
        }
    }
}

/// A gRPC service (client or server) whose calls are timed.
#[derive(Clone, Debug)]
pub struct Timed<S> {
    inner: S,
    side: Side,
}

impl<S, B, R> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let method = MethodLabel {
            method: request.uri().path().to_owned(),
        };
        let side = self.side;
        // The call's span: a client span sends its context along; a server
        // span continues the caller's.
        let span = match side {
            Side::Client => {
                let span = tracing::info_span!("grpc.client", rpc.method = %method.method, trace_id = tracing::field::Empty);
                crate::trace::continue_trace(&span, opentelemetry::Context::new());
                crate::trace::inject(&span, request.headers_mut());
                span
            }
            Side::Server => {
                let span = tracing::info_span!("grpc.server", rpc.method = %method.method, trace_id = tracing::field::Empty);
                crate::trace::continue_trace(&span, crate::trace::extract(request.headers()));
                span
            }
        };
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = response.await;
                observe_call(side, &method, started.elapsed());
                response
            }
            .instrument(span),
        )
    }
}
