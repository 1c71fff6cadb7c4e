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
//! An append may carry the writer's id for it: a second append with the
//! same id within the log's de-duplication window stores nothing and
//! returns the entry the first one stored ([`Appended::Duplicate`]). With
//! NATS that is JetStream's own de-duplication (`Nats-Msg-Id`, the stream's
//! `duplicate_window`), so it holds across writers and processes; in
//! process a bounded map of recent ids does the same.
//!
//! A log's [`epoch`](Log::epoch) names its history: entry numbers mean
//! something only within one epoch. It is the JetStream stream's creation
//! time (nanoseconds, in decimal), so it changes when the stream is deleted
//! and made again (its entries gone); in process, a random id made with the
//! log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::{BusError, PrefixedStream, nats_error};

/// Most bytes an in-process log holds in all.
pub const LOCAL_LOG_MAX_BYTES: usize = 256 * 1024 * 1024;

/// Most append ids an in-process log remembers for de-duplication; past
/// that the oldest are forgotten before their window ends.
pub const LOCAL_DEDUP_MAX_IDS: usize = 100_000;

/// What an append did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// The entry is stored under the number asked for.
    Stored,
    /// An append with the same id was stored within the window: nothing
    /// new is stored, and this is the entry it stored.
    Duplicate(Entry),
}

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
/// kept in `replicas` copies, remembering append ids for `dedup_window`.
pub(crate) async fn open(
    jetstream: &jetstream::Context,
    name: &str,
    replicas: usize,
    dedup_window: Duration,
) -> Result<PrefixedStream, BusError> {
    let prefix = format!("switchboard.log.{name}");
    let config = stream::Config {
        name: format!("LOG_{}", name.to_uppercase()),
        subjects: vec![format!("{prefix}.*.*")],
        storage: stream::StorageType::File,
        allow_direct: true,
        num_replicas: replicas,
        duplicate_window: dedup_window,
        ..Default::default()
    };
    PrefixedStream::open(jetstream, prefix, config).await
}

fn entry_subject(nats: &PrefixedStream, key: &str, number: u64) -> String {
    format!("{}.{number}", nats.subject(&[key]))
}

/// The JetStream message id of an append: the key and the writer's id,
/// each as a [`crate::key_token`], so no two pairs share one and any text
/// fits in a header.
fn message_id(key: &str, id: &str) -> String {
    format!("{}.{}", crate::key_token(key), crate::key_token(id))
}

/// The entry number at the end of an entry's subject.
fn entry_number(subject: &str) -> Option<u64> {
    subject.rsplit('.').next()?.parse().ok()
}

impl Log {
    /// Appends `payload` as entry `number` of `key`'s log; when this
    /// returns the entry is durable. [`BusError::Conflict`] when `key`
    /// already has an entry with that number. With `id`, an append of the
    /// same `key` and `id` within the log's de-duplication window stores
    /// nothing and returns the entry stored first, whatever its number.
    pub async fn append_at(
        &self,
        key: &str,
        number: u64,
        payload: Bytes,
        id: Option<&str>,
    ) -> Result<Appended, BusError> {
        match self {
            Log::Nats(nats) => {
                let nats = &nats.stream;
                let message_id = id.map(|id| message_id(key, id));
                let published = nats
                    .publish_durably_once(entry_subject(nats, key, number), payload, message_id)
                    .await?;
                if !published.duplicate {
                    return Ok(Appended::Stored);
                }
                // A direct get may be answered by a replica that has not
                // applied the original yet (it was stored a moment ago):
                // then the leader answers.
                let original = match nats.stream.direct_get(published.sequence).await {
                    Ok(original) => original,
                    Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => nats
                        .stream
                        .get_raw_message(published.sequence)
                        .await
                        .map_err(nats_error)?,
                    Err(error) => return Err(nats_error(error)),
                };
                let number = entry_number(&original.subject).ok_or_else(|| {
                    nats_error(std::io::Error::other(format!(
                        "stored entry on {} has no number",
                        original.subject
                    )))
                })?;
                Ok(Appended::Duplicate(Entry {
                    number,
                    payload: original.payload,
                }))
            }
            Log::Local(local) => local.append_at(key, number, payload, id),
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

    /// The first number from `from` on that `key` has no entry under. As a
    /// log has no gaps, that is one read per doubling of the distance, then
    /// a binary search: a writer whose count of a log fell behind (entries
    /// appended by writers that failed before they counted them) finds the
    /// end in a handful of reads, however far behind it is. A replica may
    /// answer a moment late, so the number may be taken by the time it is
    /// appended at: the append's own check ([`BusError::Conflict`]) decides.
    pub async fn next_free(&self, key: &str, from: u64) -> Result<u64, BusError> {
        if !self.has(key, from).await? {
            return Ok(from);
        }
        let (mut taken, mut distance) = (from, 1u64);
        let mut free = loop {
            let probe = from.saturating_add(distance);
            if !self.has(key, probe).await? {
                break probe;
            }
            taken = probe;
            distance = distance.saturating_mul(2);
        };
        while free - taken > 1 {
            let middle = taken + (free - taken) / 2;
            if self.has(key, middle).await? {
                taken = middle;
            } else {
                free = middle;
            }
        }
        Ok(free)
    }

    /// Whether `key` has entry `number` (numbers start at 1).
    async fn has(&self, key: &str, number: u64) -> Result<bool, BusError> {
        let Some(before) = number.checked_sub(1) else {
            return Ok(false);
        };
        Ok(!self.read(key, before, 1).await?.is_empty())
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

#[derive(Debug, Default)]
struct LocalEntries {
    bytes: usize,
    by_key: HashMap<String, BTreeMap<u64, Bytes>>,
    /// How long an append id is remembered.
    dedup_window: Duration,
    /// Recent append ids (key, id) and the entry number each stored.
    recent: HashMap<(String, String), u64>,
    /// The same ids oldest first, with when each was stored, to forget
    /// them when their window ends or the map is full.
    recent_order: VecDeque<(Instant, (String, String))>,
}

impl LocalEntries {
    /// Forgets ids older than the window, and the oldest beyond the bound.
    fn forget_old_ids(&mut self, now: Instant) {
        while let Some((stored_at, _)) = self.recent_order.front() {
            let expired = now.duration_since(*stored_at) >= self.dedup_window;
            if !expired && self.recent_order.len() < LOCAL_DEDUP_MAX_IDS {
                break;
            }
            if let Some((_, id)) = self.recent_order.pop_front() {
                self.recent.remove(&id);
            }
        }
    }
}

impl LocalLog {
    /// An empty log remembering append ids for `dedup_window`.
    pub(crate) fn new(dedup_window: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LocalEntries {
                dedup_window,
                ..Default::default()
            })),
            epoch: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LocalEntries> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append_at(
        &self,
        key: &str,
        number: u64,
        payload: Bytes,
        id: Option<&str>,
    ) -> Result<Appended, BusError> {
        let mut entries = self.lock();
        let now = Instant::now();
        entries.forget_old_ids(now);
        let id = id.map(|id| (key.to_owned(), id.to_owned()));
        if let Some(id) = &id
            && let Some(&stored) = entries.recent.get(id)
            && let Some(payload) = entries.by_key.get(key).and_then(|log| log.get(&stored))
        {
            return Ok(Appended::Duplicate(Entry {
                number: stored,
                payload: payload.clone(),
            }));
        }
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
        if let Some(id) = id {
            entries.recent.insert(id.clone(), number);
            entries.recent_order.push_back((now, id));
        }
        Ok(Appended::Stored)
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
        let log = Log::Local(LocalLog::new(Duration::from_secs(600)));
        for number in 1..=5u64 {
            log.append_at("w1", number, Bytes::from(vec![number as u8]), None)
                .await
                .unwrap();
            log.append_at("w2", number, Bytes::from_static(b"other"), None)
                .await
                .unwrap();
        }
        let taken = log
            .append_at("w1", 3, Bytes::from_static(b"late"), None)
            .await;
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
    async fn the_next_free_number_is_found_however_far_the_log_is_ahead() {
        let log = Log::Local(LocalLog::new(Duration::from_secs(600)));
        assert_eq!(log.next_free("w1", 1).await.unwrap(), 1);
        for end in [1u64, 2, 3, 37, 100] {
            let key = format!("w{end}");
            for number in 1..=end {
                log.append_at(&key, number, Bytes::from_static(b"f"), None)
                    .await
                    .unwrap();
            }
            for from in [1, end / 2 + 1, end] {
                assert_eq!(
                    log.next_free(&key, from).await.unwrap(),
                    end + 1,
                    "{key} from {from}"
                );
            }
            assert_eq!(log.next_free(&key, end + 5).await.unwrap(), end + 5);
        }
    }

    #[tokio::test]
    async fn an_id_appended_again_within_the_window_returns_the_first_entry() {
        let log = Log::Local(LocalLog::new(Duration::from_secs(600)));
        let first = log
            .append_at("w1", 1, Bytes::from_static(b"one"), Some("m1"))
            .await
            .unwrap();
        assert_eq!(first, Appended::Stored);
        let again = log
            .append_at("w1", 2, Bytes::from_static(b"one again"), Some("m1"))
            .await
            .unwrap();
        assert_eq!(
            again,
            Appended::Duplicate(Entry {
                number: 1,
                payload: Bytes::from_static(b"one"),
            })
        );
        assert_eq!(log.read("w1", 0, 10).await.unwrap().len(), 1, "stored once");
        let other_key = log
            .append_at("w2", 1, Bytes::from_static(b"w2"), Some("m1"))
            .await
            .unwrap();
        assert_eq!(other_key, Appended::Stored, "ids are per key");
    }

    #[tokio::test]
    async fn ids_are_forgotten_when_their_window_ends() {
        let log = Log::Local(LocalLog::new(Duration::ZERO));
        for number in 1..=2 {
            let appended = log
                .append_at("w1", number, Bytes::from_static(b"x"), Some("m1"))
                .await
                .unwrap();
            assert_eq!(appended, Appended::Stored);
        }
    }

    #[test]
    fn message_ids_keep_key_and_id_apart_and_entry_numbers_come_from_subjects() {
        assert_ne!(message_id("a.b", "c"), message_id("a", "b.c"));
        assert_eq!(message_id("w", "1"), "77.31");
        assert_eq!(entry_number("switchboard.log.frames.7731.42"), Some(42));
        assert_eq!(entry_number("switchboard.log.frames.7731.x"), None);
    }

    #[tokio::test]
    async fn a_new_local_log_has_a_new_epoch() {
        let log = Log::Local(LocalLog::new(Duration::from_secs(600)));
        let epoch = log.epoch().await.unwrap();
        assert!(!epoch.is_empty());
        assert_eq!(log.epoch().await.unwrap(), epoch, "stable while it lives");
        assert_eq!(log.known_epoch(), epoch);
        let other = Log::Local(LocalLog::new(Duration::from_secs(600)));
        assert_ne!(other.epoch().await.unwrap(), epoch);
    }
}
