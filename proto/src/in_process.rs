//! In one process, no network: the gRPC services a process serves, called
//! by the clients in the same process without a socket or HTTP/2.
//!
//! `switchboard all` runs the edge and the three services in one process.
//! Over loopback TCP every realtime message crossed the kernel and HTTP/2
//! framing twice more than it needed to (42 % of its CPU was loopback
//! TCP, 16 % gRPC framing). Here a client's call goes straight into the
//! server's service stack — the same generated client and server code, the
//! same protobuf encoding and gRPC message framing, the same server-side
//! timing and trace layer ([`crate::metrics::TimedLayer`]) — as an
//! in-memory request and response body. The TCP listener stays: `grpcurl`
//! and other processes still reach every service.
//!
//! - [`Link`]: what a client calls, a TCP [`Channel`] or a service in this
//!   process, behind one type.
//! - [`Directory`]: the services this process serves, by the address each
//!   listens on; a server adds itself ([`Listeners`]), an edge finds it.
//! - [`StepSessions`]: the one call on a realtime message's path, a
//!   session's `StreamSteps`, with its messages handed over as they are.
//!   Through the service stack above, each message was still encoded to
//!   protobuf, framed, decoded and passed through an HTTP body on both
//!   sides: 19 % of `all`'s CPU per realtime message, against 4 % for the
//!   detectors themselves. A detection server in this process also offers
//!   its sessions here: the same `StepRequest` in, the same `StepReply` (or
//!   `Status`) out, from the same detectors and under the same
//!   `detection.steps` span, without the codec. Every other call, and every
//!   call from another process, is gRPC as before.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::Channel;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use crate::metrics::{Side, TimedLayer};
use crate::v1::{StepReply, StepRequest};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call's transport failed (the network channel's error, or the
/// in-process call's deadline).
#[derive(Debug)]
pub struct LinkError(BoxError);

impl std::fmt::Display for LinkError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A way to call a gRPC server: over the network or in this process.
pub type Link = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, LinkError>;

/// A [`Link`] over a TCP channel.
pub fn over_network(channel: Channel) -> Link {
    BoxCloneSyncService::new(channel.map_err(|error| LinkError(error.into())))
}

/// One [`Link`] over several replicas of a stateless service: every call
/// goes to the replica in use; a call that fails below gRPC (the replica
/// refused the connection, or it broke) fails, and the calls after it go
/// to the next replica. So losing a replica costs the calls in flight on
/// it, not every call until it returns. Nothing is retried here: a call
/// may have been handled before its connection broke.
pub fn failover(replicas: Vec<Link>) -> Link {
    assert!(!replicas.is_empty(), "at least one replica");
    BoxCloneSyncService::new(Failover {
        replicas: replicas.into(),
        in_use: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    })
}

#[derive(Clone)]
struct Failover {
    replicas: Arc<[Link]>,
    /// The replica calls go to.
    in_use: Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = LinkError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, LinkError>> + Send + 'static>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), LinkError>> {
        // Each call waits for its own replica's readiness.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        use std::sync::atomic::Ordering;
        let count = self.replicas.len();
        // Always below `count`: only ever stored as `(index + 1) % count`.
        let index = self.in_use.load(Ordering::Relaxed);
        let replica = self.replicas[index].clone();
        let in_use = Arc::clone(&self.in_use);
        Box::pin(async move {
            let response = replica.oneshot(request).await;
            if let Err(error) = &response
                && in_use
                    .compare_exchange(
                        index,
                        (index + 1) % count,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(%error, replica = index, "a replica failed a call: the next calls go to the next one");
            }
            response
        })
    }
}

/// A [`Link`] into `routes` in this process, through the server-side layer
/// a network call passes (timing, trace context), each call bounded by
/// `timeout` when given (as the network channel's endpoint bounds it).
pub fn in_process(routes: Routes, timeout: Option<Duration>) -> Link {
    let service = ServiceExt::<http::Request<Body>>::map_err(
        TimedLayer(Side::Server).layer(routes),
        |never: std::convert::Infallible| -> BoxError { match never {} },
    );
    match timeout {
        Some(timeout) => BoxCloneSyncService::new(ServiceExt::<http::Request<Body>>::map_err(
            tower::timeout::TimeoutLayer::new(timeout).layer(service),
            LinkError,
        )),
        None => BoxCloneSyncService::new(ServiceExt::<http::Request<Body>>::map_err(
            service, LinkError,
        )),
    }
}

/// A detection service's realtime sessions, called in this process with
/// typed messages ([module docs](self)): what `StreamSteps` serves, one
/// [`StepSession`] per stream.
pub trait StepSessions: Send + Sync + 'static {
    /// A new session's detectors, as a new `StreamSteps` stream gets them.
    fn open(&self) -> Box<dyn StepSession>;
}

/// One session's detectors: one reply per request, in order, as on a
/// `StreamSteps` stream. After an error the session is done (as the stream
/// ends with its status); its caller opens a new one.
pub trait StepSession: Send + 'static {
    fn step(&mut self, request: StepRequest) -> Stepped<'_>;
}

/// What a [`StepSession`] made of one request.
pub enum Stepped<'a> {
    /// The reply, or the error, at once: the detectors are synchronous, so
    /// this is nearly every request (nothing boxed, nothing polled).
    Ready(Result<StepReply, tonic::Status>),
    /// The reply once the alerts the request raised are stored.
    Storing(Pin<Box<dyn Future<Output = Result<StepReply, tonic::Status>> + Send + 'a>>),
}

impl std::fmt::Debug for Stepped<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stepped::Ready(replied) => formatter.debug_tuple("Ready").field(replied).finish(),
            Stepped::Storing(_) => formatter.write_str("Storing"),
        }
    }
}

/// What a server of this process offers its clients in memory.
#[derive(Clone, Default)]
struct Served {
    routes: HashMap<SocketAddr, Routes>,
    step_sessions: HashMap<SocketAddr, Arc<dyn StepSessions>>,
}

/// The gRPC services this process serves, by listening address.
#[derive(Clone, Default)]
pub struct Directory {
    served: Arc<Mutex<Served>>,
    added: Arc<Notify>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Directory")
            .field("served", &self.lock().routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, Served> {
        self.served
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Says that `routes` are served at `addr`.
    pub fn add(&self, addr: SocketAddr, routes: Routes) {
        self.lock().routes.insert(addr, routes);
        self.added.notify_waiters();
    }

    /// Says that the detection server at `addr` offers `sessions` in memory.
    pub fn add_step_sessions(&self, addr: SocketAddr, sessions: Arc<dyn StepSessions>) {
        self.lock().step_sessions.insert(addr, sessions);
        self.added.notify_waiters();
    }

    /// What `find` finds, once a server added it (the servers of a process
    /// start beside its clients).
    async fn wait_for<T>(&self, find: impl Fn(&Served) -> Option<T>) -> T {
        loop {
            let added = self.added.notified();
            if let Some(found) = find(&self.lock()) {
                return found;
            }
            added.await;
        }
    }

    /// The routes served at `addr`, once their server added them.
    pub async fn routes(&self, addr: SocketAddr) -> Routes {
        self.wait_for(|served| served.routes.get(&addr).cloned())
            .await
    }

    /// The realtime sessions of the detection server at `addr`, once it
    /// added them.
    pub async fn step_sessions(&self, addr: SocketAddr) -> Arc<dyn StepSessions> {
        self.wait_for(|served| served.step_sessions.get(&addr).cloned())
            .await
    }
}

/// Where a gRPC server takes calls: its TCP listener, and the process's
/// [`Directory`] when clients in the same process may call it in memory.
#[derive(Debug)]
pub struct Listeners {
    pub tcp: TcpListener,
    pub in_process: Option<Directory>,
}

impl From<TcpListener> for Listeners {
    /// A server reached over the network only.
    fn from(tcp: TcpListener) -> Self {
        Self {
            tcp,
            in_process: None,
        }
    }
}

impl Listeners {
    /// A server reached over the network and by this process's clients in
    /// memory.
    pub fn with_directory(tcp: TcpListener, directory: &Directory) -> Self {
        Self {
            tcp,
            in_process: Some(directory.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    #[tokio::test]
    async fn a_client_calls_a_service_of_its_process_without_a_socket() {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("probe", ServingStatus::Serving)
            .await;
        let directory = Directory::default();
        let addr: SocketAddr = "127.0.0.1:50999".parse().unwrap();
        let waiting = {
            let directory = directory.clone();
            tokio::spawn(async move { directory.routes(addr).await })
        };
        directory.add(addr, Routes::new(health));
        let routes = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("found once added")
            .unwrap();
        let mut client = HealthClient::new(in_process(routes, Some(Duration::from_secs(5))));
        let answer = client
            .check(HealthCheckRequest {
                service: "probe".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            answer.get_ref().status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        let unknown = client
            .check(HealthCheckRequest {
                service: "nothing".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}
