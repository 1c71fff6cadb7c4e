//! The message bus and shared state every Switchboard role stands on.
//!
//! A cluster is several processes that share one NATS: core pub/sub carries
//! fan-out (control messages to the edge holding a socket, broadcasts), and
//! JetStream key-value buckets hold the state no single replica may own
//! (the session registry, counters). Without a NATS URL the same API runs in
//! process, for a laptop or a small device: one process is then the whole
//! cluster, and it says so in its log.
//!
//! - [`Bus`]: connect, publish, subscribe, open a [`KeyValue`] bucket.
//! - [`KeyValue`]: get / create / compare-and-swap update / delete, the
//!   operations the registry and the counters need, with the same semantics
//!   in both modes (revisions, conflicts).
//! - [`Log`]: append-only per-key logs that lose nothing (frames).
//! - [`Mailbox`]: per-owner messages kept until removed (alerts until
//!   acknowledged), read as backlog then live.
//! - [`subjects`]: every subject name, in one place.

mod local;
pub mod log;
pub mod mailbox;

use std::fmt::Display;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

pub use local::LocalBus;
pub use log::Log;
pub use mailbox::{Letter, Mailbox, MailboxReader};

/// How long a call to NATS may take before the bus reports it failed, so a
/// NATS outage turns into an error instead of a hang.
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the bus lives: a NATS URL, or nothing for the in-process bus.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BusSettings {
    /// NATS server URL (JetStream enabled). Without it the process runs
    /// alone, with an in-process bus and in-memory state.
    #[arg(long = "nats-url", env = "NATS_URL")]
    pub nats_url: Option<String>,
}

/// A bus failure, as callers need to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("nats: {0}")]
    Nats(String),
    /// A compare-and-swap lost to a concurrent writer (or the key already
    /// existed, for a create): read again and retry.
    #[error("revision conflict on key {0}")]
    Conflict(String),
    /// An in-process store reached its memory bound.
    #[error("store full: {0}")]
    Full(String),
}

/// The header of a KV message that says whether it is a put or a removal
/// (ADR-8).
const KV_OPERATION: &str = "KV-Operation";

fn nats_error(error: impl Display) -> BusError {
    BusError::Nats(error.to_string())
}

/// One message received from a subscription.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    /// The publisher's trace context (empty when tracing is off): a
    /// receiver's span continues it, so the NATS hop stays in one trace.
    pub trace: opentelemetry::Context,
}

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
}

impl Bus {
    /// Connects to NATS when `settings` names a URL, otherwise starts the
    /// in-process bus.
    pub async fn connect(settings: &BusSettings) -> Result<Self, BusError> {
        match &settings.nats_url {
            Some(url) => {
                let client = async_nats::ConnectOptions::new()
                    .name("switchboard")
                    .request_timeout(Some(NATS_REQUEST_TIMEOUT))
                    .connect(url.as_str())
                    .await
                    .map_err(nats_error)?;
                tracing::info!(url = %url, "connected to nats");
                let jetstream = jetstream::new(client.clone());
                Ok(Bus::Nats(Box::new(NatsBus { client, jetstream })))
            }
            None => {
                tracing::warn!(
                    "no NATS_URL: single-instance mode, in-process bus and in-memory state"
                );
                Ok(Bus::Local(LocalBus::default()))
            }
        }
    }

    /// True when this process is the whole cluster.
    pub fn is_single_instance(&self) -> bool {
        matches!(self, Bus::Local(_))
    }

    /// Publishes without waiting for anyone to receive it (core NATS
    /// semantics: subscribers that are not there miss it).
    pub async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        match self {
            Bus::Nats(nats) => {
                let published = match trace_headers() {
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
                local.publish(&subject, payload);
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

    /// Opens (creating when needed) the key-value bucket `bucket`.
    pub async fn key_value(&self, bucket: &str) -> Result<KeyValue, BusError> {
        match self {
            Bus::Nats(nats) => {
                if let Ok(store) = nats.jetstream.get_key_value(bucket).await {
                    return Ok(KeyValue::Nats(Box::new(store)));
                }
                // `create_key_value` first reads the account's JetStream
                // info, which async-nats cannot parse from nats-server 2.9
                // (Debian's); creating the bucket's stream directly, as
                // the KV layout prescribes, works on every 2.9+ server.
                let created = nats.jetstream.create_stream(kv_stream_config(bucket)).await;
                // Another replica may have created it in between: open it
                // either way, and report the create error only if that fails.
                nats.jetstream
                    .get_key_value(bucket)
                    .await
                    .map(|store| KeyValue::Nats(Box::new(store)))
                    .map_err(|open_error| match created {
                        Err(create_error) => nats_error(create_error),
                        Ok(_) => nats_error(open_error),
                    })
            }
            Bus::Local(local) => Ok(KeyValue::Local(local.key_value(bucket))),
        }
    }

    /// Opens (creating when needed) the log `name`.
    pub async fn log(&self, name: &str) -> Result<Log, BusError> {
        match self {
            Bus::Nats(nats) => Ok(Log::Nats(Box::new(log::open(&nats.jetstream, name).await?))),
            Bus::Local(local) => Ok(Log::Local(local.log(name))),
        }
    }

    /// Opens (creating when needed) the mailbox `name`.
    pub async fn mailbox(&self, name: &str) -> Result<Mailbox, BusError> {
        match self {
            Bus::Nats(nats) => Ok(Mailbox::Nats(Box::new(
                mailbox::open(&nats.jetstream, name).await?,
            ))),
            Bus::Local(local) => Ok(Mailbox::Local(local.mailbox(name))),
        }
    }

    /// Announces a system event to every `/ws/ui` client (seed 003's
    /// `event` message) and to the statistics counters. Best effort: an
    /// event that cannot be published is logged, never an error for the
    /// caller.
    pub async fn announce(&self, event_type: &str, mut data: serde_json::Value) {
        if let serde_json::Value::Object(fields) = &mut data {
            fields.insert("timestamp".into(), serde_json::Value::String(rfc3339_now()));
        }
        let message = serde_json::json!({"type": "event", "event_type": event_type, "data": data});
        let payload = Bytes::from(message.to_string());
        if let Err(error) = self
            .publish(subjects::UI_MESSAGES.to_owned(), payload)
            .await
        {
            tracing::debug!(%error, event_type, "event not announced");
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
}

/// Opens the stream `config` names, creating it when it does not exist.
/// Replicas starting together race to create it: whoever loses finds it
/// created and opens it, rather than failing.
pub(crate) async fn open_stream(
    jetstream: &jetstream::Context,
    config: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, BusError> {
    let name = config.name.clone();
    if let Ok(mut stream) = jetstream.get_stream(&name).await {
        let current = stream.cached_info().config.clone();
        if current.subjects == config.subjects {
            return Ok(stream);
        }
        // A stream an older version laid out: take the new subjects, keep
        // what it holds.
        tracing::info!(stream = %name, from = ?current.subjects, to = ?config.subjects, "stream subjects updated");
        let updated = jetstream::stream::Config {
            subjects: config.subjects,
            ..current
        };
        jetstream.update_stream(updated).await.map_err(nats_error)?;
        stream = jetstream.get_stream(&name).await.map_err(nats_error)?;
        return Ok(stream);
    }
    match jetstream.create_stream(config).await {
        Ok(stream) => Ok(stream),
        Err(create_error) => jetstream
            .get_stream(&name)
            .await
            .map_err(|_| nats_error(create_error)),
    }
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
    pub(crate) async fn publish_durably_once(
        &self,
        subject: String,
        payload: Bytes,
    ) -> Result<(), BusError> {
        use async_nats::jetstream::context::PublishErrorKind;
        let mut headers = trace_headers().unwrap_or_default();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
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
            Ok(_) => Ok(()),
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
/// NATS's KV specification (ADR-8) lays it out.
fn kv_stream_config(bucket: &str) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
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
            Subscription::Nats(subscriber) => subscriber.next().await.map(|message| Message {
                trace: trace_of(message.headers),
                subject: message.subject.to_string(),
                payload: message.payload,
            }),
            Subscription::Local(receiver) => receiver.recv().await,
        }
    }
}

/// A value and the revision it was written at, for compare-and-swap.
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: Bytes,
    pub revision: u64,
}

/// A key-value bucket: JetStream KV or its in-process twin.
#[derive(Clone, Debug)]
pub enum KeyValue {
    Nats(Box<kv::Store>),
    Local(local::LocalKeyValue),
}

impl KeyValue {
    /// The current value of `key`, if it has one.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, BusError> {
        match self {
            KeyValue::Nats(store) => {
                let entry = store.entry(key).await.map_err(nats_error)?;
                Ok(entry
                    .filter(|entry| entry.operation == kv::Operation::Put)
                    .map(|entry| Entry {
                        value: entry.value,
                        revision: entry.revision,
                    }))
            }
            KeyValue::Local(local) => Ok(local.get(key)),
        }
    }

    /// Writes `key` whatever it held: for records with a single writer.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<(), BusError> {
        match self {
            KeyValue::Nats(store) => store.put(key, value).await.map(|_| ()).map_err(nats_error),
            KeyValue::Local(local) => {
                local.put(key, value);
                Ok(())
            }
        }
    }

    /// Writes `key` only if it has no value; [`BusError::Conflict`] otherwise.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<u64, BusError> {
        match self {
            KeyValue::Nats(store) => match store.create(key, value).await {
                Ok(revision) => Ok(revision),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(BusError::Conflict(key.to_owned()))
                }
                Err(error) => Err(nats_error(error)),
            },
            KeyValue::Local(local) => local.create(key, value),
        }
    }

    /// Writes `key` only if its revision is still `revision`;
    /// [`BusError::Conflict`] when someone wrote or deleted it since.
    pub async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, BusError> {
        match self {
            KeyValue::Nats(store) => match store.update(key, value, revision).await {
                Ok(revision) => Ok(revision),
                Err(error) => Err(self.classify_conflict(key, revision, error).await),
            },
            KeyValue::Local(local) => local.update(key, value, revision),
        }
    }

    /// Deletes `key` only if its revision is still `revision`.
    pub async fn delete(&self, key: &str, revision: u64) -> Result<(), BusError> {
        match self {
            KeyValue::Nats(store) => {
                match store.delete_expect_revision(key, Some(revision)).await {
                    Ok(()) => Ok(()),
                    Err(error) => Err(self.classify_conflict(key, revision, error).await),
                }
            }
            KeyValue::Local(local) => local.delete(key, revision),
        }
    }

    /// Every key with its value. With NATS this is one pass over the
    /// bucket's stream (an ordered consumer delivering the last message of
    /// each key), not a round trip per key: the registry's sweep, listings
    /// and counts read whole buckets every few seconds.
    pub async fn entries(&self) -> Result<Vec<(String, Entry)>, BusError> {
        match self {
            KeyValue::Nats(store) => {
                let consumer = store
                    .stream
                    .create_consumer(jetstream::consumer::pull::OrderedConfig {
                        filter_subject: format!("{}>", store.prefix),
                        deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                        ..Default::default()
                    })
                    .await
                    .map_err(nats_error)?;
                let mut pending = consumer.cached_info().num_pending;
                let mut entries = Vec::with_capacity(usize::try_from(pending).unwrap_or(0));
                if pending == 0 {
                    return Ok(entries);
                }
                let mut messages = consumer.messages().await.map_err(nats_error)?;
                while pending > 0 {
                    let Some(message) = messages.next().await else {
                        break;
                    };
                    let message = message.map_err(nats_error)?;
                    let info = message.info().map_err(nats_error)?;
                    pending = info.pending;
                    let revision = info.stream_sequence;
                    // A delete or purge leaves a marker as the key's last message.
                    let removed = message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get(KV_OPERATION))
                        .is_some_and(|operation| operation.as_str() != "PUT");
                    if let Some(key) = message.subject.strip_prefix(store.prefix.as_str())
                        && !removed
                    {
                        entries.push((
                            key.to_owned(),
                            Entry {
                                value: message.payload.clone(),
                                revision,
                            },
                        ));
                    }
                }
                Ok(entries)
            }
            KeyValue::Local(local) => Ok(local
                .keys()
                .into_iter()
                .filter_map(|key| local.get(&key).map(|entry| (key, entry)))
                .collect()),
        }
    }

    /// A failed JetStream compare-and-swap is a conflict when the key moved
    /// on from `revision`; anything else is a real failure.
    async fn classify_conflict(&self, key: &str, revision: u64, error: impl Display) -> BusError {
        match self.get(key).await {
            Ok(Some(entry)) if entry.revision != revision => BusError::Conflict(key.to_owned()),
            Ok(None) => BusError::Conflict(key.to_owned()),
            _ => nats_error(error),
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
    /// included; the payload is the message's JSON.
    pub const UI_MESSAGES: &str = "switchboard.ui.messages";

    /// Messages for every statistics-stream client (seed 004).
    pub const STREAM_ALL: &str = "switchboard.stream.all";

    /// Everything for statistics-stream clients, as an edge subscribes.
    pub const STREAM_ANY: &str = "switchboard.stream.>";

    /// Messages for one user's statistics-stream connections.
    pub fn stream_user(user_id: &str) -> String {
        format!("switchboard.stream.user.{}", super::key_token(user_id))
    }

    /// Messages for one statistics-stream connection.
    pub fn stream_connection(connection_id: &str) -> String {
        format!(
            "switchboard.stream.connection.{}",
            super::key_token(connection_id)
        )
    }

    /// Control messages (`SessionControl`) for the sockets one edge holds.
    pub fn edge_control(edge_id: &str) -> String {
        format!("switchboard.edge.{edge_id}.control")
    }
}

impl From<BusError> for tonic::Status {
    /// NATS trouble is the caller's "try again" (UNAVAILABLE); a conflict that
    /// survived the service's own retries is ABORTED, as gRPC defines it for
    /// concurrency conflicts.
    fn from(error: BusError) -> Self {
        match error {
            BusError::Nats(_) => tonic::Status::unavailable(error.to_string()),
            BusError::Conflict(_) => tonic::Status::aborted(error.to_string()),
            BusError::Full(_) => tonic::Status::resource_exhausted(error.to_string()),
        }
    }
}
