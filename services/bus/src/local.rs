//! The in-process bus: what NATS and JetStream KV do for a cluster, done in
//! memory for a single process. Same subject wildcards, same revision
//! semantics, bounded queues (a subscriber that falls behind loses messages,
//! as a slow core-NATS subscriber would, and it is logged).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{BusError, Entry, Message};

/// Messages queued per local subscriber before new ones are dropped.
const SUBSCRIBER_QUEUE: usize = 1024;

#[derive(Clone, Debug, Default)]
pub struct LocalBus {
    inner: Arc<LocalInner>,
}

#[derive(Debug, Default)]
struct LocalInner {
    history_settings: crate::HistorySettings,
    histories: Mutex<HashMap<crate::Channel, Arc<crate::history::LocalHistory>>>,
    subscribers: Mutex<Vec<LocalSubscriber>>,
    buckets: Mutex<HashMap<String, LocalKeyValue>>,
    mailboxes: Mutex<HashMap<String, crate::mailbox::LocalMailbox>>,
    logs: Mutex<HashMap<String, crate::log::LocalLog>>,
    event_counts: crate::hub::system_events::Tally,
}

#[derive(Debug)]
struct LocalSubscriber {
    pattern: String,
    sender: mpsc::Sender<Message>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind,
    // never a broken invariant, so the poison flag can be ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// NATS subject matching: `*` matches one token, `>` the rest (at least one).
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for pattern_token in pattern.split('.') {
        match (pattern_token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

impl LocalBus {
    /// An in-process bus whose hubs keep what `settings` say.
    pub fn with_history(settings: crate::HistorySettings) -> Self {
        Self {
            inner: Arc::new(LocalInner {
                history_settings: settings,
                ..Default::default()
            }),
        }
    }

    pub(crate) fn event_counts(&self) -> &crate::hub::system_events::Tally {
        &self.inner.event_counts
    }

    /// A hub's kept messages, made on first use.
    pub(crate) fn history(&self, channel: crate::Channel) -> Arc<crate::history::LocalHistory> {
        let settings = self.inner.history_settings;
        Arc::clone(
            lock(&self.inner.histories)
                .entry(channel)
                .or_insert_with(|| Arc::new(crate::history::LocalHistory::new(settings))),
        )
    }

    pub(crate) fn publish(&self, subject: &str, payload: Bytes, origin: Option<&str>) {
        let mut subscribers = lock(&self.inner.subscribers);
        subscribers.retain(|subscriber| !subscriber.sender.is_closed());
        for subscriber in subscribers.iter() {
            if subject_matches(&subscriber.pattern, subject) {
                let message = Message {
                    subject: subject.to_owned(),
                    payload: payload.clone(),
                    trace: tracing_opentelemetry::OpenTelemetrySpanExt::context(
                        &tracing::Span::current(),
                    ),
                    origin: origin.map(str::to_owned),
                };
                if subscriber.sender.try_send(message).is_err() {
                    switchboard_proto::metrics::metrics().outbound_drop("local_bus");
                    tracing::warn!(subject, pattern = %subscriber.pattern, "local subscriber full, message dropped");
                }
            }
        }
    }

    pub(crate) fn subscribe(&self, pattern: &str) -> mpsc::Receiver<Message> {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE);
        lock(&self.inner.subscribers).push(LocalSubscriber {
            pattern: pattern.to_owned(),
            sender,
        });
        receiver
    }

    /// The log `name`; the first opening sets its de-duplication window.
    pub(crate) fn log(&self, name: &str, dedup_window: Duration) -> crate::log::LocalLog {
        lock(&self.inner.logs)
            .entry(name.to_owned())
            .or_insert_with(|| crate::log::LocalLog::new(dedup_window))
            .clone()
    }

    pub(crate) fn mailbox(&self, name: &str) -> crate::mailbox::LocalMailbox {
        lock(&self.inner.mailboxes)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    pub(crate) fn key_value(&self, bucket: &str) -> LocalKeyValue {
        lock(&self.inner.buckets)
            .entry(bucket.to_owned())
            .or_default()
            .clone()
    }
}

/// One in-memory bucket; revisions increase across the bucket as in
/// JetStream.
#[derive(Clone, Debug, Default)]
pub struct LocalKeyValue {
    inner: Arc<Mutex<LocalBucket>>,
}

#[derive(Debug, Default)]
struct LocalBucket {
    last_revision: u64,
    entries: HashMap<String, Entry>,
}

impl LocalBucket {
    fn put(&mut self, key: &str, value: Bytes) -> u64 {
        self.last_revision += 1;
        let revision = self.last_revision;
        self.entries
            .insert(key.to_owned(), Entry { value, revision });
        revision
    }

    fn expect_revision(&self, key: &str, revision: u64) -> Result<(), BusError> {
        match self.entries.get(key) {
            Some(entry) if entry.revision == revision => Ok(()),
            _ => Err(BusError::Conflict(key.to_owned())),
        }
    }
}

impl LocalKeyValue {
    pub(crate) fn get(&self, key: &str) -> Option<Entry> {
        lock(&self.inner).entries.get(key).cloned()
    }

    pub(crate) fn put(&self, key: &str, value: Bytes) {
        lock(&self.inner).put(key, value);
    }

    pub(crate) fn create(&self, key: &str, value: Bytes) -> Result<u64, BusError> {
        let mut bucket = lock(&self.inner);
        if bucket.entries.contains_key(key) {
            return Err(BusError::Conflict(key.to_owned()));
        }
        Ok(bucket.put(key, value))
    }

    pub(crate) fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, BusError> {
        let mut bucket = lock(&self.inner);
        bucket.expect_revision(key, revision)?;
        Ok(bucket.put(key, value))
    }

    pub(crate) fn delete(&self, key: &str, revision: u64) -> Result<(), BusError> {
        let mut bucket = lock(&self.inner);
        bucket.expect_revision(key, revision)?;
        bucket.entries.remove(key);
        Ok(())
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        lock(&self.inner).entries.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("a.b.c", "a.b.c"));
        assert!(subject_matches("a.*.c", "a.x.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[tokio::test]
    async fn subscribers_get_matching_messages_only() {
        let bus = LocalBus::default();
        let mut edge_a = bus.subscribe("switchboard.edge.a.>");
        let mut every_edge = bus.subscribe("switchboard.edge.*.control");
        bus.publish("switchboard.edge.b.control", Bytes::from_static(b"1"), None);
        bus.publish("switchboard.edge.a.control", Bytes::from_static(b"2"), None);
        assert_eq!(edge_a.recv().await.unwrap().payload, "2");
        assert_eq!(every_edge.recv().await.unwrap().payload, "1");
        assert_eq!(every_edge.recv().await.unwrap().payload, "2");
        assert!(edge_a.try_recv().is_err());
    }

    #[test]
    fn compare_and_swap_rejects_stale_revisions() {
        let bucket = LocalKeyValue::default();
        let first = bucket.create("k", Bytes::from_static(b"1")).unwrap();
        assert!(matches!(
            bucket.create("k", Bytes::from_static(b"x")),
            Err(BusError::Conflict(_))
        ));
        let second = bucket.update("k", Bytes::from_static(b"2"), first).unwrap();
        assert!(matches!(
            bucket.update("k", Bytes::from_static(b"3"), first),
            Err(BusError::Conflict(_))
        ));
        assert!(matches!(
            bucket.delete("k", first),
            Err(BusError::Conflict(_))
        ));
        bucket.delete("k", second).unwrap();
        assert!(bucket.get("k").is_none());
        assert!(bucket.create("k", Bytes::from_static(b"again")).is_ok());
    }
}
