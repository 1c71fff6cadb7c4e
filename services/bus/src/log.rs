//! Logs: append-only, per-key sequences of messages that are never lost
//! once appended (pressure frames).
//!
//! With NATS a log is a JetStream stream on file storage, one subject per
//! key; an append returns only after JetStream acknowledged it, and pages
//! are read with direct gets ("next message for this subject from sequence
//! N"), so reading needs no consumer. In process it is a map in memory,
//! bounded by [`LOCAL_LOG_MAX_BYTES`]: past that, appends are refused rather
//! than anything dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::{BusError, PrefixedStream, nats_error};

/// Most bytes an in-process log holds in all.
pub const LOCAL_LOG_MAX_BYTES: usize = 256 * 1024 * 1024;

/// One entry of a log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Increases along the log (not necessarily by one: sequences are shared
    /// by all keys of a log).
    pub sequence: u64,
    pub payload: Bytes,
}

/// A named log.
#[derive(Clone, Debug)]
pub enum Log {
    Nats(Box<PrefixedStream>),
    Local(LocalLog),
}

/// Opens (creating when needed) the JetStream stream behind log `name`.
pub(crate) async fn open(
    jetstream: &jetstream::Context,
    name: &str,
) -> Result<PrefixedStream, BusError> {
    let prefix = format!("switchboard.log.{name}");
    let config = stream::Config {
        name: format!("LOG_{}", name.to_uppercase()),
        subjects: vec![format!("{prefix}.*")],
        storage: stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    };
    PrefixedStream::open(jetstream, prefix, config).await
}

impl Log {
    /// Appends to `key`'s log; when this returns the entry is durable.
    pub async fn append(&self, key: &str, payload: Bytes) -> Result<u64, BusError> {
        match self {
            Log::Nats(nats) => nats.publish_durably(nats.subject(&[key]), payload).await,
            Log::Local(local) => local.append(key, payload),
        }
    }

    /// Up to `limit` entries of `key` after sequence `after`, in order.
    pub async fn read(&self, key: &str, after: u64, limit: usize) -> Result<Vec<Entry>, BusError> {
        match self {
            Log::Nats(nats) => {
                use stream::DirectGetErrorKind;
                let subject = nats.subject(&[key]);
                let mut entries = Vec::new();
                let mut next = after + 1;
                while entries.len() < limit {
                    match nats
                        .stream
                        .direct_get_next_for_subject(subject.as_str(), Some(next))
                        .await
                    {
                        Ok(message) => {
                            next = message.sequence + 1;
                            entries.push(Entry {
                                sequence: message.sequence,
                                payload: message.payload,
                            });
                        }
                        Err(error) if error.kind() == DirectGetErrorKind::NotFound => break,
                        Err(error) => return Err(nats_error(error)),
                    }
                }
                Ok(entries)
            }
            Log::Local(local) => Ok(local.read(key, after, limit)),
        }
    }
}

/// The in-process log.
#[derive(Clone, Debug, Default)]
pub struct LocalLog {
    inner: Arc<Mutex<LocalEntries>>,
}

#[derive(Debug, Default)]
struct LocalEntries {
    last_sequence: u64,
    bytes: usize,
    by_key: HashMap<String, Vec<Entry>>,
}

impl LocalLog {
    fn lock(&self) -> MutexGuard<'_, LocalEntries> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, key: &str, payload: Bytes) -> Result<u64, BusError> {
        let mut entries = self.lock();
        if entries.bytes + payload.len() > LOCAL_LOG_MAX_BYTES {
            return Err(BusError::Full(format!(
                "the in-memory log holds at most {LOCAL_LOG_MAX_BYTES} bytes; run with NATS for more"
            )));
        }
        entries.last_sequence += 1;
        entries.bytes += payload.len();
        let sequence = entries.last_sequence;
        entries
            .by_key
            .entry(key.to_owned())
            .or_default()
            .push(Entry { sequence, payload });
        Ok(sequence)
    }

    fn read(&self, key: &str, after: u64, limit: usize) -> Vec<Entry> {
        let entries = self.lock();
        let Some(log) = entries.by_key.get(key) else {
            return Vec::new();
        };
        let start = log.partition_point(|entry| entry.sequence <= after);
        log[start..].iter().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_come_back_in_order_a_page_at_a_time() {
        let log = Log::Local(LocalLog::default());
        let mut sequences = Vec::new();
        for i in 0..5u8 {
            sequences.push(log.append("w1", Bytes::from(vec![i])).await.unwrap());
            log.append("w2", Bytes::from_static(b"other"))
                .await
                .unwrap();
        }
        let first = log.read("w1", 0, 2).await.unwrap();
        assert_eq!(
            first.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            [0, 1]
        );
        let rest = log.read("w1", first[1].sequence, 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(rest.last().unwrap().sequence, *sequences.last().unwrap());
        assert!(log.read("nothing", 0, 10).await.unwrap().is_empty());
    }
}
