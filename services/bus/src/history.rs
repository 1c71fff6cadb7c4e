//! Histories: the recent messages of a hub, numbered, so a client that
//! reconnects (to any edge) can be given what it missed.
//!
//! A hub's messages (`/ws/ui`'s, the statistics stream's) are published
//! once and fanned out by every edge. With NATS each hub is a JetStream
//! stream on file storage capturing the hub's subjects, bounded by count
//! and age ([`HistorySettings`]): the stream's sequence is the message's
//! **offset**, and the stream's creation time is its **epoch**, which
//! changes only when the stream (and so the numbering) is lost and made
//! anew. Edges do not subscribe to the subjects: each follows the stream
//! with an ordered consumer ([`History::follow`]), so every message it
//! hands out carries its offset, in the stream's order, on every edge; the
//! consumer is recreated from the last offset after a reconnect, so an
//! edge never skips one. A resume reads the stream from the client's offset
//! ([`History::read`]).
//!
//! In process the history is a ring in memory with the same bounds and
//! numbering; its epoch is made when the process starts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::{BusError, nats_error, open_stream, subjects};

/// Default messages a hub's history keeps.
pub const DEFAULT_HISTORY_MESSAGES: u64 = 1000;
/// Default age of the oldest message a hub's history keeps, in seconds.
pub const DEFAULT_HISTORY_SECS: u64 = 600;
/// Most messages one [`History::read`] returns.
pub const MAX_READ: usize = 10_000;
/// How long reading a history may take before it is an error.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Messages a follower of an in-process history may fall behind before it
/// reads the ring to catch up.
const LOCAL_FOLLOWER_QUEUE: usize = 4096;

/// How much of each hub's traffic is kept for resumes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct HistorySettings {
    /// Messages each hub (`/ws/ui`, the statistics stream) keeps for
    /// clients that resume after a reconnect.
    #[arg(
        long = "history-messages",
        env = "SWITCHBOARD_HISTORY_MESSAGES",
        default_value_t = DEFAULT_HISTORY_MESSAGES,
        value_parser = clap::value_parser!(u64).range(1..=10_000_000),
    )]
    pub messages: u64,

    /// Seconds a hub's message is kept for resumes.
    #[arg(
        long = "history-secs",
        env = "SWITCHBOARD_HISTORY_SECS",
        default_value_t = DEFAULT_HISTORY_SECS,
        value_parser = clap::value_parser!(u64).range(1..=31_536_000),
    )]
    pub secs: u64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            messages: DEFAULT_HISTORY_MESSAGES,
            secs: DEFAULT_HISTORY_SECS,
        }
    }
}

impl HistorySettings {
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.secs)
    }
}

/// A hub whose messages are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `/ws/ui` (seed 003).
    Ui,
    /// `/api/ws/statistics` (seed 004): broadcasts and per-user messages.
    Stream,
}

impl Channel {
    fn stream_name(self) -> &'static str {
        match self {
            Channel::Ui => "HISTORY_UI",
            Channel::Stream => "HISTORY_STREAM",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Channel::Ui => subjects::UI_MESSAGES,
            Channel::Stream => subjects::STREAM_ANY,
        }
    }
}

/// One kept message.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its position: 1, 2, 3, … in its hub, for as long as the epoch lasts.
    pub offset: u64,
    pub subject: String,
    pub payload: Bytes,
    /// The publisher's trace context (empty when tracing is off).
    pub trace: opentelemetry::Context,
}

/// The offsets a history holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The oldest offset still kept (`last + 1` when none is).
    pub first: u64,
    /// The newest offset given out (0 before the first message).
    pub last: u64,
    /// The epoch those offsets belong to, as the history says now (it
    /// differs from [`History::epoch`] once the stream was made anew).
    pub epoch: String,
}

/// A hub's history.
#[derive(Clone, Debug)]
pub enum History {
    Nats(Box<NatsHistory>),
    Local(Arc<LocalHistory>),
}

/// A hub's history in JetStream.
#[derive(Clone, Debug)]
pub struct NatsHistory {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    epoch: String,
}

/// Opens (creating when needed) `channel`'s stream, bounded as `settings`
/// say, kept in `replicas` copies.
pub(crate) async fn open(
    jetstream: &jetstream::Context,
    channel: Channel,
    settings: &HistorySettings,
    replicas: usize,
) -> Result<History, BusError> {
    let config = stream::Config {
        name: channel.stream_name().to_owned(),
        subjects: vec![channel.subject().to_owned()],
        storage: stream::StorageType::File,
        max_messages: i64::try_from(settings.messages).unwrap_or(i64::MAX),
        max_age: settings.max_age(),
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    };
    let mut stream = open_stream(jetstream, config).await?;
    // Read back, not taken from whichever answer opened it (a create's, a
    // get's): every edge then names the epoch from the same stored field.
    let epoch = epoch_of(stream.info().await.map_err(nats_error)?);
    Ok(History::Nats(Box::new(NatsHistory {
        jetstream: jetstream.clone(),
        stream,
        epoch,
    })))
}

impl History {
    /// What changes only when the numbering starts over.
    pub fn epoch(&self) -> &str {
        match self {
            History::Nats(nats) => &nats.epoch,
            History::Local(local) => &local.epoch,
        }
    }

    /// The offsets kept now.
    pub async fn window(&self) -> Result<Window, BusError> {
        match self {
            History::Nats(nats) => {
                let mut stream = nats.stream.clone();
                let info = stream.info().await.map_err(nats_error)?;
                let state = &info.state;
                let first = if state.messages == 0 {
                    state.last_sequence + 1
                } else {
                    state.first_sequence
                };
                Ok(Window {
                    first,
                    last: state.last_sequence,
                    epoch: epoch_of(info),
                })
            }
            History::Local(local) => Ok(local.window()),
        }
    }

    /// The kept messages after `after` up to `through` (inclusive), in
    /// order, at most [`MAX_READ`] of them; fewer when older ones are no
    /// longer kept (see [`window`](Self::window)).
    pub async fn read(&self, after: u64, through: u64) -> Result<Vec<Kept>, BusError> {
        if through <= after {
            return Ok(Vec::new());
        }
        match self {
            History::Nats(nats) => nats.read(after, through).await,
            History::Local(local) => Ok(local.read(after, through)),
        }
    }

    /// Every message from now on, in order, each once.
    pub async fn follow(&self) -> Result<Follower, BusError> {
        match self {
            History::Nats(nats) => {
                let last = nats.clone().window_last().await?;
                Ok(Follower::Nats {
                    messages: Box::new(nats.ordered(last + 1).await?),
                    history: nats.clone(),
                    last,
                })
            }
            History::Local(local) => {
                let (receiver, last) = local.subscribe();
                Ok(Follower::Local {
                    receiver,
                    history: Arc::clone(local),
                    last,
                    missed: VecDeque::new(),
                })
            }
        }
    }
}

impl NatsHistory {
    async fn window_last(mut self: Box<Self>) -> Result<u64, BusError> {
        let info = self.stream.info().await.map_err(nats_error)?;
        Ok(info.state.last_sequence)
    }

    /// An ordered consumer delivering from offset `start` on.
    async fn ordered(&self, start: u64) -> Result<consumer::push::Ordered, BusError> {
        let deliver_policy = if start <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            }
        };
        let consumer = self
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.jetstream.client().new_inbox(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(nats_error)?;
        consumer.messages().await.map_err(nats_error)
    }

    async fn read(&self, after: u64, through: u64) -> Result<Vec<Kept>, BusError> {
        let mut messages = self.ordered(after + 1).await?;
        let mut kept = Vec::new();
        let reading = async {
            while let Some(message) = messages.next().await {
                let message = message.map_err(nats_error)?;
                let offset = message
                    .info()
                    .map_err(|source| BusError::Nats { source })?
                    .stream_sequence;
                if offset > through {
                    break;
                }
                kept.push(Kept {
                    offset,
                    subject: message.subject.to_string(),
                    payload: message.payload.clone(),
                    trace: opentelemetry::Context::new(),
                });
                if offset == through || kept.len() == MAX_READ {
                    break;
                }
            }
            Ok::<_, BusError>(())
        };
        match tokio::time::timeout(READ_DEADLINE, reading).await {
            Ok(read) => read.map(|()| kept),
            Err(elapsed) => Err(nats_error(elapsed)),
        }
    }
}

/// The epoch a JetStream stream's info names: its creation time, in
/// nanoseconds.
fn epoch_of(info: &stream::Info) -> String {
    info.created.unix_timestamp_nanos().to_string()
}

/// A hub's messages as they come, each once, in order.
pub enum Follower {
    Nats {
        messages: Box<consumer::push::Ordered>,
        history: Box<NatsHistory>,
        last: u64,
    },
    Local {
        receiver: broadcast::Receiver<Kept>,
        history: Arc<LocalHistory>,
        last: u64,
        /// Read from the ring after falling behind, handed out first.
        missed: VecDeque<Kept>,
    },
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, last) = match self {
            Follower::Nats { last, .. } => ("nats", last),
            Follower::Local { last, .. } => ("local", last),
        };
        formatter
            .debug_struct("Follower")
            .field("kind", &kind)
            .field("last", last)
            .finish()
    }
}

/// How long a follower waits before making its consumer anew after it
/// failed.
const FOLLOW_RETRY: Duration = Duration::from_millis(250);

impl Follower {
    /// The newest offset handed out, or where following started.
    pub fn last(&self) -> u64 {
        match self {
            Follower::Nats { last, .. } | Follower::Local { last, .. } => *last,
        }
    }

    /// The next message, whose offset is above every one returned before.
    /// Waits through NATS outages (the consumer resumes from the last
    /// offset); ends only when the history is gone for good.
    pub async fn next(&mut self) -> Option<Kept> {
        match self {
            Follower::Nats {
                messages,
                history,
                last,
            } => loop {
                match messages.next().await {
                    Some(Ok(message)) => {
                        let Ok(info) = message.info() else {
                            continue;
                        };
                        let offset = info.stream_sequence;
                        if offset <= *last {
                            continue;
                        }
                        *last = offset;
                        return Some(Kept {
                            offset,
                            subject: message.subject.to_string(),
                            payload: message.payload.clone(),
                            trace: crate::trace_of(message.headers.clone()),
                        });
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "history follower: consumer trouble, it recovers");
                    }
                    None => {
                        tracing::warn!(last = *last, "history follower ended; following anew");
                        loop {
                            tokio::time::sleep(FOLLOW_RETRY).await;
                            match history.ordered(*last + 1).await {
                                Ok(ordered) => {
                                    **messages = ordered;
                                    break;
                                }
                                Err(error) => {
                                    tracing::debug!(%error, "history follower not restarted yet");
                                }
                            }
                        }
                    }
                }
            },
            Follower::Local {
                receiver,
                history,
                last,
                missed,
            } => loop {
                if let Some(kept) = missed.pop_front() {
                    *last = kept.offset;
                    return Some(kept);
                }
                match receiver.recv().await {
                    Ok(kept) if kept.offset <= *last => {}
                    Ok(kept) => {
                        *last = kept.offset;
                        return Some(kept);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Take what was missed from the ring; the channel
                        // then repeats some, which are skipped.
                        let window = history.window();
                        missed.extend(history.read(*last, window.last));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }
}

/// A hub's history in memory.
#[derive(Debug)]
pub struct LocalHistory {
    epoch: String,
    settings: HistorySettings,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Kept>,
}

#[derive(Debug, Default)]
struct Ring {
    kept: VecDeque<(Instant, Kept)>,
    last: u64,
}

impl LocalHistory {
    pub(crate) fn new(settings: HistorySettings) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default();
        Self {
            epoch: nanos.to_string(),
            settings,
            ring: Mutex::new(Ring::default()),
            live: broadcast::channel(LOCAL_FOLLOWER_QUEUE).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn trim(&self, ring: &mut Ring) {
        let max_age = self.settings.max_age();
        let max = usize::try_from(self.settings.messages).unwrap_or(usize::MAX);
        while ring.kept.len() > max
            || ring
                .kept
                .front()
                .is_some_and(|(at, _)| at.elapsed() > max_age)
        {
            ring.kept.pop_front();
        }
    }

    /// Keeps a message and hands it to the followers; its offset.
    pub(crate) fn append(&self, subject: &str, payload: Bytes) -> u64 {
        let mut ring = self.lock();
        ring.last += 1;
        let kept = Kept {
            offset: ring.last,
            subject: subject.to_owned(),
            payload,
            trace: tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current()),
        };
        ring.kept.push_back((Instant::now(), kept.clone()));
        self.trim(&mut ring);
        // Sent under the lock, so followers see offsets in order.
        let _ = self.live.send(kept);
        ring.last
    }

    fn window(&self) -> Window {
        let mut ring = self.lock();
        self.trim(&mut ring);
        let first = ring
            .kept
            .front()
            .map_or(ring.last + 1, |(_, kept)| kept.offset);
        Window {
            first,
            last: ring.last,
            epoch: self.epoch.clone(),
        }
    }

    fn read(&self, after: u64, through: u64) -> Vec<Kept> {
        let mut ring = self.lock();
        self.trim(&mut ring);
        ring.kept
            .iter()
            .map(|(_, kept)| kept)
            .filter(|kept| kept.offset > after && kept.offset <= through)
            .take(MAX_READ)
            .cloned()
            .collect()
    }

    fn subscribe(&self) -> (broadcast::Receiver<Kept>, u64) {
        let ring = self.lock();
        (self.live.subscribe(), ring.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(messages: u64) -> Arc<LocalHistory> {
        Arc::new(LocalHistory::new(HistorySettings {
            messages,
            secs: 600,
        }))
    }

    #[tokio::test]
    async fn a_local_history_numbers_keeps_and_follows() {
        let local = history(3);
        let history = History::Local(Arc::clone(&local));
        let mut follower = history.follow().await.unwrap();
        for n in 1..=5u8 {
            assert_eq!(local.append("s", Bytes::from(vec![n])), u64::from(n));
        }
        assert_eq!(
            history.window().await.unwrap(),
            Window {
                first: 3,
                last: 5,
                epoch: history.epoch().to_owned()
            }
        );
        let read = history.read(3, 5).await.unwrap();
        assert_eq!(
            read.iter().map(|kept| kept.offset).collect::<Vec<_>>(),
            [4, 5]
        );
        for offset in 1..=5 {
            assert_eq!(follower.next().await.unwrap().offset, offset);
        }
        assert!(history.read(5, 5).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_lagging_local_follower_catches_up_from_the_ring() {
        let local = Arc::new(LocalHistory::new(HistorySettings {
            messages: 10_000,
            secs: 600,
        }));
        let history = History::Local(Arc::clone(&local));
        let mut follower = history.follow().await.unwrap();
        let total = LOCAL_FOLLOWER_QUEUE as u64 + 100;
        for _ in 0..total {
            local.append("s", Bytes::new());
        }
        for offset in 1..=total {
            assert_eq!(follower.next().await.unwrap().offset, offset);
        }
    }
}
