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
//! subject `switchboard.<name>.<owner>.<id>`), readers are ordered
//! consumers filtered on the owner, and removing is deleting the message.
//! In process it is a map and a [`Notify`] with the same semantics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::{BusError, PrefixedStream, key_untoken as untoken, nats_error};

/// Longest a mailbox reader's pull waits: it bounds how long a reader
/// takes to notice its server is gone (about twice half of it).
const READER_PULL_EXPIRY: std::time::Duration = std::time::Duration::from_secs(6);

/// How long a reader keeps waiting through failed reads (a cluster electing
/// a new leader) before it gives up, and its pauses between them.
const READER_RECOVERY: std::time::Duration = std::time::Duration::from_secs(120);
const READER_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const READER_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

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
                let config = consumer::pull::OrderedConfig {
                    filter_subject: format!("{}.*", nats.subject(&[owner])),
                    deliver_policy: consumer::DeliverPolicy::All,
                    // An ordered consumer lives on one server; when that
                    // server dies the reader notices two missed heartbeats
                    // (half the pull expiry each) and recreates it on
                    // another: seconds, not the default half-minute.
                    max_expires: READER_PULL_EXPIRY,
                    ..Default::default()
                };
                let consumer = nats
                    .stream
                    .create_consumer(config)
                    .await
                    .map_err(nats_error)?;
                let backlog = consumer.cached_info().num_pending;
                let messages = consumer.messages().await.map_err(nats_error)?;
                Ok(MailboxReader::Nats {
                    messages: Box::new(messages),
                    backlog,
                    failing_since: None,
                })
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
    Nats {
        messages: Box<consumer::pull::Ordered>,
        backlog: u64,
        /// Since when reads fail, if they do (kept across calls: `next`
        /// may be cancelled by the caller's other events).
        failing_since: Option<tokio::time::Instant>,
    },
    Local {
        mailbox: LocalMailbox,
        owner: String,
        cursor: u64,
        backlog: u64,
    },
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
            MailboxReader::Nats { backlog, .. } | MailboxReader::Local { backlog, .. } => *backlog,
        }
    }

    /// The next message; waits for one when the backlog is read. `None` once
    /// the bus is gone.
    pub async fn next(&mut self) -> Result<Option<Letter>, BusError> {
        match self {
            MailboxReader::Nats {
                messages,
                backlog,
                failing_since,
            } => {
                let mut pause = READER_RETRY_MIN;
                loop {
                    let Some(message) = messages.next().await else {
                        return Ok(None);
                    };
                    // While a server of the cluster is lost, pulls fail until
                    // the stream has a new leader (seconds; more on a busy
                    // machine). The ordered consumer goes on after an error, so
                    // the reader waits for it, up to READER_RECOVERY.
                    let message = match message {
                        Ok(message) => message,
                        Err(error) => {
                            let since =
                                *failing_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() >= READER_RECOVERY {
                                return Err(nats_error(error));
                            }
                            tracing::warn!(%error, "mailbox read failed; waiting for the stream to recover");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(READER_RETRY_MAX);
                            continue;
                        }
                    };
                    *failing_since = None;
                    *backlog = backlog.saturating_sub(1);
                    let id = message.subject.rsplit('.').next().and_then(untoken);
                    match id {
                        Some(id) => {
                            return Ok(Some(Letter {
                                id,
                                payload: message.payload.clone(),
                                trace: crate::trace_of(message.headers.clone()),
                            }));
                        }
                        None => {
                            tracing::warn!(subject = %message.subject, "mailbox message with a bad subject");
                        }
                    }
                }
            }
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
