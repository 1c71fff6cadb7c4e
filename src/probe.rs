//! `switchboard probe`: health checks for containers, with nothing else in
//! the image. `probe grpc URL` asks the standard gRPC health service,
//! `probe http URL` expects a 2xx; both exit 0 when healthy, 1 otherwise.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(subcommand)]
    pub target: ProbeTarget,
}

#[derive(Debug, Subcommand)]
pub enum ProbeTarget {
    /// A gRPC server's `grpc.health.v1.Health`, e.g. `http://127.0.0.1:50051`.
    Grpc {
        url: String,
        /// The service to ask about; the whole server by default.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// An HTTP URL that must answer 2xx, e.g. `http://127.0.0.1:8000/ready`.
    Http { url: String },
}

pub async fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    match &args.target {
        ProbeTarget::Grpc { url, service } => {
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .context("invalid gRPC URL")?
                .connect_timeout(PROBE_TIMEOUT)
                .timeout(PROBE_TIMEOUT)
                .connect()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await
                .context("health check failed")?
                .into_inner()
                .status();
            if status != ServingStatus::Serving {
                bail!("{url} is {}", status.as_str_name());
            }
        }
        ProbeTarget::Http { url } => {
            let response = reqwest::Client::builder()
                .timeout(PROBE_TIMEOUT)
                .build()?
                .get(url)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            if !response.status().is_success() {
                bail!("{url} answered {}", response.status());
            }
        }
    }
    Ok(())
}
