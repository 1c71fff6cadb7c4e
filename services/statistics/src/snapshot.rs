//! The cluster's statistics, as `statistics_update` carries them, and the
//! one publisher per interval.
//!
//! Every replica ticks; at each tick the replicas race to advance the
//! `tick` record (compare-and-swap) to the current interval's number, and
//! only the winner publishes. So clients get one `statistics_update` per
//! interval however many statistics replicas run.
//!
//! The figures come from where they live: live sessions by kind from the
//! session registry, usage counters and counted system events from the
//! `statistics` bucket, open sockets and messages from the edges' own
//! reports (the `edges` bucket; a report older than a few seconds is from a
//! dead edge and left out).
//!
//! The message is a statistics-stream message like any other, built by the
//! bus's [`hub`] and published to every client.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use serde::Serialize;
use switchboard_bus::hub::{self, StreamAudience};
use switchboard_bus::{BusError, Change, KeyValue};
use switchboard_proto::unix_now;
use switchboard_proto::v1::EdgeReport;

use crate::{Counters, CountersError};

/// Bucket where edges report themselves.
pub const EDGES_BUCKET: &str = "edges";
/// An edge report older than this is from an edge that is gone.
pub const EDGE_REPORT_MAX_AGE: f64 = 5.0;
const TICK_KEY: &str = "tick";

#[derive(Debug, Serialize)]
pub struct Statistics {
    pub sessions: SessionsView,
    pub connections: ConnectionsView,
    pub requests: u64,
    pub steps: u64,
    pub predictions: u64,
    pub frames_processed: u64,
    pub alerts: AlertsView,
    pub messages: MessagesView,
    /// System events counted since the cluster started, by type.
    pub events: BTreeMap<String, u64>,
    pub users: u64,
    pub edges: u64,
    pub timestamp: String,
}

#[derive(Debug, Serialize)]
pub struct SessionsView {
    pub active: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Sessions of every kind opened since the cluster started.
    pub opened_total: u64,
}

#[derive(Debug, Serialize)]
pub struct ConnectionsView {
    pub total: u64,
    pub by_endpoint: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct AlertsView {
    pub raised: u64,
    pub acked: u64,
}

#[derive(Debug, Serialize)]
pub struct MessagesView {
    #[serde(rename = "in")]
    pub received: u64,
    #[serde(rename = "out")]
    pub sent: u64,
}

impl Counters {
    /// The cluster's statistics now.
    pub async fn statistics(&self) -> Result<Statistics, CountersError> {
        let sessions = self.live_sessions().await?;
        let server = self.server_record().await?;
        let usage = server.usage.unwrap_or_default();
        let events = self.events().await?;
        let now = unix_now();
        let mut by_endpoint = BTreeMap::new();
        let (mut received, mut sent, mut edges) = (0, 0, 0);
        for (_, entry) in self.edges.entries().await? {
            let Ok(report) = EdgeReport::decode(entry.value.as_ref()) else {
                continue;
            };
            if now - report.reported_at > EDGE_REPORT_MAX_AGE {
                continue;
            }
            edges += 1;
            received += report.messages_in;
            sent += report.messages_out;
            for (endpoint, count) in report.connections {
                *by_endpoint.entry(endpoint).or_default() += count;
            }
        }
        let event = |name: &str| events.get(name).copied().unwrap_or_default();
        Ok(Statistics {
            sessions: SessionsView {
                active: sessions.active_sessions,
                by_kind: sessions.by_kind.into_iter().collect(),
                // Every registry session (realtime, alerts and statistics
                // connections), the same count as `events.session_opened`.
                opened_total: event("session_opened"),
            },
            connections: ConnectionsView {
                total: by_endpoint.values().sum(),
                by_endpoint,
            },
            requests: usage.requests,
            steps: usage.steps,
            predictions: usage.predictions,
            frames_processed: event("frame_processed"),
            alerts: AlertsView {
                raised: event("alert_raised"),
                acked: event("alert_acked"),
            },
            messages: MessagesView { received, sent },
            users: server.users,
            edges,
            timestamp: switchboard_bus::rfc3339_now(),
            events,
        })
    }

    /// Advances the tick record to `tick` if no replica did yet; true when
    /// this replica won the interval. One attempt: a replica that loses the
    /// write lost the interval to the one that made it.
    async fn claim(&self, tick: u64) -> Result<bool, BusError> {
        let won = self
            .bucket
            .update(TICK_KEY, 1, |entry| async move {
                let claimed = entry.map(|entry| {
                    std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|text| text.parse::<u64>().ok())
                        .unwrap_or_default()
                });
                Ok::<_, BusError>(match claimed {
                    Some(claimed) if claimed >= tick => Change::Keep(false),
                    _ => Change::Put(Bytes::from(tick.to_string()), true),
                })
            })
            .await?;
        Ok(won.unwrap_or(false))
    }

    /// Publishes `statistics_update` once per `interval` for the cluster.
    pub async fn publish_forever(self, interval: Duration) {
        let seconds = interval.as_secs_f64();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let tick = (unix_now() / seconds).floor() as u64;
            match self.claim(tick).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim the statistics tick");
                    continue;
                }
            }
            let statistics = match self.statistics().await {
                Ok(statistics) => statistics,
                Err(error) => {
                    tracing::warn!(%error, "cannot gather statistics");
                    continue;
                }
            };
            let message = hub::stream_message_from_value(serde_json::json!({
                "type": "statistics_update",
                "tick": tick,
                "timestamp": statistics.timestamp,
                "data": statistics,
            }));
            let published = match message {
                Ok(message) => self.bus.publish_stream(&StreamAudience::All, message).await,
                Err(error) => {
                    tracing::warn!(%error, "statistics do not make a stream message");
                    continue;
                }
            };
            if let Err(error) = published {
                tracing::warn!(%error, "cannot publish statistics");
            }
        }
    }
}

/// The edges bucket, opened by the statistics service and by every edge.
pub async fn edges_bucket(bus: &switchboard_bus::Bus) -> Result<KeyValue, BusError> {
    bus.key_value(EDGES_BUCKET).await
}

#[cfg(test)]
mod tests {
    use switchboard_bus::{Bus, BusSettings};

    use crate::tests::counters;

    #[tokio::test]
    async fn one_replica_wins_each_interval() {
        let bus = Bus::connect(&BusSettings::default()).await.unwrap();
        let (one, other) = (counters(&bus).await, counters(&bus).await);
        assert!(one.claim(7).await.unwrap(), "the first to claim it wins");
        assert!(!other.claim(7).await.unwrap(), "the other loses it");
        assert!(!one.claim(6).await.unwrap(), "an earlier interval is over");
        assert!(other.claim(8).await.unwrap());
    }
}
