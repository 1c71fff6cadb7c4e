//! What this edge is doing, counted where it happens: open sockets by
//! endpoint and messages in and out. Every second the edge writes its
//! counts to the `edges` bucket, where the statistics service sums the
//! live edges into `statistics_update` and the console shows each edge
//! (with its address, uptime, drain state, drops and errors).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use switchboard_bus::KeyValue;
use switchboard_proto::metrics::metrics;
use switchboard_proto::unix_now;
use switchboard_proto::v1::{EdgeReport, HubClient};

/// How often the edge reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The WebSocket endpoints, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Realtime,
    Alerts,
    Pressure,
    Ui,
    Statistics,
    /// The console's admin feed, `/api/admin/ws`.
    Console,
}

impl Endpoint {
    const ALL: [Endpoint; 6] = [
        Endpoint::Realtime,
        Endpoint::Alerts,
        Endpoint::Pressure,
        Endpoint::Ui,
        Endpoint::Statistics,
        Endpoint::Console,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Realtime => "realtime",
            Endpoint::Alerts => "alerts",
            Endpoint::Pressure => "pressure",
            Endpoint::Ui => "ui",
            Endpoint::Statistics => "statistics",
            Endpoint::Console => "console",
        }
    }
}

/// What an edge says of itself besides its counts.
#[derive(Debug, Clone)]
pub struct Presence {
    /// Where it serves HTTP and WebSockets, so an operator can reach it.
    pub address: String,
    /// Unix seconds, for its uptime.
    pub started_at: f64,
    /// True once it drains.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// Its `/ws/ui` clients, listed in its report.
    pub ui_hub: Arc<crate::hubs::Hub>,
}

/// Hub clients listed in one report, at most.
const LISTED_HUB_CLIENTS: usize = 200;

#[derive(Debug, Default)]
pub struct Meter {
    connections: [AtomicU64; 6],
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    /// Woken whenever a socket closes, for [`Meter::idle`].
    closed: tokio::sync::Notify,
}

/// An open socket, counted until dropped.
#[derive(Debug)]
pub struct Connected {
    meter: Arc<Meter>,
    endpoint: Endpoint,
    gauge: switchboard_proto::metrics::ConnectionGauge,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.meter.connections[self.endpoint as usize].fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
        self.meter.closed.notify_waiters();
    }
}

impl Meter {
    pub fn connect(self: &Arc<Self>, endpoint: Endpoint) -> Connected {
        self.connections[endpoint as usize].fetch_add(1, Ordering::AcqRel);
        let gauge = metrics().connection(endpoint.name());
        gauge.inc();
        Connected {
            meter: Arc::clone(self),
            endpoint,
            gauge,
        }
    }

    pub fn received(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        metrics().message("in");
    }

    pub fn sent(&self) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        metrics().message("out");
    }

    /// Completes once no socket is open: the drain waits for it.
    pub async fn idle(&self) {
        loop {
            let closed = self.closed.notified();
            let mut closed = std::pin::pin!(closed);
            // Registered before the count is read, so no close is missed.
            closed.as_mut().enable();
            let open: u64 = self
                .connections
                .iter()
                .map(|count| count.load(Ordering::Acquire))
                .sum();
            if open == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Open sockets by endpoint name.
    pub fn connections(&self) -> HashMap<String, u64> {
        Endpoint::ALL
            .iter()
            .map(|endpoint| {
                let count = self.connections[*endpoint as usize].load(Ordering::Relaxed);
                (endpoint.name().to_owned(), count)
            })
            .collect()
    }

    fn report(&self, edge_id: &str, presence: &Presence) -> EdgeReport {
        EdgeReport {
            edge_id: edge_id.to_owned(),
            connections: self.connections(),
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            reported_at: unix_now(),
            address: presence.address.clone(),
            started_at: presence.started_at,
            draining: *presence.draining.borrow(),
            drops: metrics().drops(),
            errors: metrics().client_errors(),
            hub_clients: presence
                .ui_hub
                .clients(LISTED_HUB_CLIENTS)
                .into_iter()
                .map(|(connection_id, connected_at)| HubClient {
                    connection_id,
                    endpoint: "ui".to_owned(),
                    connected_at,
                })
                .collect(),
        }
    }

    /// Writes this edge's report to the `edges` bucket every second.
    pub async fn report_forever(
        self: Arc<Self>,
        edge_id: String,
        edges: KeyValue,
        presence: Presence,
    ) {
        let mut ticks = tokio::time::interval(REPORT_INTERVAL);
        loop {
            ticks.tick().await;
            let report = Bytes::from(self.report(&edge_id, &presence).encode_to_vec());
            if let Err(error) = edges.put(&edge_id, report).await {
                tracing::debug!(%error, "edge report not written");
            }
        }
    }
}
