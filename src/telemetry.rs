//! Logs and traces.
//!
//! Logs: human-readable text by default, one JSON object per line with
//! `--log-format json` (what log shippers and the test harness read); each
//! line logged inside a traced span carries that span's `trace_id`. The
//! filter is `RUST_LOG`, `info` when unset.
//!
//! Traces: only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are
//! exported over OTLP/HTTP (protobuf) in batches, with W3C trace context
//! propagated through gRPC metadata and NATS headers (see
//! `switchboard_proto::trace`). Without it nothing is exported.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a role logs and traces (tools log text to stderr and trace nothing).
#[derive(Debug, Clone, clap::Args)]
pub struct LogSettings {
    /// Log line format.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP/HTTP endpoint to export traces to (e.g. http://collector:4318);
    /// no traces are exported when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The service name traces carry; `switchboard-<role>` by default.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
}

/// Flushes the spans still buffered when dropped (at exit).
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Where logs go: a role's to stdout (the container log), a tool's to
/// stderr, so that its stdout is only its output (`TOKEN=$(switchboard
/// token ...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogOutput {
    Stdout,
    Stderr,
}

/// Installs a role's logging (on stdout), and tracing when configured; call
/// once, first thing.
pub fn init(settings: &LogSettings, role: &str) -> anyhow::Result<Telemetry> {
    // An empty endpoint (as compose passes an unset variable) means none.
    let endpoint = settings
        .otlp_endpoint
        .as_deref()
        .filter(|endpoint| !endpoint.is_empty());
    let tracer_provider = match endpoint {
        Some(endpoint) => {
            let exporter = SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()?;
            let name = settings
                .otel_service_name
                .clone()
                .unwrap_or_else(|| format!("switchboard-{role}"));
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(name).build())
                .build();
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            switchboard_proto::trace::enable();
            Some(provider)
        }
        None => None,
    };
    install(
        settings.log_format,
        LogOutput::Stdout,
        tracer_provider.as_ref(),
    )?;
    Ok(Telemetry { tracer_provider })
}

/// Installs a tool's logging: text on stderr, no traces.
pub fn init_tool() -> anyhow::Result<Telemetry> {
    install(LogFormat::Text, LogOutput::Stderr, None)?;
    Ok(Telemetry {
        tracer_provider: None,
    })
}

/// Installs the subscriber: `RUST_LOG` (`info` by default), the log lines,
/// and the spans' exporter when there is one.
fn install(
    format: LogFormat,
    output: LogOutput,
    tracer_provider: Option<&SdkTracerProvider>,
) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = move || -> Box<dyn std::io::Write> {
        match output {
            LogOutput::Stdout => Box::new(std::io::stdout()),
            LogOutput::Stderr => Box::new(std::io::stderr()),
        }
    };
    let terminal = match output {
        LogOutput::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        LogOutput::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let logs = match format {
        // Colours only for a terminal, not for a file or a container log.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(terminal)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let traces = tracer_provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("switchboard"))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|error| anyhow::anyhow!("cannot install logging: {error}"))
}
