//! The edge's settings and the gRPC clients built from them.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_proto::in_process::{self, Directory, Link};
use switchboard_proto::metrics::{Side, Timed, TimedLayer};
use switchboard_proto::v1::detection_service_client::DetectionServiceClient;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::statistics_service_client::StatisticsServiceClient;
use tonic::transport::{Channel, Endpoint};
use tower::Layer;

use crate::health::ServiceChannels;
use crate::step_streams::{LaneTarget, LocalDetection, StepDetection, StepStreams};

/// How the edge calls a service — a TCP channel, or the service itself
/// when it runs in this process ([`in_process`]) — with every call timed
/// into the gRPC client histograms.
pub type TimedChannel = Timed<Link>;

/// Default and documented limit on one inbound WebSocket message.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How the edge serves clients. Each option is declared once, here, with
/// its default; the groups are the subsystems that use them.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeSettings {
    /// Largest inbound WebSocket message, in bytes; a larger one closes the
    /// socket with 1009 (message too big).
    #[arg(
        long = "max-message-bytes",
        env = "SWITCHBOARD_MAX_MESSAGE_BYTES",
        default_value_t = DEFAULT_MAX_MESSAGE_BYTES
    )]
    pub max_message_bytes: usize,

    /// Deadline for one gRPC call to a service, in milliseconds; past it the
    /// client gets an `error` message.
    #[arg(
        long = "grpc-timeout-ms",
        env = "SWITCHBOARD_GRPC_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub grpc_timeout_ms: u64,

    #[command(flatten)]
    pub heartbeat: HeartbeatSettings,

    /// Messages per second one alerts connection may send (bursts of twice
    /// that); beyond, it is closed with 1008.
    #[arg(
        long = "alerts-rate-limit",
        env = "SWITCHBOARD_ALERTS_RATE_LIMIT",
        default_value_t = 10
    )]
    pub alerts_rate_limit: u32,

    /// Statistics-stream connections one user may hold across the cluster;
    /// the next is refused with 1008.
    #[arg(
        long = "statistics-max-connections",
        env = "SWITCHBOARD_STATISTICS_MAX_CONNECTIONS",
        default_value_t = 5
    )]
    pub statistics_max_connections: u32,

    /// Messages per second one statistics-stream connection may send
    /// (bursts of twice that); beyond, it is closed with 1008.
    #[arg(
        long = "statistics-rate-limit",
        env = "SWITCHBOARD_STATISTICS_RATE_LIMIT",
        default_value_t = 10
    )]
    pub statistics_rate_limit: u32,

    /// Origins whose web pages may call the edge (comma-separated, e.g.
    /// `http://localhost:3000,https://dash.example.com`). Empty: any origin
    /// (CORS `*`). With a list, requests from other origins, WebSocket
    /// upgrades and Socket.IO included, are refused with 403.
    #[arg(
        long = "allowed-origins",
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Multiplexed detection streams ("lanes") the edge keeps to each
    /// detection URL, each on its own connection; every realtime session
    /// shares them, with messages batched per write. 0: one stream per
    /// session instead. Services in the edge's own process are always
    /// called with one stream per session (no network to save).
    #[arg(
        long = "detection-streams",
        env = "SWITCHBOARD_DETECTION_STREAMS",
        default_value_t = 2
    )]
    pub detection_streams: usize,

    #[command(flatten)]
    pub admission: crate::admission::AdmissionSettings,

    /// Where `/health`, `/ready` and `/metrics` are also served, apart from
    /// the clients' listener, so a flood of clients cannot take the probes
    /// (the Kubernetes manifests probe here). Unset: on the clients'
    /// listener only.
    #[arg(long = "ops-addr", env = "SWITCHBOARD_OPS_ADDR")]
    pub ops_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub auth: crate::auth::AuthSettings,

    /// Longest a drain may take on shutdown; set by the binary from its
    /// role's `--drain-timeout-secs`.
    #[arg(skip = Duration::from_secs(25))]
    pub drain_timeout: Duration,
}

impl EdgeSettings {
    /// Longest wait for one reply from a service.
    pub fn grpc_timeout(&self) -> Duration {
        Duration::from_millis(self.grpc_timeout_ms.max(1))
    }
}

/// Seed 002's heartbeat on `/ws/alerts`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct HeartbeatSettings {
    /// Seconds between the server's heartbeat `ping`s on `/ws/alerts`.
    #[arg(
        long = "heartbeat-interval-secs",
        env = "SWITCHBOARD_HEARTBEAT_INTERVAL_SECS",
        default_value_t = 30.0
    )]
    pub heartbeat_interval_secs: f64,

    /// Seconds without a heartbeat (anything from the client) after which
    /// an alerts connection is closed and cleaned up everywhere.
    #[arg(
        long = "heartbeat-timeout-secs",
        env = "SWITCHBOARD_HEARTBEAT_TIMEOUT_SECS",
        default_value_t = 60.0
    )]
    pub heartbeat_timeout_secs: f64,
}

impl HeartbeatSettings {
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval_secs.clamp(0.01, 3600.0))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_timeout_secs.clamp(0.01, 86_400.0))
    }
}

/// Where the services are.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceUrls {
    /// gRPC URL of the session service.
    #[arg(
        long = "session-url",
        env = "SWITCHBOARD_SESSION_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub session_url: String,
    /// gRPC URL of the detection service; several, comma-separated, are
    /// detection replicas that realtime sessions spread over (and move
    /// between when one fails). Other detection calls go to one replica at
    /// a time, and to the next when one fails.
    #[arg(
        long = "detection-url",
        env = "SWITCHBOARD_DETECTION_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub detection_url: String,
    /// gRPC URL of the statistics service.
    #[arg(
        long = "statistics-url",
        env = "SWITCHBOARD_STATISTICS_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub statistics_url: String,
}

impl ServiceUrls {
    /// The detection replicas' URLs (at least one).
    pub fn detection_urls(&self) -> Vec<&str> {
        let urls: Vec<&str> = self
            .detection_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect();
        if urls.is_empty() {
            vec![self.detection_url.as_str()]
        } else {
            urls
        }
    }

    /// The URLs of services listening on these local addresses.
    pub fn local(session: SocketAddr, detection: SocketAddr, statistics: SocketAddr) -> Self {
        Self {
            session_url: format!("http://{session}"),
            detection_url: format!("http://{detection}"),
            statistics_url: format!("http://{statistics}"),
        }
    }
}

/// A service URL that is not a valid gRPC endpoint.
#[derive(Debug, thiserror::Error)]
#[error("invalid service url {url:?}: {source}")]
pub struct InvalidUrl {
    url: String,
    source: tonic::transport::Error,
}

/// The gRPC clients of the three services. Channels connect lazily and
/// reconnect by themselves, so the edge starts while a service is down and
/// recovers when it comes back.
#[derive(Debug, Clone)]
pub struct Backends {
    pub session: SessionServiceClient<TimedChannel>,
    pub detection: DetectionServiceClient<TimedChannel>,
    /// How realtime sessions reach their step detectors.
    pub steps: StepDetection,
    pub statistics: StatisticsServiceClient<TimedChannel>,
    /// Raw channels, for health checks.
    pub(crate) channels: ServiceChannels,
}

fn channel(url: &str, timeout: Option<Duration>) -> Result<Channel, InvalidUrl> {
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(|source| InvalidUrl {
        url: url.to_owned(),
        source,
    })?;
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl Backends {
    pub fn connect_lazy(urls: &ServiceUrls, settings: &EdgeSettings) -> Result<Self, InvalidUrl> {
        let timeout = settings.grpc_timeout();
        let session = channel(&urls.session_url, Some(timeout))?;
        // Detection streams live as long as their sessions: no per-call
        // deadline on that channel, the edge bounds each reply instead.
        let detection_urls = urls.detection_urls();
        let detection = channel(detection_urls[0], None)?;
        let statistics = channel(&urls.statistics_url, Some(timeout))?;
        let timed = |channel: &Channel| {
            TimedLayer(Side::Client).layer(in_process::over_network(channel.clone()))
        };
        // Calls other than the realtime lanes (frames, alerts, and the
        // streams of `--detection-streams 0`) go to one replica at a time,
        // and to the next when one fails.
        let replicas = detection_urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let channel = match index {
                    0 => detection.clone(),
                    _ => channel(url, None)?,
                };
                Ok(((*url).to_owned(), channel))
            })
            .collect::<Result<Vec<_>, InvalidUrl>>()?;
        let detection_calls = TimedLayer(Side::Client).layer(match replicas.as_slice() {
            [_] => in_process::over_network(detection.clone()),
            several => in_process::failover(
                several
                    .iter()
                    .map(|(_, channel)| in_process::over_network(channel.clone()))
                    .collect(),
            ),
        });
        let steps = if settings.detection_streams == 0 {
            StepDetection::PerSession(DetectionServiceClient::new(detection_calls.clone()))
        } else {
            // Each lane on a connection of its own, so that behind a
            // Service each may reach another replica.
            let mut lanes = Vec::new();
            for url in &detection_urls {
                for _ in 0..settings.detection_streams {
                    lanes.push(LaneTarget {
                        name: (*url).to_owned(),
                        client: DetectionServiceClient::new(timed(&channel(url, None)?)),
                    });
                }
            }
            StepDetection::Multiplexed(StepStreams::start(lanes))
        };
        Ok(Self {
            session: SessionServiceClient::new(timed(&session)),
            detection: DetectionServiceClient::new(detection_calls),
            steps,
            statistics: StatisticsServiceClient::new(timed(&statistics)),
            channels: ServiceChannels {
                session,
                detection: replicas,
                statistics,
            },
        })
    }

    /// Clients of services that run in this process: each call goes into
    /// the service found in `directory` at its address (`addrs`: session,
    /// detection, statistics), without a socket. Health checks still go
    /// over TCP to `urls`, as they would from outside. Waits until the
    /// three servers are up.
    pub async fn in_process(
        urls: &ServiceUrls,
        settings: &EdgeSettings,
        directory: &Directory,
        addrs: [SocketAddr; 3],
    ) -> Result<Self, InvalidUrl> {
        let mut network_settings = settings.clone();
        network_settings.detection_streams = 0;
        let over_network = Self::connect_lazy(urls, &network_settings)?;
        let timeout = settings.grpc_timeout();
        let [session, detection, statistics] = addrs;
        let link = |routes, timeout| {
            TimedLayer(Side::Client).layer(in_process::in_process(routes, timeout))
        };
        let steps =
            StepDetection::InProcess(LocalDetection(directory.step_sessions(detection).await));
        let detection = DetectionServiceClient::new(link(directory.routes(detection).await, None));
        Ok(Self {
            session: SessionServiceClient::new(link(
                directory.routes(session).await,
                Some(timeout),
            )),
            steps,
            detection,
            statistics: StatisticsServiceClient::new(link(
                directory.routes(statistics).await,
                Some(timeout),
            )),
            channels: over_network.channels,
        })
    }
}
