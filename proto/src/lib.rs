//! Switchboard's gRPC contract.
//!
//! - [`v1`]: the code tonic/prost generate from `proto/switchboard/v1/*.proto`
//!   (clients, servers, messages), compiled at build time by protox.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, which server reflection
//!   serves so `grpcurl list` and `describe` work without the `.proto` files.
//! - [`metrics`]: the process's Prometheus metrics and the gRPC timing layer.
//! - [`trace`]: trace context across gRPC and NATS.
//! - [`server`]: the one way a Switchboard service is put on the network, with
//!   health, reflection and graceful shutdown, so every role behaves alike.

pub mod metrics;
pub mod server;
pub mod trace;

/// Generated messages, clients and servers of `switchboard.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("switchboard.v1");
}

/// Encoded `FileDescriptorSet` of every Switchboard `.proto`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));

/// Seconds since the Unix epoch, the time unit of every timestamp in the
/// contract.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or_default()
}
