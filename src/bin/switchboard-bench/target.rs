//! Where a scenario's load goes: the deployment or the baseline, seen the
//! same way by the scenarios (WebSocket URLs, a way to publish, pids whose
//! memory to read).
//!
//! Publishing differs: a deployment takes REST calls (`POST
//! /api/events/broadcast/telemetry`, `POST /api/alerts`) and builds the
//! messages its clients receive; the baseline has no HTTP and simply relays
//! what a publisher socket sends it, so a [`Publisher`] is given both the
//! REST body and the message clients should end up with.

use anyhow::{Context, bail};
use serde_json::Value;

use super::Common;
use super::baseline::BaselineProcess;
use super::client::{self, Socket};

/// How long one REST call may take.
const REST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One side of the comparison.
#[derive(Debug, Clone)]
pub struct Target {
    /// WebSocket base URLs, e.g. `ws://127.0.0.1:8000`.
    pub edges: Vec<String>,
    /// Processes whose resident memory is the target's.
    pub pids: Vec<u32>,
    rest: Option<Rest>,
}

#[derive(Debug, Clone)]
struct Rest {
    http: Vec<String>,
    secret: Option<String>,
    client: reqwest::Client,
}

impl Target {
    /// The deployment the command line names.
    pub fn deployment(common: &Common) -> anyhow::Result<Self> {
        let edges: Vec<String> = common
            .edges
            .iter()
            .map(|url| url.trim_end_matches('/').to_owned())
            .collect();
        let http: Vec<String> = if common.http.is_empty() {
            edges
                .iter()
                .map(|url| {
                    url.replacen("ws://", "http://", 1)
                        .replacen("wss://", "https://", 1)
                })
                .collect()
        } else {
            common
                .http
                .iter()
                .map(|url| url.trim_end_matches('/').to_owned())
                .collect()
        };
        for url in edges.iter().chain(&http) {
            client::check_loopback(url)?;
        }
        if edges.is_empty() {
            bail!("give at least one --edge URL");
        }
        Ok(Self {
            edges,
            pids: common.edge_pids.clone(),
            rest: Some(Rest {
                http,
                secret: common.jwt_secret.clone(),
                client: reqwest::Client::builder()
                    .timeout(REST_TIMEOUT)
                    .build()
                    .context("HTTP client")?,
            }),
        })
    }

    /// The baseline server the bench started.
    pub fn baseline(process: &BaselineProcess) -> Self {
        Self {
            edges: vec![format!("ws://{}", process.addr)],
            pids: vec![process.pid()],
            rest: None,
        }
    }

    /// The URL of `path` on the edge client `index` uses (clients are
    /// spread over the edges in turn).
    pub fn ws(&self, index: usize, path: &str) -> String {
        format!("{}{path}", self.edges[index % self.edges.len()])
    }

    /// How many instances the target has (for spreading and for crossing
    /// between them).
    pub fn instances(&self) -> usize {
        self.edges.len()
    }

    /// Resident memory of the target's processes, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        super::measure::total_rss_kib(&self.pids)
    }

    /// A user's token for `/ws/alerts`, when the deployment has a secret.
    pub fn user_token(&self, user: &str) -> anyhow::Result<Option<String>> {
        match self.rest.as_ref().and_then(|rest| rest.secret.as_deref()) {
            Some(secret) => client::token(secret, user, false).map(Some),
            None => Ok(None),
        }
    }

    /// A publisher for the UI hub, through instance `index`.
    pub async fn ui_publisher(&self, index: usize) -> anyhow::Result<Publisher> {
        self.publisher(
            index,
            "/api/events/broadcast/telemetry",
            "/publish/ui",
            false,
        )
        .await
    }

    /// A publisher of `user`'s alerts, through instance `index`.
    pub async fn alert_publisher(&self, index: usize, user: &str) -> anyhow::Result<Publisher> {
        self.publisher(
            index,
            "/api/alerts",
            &format!("/publish/alerts/{user}"),
            true,
        )
        .await
    }

    async fn publisher(
        &self,
        index: usize,
        rest_path: &str,
        socket_path: &str,
        needs_admin: bool,
    ) -> anyhow::Result<Publisher> {
        match &self.rest {
            Some(rest) => {
                let token = match &rest.secret {
                    Some(secret) => Some(client::token(secret, "switchboard-bench", true)?),
                    None if needs_admin => {
                        bail!("{rest_path} needs an admin token: give --jwt-secret")
                    }
                    None => None,
                };
                Ok(Publisher::Rest {
                    client: rest.client.clone(),
                    url: format!("{}{rest_path}", rest.http[index % rest.http.len()]),
                    token,
                })
            }
            None => Ok(Publisher::Socket(Box::new(
                client::connect(&self.ws(index, socket_path)).await?,
            ))),
        }
    }
}

/// Publishes messages to a target's clients.
pub enum Publisher {
    Rest {
        client: reqwest::Client,
        url: String,
        token: Option<String>,
    },
    Socket(Box<Socket>),
}

impl Publisher {
    /// Publishes one message: `rest_body` to a deployment, `delivered` (what
    /// the clients should receive) to the baseline, which relays it. Returns
    /// once the target acknowledged it.
    pub async fn publish(&mut self, rest_body: &Value, delivered: &Value) -> anyhow::Result<()> {
        match self {
            Publisher::Rest { client, url, token } => {
                let mut request = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(rest_body.to_string());
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.context("publish request")?;
                let status = response.status();
                if !status.is_success() {
                    let body = response.text().await.unwrap_or_default();
                    bail!("publish answered {status}: {body}");
                }
                Ok(())
            }
            Publisher::Socket(socket) => {
                client::send_text(socket, delivered.to_string())
                    .await
                    .map_err(|ended| anyhow::anyhow!("publish failed: {ended}"))?;
                client::next_text(socket, client::REPLY_TIMEOUT)
                    .await
                    .map_err(|ended| anyhow::anyhow!("no publish acknowledgement: {ended}"))?;
                Ok(())
            }
        }
    }

    /// Closes a publisher socket.
    pub async fn finish(self) {
        if let Publisher::Socket(socket) = self {
            client::close(*socket).await;
        }
    }
}
