//! The gRPC server shell shared by the session, detection and statistics
//! roles: standard health (`grpc.health.v1.Health`) and server reflection
//! next to the role's own service, HTTP/2 settings sized for many long-lived
//! streams, and a shutdown that reports NOT_SERVING before it stops
//! accepting, then lets in-flight calls finish.

use std::future::Future;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// HTTP/2 streams one client connection may hold open. The edge keeps one
/// detection stream per live session over a single connection, so the usual
/// default (a few hundred) would cap sessions per edge.
const MAX_CONCURRENT_STREAMS: u32 = 65_536;

/// Why a gRPC server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `routes` (the role's own services) plus health and reflection on
/// `listeners` until `shutdown` completes: on TCP, and to clients of this
/// process in memory when `listeners` has the process's directory.
///
/// `service_names` are the fully qualified names of the services in
/// `routes`, e.g. `switchboard.v1.SessionService`: health reports each, and
/// reflection lists each. The empty name (the whole server) is reported
/// too, as Kubernetes' gRPC probes ask for it.
pub async fn serve(
    service_names: &[&'static str],
    routes: Routes,
    listeners: impl Into<crate::in_process::Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let crate::in_process::Listeners {
        tcp: listener,
        in_process,
    } = listeners.into();
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_names: Vec<&'static str> = service_names.iter().copied().chain([""]).collect();
    for name in &health_names {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

    // Advertise what this server runs, not every service the shared
    // descriptor set happens to define.
    let reflection_builder = || {
        service_names
            .iter()
            .copied()
            .chain([
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ])
            .fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(name),
            )
    };
    // v1 for current grpcurl, v1alpha for older clients.
    let reflection = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;

    let addr = listener.local_addr().ok();
    let service = service_names.first().copied().unwrap_or_default();
    tracing::info!(service, addr = ?addr, "grpc serving");
    let draining = async move {
        shutdown.await;
        tracing::info!(service, "grpc draining");
        for name in health_names {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };
    let routes = routes
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    if let (Some(directory), Some(addr)) = (in_process, addr) {
        directory.add(addr, routes.clone());
    }
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .tcp_nodelay(true)
        .layer(crate::metrics::TimedLayer(crate::metrics::Side::Server))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), draining)
        .await?;
    Ok(())
}
