//! The one connection driver: every WebSocket endpoint, and Socket.IO,
//! runs its connections through [`drive`].
//!
//! The driver owns what every connection needs, so each endpoint gets it
//! the same way: the read loop; the size limit, binary frames and protocol
//! errors; close codes and their reasons (one table, [`Close`]); the
//! answer to a client's Close (RFC 6455 section 5.5.1); the drain (1012);
//! the message rate limit (protocol pings never count); a liveness timeout;
//! a periodic tick; meter counts in and out; errors a client is told of;
//! the registry session of connections that have one (opened before
//! anything is sent, closed at the end unless the cluster already did) and
//! the control messages that end it from elsewhere.
//!
//! An endpoint is a [`Handler`]: what it sends on open, what it does with
//! a client message, its own event source (room events, hub messages,
//! alerts) and what it does at the end. A transport ([`Transport`]) is how
//! messages cross: a WebSocket ([`websocket`]) or a Socket.IO socket.

pub mod close;
pub mod closer;
pub mod websocket;

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::{CloseSessionRequest, OpenSessionRequest, Session, SessionControl};
use tokio::sync::watch;
use tokio::time::Instant;

pub use close::Close;

use crate::control::Sockets;
use crate::error::ClientError;
use crate::meter::{Endpoint, Meter};
use crate::settings::TimedChannel;

/// What a client sent, as a handler sees it.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// A WebSocket text message.
    Text(&'a str),
    /// A Socket.IO event and its data.
    Event {
        name: &'static str,
        data: serde_json::Value,
    },
}

/// What the transport read.
#[derive(Debug)]
pub enum Received {
    Text(axum::extract::ws::Utf8Bytes),
    Event {
        name: &'static str,
        data: serde_json::Value,
    },
    Binary,
    /// A protocol-level ping or pong: the client is alive.
    Heartbeat,
    /// The client closed the connection (and was answered).
    Closed,
    /// The client broke a rule the transport enforces.
    Failed(Close),
    /// The connection dropped.
    Gone,
}

/// The client cannot be written to any more.
#[derive(Debug)]
pub struct Gone;

/// How messages cross: a WebSocket, or a Socket.IO socket.
pub trait Transport: Send {
    /// The next thing the client sent. Cancel-safe: the driver polls it
    /// beside other events.
    fn recv(&mut self) -> impl Future<Output = Received> + Send;
    /// Sends one JSON message (its `type` is its Socket.IO event name).
    fn send(&mut self, json: String) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Sends a message serialized once for many clients.
    fn send_shared(&mut self, payload: Bytes) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Ends the connection with `close`, as the protocol does it.
    fn close(&mut self, close: &Close) -> impl Future<Output = ()> + Send;
}

/// What a handler wants after one event.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Close(Close),
    /// The client is gone: nothing more to send.
    Gone,
}

impl From<Result<(), Gone>> for Flow {
    fn from(sent: Result<(), Gone>) -> Self {
        match sent {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Gone,
        }
    }
}

/// Counts a connection did not report yet, for its registry session's close.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unreported {
    pub requests: u64,
    pub steps: u64,
    pub predictions: u64,
}

/// What an endpoint does with its connections.
pub trait Handler: Send + 'static {
    /// The endpoint's own events: room events, hub messages, alerts, the
    /// end of a background task.
    type Event: Send;

    /// The endpoint's `error` message for `error` (each seed has its shape).
    fn error_message(&self, error: &ClientError) -> String;

    /// How often [`on_tick`](Self::on_tick) runs, asked once the connection
    /// is open; never by default.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Every message the client sends, text or binary, before it is read.
    fn received(&mut self) {}

    /// Whether `message` counts toward the connection's rate limit: every
    /// one by default. An endpoint exempts answers the server asked for
    /// itself, whose number it bounds (an ack of an alert it delivered).
    fn counts_toward_rate(&self, _message: &Inbound<'_>) -> bool {
        true
    }

    /// Once the connection (and its registry session) is open: a welcome.
    fn open<T: Transport>(&mut self, conn: &mut Conn<'_, T>) -> impl Future<Output = Flow> + Send;

    /// One client message. An error is sent to the client as
    /// [`error_message`](Self::error_message) says, and the connection goes
    /// on.
    fn on_message<T: Transport>(
        &mut self,
        message: Inbound<'_>,
        conn: &mut Conn<'_, T>,
    ) -> impl Future<Output = Result<Flow, ClientError>> + Send;

    /// The next event of the endpoint's own; pending when it has none.
    /// Cancel-safe.
    fn next_event(&mut self) -> impl Future<Output = Self::Event> + Send {
        std::future::pending()
    }

    fn on_event<T: Transport>(
        &mut self,
        event: Self::Event,
        conn: &mut Conn<'_, T>,
    ) -> impl Future<Output = Flow> + Send {
        let _ = (event, conn);
        async { Flow::Continue }
    }

    /// Every [`tick_every`](Self::tick_every).
    fn on_tick<T: Transport>(
        &mut self,
        conn: &mut Conn<'_, T>,
    ) -> impl Future<Output = Flow> + Send {
        let _ = conn;
        async { Flow::Continue }
    }

    /// A protocol-level ping or pong from the client.
    fn on_heartbeat<T: Transport>(
        &mut self,
        conn: &mut Conn<'_, T>,
    ) -> impl Future<Output = Flow> + Send {
        let _ = conn;
        async { Flow::Continue }
    }

    /// The cluster ended the registry session (terminated elsewhere, timed
    /// out, replaced): tell the client, and say how to close. Only
    /// connections with a registry session get one.
    fn on_control<T: Transport>(
        &mut self,
        control: SessionControl,
        conn: &mut Conn<'_, T>,
    ) -> impl Future<Output = Close> + Send {
        let _ = conn;
        async move { Close::Done(format!("ended by the cluster: {}", control.reason)) }
    }

    /// The connection is over: last work, and the counts its registry
    /// session is closed with.
    fn finish(&mut self) -> impl Future<Output = Unreported> + Send {
        async { Unreported::default() }
    }
}

/// How the driver runs one endpoint's connections.
#[derive(Debug, Clone)]
pub struct Options {
    pub endpoint: Endpoint,
    /// Client messages per second (bursts of twice that); beyond, close 1008.
    pub rate_limit: Option<u32>,
    /// With no frame from the client for this long, close 1001.
    pub liveness: Option<Duration>,
    /// The registry session this connection is, when it is one.
    pub registration: Option<OpenSessionRequest>,
    /// For a connection that is no registry session: the id control
    /// messages for it (an operator's disconnect) are addressed to.
    pub control_id: Option<String>,
}

impl Options {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            rate_limit: None,
            liveness: None,
            registration: None,
            control_id: None,
        }
    }
}

/// What the driver shares between connections: cheap to clone.
#[derive(Clone, Debug)]
pub struct Driver {
    inner: Arc<DriverInner>,
}

#[derive(Debug)]
struct DriverInner {
    edge_id: String,
    max_message_bytes: usize,
    meter: Arc<Meter>,
    sockets: Arc<Sockets>,
    draining: watch::Receiver<bool>,
    /// Opens registry sessions.
    registry: SessionServiceClient<TimedChannel>,
    /// Closes them, in batches.
    closer: closer::Closer,
}

impl Driver {
    pub fn new(
        edge_id: String,
        max_message_bytes: usize,
        meter: Arc<Meter>,
        sockets: Arc<Sockets>,
        draining: watch::Receiver<bool>,
        registry: SessionServiceClient<TimedChannel>,
    ) -> Self {
        let closer = closer::Closer::start(registry.clone());
        Self {
            inner: Arc::new(DriverInner {
                edge_id,
                max_message_bytes,
                meter,
                sockets,
                draining,
                registry,
                closer,
            }),
        }
    }

    /// Completes once every registry session of a closed connection is
    /// closed (or given up to the sweep): the drain waits for it.
    pub async fn sessions_closed(&self) {
        self.inner.closer.flush().await;
    }

    /// This edge's id, as the registry records it.
    pub fn edge_id(&self) -> &str {
        &self.inner.edge_id
    }

    pub fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes
    }

    pub fn meter(&self) -> &Arc<Meter> {
        &self.inner.meter
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Completes once the edge starts draining.
    pub async fn draining(&self) {
        let mut draining = self.inner.draining.clone();
        if draining.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A connection's registry session.
#[derive(Debug)]
pub struct Registration {
    session: Session,
    /// False once the registry no longer holds it.
    live: bool,
}

impl Registration {
    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The registry no longer holds the session (it was closed, or is
    /// unknown there): nothing to close at the end.
    pub fn forget(&mut self) {
        self.live = false;
    }
}

/// One connection, as handlers see it: sending, its registration.
pub struct Conn<'a, T> {
    transport: &'a mut T,
    meter: &'a Meter,
    registration: Option<&'a mut Registration>,
}

impl<T> std::fmt::Debug for Conn<'_, T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Conn")
            .field("registration", &self.registration)
            .finish_non_exhaustive()
    }
}

/// Room for a typical reply (a `step_detection` is about 330 bytes), so
/// serializing one does not grow its buffer twice on the way.
const REPLY_CAPACITY: usize = 512;

/// `message` as JSON text, written into a buffer sized for a reply.
pub fn to_json(message: &impl Serialize) -> String {
    let mut json = Vec::with_capacity(REPLY_CAPACITY);
    serde_json::to_writer(&mut json, message).expect("outbound messages always serialize");
    String::from_utf8(json).expect("serde_json writes UTF-8")
}

impl<T: Transport> Conn<'_, T> {
    /// Sends one message, counted.
    pub async fn send(&mut self, message: &impl Serialize) -> Result<(), Gone> {
        self.send_json(to_json(message)).await
    }

    /// Sends JSON text, counted.
    pub async fn send_json(&mut self, json: String) -> Result<(), Gone> {
        self.transport.send(json).await?;
        self.meter.sent();
        Ok(())
    }

    /// Sends a message serialized once for many clients, counted.
    pub async fn send_shared(&mut self, payload: Bytes) -> Result<(), Gone> {
        self.transport.send_shared(payload).await?;
        self.meter.sent();
        Ok(())
    }

    /// The connection's registry session; every connection whose
    /// [`Options::registration`] was set has one.
    pub fn registration(&mut self) -> &mut Registration {
        self.registration
            .as_deref_mut()
            .expect("only endpoints with a registry session ask for it")
    }
}

/// Opens the registry session `request` describes, or says how to refuse.
async fn register(
    driver: &Driver,
    request: OpenSessionRequest,
) -> Result<Registration, (Option<ClientError>, Close)> {
    let limit = request.max_per_user;
    let request = OpenSessionRequest {
        edge_id: driver.edge_id().to_owned(),
        ..request
    };
    match driver.inner.registry.clone().open_session(request).await {
        Ok(response) => Ok(Registration {
            session: response.into_inner(),
            live: true,
        }),
        Err(status) if status.code() == tonic::Code::ResourceExhausted => Err((
            None,
            Close::LimitReached(format!(
                "connection limit reached: at most {limit} connections per user"
            )),
        )),
        Err(status) => Err((
            Some(ClientError::from_status("session", status)),
            Close::Unavailable("session service"),
        )),
    }
}

/// Closes a registry session that is still live, with its last counts
/// (through the edge's [`closer`], in a batch, retried).
async fn unregister(driver: &Driver, registration: &Registration, counts: Unreported) {
    let request = CloseSessionRequest {
        session_id: registration.session.session_id.clone(),
        requests: counts.requests,
        steps: counts.steps,
        predictions: counts.predictions,
    };
    driver.inner.closer.close(request).await;
}

/// Sends an error the client is told of, counted once here. (The message
/// is made before the future, so the future holds no `&H`: handlers need
/// not be `Sync`.)
fn send_error<'a, H: Handler, T: Transport>(
    handler: &H,
    conn: &'a mut Conn<'_, T>,
    error: &ClientError,
) -> impl Future<Output = Flow> + Send + 'a {
    switchboard_proto::metrics::metrics().client_error(error.code());
    let message = handler.error_message(error);
    async move { conn.send_json(message).await.into() }
}

/// Completes at the next tick, or never without one.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Completes when the client has been silent for `liveness`.
async fn silent(last_heard: Instant, liveness: Option<Duration>) {
    match liveness {
        Some(liveness) => tokio::time::sleep_until(last_heard + liveness).await,
        None => std::future::pending().await,
    }
}

/// Runs one connection from open to close.
pub async fn drive<H: Handler, T: Transport>(
    driver: &Driver,
    options: Options,
    mut transport: T,
    mut handler: H,
) {
    let meter = Arc::clone(driver.meter());
    let mut registration = match options.registration {
        Some(request) => match register(driver, request).await {
            Ok(registration) => Some(registration),
            Err((error, close)) => {
                if let Some(error) = error {
                    let mut conn = Conn {
                        transport: &mut transport,
                        meter: &meter,
                        registration: None,
                    };
                    send_error(&handler, &mut conn, &error).await;
                }
                tracing::info!(endpoint = options.endpoint.name(), reason = %close, "connection refused");
                transport.close(&close).await;
                return;
            }
        },
        None => None,
    };
    let held_as = match (&registration, &options.control_id) {
        (Some(registration), _) => Some(registration.session.session_id.as_str()),
        (None, Some(control_id)) => Some(control_id.as_str()),
        (None, None) => None,
    };
    let (_held, mut controls) = match held_as {
        Some(id) => {
            let (held, control) = driver.inner.sockets.hold(id);
            (Some(held), Some(control))
        }
        None => (None, None),
    };
    let _connected = meter.connect(options.endpoint);
    let mut limiter = options.rate_limit.map(|rate| {
        let rate = NonZeroU32::new(rate.max(1)).expect("at least 1");
        let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2"));
        (
            rate.get(),
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        )
    });
    let mut last_heard = Instant::now();

    let ended = {
        let mut conn = Conn {
            transport: &mut transport,
            meter: &meter,
            registration: registration.as_mut(),
        };
        let mut flow = handler.open(&mut conn).await;
        let mut ticks = handler.tick_every().map(|every| {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        // Made once, not per message: waiting on the drain registers with
        // its watch, and the loop runs for every client message.
        let draining = driver.draining();
        let mut draining = std::pin::pin!(draining);
        while let Flow::Continue = flow {
            flow = tokio::select! {
                () = &mut draining => Flow::Close(Close::Restart),
                received = conn.transport.recv() => {
                    if options.liveness.is_some() {
                        last_heard = Instant::now();
                    }
                    on_received(&mut handler, &mut conn, &mut limiter, received).await
                }
                Some(control) = async {
                    match controls.as_mut() {
                        Some(slot) => slot.await.ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    controls = None;
                    // A registry session the cluster ended is not closed
                    // again; a connection held by its control id has none.
                    if let Some(registration) = conn.registration.as_deref_mut() {
                        registration.forget();
                    }
                    Flow::Close(handler.on_control(control, &mut conn).await)
                }
                event = handler.next_event() => handler.on_event(event, &mut conn).await,
                () = tick(&mut ticks) => handler.on_tick(&mut conn).await,
                () = silent(last_heard, options.liveness) => {
                    // The deadline may have passed while a handler waited on
                    // something slow (a registry call while NATS recovers),
                    // with the client's answer already here: look once
                    // before calling the client silent.
                    match futures::FutureExt::now_or_never(conn.transport.recv()) {
                        Some(received) => {
                            last_heard = Instant::now();
                            on_received(&mut handler, &mut conn, &mut limiter, received).await
                        }
                        None => Flow::Close(Close::NoHeartbeat(options.liveness.unwrap_or_default())),
                    }
                }
            };
        }
        flow
    };
    if let Flow::Close(close) = &ended {
        if matches!(
            close,
            Close::Restart
                | Close::NoHeartbeat(_)
                | Close::RateLimited { .. }
                | Close::TooSlow { .. }
        ) {
            tracing::info!(endpoint = options.endpoint.name(), reason = %close, "connection closed");
        }
        transport.close(close).await;
    }
    let counts = handler.finish().await;
    if let Some(registration) = &registration
        && registration.live
    {
        unregister(driver, registration, counts).await;
    }
}

/// The limiter's verdict on one more client message.
fn over_rate(limiter: &mut Option<(u32, DefaultDirectRateLimiter)>) -> Option<Close> {
    let (per_second, limiter) = limiter.as_ref()?;
    limiter.check().is_err().then_some(Close::RateLimited {
        per_second: *per_second,
    })
}

/// What comes of `received` from the client.
async fn on_received<H: Handler, T: Transport>(
    handler: &mut H,
    conn: &mut Conn<'_, T>,
    limiter: &mut Option<(u32, DefaultDirectRateLimiter)>,
    received: Received,
) -> Flow {
    match received {
        Received::Text(text) => {
            on_client_message(handler, conn, limiter, Inbound::Text(text.as_str())).await
        }
        Received::Event { name, data } => {
            on_client_message(handler, conn, limiter, Inbound::Event { name, data }).await
        }
        Received::Binary => {
            conn.meter.received();
            handler.received();
            match over_rate(limiter) {
                Some(close) => Flow::Close(close),
                None => send_error(handler, conn, &ClientError::BinaryMessage).await,
            }
        }
        Received::Heartbeat => handler.on_heartbeat(conn).await,
        Received::Closed | Received::Gone => Flow::Gone,
        Received::Failed(close) => Flow::Close(close),
    }
}

async fn on_client_message<H: Handler, T: Transport>(
    handler: &mut H,
    conn: &mut Conn<'_, T>,
    limiter: &mut Option<(u32, DefaultDirectRateLimiter)>,
    message: Inbound<'_>,
) -> Flow {
    conn.meter.received();
    handler.received();
    if handler.counts_toward_rate(&message)
        && let Some(close) = over_rate(limiter)
    {
        return Flow::Close(close);
    }
    match handler.on_message(message, conn).await {
        Ok(flow) => flow,
        Err(error) => send_error(handler, conn, &error).await,
    }
}
