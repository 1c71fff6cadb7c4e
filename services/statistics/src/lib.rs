//! The statistics service: usage counters per user and for the whole
//! cluster.
//!
//! Counters live in the `statistics` key-value bucket (JetStream KV with
//! NATS), one record per user and one for the server, each updated by
//! compare-and-swap, so every edge and every statistics replica adds to the
//! same totals and any replica reads them. Edges report usage in deltas
//! (about once a second per session, not per message), which keeps the
//! bucket's write rate far below the message rate; and each replica writes
//! the reports it holds at once, one write per user and one for the server
//! ([`usage_writer`]), so reports do not collide on hot keys.
//!
//! The number of live sessions is not a counter that could drift: it is
//! asked of the session registry each time server statistics are read.
//!
//! - [`Counters`]: the operations, usable without gRPC; they fail with a
//!   [`CountersError`], which becomes a gRPC status only at the server.
//! - [`snapshot`]: the cluster's statistics and the one `statistics_update`
//!   per interval, whatever the number of replicas.
//! - [`broadcast`]: `BroadcastService`, other backends' way to reach
//!   WebSocket clients on every edge.
//! - System events (`session_opened`, `step_detected`, `frame_processed`,
//!   `alert_raised`, …) are counted from the UI hub's subject through a
//!   queue group, so each is counted by one replica.

pub mod broadcast;
pub mod snapshot;
mod usage_writer;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use switchboard_bus::{Bus, BusError, Change, Contended, Entry, KeyValue, hub, subjects};
use switchboard_proto::error::{ErrorCode, ServiceError, reply};
use switchboard_proto::in_process::Listeners;
use switchboard_proto::server;
use switchboard_proto::v1::broadcast_service_server::BroadcastServiceServer;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::statistics_service_server::{
    StatisticsService, StatisticsServiceServer,
};
use switchboard_proto::v1::{
    CountSessionsRequest, CountSessionsResponse, GetServerStatsRequest, GetStatisticsRequest,
    GetUserStatsRequest, RecordUsageRequest, RecordUsageResponse, ServerStats, StatisticsSnapshot,
    Usage, UserStats,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

const BUCKET: &str = "statistics";
const SERVER_KEY: &str = "server";
const EVENTS_KEY: &str = "events";
/// Counted system events are written this often, summed.
const EVENT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// The system events counted (others broadcast on the hub are not).
pub const SYSTEM_EVENTS: [&str; 8] = [
    "session_opened",
    "session_closed",
    "session_timed_out",
    "session_terminated",
    "step_detected",
    "frame_processed",
    "alert_raised",
    "alert_acked",
];
/// Compare-and-swap attempts before a counter write gives up (ABORTED).
const CAS_ATTEMPTS: usize = 32;

/// The statistics service's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct StatisticsSettings {
    /// gRPC URL of the session service, asked for the live session count.
    #[arg(
        long = "session-url",
        env = "SWITCHBOARD_SESSION_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub session_url: String,

    #[command(flatten)]
    pub updates: UpdateSettings,
}

/// How often the cluster's `statistics_update` goes out: apart from the
/// session URL, which `switchboard all` does not take (its session service
/// is its own).
#[derive(Debug, Clone, clap::Args)]
pub struct UpdateSettings {
    /// Seconds between two `statistics_update` messages, cluster-wide.
    #[arg(
        long = "statistics-interval-secs",
        env = "SWITCHBOARD_STATISTICS_INTERVAL_SECS",
        default_value_t = 5.0
    )]
    pub interval_secs: f64,
}

/// Why the statistics service could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum StatisticsError {
    #[error("invalid session service url {url:?}: {source}")]
    SessionUrl {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("statistics state unavailable: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// Why a counters operation failed. Its `Display` is the message a client
/// reads; [`ServiceError`] says which status code it gets.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("corrupt statistics record: {0}")]
    Corrupt(#[source] prost::DecodeError),
    #[error("corrupt event counts: {0}")]
    CorruptEvents(#[source] serde_json::Error),
    /// Other writers kept changing `record` (a key, or "event counts").
    #[error("{record} changed concurrently too often")]
    Contended { record: String },
    /// The session registry, asked for the live sessions, failed.
    #[error("session service: {}", .0.message())]
    SessionService(#[source] Box<tonic::Status>),
    #[error("the statistics writer stopped")]
    WriterStopped,
    /// A usage batch could not be written: every report in it gets the
    /// same error.
    #[error(transparent)]
    Batch(Arc<CountersError>),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ServiceError for CountersError {
    fn error_code(&self) -> ErrorCode {
        match self {
            CountersError::Corrupt(_) | CountersError::CorruptEvents(_) => ErrorCode::Internal,
            CountersError::Contended { .. } => ErrorCode::Contended,
            CountersError::SessionService(_) | CountersError::WriterStopped => {
                ErrorCode::Unavailable
            }
            CountersError::Batch(error) => error.error_code(),
            CountersError::Bus(error) => error.error_code(),
        }
    }
}

/// Serves the counters on `listeners` until `shutdown` completes.
pub async fn serve(
    settings: StatisticsSettings,
    bus: Bus,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StatisticsError> {
    let counters = Counters::open(&settings, &bus).await?;
    let interval = Duration::from_secs_f64(settings.updates.interval_secs.clamp(0.05, 3600.0));
    let events = bus
        .queue_subscribe(
            subjects::SYSTEM_EVENTS.to_owned(),
            "statistics-counters".to_owned(),
        )
        .await?;
    let tasks = [
        tokio::spawn(counters.clone().publish_forever(interval)),
        tokio::spawn(counters.clone().count_events_forever(events)),
    ];
    let broadcasts = broadcast::Broadcasts::new(bus, Some(counters.sessions.clone()));
    let routes = tonic::service::Routes::new(StatisticsServiceServer::new(counters))
        .add_service(BroadcastServiceServer::new(broadcasts));
    let served = server::serve(
        &[
            <StatisticsServiceServer<Counters> as tonic::server::NamedService>::NAME,
            <BroadcastServiceServer<broadcast::Broadcasts> as tonic::server::NamedService>::NAME,
        ],
        routes,
        listeners,
        shutdown,
    )
    .await;
    for task in tasks {
        task.abort();
    }
    Ok(served?)
}

/// The counters and the registry client they need for live sessions.
#[derive(Clone, Debug)]
pub struct Counters {
    bucket: KeyValue,
    edges: KeyValue,
    sessions: SessionServiceClient<Channel>,
    bus: Bus,
    usage: usage_writer::UsageWriter,
}

/// Key of one user's record, valid whatever the user id.
fn user_key(user_id: &str) -> String {
    format!("user.{}", switchboard_bus::key_token(user_id))
}

fn add(total: &mut Usage, delta: &Usage) {
    total.requests += delta.requests;
    total.steps += delta.steps;
    total.predictions += delta.predictions;
    total.sessions_opened += delta.sessions_opened;
}

/// Applies `change` to the record at `key` in `bucket` by compare-and-swap,
/// creating it from the default when missing. Returns whether it was
/// created.
async fn modify<T: prost::Message + Default>(
    bucket: &KeyValue,
    key: &str,
    change: impl Fn(&mut T),
) -> Result<bool, CountersError> {
    let change = &change;
    bucket
        .update(key, CAS_ATTEMPTS, |entry| async move {
            let created = entry.is_none();
            let mut record = match entry {
                Some(entry) => T::decode(entry.value.as_ref()).map_err(CountersError::Corrupt)?,
                None => T::default(),
            };
            change(&mut record);
            let value = Bytes::from(record.encode_to_vec());
            Ok::<_, CountersError>(Change::Put(value, created))
        })
        .await?
        .map_err(|Contended| CountersError::Contended {
            record: key.to_owned(),
        })
}

/// The event counts `entry` holds (none when absent).
fn event_counts(entry: Option<&Entry>) -> Result<BTreeMap<String, u64>, CountersError> {
    match entry {
        Some(entry) => serde_json::from_slice(&entry.value).map_err(CountersError::CorruptEvents),
        None => Ok(BTreeMap::new()),
    }
}

impl Counters {
    pub async fn open(settings: &StatisticsSettings, bus: &Bus) -> Result<Self, StatisticsError> {
        let channel = Endpoint::from_shared(settings.session_url.clone())
            .map_err(|source| StatisticsError::SessionUrl {
                url: settings.session_url.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let bucket = bus.key_value(BUCKET).await?;
        Ok(Self {
            usage: usage_writer::UsageWriter::start(bucket.clone()),
            bucket,
            edges: snapshot::edges_bucket(bus).await?,
            sessions: SessionServiceClient::new(channel),
            bus: bus.clone(),
        })
    }

    pub async fn record_usage(&self, user_id: &str, delta: Usage) -> Result<(), CountersError> {
        self.usage.add(user_id, delta).await
    }

    pub async fn user_stats(&self, user_id: &str) -> Result<UserStats, CountersError> {
        let usage = match self.bucket.get(&user_key(user_id)).await? {
            Some(entry) => Usage::decode(entry.value.as_ref()).map_err(CountersError::Corrupt)?,
            None => Usage::default(),
        };
        Ok(UserStats {
            user_id: user_id.to_owned(),
            usage: Some(usage),
        })
    }

    async fn server_record(&self) -> Result<ServerStats, CountersError> {
        match self.bucket.get(SERVER_KEY).await? {
            Some(entry) => {
                ServerStats::decode(entry.value.as_ref()).map_err(CountersError::Corrupt)
            }
            None => Ok(ServerStats::default()),
        }
    }

    /// System events counted so far, by type.
    pub async fn events(&self) -> Result<BTreeMap<String, u64>, CountersError> {
        event_counts(self.bucket.get(EVENTS_KEY).await?.as_ref())
    }

    /// Counts the system events (as one of the replicas' queue group: each
    /// process's sums once), writing the totals every half second.
    async fn count_events_forever(self, mut events: switchboard_bus::Subscription) {
        let mut pending: BTreeMap<String, u64> = BTreeMap::new();
        let mut flushes = tokio::time::interval(EVENT_FLUSH_INTERVAL);
        loop {
            tokio::select! {
                message = events.next() => {
                    let Some(message) = message else { return };
                    let counted = hub::system_events::counted(&message.payload);
                    for (event_type, count) in counted.into_iter().flatten() {
                        if SYSTEM_EVENTS.contains(&event_type.as_str()) {
                            let pending = pending.entry(event_type).or_default();
                            *pending = pending.saturating_add(count);
                        }
                    }
                }
                _ = flushes.tick() => {
                    if !pending.is_empty() {
                        match self.add_events(&pending).await {
                            Ok(()) => pending.clear(),
                            Err(error) => tracing::warn!(%error, "cannot store event counts"),
                        }
                    }
                }
            }
        }
    }

    async fn add_events(&self, counts: &BTreeMap<String, u64>) -> Result<(), CountersError> {
        self.bucket
            .update(EVENTS_KEY, CAS_ATTEMPTS, |entry| async move {
                let mut totals = event_counts(entry.as_ref())?;
                for (event, count) in counts {
                    *totals.entry(event.clone()).or_default() += count;
                }
                let value = Bytes::from(serde_json::to_vec(&totals).expect("counts serialize"));
                Ok::<_, CountersError>(Change::Put(value, ()))
            })
            .await?
            .map_err(|Contended| CountersError::Contended {
                record: "event counts".to_owned(),
            })
    }

    /// Live sessions, as the registry counts them.
    pub(crate) async fn live_sessions(&self) -> Result<CountSessionsResponse, CountersError> {
        self.sessions
            .clone()
            .count_sessions(CountSessionsRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CountersError::SessionService(Box::new(status)))
    }

    pub async fn server_stats(&self) -> Result<ServerStats, CountersError> {
        let mut stats = self.server_record().await?;
        stats.usage.get_or_insert_with(Usage::default);
        stats.active_sessions = self.live_sessions().await?.active_sessions;
        Ok(stats)
    }
}

/// The gRPC face of the counters: each method calls the operation and
/// answers with its outcome ([`reply`]: an error becomes the client's
/// status).
#[tonic::async_trait]
impl StatisticsService for Counters {
    async fn record_usage(
        &self,
        request: Request<RecordUsageRequest>,
    ) -> Result<Response<RecordUsageResponse>, Status> {
        let request = request.into_inner();
        let delta = request.usage.unwrap_or_default();
        let recorded = Counters::record_usage(self, &request.user_id, delta).await;
        reply(recorded.map(|()| RecordUsageResponse {}))
    }

    async fn get_user_stats(
        &self,
        request: Request<GetUserStatsRequest>,
    ) -> Result<Response<UserStats>, Status> {
        reply(self.user_stats(&request.into_inner().user_id).await)
    }

    async fn get_server_stats(
        &self,
        _request: Request<GetServerStatsRequest>,
    ) -> Result<Response<ServerStats>, Status> {
        reply(self.server_stats().await)
    }

    async fn get_statistics(
        &self,
        _request: Request<GetStatisticsRequest>,
    ) -> Result<Response<StatisticsSnapshot>, Status> {
        let statistics = self.statistics().await;
        reply(statistics.map(|statistics| StatisticsSnapshot {
            data_json: serde_json::to_string(&statistics).expect("statistics serialize"),
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use switchboard_bus::BusSettings;

    /// Counters on `bus`, with a session service that is not there.
    pub(crate) async fn counters(bus: &Bus) -> Counters {
        let settings = StatisticsSettings {
            session_url: "http://127.0.0.1:1".into(),
            updates: UpdateSettings { interval_secs: 5.0 },
        };
        Counters::open(&settings, bus).await.unwrap()
    }

    #[tokio::test]
    async fn usage_adds_up_per_user_and_for_the_server() {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        let counters = counters(&bus).await;
        let delta = |requests, steps| Usage {
            requests,
            steps,
            predictions: requests,
            sessions_opened: 0,
        };
        counters.record_usage("ada", delta(3, 1)).await.unwrap();
        counters.record_usage("ada", delta(2, 2)).await.unwrap();
        counters.record_usage("bob", delta(10, 0)).await.unwrap();
        let ada = counters.user_stats("ada").await.unwrap().usage.unwrap();
        assert_eq!((ada.requests, ada.steps), (5, 3));
        let server = counters.bucket.get(SERVER_KEY).await.unwrap().unwrap();
        let server = ServerStats::decode(server.value.as_ref()).unwrap();
        assert_eq!(server.users, 2);
        assert_eq!(server.usage.unwrap().requests, 15);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reports_are_all_counted_once() {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        let counters = counters(&bus).await;
        let reports: Vec<_> = (0..400)
            .map(|report| {
                let counters = counters.clone();
                tokio::spawn(async move {
                    let usage = Usage {
                        requests: 2,
                        steps: 1,
                        predictions: 2,
                        sessions_opened: 0,
                    };
                    counters
                        .record_usage(&format!("user-{}", report % 25), usage)
                        .await
                })
            })
            .collect();
        for report in reports {
            report.await.unwrap().unwrap();
        }
        let server = counters.bucket.get(SERVER_KEY).await.unwrap().unwrap();
        let server = ServerStats::decode(server.value.as_ref()).unwrap();
        assert_eq!(server.users, 25);
        let usage = server.usage.unwrap();
        assert_eq!((usage.requests, usage.steps), (800, 400));
        let one = counters.user_stats("user-7").await.unwrap().usage.unwrap();
        assert_eq!(one.requests, 32);
    }

    #[tokio::test]
    async fn system_events_are_counted_from_their_subject() {
        // Virtual time: the half-second flushes come as soon as the test
        // waits for them.
        tokio::time::pause();
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        let counters = counters(&bus).await;
        let events = bus
            .subscribe(subjects::SYSTEM_EVENTS.to_owned())
            .await
            .unwrap();
        let counting = tokio::spawn(counters.clone().count_events_forever(events));
        bus.announce("session_opened", || serde_json::json!({}))
            .await;
        bus.announce("session_opened", || serde_json::json!({}))
            .await;
        bus.announce("not_a_system_event", || serde_json::json!({}))
            .await;
        let counted = async {
            loop {
                let events = counters.events().await.unwrap();
                if !events.is_empty() {
                    return events;
                }
                tokio::time::sleep(EVENT_FLUSH_INTERVAL / 10).await;
            }
        };
        let counted = tokio::time::timeout(Duration::from_secs(5), counted)
            .await
            .expect("counts stored within 5 s");
        counting.abort();
        assert_eq!(counted, BTreeMap::from([("session_opened".to_owned(), 2)]));
    }

    #[test]
    fn errors_reach_grpc_clients_with_their_codes_and_messages() {
        use switchboard_proto::error::status;
        let contended = CountersError::Contended {
            record: "event counts".into(),
        };
        let shared = CountersError::Batch(Arc::new(CountersError::Contended {
            record: "server".into(),
        }));
        let registry = CountersError::SessionService(Box::new(tonic::Status::unavailable(
            "connection refused",
        )));
        let cases = [
            (
                contended,
                tonic::Code::Aborted,
                "event counts changed concurrently too often",
            ),
            (
                shared,
                tonic::Code::Aborted,
                "server changed concurrently too often",
            ),
            (
                registry,
                tonic::Code::Unavailable,
                "session service: connection refused",
            ),
            (
                CountersError::WriterStopped,
                tonic::Code::Unavailable,
                "the statistics writer stopped",
            ),
        ];
        for (error, code, message) in cases {
            let status = status(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }

    #[test]
    fn user_keys_are_valid_kv_keys_whatever_the_id() {
        assert_eq!(user_key("a b/ü"), "user.6120622fc3bc");
    }
}
