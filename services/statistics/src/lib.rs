//! The statistics service: usage counters per user and for the whole
//! cluster.
//!
//! Counters live in the `statistics` key-value bucket (JetStream KV with
//! NATS), one record per user and one for the server, each updated by
//! compare-and-swap, so every edge and every statistics replica adds to the
//! same totals and any replica reads them. Edges report usage in deltas
//! (about once a second per session, not per message), which keeps the
//! bucket's write rate far below the message rate.
//!
//! The number of live sessions is not a counter that could drift: it is
//! asked of the session registry each time server statistics are read.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use switchboard_bus::{Bus, BusError, KeyValue};
use switchboard_proto::server;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::statistics_service_server::{
    StatisticsService, StatisticsServiceServer,
};
use switchboard_proto::v1::{
    CountSessionsRequest, GetServerStatsRequest, GetUserStatsRequest, RecordUsageRequest,
    RecordUsageResponse, ServerStats, Usage, UserStats,
};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

const BUCKET: &str = "statistics";
const SERVER_KEY: &str = "server";
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

/// Serves the counters on `listener` until `shutdown` completes.
pub async fn serve(
    settings: StatisticsSettings,
    bus: Bus,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StatisticsError> {
    let counters = Counters::open(&settings, &bus).await?;
    let routes = tonic::service::Routes::new(StatisticsServiceServer::new(counters));
    server::serve(
        <StatisticsServiceServer<Counters> as tonic::server::NamedService>::NAME,
        routes,
        listener,
        shutdown,
    )
    .await?;
    Ok(())
}

/// The counters and the registry client they need for live sessions.
#[derive(Clone, Debug)]
pub struct Counters {
    bucket: KeyValue,
    sessions: SessionServiceClient<Channel>,
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

fn corrupt(error: prost::DecodeError) -> Status {
    Status::internal(format!("corrupt statistics record: {error}"))
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
        Ok(Self {
            bucket: bus.key_value(BUCKET).await?,
            sessions: SessionServiceClient::new(channel),
        })
    }

    /// Applies `change` to the record at `key` by compare-and-swap, creating
    /// it from the default when missing. Returns whether it was created.
    async fn modify<T: prost::Message + Default>(
        &self,
        key: &str,
        change: impl Fn(&mut T),
    ) -> Result<bool, Status> {
        for _ in 0..CAS_ATTEMPTS {
            let written = match self.bucket.get(key).await? {
                Some(entry) => {
                    let mut record = T::decode(entry.value.as_ref()).map_err(corrupt)?;
                    change(&mut record);
                    let value = Bytes::from(record.encode_to_vec());
                    self.bucket
                        .update(key, value, entry.revision)
                        .await
                        .map(|_| false)
                }
                None => {
                    let mut record = T::default();
                    change(&mut record);
                    let value = Bytes::from(record.encode_to_vec());
                    self.bucket.create(key, value).await.map(|_| true)
                }
            };
            match written {
                Ok(created) => return Ok(created),
                Err(BusError::Conflict(_)) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(Status::aborted(format!(
            "{key} changed concurrently too often"
        )))
    }

    pub async fn record_usage(&self, user_id: &str, delta: Usage) -> Result<(), Status> {
        let new_user = self
            .modify(&user_key(user_id), |total: &mut Usage| add(total, &delta))
            .await?;
        self.modify(SERVER_KEY, |server: &mut ServerStats| {
            add(server.usage.get_or_insert_with(Usage::default), &delta);
            if new_user {
                server.users += 1;
            }
        })
        .await?;
        Ok(())
    }

    pub async fn user_stats(&self, user_id: &str) -> Result<UserStats, Status> {
        let usage = match self.bucket.get(&user_key(user_id)).await? {
            Some(entry) => Usage::decode(entry.value.as_ref()).map_err(corrupt)?,
            None => Usage::default(),
        };
        Ok(UserStats {
            user_id: user_id.to_owned(),
            usage: Some(usage),
        })
    }

    pub async fn server_stats(&self) -> Result<ServerStats, Status> {
        let mut stats = match self.bucket.get(SERVER_KEY).await? {
            Some(entry) => ServerStats::decode(entry.value.as_ref()).map_err(corrupt)?,
            None => ServerStats::default(),
        };
        stats.usage.get_or_insert_with(Usage::default);
        stats.active_sessions = self
            .sessions
            .clone()
            .count_sessions(CountSessionsRequest {})
            .await
            .map_err(|status| {
                Status::unavailable(format!("session service: {}", status.message()))
            })?
            .into_inner()
            .active_sessions;
        Ok(stats)
    }
}

#[tonic::async_trait]
impl StatisticsService for Counters {
    async fn record_usage(
        &self,
        request: Request<RecordUsageRequest>,
    ) -> Result<Response<RecordUsageResponse>, Status> {
        let request = request.into_inner();
        let delta = request.usage.unwrap_or_default();
        Counters::record_usage(self, &request.user_id, delta).await?;
        Ok(Response::new(RecordUsageResponse {}))
    }

    async fn get_user_stats(
        &self,
        request: Request<GetUserStatsRequest>,
    ) -> Result<Response<UserStats>, Status> {
        self.user_stats(&request.into_inner().user_id)
            .await
            .map(Response::new)
    }

    async fn get_server_stats(
        &self,
        _request: Request<GetServerStatsRequest>,
    ) -> Result<Response<ServerStats>, Status> {
        self.server_stats().await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::BusSettings;

    #[tokio::test]
    async fn usage_adds_up_per_user_and_for_the_server() {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        let settings = StatisticsSettings {
            session_url: "http://127.0.0.1:1".into(),
        };
        let counters = Counters::open(&settings, &bus).await.unwrap();
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

    #[test]
    fn user_keys_are_valid_kv_keys_whatever_the_id() {
        assert_eq!(user_key("a b/ü"), "user.6120622fc3bc");
    }
}
