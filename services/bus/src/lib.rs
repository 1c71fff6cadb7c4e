//! The message bus and shared state every Switchboard role stands on.
//!
//! A cluster is several processes that share one NATS: core pub/sub carries
//! fan-out (control messages to the edge holding a socket, broadcasts), and
//! JetStream key-value buckets hold the state no single replica may own
//! (the session registry, counters). Without a NATS URL the same API runs in
//! process, for a laptop or a small device: one process is then the whole
//! cluster, and it says so in its log.
//!
//! - [`BusSettings`]: the NATS servers (one URL or a comma-separated list
//!   the client moves across) and the JetStream replicas of everything the
//!   bus creates.
//! - [`Bus`]: connect, publish, subscribe, open a [`KeyValue`] bucket.
//! - [`KeyValue`]: get / put / create / delete, and [`KeyValue::update`],
//!   the one compare-and-swap loop every shared record is changed with,
//!   with the same semantics in both modes (revisions, conflicts).
//! - [`Log`]: append-only per-key logs that lose nothing (frames).
//! - [`Mailbox`]: per-owner messages kept until removed (alerts until
//!   acknowledged), read as backlog then live.
//! - [`hub`]: the UI and statistics-stream messages clients get through
//!   NATS, built and checked in one place, and their subjects.
//! - [`subjects`]: every subject name, in one place.
//! - [`BusError`]: what failed, with its cause as the error's source; it
//!   says what kind of failure it is ([`ServiceError`]), and each service
//!   maps that to a gRPC status at its server.

pub mod history;
pub mod hub;
mod key_value;
mod local;
pub mod log;
pub mod mailbox;

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use switchboard_proto::error::{ErrorCode, ServiceError};

pub use history::{Channel, History, HistorySettings};
pub use key_value::{Change, Contended, Entry, KeyValue};
pub use local::LocalBus;
pub use log::{Appended, Log};
pub use mailbox::{Letter, Mailbox, MailboxReader};

/// How long a call to NATS may take before the bus reports it failed, so a
/// NATS outage turns into an error instead of a hang.
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Copies JetStream keeps of each stream and bucket when none is asked
/// for: one, what a single NATS server can hold.
pub const DEFAULT_JETSTREAM_REPLICAS: usize = 1;

/// Where the bus lives: NATS servers, or none for the in-process bus.
#[derive(Debug, Clone, clap::Args)]
pub struct BusSettings {
    /// NATS server URL (JetStream enabled), or several separated by commas:
    /// the servers of one NATS cluster, which the client moves across when
    /// the one it uses fails. Without it the process runs alone, with an
    /// in-process bus and in-memory state.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        value_delimiter = ',',
        value_parser = nats_server
    )]
    pub nats_servers: Vec<ServerAddr>,

    /// Copies JetStream keeps of every stream and key-value bucket the bus
    /// creates (1 to 5; more than one needs a NATS cluster). An existing
    /// stream with another count is updated to this one.
    #[arg(
        long = "jetstream-replicas",
        env = "SWITCHBOARD_JETSTREAM_REPLICAS",
        default_value_t = DEFAULT_JETSTREAM_REPLICAS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=5),
    )]
    pub jetstream_replicas: usize,

    /// How much of each hub's traffic is kept for clients that resume.
    #[command(flatten)]
    pub history: HistorySettings,
}

/// One NATS server's URL (`nats://host:port`, `tls://…`, or `host:port`).
fn nats_server(url: &str) -> Result<ServerAddr, String> {
    let server = url
        .trim()
        .parse::<ServerAddr>()
        .map_err(|error| error.to_string())?;
    if server.host().is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(server)
}

impl Default for BusSettings {
    /// The in-process bus.
    fn default() -> Self {
        Self {
            nats_servers: Vec::new(),
            jetstream_replicas: DEFAULT_JETSTREAM_REPLICAS,
            history: HistorySettings::default(),
        }
    }
}

/// A bus failure, as callers need to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// NATS or JetStream failed, or did not answer in time.
    #[error("nats: {source}")]
    Nats {
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// A compare-and-swap lost to a concurrent writer (or the key already
    /// existed, for a create): read again and retry, as
    /// [`KeyValue::update`] does.
    #[error("revision conflict on key {0}")]
    Conflict(String),
    /// An in-process store reached its memory bound.
    #[error("store full: {0}")]
    Full(String),
}

impl BusError {
    /// True when a concurrent writer got there first.
    pub fn is_conflict(&self) -> bool {
        matches!(self, BusError::Conflict(_))
    }
}

impl ServiceError for BusError {
    /// NATS trouble is the caller's "try again"; a conflict that survived
    /// the caller's own retries is a contended write; a full store is a
    /// limit reached.
    fn error_code(&self) -> ErrorCode {
        match self {
            BusError::Nats { .. } => ErrorCode::Unavailable,
            BusError::Conflict(_) => ErrorCode::Contended,
            BusError::Full(_) => ErrorCode::LimitReached,
        }
    }
}

fn nats_error(error: impl Error + Send + Sync + 'static) -> BusError {
    BusError::Nats {
        source: Box::new(error),
    }
}

/// One message received from a subscription.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    /// The publisher's trace context (empty when tracing is off): a
    /// receiver's span continues it, so the NATS hop stays in one trace.
    pub trace: opentelemetry::Context,
    /// Who published it, when the publisher said ([`Bus::publish_from`]):
    /// a receiver can skip the publisher, who was answered directly.
    pub origin: Option<String>,
}

/// The header that carries a message's [`Message::origin`].
const ORIGIN_HEADER: &str = "Switchboard-Origin";

/// NATS headers as a trace-context carrier.
struct NatsHeaders(async_nats::HeaderMap);

/// Headers carrying the current span's trace context; none when there is
/// no trace to carry (then a message goes without headers).
fn trace_headers() -> Option<async_nats::HeaderMap> {
    let mut headers = NatsHeaders(async_nats::HeaderMap::new());
    switchboard_proto::trace::inject(&tracing::Span::current(), &mut headers);
    (!headers.0.is_empty()).then_some(headers.0)
}

/// The trace context a NATS message's headers carry (empty when none).
pub(crate) fn trace_of(headers: Option<async_nats::HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => switchboard_proto::trace::extract(&NatsHeaders(headers)),
        None => opentelemetry::Context::new(),
    }
}

impl switchboard_proto::trace::Carrier for NatsHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// The bus: NATS when configured, otherwise in process.
#[derive(Clone, Debug)]
pub enum Bus {
    Nats(Box<NatsBus>),
    Local(LocalBus),
}

/// A NATS connection and its JetStream context.
#[derive(Clone, Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// Copies JetStream keeps of each stream and bucket this bus creates.
    replicas: usize,
    /// The `/ws/ui` hub's kept messages.
    ui_history: History,
    /// The statistics stream's kept messages.
    stream_history: History,
    /// System events counted here, not yet published.
    event_counts: Arc<hub::system_events::Tally>,
}

impl Bus {
    /// Connects to NATS when `settings` names servers, otherwise starts the
    /// in-process bus.
    pub async fn connect(settings: &BusSettings) -> Result<Self, BusError> {
        if settings.nats_servers.is_empty() {
            tracing::warn!("no NATS_URL: single-instance mode, in-process bus and in-memory state");
            return Ok(Bus::Local(LocalBus::with_history(settings.history)));
        }
        // Host and port only: a URL may carry a password.
        let servers = settings
            .nats_servers
            .iter()
            .map(|server| format!("{}:{}", server.host(), server.port()))
            .collect::<Vec<_>>()
            .join(",");
        // With several servers the client reconnects to another when its
        // own fails, and learns the cluster's others from the one it uses.
        let client = async_nats::ConnectOptions::new()
            .name("switchboard")
            .request_timeout(Some(NATS_REQUEST_TIMEOUT))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats connected"),
                    other => tracing::warn!(event = %other, "nats connection event"),
                }
            })
            .connect(settings.nats_servers.as_slice())
            .await
            .map_err(nats_error)?;
        tracing::info!(%servers, replicas = settings.jetstream_replicas, "connected to nats");
        let jetstream = jetstream::new(client.clone());
        let replicas = settings.jetstream_replicas;
        let ui_history =
            history::open(&jetstream, Channel::Ui, &settings.history, replicas).await?;
        let stream_history =
            history::open(&jetstream, Channel::Stream, &settings.history, replicas).await?;
        Ok(Bus::Nats(Box::new(NatsBus {
            client,
            jetstream,
            replicas,
            ui_history,
            stream_history,
            event_counts: Arc::default(),
        })))
    }

    /// System events counted through this bus (and its clones), not yet
    /// published.
    pub(crate) fn event_counts(&self) -> &hub::system_events::Tally {
        match self {
            Bus::Nats(nats) => &nats.event_counts,
            Bus::Local(local) => local.event_counts(),
        }
    }

    /// True when this process is the whole cluster.
    pub fn is_single_instance(&self) -> bool {
        matches!(self, Bus::Local(_))
    }

    /// Whether messages can go out now: the in-process bus always, NATS
    /// while the client is connected (it reconnects by itself when it is
    /// not).
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Nats(nats) => {
                nats.client.connection_state() == async_nats::connection::State::Connected
            }
            Bus::Local(_) => true,
        }
    }

    /// Publishes without waiting for anyone to receive it (core NATS
    /// semantics: subscribers that are not there miss it).
    pub async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        self.publish_tagged(subject, payload, None).await
    }

    /// Publishes as [`publish`](Self::publish) does, saying who published
    /// (`origin`, received as [`Message::origin`]).
    pub async fn publish_from(
        &self,
        subject: String,
        payload: Bytes,
        origin: &str,
    ) -> Result<(), BusError> {
        self.publish_tagged(subject, payload, Some(origin)).await
    }

    async fn publish_tagged(
        &self,
        subject: String,
        payload: Bytes,
        origin: Option<&str>,
    ) -> Result<(), BusError> {
        match self {
            Bus::Nats(nats) => {
                let mut headers = trace_headers();
                if let Some(origin) = origin {
                    headers
                        .get_or_insert_with(async_nats::HeaderMap::new)
                        .insert(ORIGIN_HEADER, origin);
                }
                let published = match headers {
                    None => nats.client.publish(subject, payload).await,
                    Some(headers) => {
                        nats.client
                            .publish_with_headers(subject, headers, payload)
                            .await
                    }
                };
                published.map_err(|error| {
                    switchboard_proto::metrics::metrics()
                        .nats_publish_failures
                        .inc();
                    nats_error(error)
                })
            }
            Bus::Local(local) => {
                local.publish(&subject, payload, origin);
                Ok(())
            }
        }
    }

    /// Subscribes as one of `group`: each message goes to one member of the
    /// group across the cluster (in process, to this subscriber).
    pub async fn queue_subscribe(
        &self,
        subject: String,
        group: String,
    ) -> Result<Subscription, BusError> {
        match self {
            Bus::Nats(nats) => Ok(Subscription::Nats(
                nats.client
                    .queue_subscribe(subject, group)
                    .await
                    .map_err(nats_error)?,
            )),
            Bus::Local(local) => Ok(Subscription::Local(local.subscribe(&subject))),
        }
    }

    /// Subscribes to `subject`, which may use NATS wildcards (`*`, `>`).
    pub async fn subscribe(&self, subject: String) -> Result<Subscription, BusError> {
        match self {
            Bus::Nats(nats) => Ok(Subscription::Nats(
                nats.client.subscribe(subject).await.map_err(nats_error)?,
            )),
            Bus::Local(local) => Ok(Subscription::Local(local.subscribe(&subject))),
        }
    }

    /// The kept messages of a hub.
    pub fn history(&self, channel: Channel) -> History {
        match self {
            Bus::Nats(nats) => match channel {
                Channel::Ui => nats.ui_history.clone(),
                Channel::Stream => nats.stream_history.clone(),
            },
            Bus::Local(local) => History::Local(local.history(channel)),
        }
    }

    /// Publishes a hub's message on `subject` into its history, which every
    /// edge follows. With `stored` the call returns once JetStream has kept
    /// it (an error means it was not sent); without, it returns once it
    /// left, as a core publish does. Returns the offset when known.
    pub(crate) async fn publish_kept(
        &self,
        channel: Channel,
        subject: String,
        payload: Bytes,
        stored: bool,
    ) -> Result<Option<u64>, BusError> {
        let failed = |error| {
            switchboard_proto::metrics::metrics()
                .nats_publish_failures
                .inc();
            nats_error(error)
        };
        match self {
            Bus::Nats(nats) if stored => {
                let published = match trace_headers() {
                    None => nats.jetstream.publish(subject, payload).await,
                    Some(headers) => {
                        nats.jetstream
                            .publish_with_headers(subject, headers, payload)
                            .await
                    }
                };
                let ack = published.map_err(failed)?.await.map_err(failed)?;
                Ok(Some(ack.sequence))
            }
            Bus::Nats(_) => self.publish(subject, payload).await.map(|()| None),
            Bus::Local(local) => {
                let offset = local.history(channel).append(&subject, payload.clone());
                local.publish(&subject, payload, None);
                Ok(Some(offset))
            }
        }
    }

    /// Returns once the server has every subscription this process made
    /// before the call: then a message published from anywhere reaches
    /// them (what happened before can be read from storage). NATS handles
    /// a connection's operations in order, so one round trip does it: a
    /// request nobody answers, to this connection's own inbox.
    pub async fn settle(&self) -> Result<(), BusError> {
        use async_nats::RequestErrorKind;
        match self {
            Bus::Nats(nats) => {
                let inbox = nats.client.new_inbox();
                match nats.client.request(inbox, Bytes::new()).await {
                    Ok(_) => Ok(()),
                    Err(error) if error.kind() == RequestErrorKind::NoResponders => Ok(()),
                    Err(error) => Err(nats_error(error)),
                }
            }
            Bus::Local(_) => Ok(()),
        }
    }

    /// Opens (creating when needed) the key-value bucket `bucket`.
    pub async fn key_value(&self, bucket: &str) -> Result<KeyValue, BusError> {
        match self {
            Bus::Nats(nats) => {
                // `create_key_value` first reads the account's JetStream
                // info, which async-nats cannot parse from nats-server 2.9
                // (Debian's); opening the bucket's stream directly, as the
                // KV layout prescribes, works on every 2.9+ server, and
                // brings an existing bucket's replicas to the settings'.
                let store = patiently(bucket, || async {
                    open_stream(&nats.jetstream, kv_stream_config(bucket, nats.replicas)).await?;
                    nats.jetstream
                        .get_key_value(bucket)
                        .await
                        .map_err(nats_error)
                })
                .await?;
                Ok(KeyValue::Nats(Box::new(store)))
            }
            Bus::Local(local) => Ok(KeyValue::Local(local.key_value(bucket))),
        }
    }

    /// Opens (creating when needed) the log `name`, which remembers the
    /// ids of appends for `dedup_window` (see [`Log::append_at`]); an
    /// existing stream gets this window.
    pub async fn log(&self, name: &str, dedup_window: Duration) -> Result<Log, BusError> {
        match self {
            Bus::Nats(nats) => Ok(Log::Nats(Box::new(log::NatsLog::new(
                patiently(name, || {
                    log::open(&nats.jetstream, name, nats.replicas, dedup_window)
                })
                .await?,
            )))),
            Bus::Local(local) => Ok(Log::Local(local.log(name, dedup_window))),
        }
    }

    /// Opens (creating when needed) the mailbox `name`.
    pub async fn mailbox(&self, name: &str) -> Result<Mailbox, BusError> {
        match self {
            Bus::Nats(nats) => Ok(Mailbox::Nats(Box::new(
                patiently(name, || mailbox::open(&nats.jetstream, name, nats.replicas)).await?,
            ))),
            Bus::Local(local) => Ok(Mailbox::Local(local.mailbox(name))),
        }
    }

    /// Flushes what this process published, so a caller that must know its
    /// messages left (e.g. before exiting) can wait for it.
    pub async fn flush(&self) -> Result<(), BusError> {
        match self {
            Bus::Nats(nats) => nats.client.flush().await.map_err(nats_error),
            Bus::Local(_) => Ok(()),
        }
    }

    /// The bus as an operator sees it: the NATS server this process is
    /// connected to and every JetStream stream (buckets, logs, mailboxes
    /// and histories are streams), with what each holds. A stream list
    /// JetStream does not give is left empty, as the connection state says
    /// more than it then.
    pub async fn status(&self) -> BusStatus {
        let Bus::Nats(nats) = self else {
            return BusStatus {
                mode: "in-process",
                connected: true,
                server: None,
                streams: Vec::new(),
            };
        };
        let info = nats.client.server_info();
        let connected = self.is_connected();
        let mut streams = Vec::new();
        if connected {
            let mut listed = nats.jetstream.streams();
            while let Ok(Some(Ok(stream))) =
                tokio::time::timeout(NATS_REQUEST_TIMEOUT, listed.next()).await
            {
                streams.push(StreamStatus {
                    name: stream.config.name,
                    messages: stream.state.messages,
                    bytes: stream.state.bytes,
                    consumers: stream.state.consumer_count,
                    replicas: stream.config.num_replicas,
                });
            }
            streams.sort_by(|a, b| a.name.cmp(&b.name));
        }
        BusStatus {
            mode: "nats",
            connected,
            server: Some(ServerStatus {
                name: info.server_name,
                version: info.version,
                address: format!("{}:{}", info.host, info.port),
            }),
            streams,
        }
    }
}

/// [`Bus::status`]: what the console shows of the bus.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BusStatus {
    /// `nats` or `in-process`.
    pub mode: &'static str,
    pub connected: bool,
    /// The NATS server this process talks to (none in process).
    pub server: Option<ServerStatus>,
    pub streams: Vec<StreamStatus>,
}

/// A NATS server, as it introduced itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub version: String,
    pub address: String,
}

/// One JetStream stream and what it holds now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: usize,
    pub replicas: usize,
}

/// How long opening a stream or bucket keeps trying while JetStream does
/// not answer (a cluster still electing its leaders, a busy server): a
/// process starting with its NATS waits for it, rather than exiting.
const OPEN_PATIENCE: Duration = Duration::from_secs(60);

/// Runs `open` (opening `what`) until it succeeds, retrying failures with
/// a growing pause for up to [`OPEN_PATIENCE`]; then its last error.
async fn patiently<T, F, Fut>(what: &str, mut open: F) -> Result<T, BusError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BusError>>,
{
    let deadline = tokio::time::Instant::now() + OPEN_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        match open().await {
            Ok(opened) => return Ok(opened),
            Err(error) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(%error, what, "jetstream state not opened yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Opens the stream `config` names, creating it when it does not exist.
/// Replicas starting together race to create it: whoever loses finds it
/// created and opens it, rather than failing.
pub(crate) async fn open_stream(
    jetstream: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, BusError> {
    let name = config.name.clone();
    if let Ok(stream) = jetstream.get_stream(&name).await {
        let current = &stream.cached_info().config;
        let Some(updated) = reconciled(current, &config) else {
            return Ok(stream);
        };
        tracing::info!(
            stream = %name,
            subjects = ?updated.subjects,
            replicas = updated.num_replicas,
            duplicate_window = ?updated.duplicate_window,
            was_subjects = ?current.subjects,
            was_replicas = current.num_replicas,
            was_duplicate_window = ?current.duplicate_window,
            "stream updated"
        );
        jetstream.update_stream(updated).await.map_err(nats_error)?;
        return jetstream.get_stream(&name).await.map_err(nats_error);
    }
    match jetstream.create_stream(config).await {
        Ok(stream) => Ok(stream),
        Err(create_error) => jetstream
            .get_stream(&name)
            .await
            .map_err(|_| nats_error(create_error)),
    }
}

/// What an existing stream laid out as `current` must be updated to so it
/// has the subjects, replicas, bounds (count, age) and de-duplication
/// window `wanted` asks for (a stream an older version laid out, or
/// settings that changed), keeping everything else it has and what it
/// holds; `None` when it already has them. A `wanted` window of zero asks
/// for none in particular (the server's default), so it never changes a
/// stream's.
fn reconciled(
    current: &jetstream::stream::Config,
    wanted: &jetstream::stream::Config,
) -> Option<jetstream::stream::Config> {
    let duplicate_window = if wanted.duplicate_window.is_zero() {
        current.duplicate_window
    } else {
        wanted.duplicate_window
    };
    if current.subjects == wanted.subjects
        && current.num_replicas == wanted.num_replicas
        && current.max_messages == wanted.max_messages
        && current.max_age == wanted.max_age
        && current.duplicate_window == duplicate_window
    {
        return None;
    }
    Some(jetstream::stream::Config {
        subjects: wanted.subjects.clone(),
        num_replicas: wanted.num_replicas,
        max_messages: wanted.max_messages,
        max_age: wanted.max_age,
        duplicate_window,
        ..current.clone()
    })
}

/// A JetStream stream whose subjects share a prefix, one subject token per
/// key segment: what logs and mailboxes are built on.
#[derive(Clone, Debug)]
pub struct PrefixedStream {
    jetstream: jetstream::Context,
    pub(crate) stream: jetstream::stream::Stream,
    prefix: String,
}

impl PrefixedStream {
    /// Opens (creating when needed) the stream `config` describes, whose
    /// subjects start with `prefix`.
    pub(crate) async fn open(
        jetstream: &jetstream::Context,
        prefix: String,
        config: jetstream::stream::Config,
    ) -> Result<Self, BusError> {
        Ok(Self {
            jetstream: jetstream.clone(),
            stream: open_stream(jetstream, config).await?,
            prefix,
        })
    }

    /// The subject of a message keyed by `segments` (any strings).
    pub(crate) fn subject(&self, segments: &[&str]) -> String {
        segments
            .iter()
            .fold(self.prefix.clone(), |subject, segment| {
                format!("{subject}.{}", key_token(segment))
            })
    }

    /// Publishes to a subject that must have no message yet, and waits for
    /// JetStream's acknowledgement; [`BusError::Conflict`] when it has one.
    /// With `message_id` (`Nats-Msg-Id`), JetStream stores nothing when a
    /// message with that id was stored within the stream's duplicate window,
    /// and its acknowledgement says so, with the stored message's sequence.
    pub(crate) async fn publish_durably_once(
        &self,
        subject: String,
        payload: Bytes,
        message_id: Option<String>,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        use async_nats::jetstream::context::PublishErrorKind;
        let mut headers = trace_headers().unwrap_or_default();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        if let Some(message_id) = message_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers);
        let acked = async {
            self.jetstream
                .send_publish(subject.clone(), message)
                .await?
                .await
        };
        match acked.await {
            Ok(ack) => Ok(ack),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                Err(BusError::Conflict(format!("{subject} is taken")))
            }
            Err(error) => Err(nats_error(error)),
        }
    }

    /// Publishes and waits for JetStream's acknowledgement: the message is
    /// stored when this returns. Returns its sequence.
    pub(crate) async fn publish_durably(
        &self,
        subject: String,
        payload: Bytes,
    ) -> Result<u64, BusError> {
        let published = match trace_headers() {
            None => self.jetstream.publish(subject, payload).await,
            Some(headers) => {
                self.jetstream
                    .publish_with_headers(subject, headers, payload)
                    .await
            }
        };
        let ack = published.map_err(nats_error)?.await.map_err(nats_error)?;
        Ok(ack.sequence)
    }
}

/// The stream behind a JetStream KV bucket with one revision per key, as
/// NATS's KV specification (ADR-8) lays it out, kept in `replicas` copies.
fn kv_stream_config(bucket: &str, replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Messages arriving on one subscription.
#[derive(Debug)]
pub enum Subscription {
    Nats(async_nats::Subscriber),
    Local(tokio::sync::mpsc::Receiver<Message>),
}

impl Subscription {
    /// The next message, or `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Message> {
        match self {
            Subscription::Nats(subscriber) => subscriber.next().await.map(|message| {
                let origin = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(ORIGIN_HEADER))
                    .map(|origin| origin.as_str().to_owned());
                Message {
                    trace: trace_of(message.headers),
                    subject: message.subject.to_string(),
                    payload: message.payload,
                    origin,
                }
            }),
            Subscription::Local(receiver) => receiver.recv().await,
        }
    }
}

/// Now as RFC 3339 UTC with milliseconds, the seeds' ISO timestamps.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Any string as one subject token or KV key segment: hex of its UTF-8
/// bytes, so user ids with dots, spaces or wildcards stay one token.
pub fn key_token(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

/// The string [`key_token`] encoded, if `token` is one.
pub fn key_untoken(token: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|at| {
            token
                .get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Subject names: every subject Switchboard publishes or subscribes to is
/// built here.
pub mod subjects {
    /// The mailbox alerts wait in until acknowledged, per user.
    pub const ALERTS_MAILBOX: &str = "alerts";

    /// Messages for every `/ws/ui` client (seed 003), system events
    /// included (at a bounded rate); the payload is a
    /// [`crate::hub::UiMessage`].
    pub const UI_MESSAGES: &str = "switchboard.ui.messages";

    /// Every system event, each once, for whoever counts them (the
    /// statistics replicas, as one queue group): as on [`UI_MESSAGES`], but
    /// never rate-limited.
    pub const SYSTEM_EVENTS: &str = "switchboard.events";

    /// Messages for every statistics-stream client (seed 004); the payload
    /// is a [`crate::hub::StreamMessage`], as on the two subjects below.
    pub const STREAM_ALL: &str = "switchboard.stream.all";

    /// Everything for statistics-stream clients, as an edge subscribes;
    /// [`crate::hub::StreamAudience::of_subject`] says whom a message on
    /// one of them is for.
    pub const STREAM_ANY: &str = "switchboard.stream.>";

    /// Where one user's subjects start, before the user's token.
    pub(crate) const STREAM_USER_PREFIX: &str = "switchboard.stream.user";

    /// Where one connection's subjects start, before its token.
    pub(crate) const STREAM_CONNECTION_PREFIX: &str = "switchboard.stream.connection";

    /// Messages for one user's statistics-stream connections.
    pub fn stream_user(user_id: &str) -> String {
        format!("{STREAM_USER_PREFIX}.{}", super::key_token(user_id))
    }

    /// Messages for one statistics-stream connection of `user_id`'s.
    pub fn stream_user_connection(user_id: &str, connection_id: &str) -> String {
        format!(
            "{}.{}",
            stream_user(user_id),
            super::key_token(connection_id)
        )
    }

    /// Messages for one statistics-stream connection whose user is not
    /// known.
    pub fn stream_connection(connection_id: &str) -> String {
        format!(
            "{STREAM_CONNECTION_PREFIX}.{}",
            super::key_token(connection_id)
        )
    }

    /// Control messages (`SessionControl`) for the sockets one edge holds.
    pub fn edge_control(edge_id: &str) -> String {
        format!("switchboard.edge.{edge_id}.control")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        bus: BusSettings,
    }

    fn parsed(arguments: &[&str]) -> Result<BusSettings, clap::Error> {
        Command::try_parse_from(["switchboard"].iter().chain(arguments)).map(|command| command.bus)
    }

    #[test]
    fn a_nats_url_may_list_a_cluster_s_servers() {
        let settings = parsed(&["--nats-url", "nats://10.0.0.1:4222,10.0.0.2:4223"]).unwrap();
        let servers: Vec<(&str, u16)> = settings
            .nats_servers
            .iter()
            .map(|server| (server.host(), server.port()))
            .collect();
        assert_eq!(servers, [("10.0.0.1", 4222), ("10.0.0.2", 4223)]);
        let spaced = parsed(&["--nats-url", "nats-a:4222, nats-b"]).unwrap();
        assert_eq!(spaced.nats_servers[1].host(), "nats-b");
        assert!(parsed(&["--nats-url", "nats://a:1,http://b"]).is_err());
        assert!(parsed(&["--nats-url", "nats://a:1,"]).is_err());
    }

    #[test]
    fn replicas_default_to_one_and_stay_within_what_jetstream_allows() {
        if std::env::var_os("SWITCHBOARD_JETSTREAM_REPLICAS").is_none() {
            assert_eq!(parsed(&[]).unwrap().jetstream_replicas, 1);
        }
        assert_eq!(BusSettings::default().jetstream_replicas, 1);
        assert!(BusSettings::default().nats_servers.is_empty());
        assert_eq!(
            parsed(&["--jetstream-replicas", "3"])
                .unwrap()
                .jetstream_replicas,
            3
        );
        assert!(parsed(&["--jetstream-replicas", "0"]).is_err());
        assert!(parsed(&["--jetstream-replicas", "6"]).is_err());
    }

    #[test]
    fn an_existing_stream_takes_new_subjects_and_replicas_and_keeps_the_rest() {
        let current = jetstream::stream::Config {
            max_bytes: 1 << 20,
            ..kv_stream_config("sessions", 1)
        };
        assert!(reconciled(&current, &kv_stream_config("sessions", 1)).is_none());
        let updated = reconciled(&current, &kv_stream_config("sessions", 3)).unwrap();
        assert_eq!(updated.num_replicas, 3);
        assert_eq!(updated.max_bytes, 1 << 20);
        let moved = jetstream::stream::Config {
            subjects: vec!["$KV.other.>".into()],
            ..kv_stream_config("sessions", 1)
        };
        let updated = reconciled(&current, &moved).unwrap();
        assert_eq!(updated.subjects, ["$KV.other.>"]);
        assert_eq!(updated.max_bytes, 1 << 20);
        // A history's bounds follow the settings.
        let bounded = jetstream::stream::Config {
            max_messages: 5,
            max_age: Duration::from_secs(60),
            ..current.clone()
        };
        let updated = reconciled(&current, &bounded).unwrap();
        assert_eq!(
            (updated.max_messages, updated.max_age),
            (5, Duration::from_secs(60))
        );
        assert!(reconciled(&bounded, &bounded).is_none());
    }

    #[test]
    fn an_existing_stream_takes_a_new_dedup_window_and_keeps_its_own_when_none_is_asked() {
        let current = jetstream::stream::Config {
            duplicate_window: Duration::from_secs(120),
            ..kv_stream_config("frames", 1)
        };
        let wanted = jetstream::stream::Config {
            duplicate_window: Duration::from_secs(600),
            ..kv_stream_config("frames", 1)
        };
        let updated = reconciled(&current, &wanted).unwrap();
        assert_eq!(updated.duplicate_window, Duration::from_secs(600));
        assert!(reconciled(&updated, &wanted).is_none());
        assert!(
            reconciled(&current, &kv_stream_config("frames", 1)).is_none(),
            "no window asked: the stream keeps its own"
        );
    }

    #[test]
    fn bus_errors_say_what_kind_of_failure_they_are() {
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let error = nats_error(timeout);
        assert_eq!(error.to_string(), "nats: timed out");
        assert!(error.source().is_some(), "the cause is kept");
        assert_eq!(error.error_code(), ErrorCode::Unavailable);
        assert!(BusError::Conflict("k".into()).is_conflict());
        assert_eq!(
            BusError::Conflict("k".into()).error_code(),
            ErrorCode::Contended
        );
        assert_eq!(
            BusError::Full("log".into()).error_code(),
            ErrorCode::LimitReached
        );
    }
}
