//! Mailboxes: per-owner messages that stay until they are removed.
//!
//! Alerts must survive their recipient being offline, an edge dying, and a
//! delivery that was never acknowledged. A mailbox keeps each message under
//! `<owner>/<id>` until someone removes that id; a reader gets the owner's
//! backlog in order and then every new message as it is put, without
//! consuming anything. So delivery is at-least-once until the ack, and
//! "delivered but not acked" simply means "still there".
//!
//! With NATS a mailbox is a JetStream stream (file storage, one message per
//! subject `switchboard.<name>.<owner>.<id>`), and removing is deleting the
//! message. A reader is an ephemeral pull consumer filtered on the owner
//! (one replica, in memory), pulled a few seconds at a time. A consumer
//! lives on one server: when that server dies nothing tells the reader, so
//! the reader watches its own pulls. The server ends every pull at its
//! expiry; a pull that has not ended a little after that, or any error,
//! means the consumer is gone, and the reader makes a new one that starts
//! after the last message it returned. (async-nats' ordered consumer does
//! this by idle heartbeats, and under load it was seen not to recover
//! from losing its server within a minute.) In process a mailbox is a map
//! and a [`Notify`] with the same semantics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::{BusError, PrefixedStream, key_untoken as untoken, nats_error};

/// How long one pull of a mailbox reader waits on the server for messages.
const READER_PULL_EXPIRY: Duration = Duration::from_secs(5);
/// How late after its expiry a pull may still end before the reader takes
/// its consumer for lost (its server gone).
const READER_PULL_GRACE: Duration = Duration::from_secs(3);
/// Most messages one pull asks for.
const READER_PULL_BATCH: usize = 64;
/// How long the server keeps a reader's consumer after its last pull (a
/// reader dropped, or one that made a new consumer, leaves its old one).
const READER_CONSUMER_IDLE: Duration = Duration::from_secs(30);

/// How long a reader keeps waiting through failed reads (a cluster electing
/// a new leader) before it gives up, and its pauses between them.
const READER_RECOVERY: Duration = Duration::from_secs(120);
const READER_RETRY_MIN: Duration = Duration::from_millis(100);
const READER_RETRY_MAX: Duration = Duration::from_secs(2);

/// How long a message waits for its owner before it is dropped.
pub const MAILBOX_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// One message in a mailbox.
#[derive(Debug, Clone)]
pub struct Letter {
    pub id: String,
    pub payload: Bytes,
    /// The trace context of whoever put it (empty when tracing is off, and
    /// in process), so its delivery joins that trace.
    pub trace: opentelemetry::Context,
}

impl PartialEq for Letter {
    /// Same id and payload; the trace context says how it got here, not
    /// what it is.
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.payload == other.payload
    }
}

/// A named mailbox.
#[derive(Clone, Debug)]
pub enum Mailbox {
    Nats(Box<PrefixedStream>),
    Local(LocalMailbox),
}

/// Opens (creating when needed) the JetStream stream behind mailbox `name`:
/// one message per `<owner>.<id>` subject, kept in `replicas` copies.
pub(crate) async fn open(
    jetstream: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<PrefixedStream, BusError> {
    let prefix = format!("switchboard.{name}");
    let config = stream::Config {
        name: format!("MAILBOX_{}", name.to_uppercase()),
        subjects: vec![format!("{prefix}.*.*")],
        max_messages_per_subject: 1,
        max_age: MAILBOX_MAX_AGE,
        storage: stream::StorageType::File,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    };
    PrefixedStream::open(jetstream, prefix, config).await
}

impl Mailbox {
    /// Stores `payload` as `id` in `owner`'s mailbox; when this returns, the
    /// message is durable (JetStream acknowledged it).
    pub async fn put(&self, owner: &str, id: &str, payload: Bytes) -> Result<(), BusError> {
        match self {
            Mailbox::Nats(nats) => nats
                .publish_durably(nats.subject(&[owner, id]), payload)
                .await
                .map(|_| ()),
            Mailbox::Local(local) => {
                local.put(owner, id, payload);
                Ok(())
            }
        }
    }

    /// Removes `id` from `owner`'s mailbox; false when there was no such
    /// message.
    pub async fn remove(&self, owner: &str, id: &str) -> Result<bool, BusError> {
        match self {
            Mailbox::Nats(nats) => {
                let subject = nats.subject(&[owner, id]);
                let message = match nats.stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(message) => message,
                    Err(error)
                        if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound =>
                    {
                        return Ok(false);
                    }
                    Err(error) => return Err(nats_error(error)),
                };
                nats.stream
                    .delete_message(message.sequence)
                    .await
                    .map_err(nats_error)
            }
            Mailbox::Local(local) => Ok(local.remove(owner, id)),
        }
    }

    /// Reads `owner`'s messages: the backlog in order, then new ones.
    pub async fn read(&self, owner: &str) -> Result<MailboxReader, BusError> {
        match self {
            Mailbox::Nats(nats) => {
                let mut reader = NatsReader {
                    stream: nats.stream.clone(),
                    filter: format!("{}.*", nats.subject(&[owner])),
                    last_returned: None,
                    consumer: None,
                    pull: None,
                    pulling: false,
                    backlog: 0,
                    failing_since: None,
                    pause: READER_RETRY_MIN,
                };
                let consumer = reader.new_consumer().await?;
                reader.backlog = consumer.cached_info().num_pending;
                reader.consumer = Some(consumer);
                Ok(MailboxReader::Nats(Box::new(reader)))
            }
            Mailbox::Local(local) => Ok(MailboxReader::Local {
                backlog: local.backlog(owner),
                mailbox: local.clone(),
                owner: owner.to_owned(),
                cursor: 0,
            }),
        }
    }

    /// `owner`'s messages now, oldest first.
    pub async fn list(&self, owner: &str) -> Result<Vec<Letter>, BusError> {
        let mut reader = self.read(owner).await?;
        let mut letters = Vec::new();
        while reader.backlog() > 0 {
            match reader.next().await? {
                Some(letter) => letters.push(letter),
                None => break,
            }
        }
        Ok(letters)
    }
}

/// A reader of one owner's mailbox.
pub enum MailboxReader {
    Nats(Box<NatsReader>),
    Local {
        mailbox: LocalMailbox,
        owner: String,
        cursor: u64,
        backlog: u64,
    },
}

/// A reader of one owner's mailbox in JetStream ([module docs](self)). Its
/// state lives here, not in [`MailboxReader::next`]'s future, which its
/// caller may drop for another event at any await.
pub struct NatsReader {
    stream: jetstream::stream::Stream,
    filter: String,
    /// The stream sequence of the last message returned: a new consumer
    /// starts after it.
    last_returned: Option<u64>,
    consumer: Option<consumer::PullConsumer>,
    /// The pull under way, and when it must have ended.
    pull: Option<(consumer::pull::Batch, tokio::time::Instant)>,
    /// A pull was being asked for: if it is not in `pull`, that was
    /// cancelled half-way, and what the server sent for it is lost to
    /// this consumer.
    pulling: bool,
    backlog: u64,
    /// Since when reads fail, if they do.
    failing_since: Option<tokio::time::Instant>,
    /// The pause before the next try after a failure.
    pause: Duration,
}

impl std::fmt::Debug for NatsReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NatsReader")
            .field("filter", &self.filter)
            .field("last_returned", &self.last_returned)
            .field("backlog", &self.backlog)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MailboxReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MailboxReader")
            .field("backlog", &self.backlog())
            .finish()
    }
}

impl MailboxReader {
    /// Messages that were in the mailbox when reading began and are not
    /// yet read.
    pub fn backlog(&self) -> u64 {
        match self {
            MailboxReader::Nats(reader) => reader.backlog,
            MailboxReader::Local { backlog, .. } => *backlog,
        }
    }

    /// The next message; waits for one when the backlog is read. `None` once
    /// the bus is gone.
    pub async fn next(&mut self) -> Result<Option<Letter>, BusError> {
        match self {
            MailboxReader::Nats(reader) => reader.next().await.map(Some),
            MailboxReader::Local {
                mailbox,
                owner,
                cursor,
                backlog,
            } => {
                let letter = mailbox.next_after(owner, cursor).await;
                *backlog = backlog.saturating_sub(1);
                Ok(Some(letter))
            }
        }
    }
}

impl NatsReader {
    /// A consumer of the owner's messages after the last one returned.
    async fn new_consumer(&self) -> Result<consumer::PullConsumer, BusError> {
        let deliver_policy = match self.last_returned {
            Some(sequence) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            },
            None => consumer::DeliverPolicy::All,
        };
        self.stream
            .create_consumer(consumer::pull::Config {
                filter_subject: self.filter.clone(),
                deliver_policy,
                // Reading is not consuming: a message stays until removed.
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: READER_CONSUMER_IDLE,
                num_replicas: 1,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(nats_error)
    }

    /// Forgets the consumer (and its pull): the next read makes a new one.
    fn drop_consumer(&mut self) {
        self.consumer = None;
        self.pull = None;
        self.pulling = false;
    }

    /// While the cluster recovers (a stream without a leader for a while)
    /// reads fail: waits before the next try, and gives up with `error`
    /// after [`READER_RECOVERY`] of failures.
    async fn failed(&mut self, error: BusError) -> Result<(), BusError> {
        let since = *self
            .failing_since
            .get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= READER_RECOVERY {
            return Err(error);
        }
        tracing::warn!(%error, "mailbox read failed; waiting for the stream to recover");
        let pause = self.pause;
        self.pause = (pause * 2).min(READER_RETRY_MAX);
        tokio::time::sleep(pause).await;
        Ok(())
    }

    async fn next(&mut self) -> Result<Letter, BusError> {
        loop {
            if self.pulling && self.pull.is_none() {
                self.drop_consumer();
            }
            let consumer = match &self.consumer {
                Some(consumer) => consumer,
                None => match self.new_consumer().await {
                    Ok(consumer) => self.consumer.insert(consumer),
                    Err(error) => {
                        self.failed(error).await?;
                        continue;
                    }
                },
            };
            if self.pull.is_none() {
                self.pulling = true;
                let pull = consumer
                    .fetch()
                    .max_messages(READER_PULL_BATCH)
                    .expires(READER_PULL_EXPIRY)
                    .messages()
                    .await;
                match pull {
                    Ok(batch) => {
                        let deadline =
                            tokio::time::Instant::now() + READER_PULL_EXPIRY + READER_PULL_GRACE;
                        self.pull = Some((batch, deadline));
                    }
                    Err(error) => {
                        self.drop_consumer();
                        self.failed(nats_error(error)).await?;
                        continue;
                    }
                }
            }
            let (batch, deadline) = self.pull.as_mut().expect("made above");
            match tokio::time::timeout_at(*deadline, batch.next()).await {
                Err(_) => {
                    tracing::warn!(
                        "a mailbox reader's pull did not end in time: its consumer is lost; making a new one"
                    );
                    self.drop_consumer();
                }
                // The pull ended (its expiry, or every message it asked
                // for): the next one.
                Ok(None) => {
                    self.pull = None;
                    self.pulling = false;
                }
                Ok(Some(Err(source))) => {
                    self.drop_consumer();
                    self.failed(BusError::Nats { source }).await?;
                }
                Ok(Some(Ok(message))) => {
                    self.failing_since = None;
                    self.pause = READER_RETRY_MIN;
                    if let Ok(info) = message.info() {
                        self.last_returned = Some(info.stream_sequence);
                    }
                    self.backlog = self.backlog.saturating_sub(1);
                    let id = message.subject.rsplit('.').next().and_then(untoken);
                    match id {
                        Some(id) => {
                            return Ok(Letter {
                                id,
                                payload: message.payload.clone(),
                                trace: crate::trace_of(message.headers.clone()),
                            });
                        }
                        None => {
                            tracing::warn!(subject = %message.subject, "mailbox message with a bad subject");
                        }
                    }
                }
            }
        }
    }
}

/// The in-process mailbox.
#[derive(Clone, Debug, Default)]
pub struct LocalMailbox {
    inner: Arc<LocalMailboxInner>,
}

#[derive(Debug, Default)]
struct LocalMailboxInner {
    letters: Mutex<LocalLetters>,
    arrived: Notify,
}

#[derive(Debug, Default)]
struct LocalLetters {
    last_sequence: u64,
    /// sequence → (owner, letter)
    by_sequence: BTreeMap<u64, (String, Letter)>,
}

impl LocalMailbox {
    fn lock(&self) -> MutexGuard<'_, LocalLetters> {
        self.inner
            .letters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn put(&self, owner: &str, id: &str, payload: Bytes) {
        let mut letters = self.lock();
        // One message per (owner, id), as one message per subject in JetStream.
        letters
            .by_sequence
            .retain(|_, (held_owner, letter)| !(held_owner == owner && letter.id == id));
        letters.last_sequence += 1;
        let sequence = letters.last_sequence;
        letters.by_sequence.insert(
            sequence,
            (
                owner.to_owned(),
                Letter {
                    id: id.to_owned(),
                    payload,
                    trace: tracing_opentelemetry::OpenTelemetrySpanExt::context(
                        &tracing::Span::current(),
                    ),
                },
            ),
        );
        drop(letters);
        self.inner.arrived.notify_waiters();
    }

    fn remove(&self, owner: &str, id: &str) -> bool {
        let mut letters = self.lock();
        let before = letters.by_sequence.len();
        letters
            .by_sequence
            .retain(|_, (held_owner, letter)| !(held_owner == owner && letter.id == id));
        letters.by_sequence.len() != before
    }

    fn backlog(&self, owner: &str) -> u64 {
        self.lock()
            .by_sequence
            .values()
            .filter(|(held_owner, _)| held_owner == owner)
            .count() as u64
    }

    async fn next_after(&self, owner: &str, cursor: &mut u64) -> Letter {
        loop {
            // Registered before looking, so a put between the look and the
            // wait still wakes us.
            let arrived = self.inner.arrived.notified();
            {
                let letters = self.lock();
                let found = letters
                    .by_sequence
                    .range(*cursor + 1..)
                    .find(|(_, (held_owner, _))| held_owner == owner);
                if let Some((sequence, (_, letter))) = found {
                    *cursor = *sequence;
                    return letter.clone();
                }
            }
            arrived.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str, payload: &'static str) -> Letter {
        Letter {
            id: id.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            trace: opentelemetry::Context::new(),
        }
    }

    #[test]
    fn tokens_round_trip_any_string() {
        for text in ["user-1", "a.b*c>", "ü ✓", ""] {
            assert_eq!(untoken(&crate::key_token(text)).as_deref(), Some(text));
        }
    }

    #[tokio::test]
    async fn backlog_then_live_until_removed() {
        let mailbox = Mailbox::Local(LocalMailbox::default());
        mailbox
            .put("ada", "1", Bytes::from_static(b"one"))
            .await
            .unwrap();
        mailbox
            .put("bob", "x", Bytes::from_static(b"other"))
            .await
            .unwrap();
        mailbox
            .put("ada", "2", Bytes::from_static(b"two"))
            .await
            .unwrap();

        let mut reader = mailbox.read("ada").await.unwrap();
        assert_eq!(reader.backlog(), 2);
        assert_eq!(reader.next().await.unwrap(), Some(letter("1", "one")));
        assert_eq!(reader.next().await.unwrap(), Some(letter("2", "two")));
        assert_eq!(reader.backlog(), 0);

        let waiting = tokio::spawn(async move { reader.next().await.unwrap() });
        mailbox
            .put("ada", "3", Bytes::from_static(b"three"))
            .await
            .unwrap();
        assert_eq!(waiting.await.unwrap(), Some(letter("3", "three")));

        assert!(mailbox.remove("ada", "1").await.unwrap());
        assert!(!mailbox.remove("ada", "1").await.unwrap());
        let left: Vec<String> = mailbox
            .list("ada")
            .await
            .unwrap()
            .into_iter()
            .map(|letter| letter.id)
            .collect();
        assert_eq!(left, ["2", "3"]);
    }
}
