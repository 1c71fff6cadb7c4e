//! One look at the cluster, as the console's feed sends it every second.

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;
use serde::Serialize;
use switchboard_bus::{Bus, BusStatus, KeyValue};
use switchboard_proto::unix_now;
use switchboard_proto::v1::EdgeReport;
use switchboard_proto::v1::ListSessionsRequest;
use switchboard_proto::v1::session_service_client::SessionServiceClient;

use crate::caller::Identities;
use crate::connection::Driver;
use crate::sessions::SessionView;
use crate::settings::TimedChannel;

/// An edge report older than this is from an edge that is gone (the
/// statistics service leaves such reports out of its sums too).
const EDGE_REPORT_MAX_AGE: f64 = 5.0;

/// At most this many sessions go into one snapshot (oldest first), so a
/// cluster with many thousands of sockets does not send megabytes a
/// second; `sessions_total` says how many there are.
const MAX_SESSIONS: usize = 500;

/// Longest a snapshot waits to read the edges' reports: a slow JetStream
/// makes the snapshot say so, never holds up the feed.
const EDGES_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the console routes need.
#[derive(Clone, Debug)]
pub struct ConsoleState {
    pub driver: Driver,
    pub identities: Identities,
    pub sessions: SessionServiceClient<TimedChannel>,
    /// The services' channels, for their gRPC health.
    pub channels: crate::health::ServiceChannels,
    pub bus: Bus,
    /// Where every edge reports itself each second.
    pub edges: KeyValue,
}

/// The cluster now: `{"type": "cluster", ...}`.
#[derive(Debug, Serialize)]
pub struct ClusterSnapshot {
    #[serde(rename = "type")]
    kind: &'static str,
    /// The edge that made this snapshot (the console's own).
    edge_id: String,
    /// Unix seconds.
    timestamp: f64,
    /// Every live edge, by id.
    edges: Vec<EdgeView>,
    /// Each service's gRPC health as this edge reaches it, and the bus's
    /// state: `serving`, `not_serving`, `unreachable`; `connected`, …
    services: BTreeMap<&'static str, &'static str>,
    bus: BusStatus,
    /// Every registry session (realtime, alerts, statistics), oldest
    /// first, at most [`MAX_SESSIONS`].
    sessions: Vec<SessionView>,
    sessions_total: usize,
    /// What could not be read for this snapshot, e.g. `sessions: session
    /// service unavailable`; the rest is still current.
    problems: Vec<String>,
}

/// One edge, from its last report.
#[derive(Debug, Serialize)]
struct EdgeView {
    edge_id: String,
    address: String,
    started_at: f64,
    uptime_seconds: f64,
    /// Open sockets by endpoint.
    connections: HashMap<String, u64>,
    /// Since the edge started; the console turns them into rates.
    messages_in: u64,
    messages_out: u64,
    drops: u64,
    errors: u64,
    draining: bool,
    /// Seconds since its last report.
    report_age: f64,
    /// Its `/ws/ui` clients (at most 200), oldest first.
    hub_clients: Vec<HubClientView>,
}

/// A hub client, as its edge reported it.
#[derive(Debug, Serialize)]
struct HubClientView {
    connection_id: String,
    endpoint: String,
    connected_seconds: f64,
}

impl ConsoleState {
    pub async fn snapshot(&self) -> ClusterSnapshot {
        let mut problems = Vec::new();
        let edges = async {
            tokio::time::timeout(EDGES_READ_TIMEOUT, self.edges())
                .await
                .unwrap_or_else(|_| Err("timed out reading the edges' reports".to_owned()))
        };
        let (edges, services, bus, sessions) = tokio::join!(
            edges,
            async {
                crate::health::services(&self.channels, &self.bus)
                    .await
                    .services
            },
            self.bus.status(),
            self.sessions(),
        );
        let edges = edges.unwrap_or_else(|problem| {
            problems.push(format!("edges: {problem}"));
            Vec::new()
        });
        let mut sessions = sessions.unwrap_or_else(|problem| {
            problems.push(format!("sessions: {problem}"));
            Vec::new()
        });
        let sessions_total = sessions.len();
        sessions.truncate(MAX_SESSIONS);
        ClusterSnapshot {
            kind: "cluster",
            edge_id: self.driver.edge_id().to_owned(),
            timestamp: unix_now(),
            edges,
            services,
            bus,
            sessions,
            sessions_total,
            problems,
        }
    }

    async fn edges(&self) -> Result<Vec<EdgeView>, String> {
        let now = unix_now();
        let entries = self
            .edges
            .entries()
            .await
            .map_err(|error| error.to_string())?;
        let mut edges: Vec<EdgeView> = entries
            .into_iter()
            .filter_map(|(_, entry)| EdgeReport::decode(entry.value.as_ref()).ok())
            .filter(|report| now - report.reported_at <= EDGE_REPORT_MAX_AGE)
            .map(|report| EdgeView {
                uptime_seconds: (now - report.started_at).max(0.0),
                report_age: (now - report.reported_at).max(0.0),
                edge_id: report.edge_id,
                address: report.address,
                started_at: report.started_at,
                connections: report.connections,
                messages_in: report.messages_in,
                messages_out: report.messages_out,
                drops: report.drops,
                errors: report.errors,
                draining: report.draining,
                hub_clients: report
                    .hub_clients
                    .into_iter()
                    .map(|client| HubClientView {
                        connected_seconds: (now - client.connected_at).max(0.0),
                        connection_id: client.connection_id,
                        endpoint: client.endpoint,
                    })
                    .collect(),
            })
            .collect();
        edges.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
        Ok(edges)
    }

    async fn sessions(&self) -> Result<Vec<SessionView>, String> {
        let sessions = self
            .sessions
            .clone()
            .list_sessions(ListSessionsRequest::default())
            .await
            .map_err(|status| format!("session service: {}", status.message()))?
            .into_inner()
            .sessions;
        Ok(sessions.into_iter().map(SessionView::from).collect())
    }
}
