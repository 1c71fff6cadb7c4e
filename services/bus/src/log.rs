//! Logs: append-only, per-key sequences of messages that are never lost
//! once appended (pressure frames), numbered 1, 2, 3, … per key.
//!
//! With NATS a log is a JetStream stream on file storage with one subject
//! per entry, `<prefix>.<key>.<number>`. An entry's number is claimed in the
//! stream itself: an append says it expects no message on its subject yet
//! (`Nats-Expected-Last-Subject-Sequence: 0`), so of two writers claiming
//! the same number one wins and the other is told ([`BusError::Conflict`])
//! and takes the next; numbers have no gaps and follow the log's order. An
//! append returns only after JetStream acknowledged it. Pages are read with
//! direct gets by subject, entry by entry, so reading needs no consumer and
//! starts anywhere. In process it is a map in memory, bounded by
//! [`LOCAL_LOG_MAX_BYTES`]: past that, appends are refused rather than
//! anything dropped.
//!
//! A log's [`epoch`](Log::epoch) names its history: entry numbers mean
//! something only within one epoch. It is the JetStream stream's creation
//! time (nanoseconds, in decimal), so it changes when the stream is deleted
//! and made again (its entries gone); in process, a random id made with the
//! log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::{BusError, PrefixedStream, nats_error};

/// Most bytes an in-process log holds in all.
pub const LOCAL_LOG_MAX_BYTES: usize = 256 * 1024 * 1024;

/// One entry of a log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The entry's number in its key's log: 1, 2, 3, …
    pub number: u64,
    pub payload: Bytes,
}

/// A named log.
#[derive(Clone, Debug)]
pub enum Log {
    Nats(Box<NatsLog>),
    Local(LocalLog),
}

/// A log in a JetStream stream.
#[derive(Clone, Debug)]
pub struct NatsLog {
    stream: PrefixedStream,
    /// The epoch last read from the stream, for [`Log::known_epoch`].
    epoch: Arc<Mutex<String>>,
}

impl NatsLog {
    pub(crate) fn new(stream: PrefixedStream) -> Self {
        let epoch = epoch_of(stream.stream.cached_info());
        Self {
            stream,
            epoch: Arc::new(Mutex::new(epoch)),
        }
    }
}

fn epoch_of(info: &stream::Info) -> String {
    info.created.unix_timestamp_nanos().to_string()
}

/// Opens (creating when needed) the JetStream stream behind log `name`,
/// kept in `replicas` copies.
pub(crate) async fn open(
    jetstream: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<PrefixedStream, BusError> {
    let prefix = format!("switchboard.log.{name}");
    let config = stream::Config {
        name: format!("LOG_{}", name.to_uppercase()),
        subjects: vec![format!("{prefix}.*.*")],
        storage: stream::StorageType::File,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    };
    PrefixedStream::open(jetstream, prefix, config).await
}

fn entry_subject(nats: &PrefixedStream, key: &str, number: u64) -> String {
    format!("{}.{number}", nats.subject(&[key]))
}

impl Log {
    /// Appends `payload` as entry `number` of `key`'s log; when this
    /// returns the entry is durable. [`BusError::Conflict`] when `key`
    /// already has an entry with that number.
    pub async fn append_at(&self, key: &str, number: u64, payload: Bytes) -> Result<(), BusError> {
        match self {
            Log::Nats(nats) => {
                let nats = &nats.stream;
                nats.publish_durably_once(entry_subject(nats, key, number), payload)
                    .await
            }
            Log::Local(local) => local.append_at(key, number, payload),
        }
    }

    /// Up to `limit` entries of `key` after entry `after` (0: from the
    /// first), in order.
    pub async fn read(&self, key: &str, after: u64, limit: usize) -> Result<Vec<Entry>, BusError> {
        match self {
            Log::Nats(nats) => {
                use stream::DirectGetErrorKind;
                let nats = &nats.stream;
                let mut entries = Vec::new();
                for number in (after + 1..).take(limit) {
                    let subject = entry_subject(nats, key, number);
                    match nats.stream.direct_get_last_for_subject(subject).await {
                        Ok(message) => entries.push(Entry {
                            number,
                            payload: message.payload,
                        }),
                        Err(error) if error.kind() == DirectGetErrorKind::NotFound => break,
                        Err(error) => return Err(nats_error(error)),
                    }
                }
                Ok(entries)
            }
            Log::Local(local) => Ok(local.read(key, after, limit)),
        }
    }

    /// The log's epoch, as it is now (with NATS, asked of the stream).
    pub async fn epoch(&self) -> Result<String, BusError> {
        match self {
            Log::Nats(nats) => {
                let info = nats.stream.stream.get_info().await.map_err(nats_error)?;
                let epoch = epoch_of(&info);
                *lock(&nats.epoch) = epoch.clone();
                Ok(epoch)
            }
            Log::Local(local) => Ok(local.epoch.to_string()),
        }
    }

    /// The epoch as this process last read it, without asking the stream:
    /// for every appended entry. It can only lag behind [`Log::epoch`]
    /// (after the stream was recreated), which makes a position look
    /// stale, never a lost history look whole.
    pub fn known_epoch(&self) -> String {
        match self {
            Log::Nats(nats) => lock(&nats.epoch).clone(),
            Log::Local(local) => local.epoch.to_string(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The in-process log.
#[derive(Clone, Debug)]
pub struct LocalLog {
    inner: Arc<Mutex<LocalEntries>>,
    /// A random id made with the log: see [`Log::epoch`].
    epoch: Arc<str>,
}

impl Default for LocalLog {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            epoch: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }
}

#[derive(Debug, Default)]
struct LocalEntries {
    bytes: usize,
    by_key: HashMap<String, BTreeMap<u64, Bytes>>,
}

impl LocalLog {
    fn lock(&self) -> MutexGuard<'_, LocalEntries> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append_at(&self, key: &str, number: u64, payload: Bytes) -> Result<(), BusError> {
        let mut entries = self.lock();
        if entries.bytes + payload.len() > LOCAL_LOG_MAX_BYTES {
            return Err(BusError::Full(format!(
                "the in-memory log holds at most {LOCAL_LOG_MAX_BYTES} bytes; run with NATS for more"
            )));
        }
        let size = payload.len();
        let log = entries.by_key.entry(key.to_owned()).or_default();
        if log.contains_key(&number) {
            return Err(BusError::Conflict(format!(
                "{key} already has entry {number}"
            )));
        }
        log.insert(number, payload);
        entries.bytes += size;
        Ok(())
    }

    fn read(&self, key: &str, after: u64, limit: usize) -> Vec<Entry> {
        let entries = self.lock();
        let Some(log) = entries.by_key.get(key) else {
            return Vec::new();
        };
        (after + 1..)
            .take(limit)
            .map_while(|number| {
                log.get(&number).map(|payload| Entry {
                    number,
                    payload: payload.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_are_numbered_per_key_and_come_back_a_page_at_a_time() {
        let log = Log::Local(LocalLog::default());
        for number in 1..=5u64 {
            log.append_at("w1", number, Bytes::from(vec![number as u8]))
                .await
                .unwrap();
            log.append_at("w2", number, Bytes::from_static(b"other"))
                .await
                .unwrap();
        }
        let taken = log.append_at("w1", 3, Bytes::from_static(b"late")).await;
        assert!(matches!(taken, Err(BusError::Conflict(_))), "{taken:?}");
        let first = log.read("w1", 0, 2).await.unwrap();
        assert_eq!(
            first
                .iter()
                .map(|e| (e.number, e.payload[0]))
                .collect::<Vec<_>>(),
            [(1, 1), (2, 2)]
        );
        let rest = log.read("w1", 2, 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(log.read("nothing", 0, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_new_local_log_has_a_new_epoch() {
        let log = Log::Local(LocalLog::default());
        let epoch = log.epoch().await.unwrap();
        assert!(!epoch.is_empty());
        assert_eq!(log.epoch().await.unwrap(), epoch, "stable while it lives");
        assert_eq!(log.known_epoch(), epoch);
        let other = Log::Local(LocalLog::default());
        assert_ne!(other.epoch().await.unwrap(), epoch);
    }
}
