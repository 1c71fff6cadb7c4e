//! Who may open a connection: the limits that keep one client, or a flood,
//! from taking an edge down.
//!
//! Every TCP connection takes a slot when it is accepted and gives it back
//! when its socket closes — an upgraded WebSocket keeps the slot of the
//! connection it was (the slot rides with the stream, [`Counted`]). Before
//! anything is read:
//!
//! - **At most `--max-connections`** per edge (by default the file
//!   descriptor limit, which the process raises to its hard limit, less a
//!   reserve for its own files and the services): past it, `503` with
//!   `Retry-After` and the connection is closed.
//! - **At most `--max-connections-per-ip`** from one client address: `429`
//!   with `Retry-After`.
//! - **At most `--connect-rate-per-ip`** new connections per second from one
//!   address (bursts of twice that; off by default: a building of phones
//!   behind one NAT reconnecting after a deploy must not be refused): `429`.
//!
//! Behind a proxy every connection comes from the proxy's address; with
//! `--trusted-proxy-header` (e.g. `X-Forwarded-For`, whose last address is
//! the one the proxy saw) the per-address limits apply instead to WebSocket
//! and Socket.IO upgrades by the client address the header names, the
//! only connections a proxy does not share between clients.
//!
//! A connection must send its request headers within
//! `--header-read-timeout-secs` (and again between requests on a kept-alive
//! connection), or it is closed: idle and slowloris sockets cannot pile up.
//! Refusals are counted in `switchboard_refused_connections_total{reason}`.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// File descriptors kept out of `--max-connections`'s default: the
/// process's own files, its NATS and gRPC connections, the probe listener.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Seconds a refused client is asked to wait.
const RETRY_AFTER_SECS: u32 = 1;

/// How long a refusal may take to write before the socket is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection limits (flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionSettings {
    /// Connections the edge holds at once (WebSockets and plain HTTP); past
    /// it new ones get 503. 0: the file descriptor limit, less a reserve.
    #[arg(
        long = "max-connections",
        env = "SWITCHBOARD_MAX_CONNECTIONS",
        default_value_t = 0
    )]
    pub max_connections: usize,

    /// Connections one client address may hold at once; past it, 429.
    /// 0: no limit.
    #[arg(
        long = "max-connections-per-ip",
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1000
    )]
    pub max_connections_per_ip: usize,

    /// New connections per second one client address may open (bursts of
    /// twice that); past it, 429. 0: no limit.
    #[arg(
        long = "connect-rate-per-ip",
        env = "SWITCHBOARD_CONNECT_RATE_PER_IP",
        default_value_t = 0
    )]
    pub connect_rate_per_ip: u32,

    /// Seconds a client has to send its request headers (and between
    /// requests on a kept-alive connection) before it is disconnected.
    #[arg(
        long = "header-read-timeout-secs",
        env = "SWITCHBOARD_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10.0
    )]
    pub header_read_timeout_secs: f64,

    /// The header a trusted proxy in front sets to the client's address
    /// (`X-Forwarded-For`: its last address; `X-Real-IP`); per-address
    /// limits then apply to upgrades by that address. Unset: the peer's.
    #[arg(
        long = "trusted-proxy-header",
        env = "SWITCHBOARD_TRUSTED_PROXY_HEADER"
    )]
    pub trusted_proxy_header: Option<String>,
}

impl AdmissionSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_read_timeout_secs.clamp(0.1, 3600.0))
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The edge holds as many connections as it may (503).
    Full,
    /// The client address holds as many as it may (429).
    PerAddress,
    /// The client address opens them too fast (429).
    Rate,
}

impl Refusal {
    fn name(self) -> &'static str {
        match self {
            Refusal::Full => "max_connections",
            Refusal::PerAddress => "per_ip",
            Refusal::Rate => "connect_rate",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::Full => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::PerAddress | Refusal::Rate => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Refusal::Full => {
                "this server holds as many connections as it may; retry, or another instance"
            }
            Refusal::PerAddress => "too many connections from your address",
            Refusal::Rate => "connecting too fast from your address",
        }
    }

    fn body(self) -> String {
        serde_json::json!({
            "detail": self.detail(),
            "code": match self {
                Refusal::Full => "over_capacity",
                Refusal::PerAddress | Refusal::Rate => "rate_limited",
            },
        })
        .to_string()
    }

    fn count(self) {
        switchboard_proto::metrics::metrics().refused_connection(self.name());
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.count();
        (
            self.status(),
            [
                (header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()),
                (header::CONTENT_TYPE, "application/json".to_owned()),
            ],
            self.body(),
        )
            .into_response()
    }
}

/// The edge's connection limits and what is open against them.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_address: usize,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted_header: Option<HeaderName>,
    header_read_timeout: Duration,
    open: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// The limits `settings` describe, with `descriptors` the process's
    /// file descriptor limit.
    pub fn new(settings: &AdmissionSettings, descriptors: u64) -> Result<Self, InvalidHeader> {
        let max_connections = match settings.max_connections {
            0 => usize::try_from(descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1))
                .unwrap_or(usize::MAX),
            max => max,
        };
        let trusted_header = settings
            .trusted_proxy_header
            .as_deref()
            .filter(|name| !name.is_empty())
            .map(|name| HeaderName::try_from(name).map_err(|_| InvalidHeader(name.to_owned())))
            .transpose()?;
        let rate = NonZeroU32::new(settings.connect_rate_per_ip).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2"));
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        tracing::info!(
            max_connections,
            max_per_ip = settings.max_connections_per_ip,
            connect_rate_per_ip = settings.connect_rate_per_ip,
            header_read_timeout_secs = settings.header_read_timeout().as_secs_f64(),
            trusted_proxy_header = ?trusted_header,
            "connection limits"
        );
        Ok(Self {
            max_connections,
            max_per_address: settings.max_connections_per_ip,
            rate,
            trusted_header,
            header_read_timeout: settings.header_read_timeout(),
            open: AtomicUsize::new(0),
            by_address: Mutex::default(),
        })
    }

    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    fn addresses(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A slot for a connection just accepted from `peer`, or why not.
    pub fn accept(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        let slot = Slot {
            admission: Arc::clone(self),
            address: Arc::new(OnceLock::new()),
        };
        if self.trusted_header.is_none() {
            // Dropping `slot` on refusal gives the edge's slot back.
            self.claim(&slot.address, peer)?;
        }
        Ok(slot)
    }

    /// Counts `address` against its limits for the connection whose
    /// address cell is `cell`.
    fn claim(&self, cell: &OnceLock<IpAddr>, address: IpAddr) -> Result<(), Refusal> {
        if let Some(rate) = &self.rate
            && rate.check_key(&address).is_err()
        {
            return Err(Refusal::Rate);
        }
        let mut addresses = self.addresses();
        let open = addresses.entry(address).or_default();
        if self.max_per_address != 0 && *open >= self.max_per_address {
            if *open == 0 {
                addresses.remove(&address);
            }
            return Err(Refusal::PerAddress);
        }
        if cell.set(address).is_ok() {
            *open += 1;
        }
        Ok(())
    }

    /// The client address a trusted proxy header names, if one is
    /// configured and the request has it.
    fn forwarded_address(&self, request: &Request) -> Option<IpAddr> {
        let name = self.trusted_header.as_ref()?;
        let value = request.headers().get(name)?.to_str().ok()?;
        value.rsplit(',').next()?.trim().parse().ok()
    }

    fn release(&self, address: Option<IpAddr>) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(address) = address {
            let mut addresses = self.addresses();
            if let Some(open) = addresses.get_mut(&address) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    addresses.remove(&address);
                }
            }
        }
        if let Some(rate) = &self.rate
            && self.open() == 0
        {
            rate.retain_recent();
        }
    }
}

/// A trusted proxy header that is not a header name.
#[derive(Debug, thiserror::Error)]
#[error("--trusted-proxy-header {0:?} is not a header name")]
pub struct InvalidHeader(String);

/// One connection's place against the limits; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    /// The client address counted for it, once known.
    address: Arc<OnceLock<IpAddr>>,
}

impl Slot {
    /// What requests on this connection carry, so a trusted proxy's client
    /// address can be counted when an upgrade names it.
    pub fn claim_handle(&self) -> ClaimHandle {
        ClaimHandle {
            admission: Arc::clone(&self.admission),
            address: Arc::clone(&self.address),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.address.get().copied());
    }
}

/// A request's way back to its connection's slot (a request extension).
#[derive(Debug, Clone)]
pub struct ClaimHandle {
    admission: Arc<Admission>,
    address: Arc<OnceLock<IpAddr>>,
}

/// Counts a WebSocket or Socket.IO upgrade by the client address a trusted
/// proxy names: `429` past the per-address limits. Other requests, and
/// every request without a trusted proxy header configured, pass.
pub async fn admit_upgrades(request: Request, next: Next) -> Response {
    let is_upgrade = request.headers().contains_key(header::UPGRADE)
        || request.uri().path().starts_with("/socket.io/");
    let claim = request.extensions().get::<ClaimHandle>().cloned();
    if let (true, Some(claim)) = (is_upgrade, claim)
        && let Some(address) = claim.admission.forwarded_address(&request)
        && claim.address.get().is_none()
        && let Err(refusal) = claim.admission.claim(&claim.address, address)
    {
        tracing::info!(address = %address, reason = refusal.name(), "upgrade refused");
        return refusal.into_response();
    }
    next.run(request).await
}

/// Writes `refusal` as a whole HTTP response on a socket that will not be
/// served, then closes it (reading what the client sent meanwhile, bounded,
/// so the close is not a reset that loses the response).
pub async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    refusal.count();
    let body = refusal.body();
    let status = refusal.status();
    let response = format!(
        "HTTP/1.1 {} {}\r\nretry-after: {RETRY_AFTER_SECS}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
    );
    let written = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut discard = [0u8; 4096];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut discard) {
                Ok(0) => return io::Result::Ok(()),
                Ok(_) => continue,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, written).await;
}

/// A socket with its slot: the slot goes back when the socket closes,
/// whoever holds it then (hyper, or the WebSocket it became).
pub struct Counted<S> {
    // Dropped first: the slot is free by the time the client sees the close.
    _slot: Slot,
    stream: S,
}

impl<S> Counted<S> {
    pub fn new(stream: S, slot: Slot) -> Self {
        Self {
            _slot: slot,
            stream,
        }
    }
}

impl<S> std::fmt::Debug for Counted<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Counted").finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Raises this process's file descriptor soft limit to its hard limit, and
/// says both; returns the soft limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    let before = rlimit::Resource::NOFILE.get();
    let raised = rlimit::increase_nofile_limit(u64::MAX);
    match (before, raised, rlimit::Resource::NOFILE.get()) {
        (Ok((soft_before, _)), Ok(_), Ok((soft, hard))) => {
            tracing::info!(soft, hard, soft_before, "file descriptor limit");
            soft
        }
        (_, _, Ok((soft, hard))) => {
            tracing::warn!(soft, hard, "file descriptor limit could not be raised");
            soft
        }
        _ => {
            tracing::warn!("file descriptor limit unknown");
            1024
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_ip: usize) -> Arc<Admission> {
        let settings = AdmissionSettings {
            max_connections: max,
            max_connections_per_ip: per_ip,
            connect_rate_per_ip: 0,
            header_read_timeout_secs: 10.0,
            trusted_proxy_header: None,
        };
        Arc::new(Admission::new(&settings, 1024).unwrap())
    }

    #[test]
    fn slots_are_counted_per_edge_and_per_address_and_given_back() {
        let admission = admission(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.accept(a).unwrap();
        let _second = admission.accept(a).unwrap();
        assert_eq!(admission.accept(a).unwrap_err(), Refusal::PerAddress);
        let _third = admission.accept(b).unwrap();
        assert_eq!(admission.accept(b).unwrap_err(), Refusal::Full);
        assert_eq!(admission.open(), 3);
        drop(first);
        assert_eq!(admission.open(), 2);
        let _again = admission.accept(a).unwrap();
    }

    #[test]
    fn the_default_maximum_leaves_descriptors_in_reserve() {
        let admission = admission(0, 0);
        assert_eq!(admission.max_connections, 1024 - 256);
    }
}
