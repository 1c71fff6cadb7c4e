//! Key-value buckets: JetStream KV in a cluster, a map in process, with the
//! same revision semantics.
//!
//! Every record several writers share (a session, a user's session index,
//! a workout, a usage counter, the statistics tick) is changed the one way
//! [`KeyValue::update`] offers: read the key, let the caller decide from
//! what it holds (or its absence) to write a new value, leave it, or delete
//! it, then write at the revision read; a concurrent writer makes the write
//! fail with a conflict, and the update reads again and retries, up to a
//! bound the caller chooses. Callers never write that loop themselves.

use std::error::Error;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

use crate::{BusError, local, nats_error};

/// The header of a KV message that says whether it is a put or a removal
/// (ADR-8).
const KV_OPERATION: &str = "KV-Operation";

/// A value and the revision it was written at, for compare-and-swap.
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: Bytes,
    pub revision: u64,
}

/// What an [`KeyValue::update`] does to its key, as its caller decided from
/// the key's current entry; `T` is what the update then returns.
#[derive(Debug)]
pub enum Change<T> {
    /// Write this value: at the revision read, or as a new key when there
    /// was no entry.
    Put(Bytes, T),
    /// Leave the key as it is.
    Keep(T),
    /// Delete the key (nothing to do when there was no entry).
    Delete(T),
}

/// Every attempt of an [`KeyValue::update`] lost to a concurrent writer:
/// the caller says which record, in its own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("changed concurrently too often")]
pub struct Contended;

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

    /// Changes `key` by compare-and-swap: reads it, asks `decide` what to
    /// do given its entry (`None` when it has none), and does that at the
    /// revision read. When another writer got there first, reads again and
    /// asks again, for at most `attempts` attempts; `Ok(Err(Contended))`
    /// when every one lost.
    ///
    /// `decide` is asynchronous, so it may read other keys; what it borrows
    /// it takes by reference (`|entry| async move { … }` over references).
    /// An error from it (a record that does not decode, a limit reached)
    /// ends the update as it is; so does a bus failure, as `E`.
    pub async fn update<T, E, Decided>(
        &self,
        key: &str,
        attempts: usize,
        decide: impl FnMut(Option<Entry>) -> Decided,
    ) -> Result<Result<T, Contended>, E>
    where
        E: From<BusError>,
        Decided: Future<Output = Result<Change<T>, E>>,
    {
        let current = self.get(key).await?;
        self.update_from(key, current, attempts, decide).await
    }

    /// [`KeyValue::update`], starting from `current`, the entry of `key`
    /// the caller has just read: its first attempt saves a read.
    pub async fn update_from<T, E, Decided>(
        &self,
        key: &str,
        mut current: Option<Entry>,
        attempts: usize,
        mut decide: impl FnMut(Option<Entry>) -> Decided,
    ) -> Result<Result<T, Contended>, E>
    where
        E: From<BusError>,
        Decided: Future<Output = Result<Change<T>, E>>,
    {
        for attempt in 0..attempts {
            if attempt > 0 {
                current = self.get(key).await?;
            }
            let revision = current.as_ref().map(|entry| entry.revision);
            let written = match (decide(current.take()).await?, revision) {
                (Change::Keep(outcome) | Change::Delete(outcome), None) => return Ok(Ok(outcome)),
                (Change::Keep(outcome), Some(_)) => return Ok(Ok(outcome)),
                (Change::Put(value, outcome), None) => {
                    self.create(key, value).await.map(|_| outcome)
                }
                (Change::Put(value, outcome), Some(revision)) => self
                    .put_at_revision(key, value, revision)
                    .await
                    .map(|_| outcome),
                (Change::Delete(outcome), Some(revision)) => {
                    self.delete(key, revision).await.map(|()| outcome)
                }
            };
            match written {
                Ok(outcome) => return Ok(Ok(outcome)),
                Err(BusError::Conflict(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Err(Contended))
    }

    /// Writes `key` only if its revision is still `revision`;
    /// [`BusError::Conflict`] when someone wrote or deleted it since.
    async fn put_at_revision(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, BusError> {
        match self {
            KeyValue::Nats(store) => match store.update(key, value, revision).await {
                Ok(revision) => Ok(revision),
                Err(error) => Err(self.classify_conflict(key, revision, error).await),
            },
            KeyValue::Local(local) => local.update(key, value, revision),
        }
    }

    /// Deletes `key` only if its revision is still `revision`;
    /// [`BusError::Conflict`] when someone wrote or deleted it since.
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
                    let info = message.info().map_err(|source| BusError::Nats { source })?;
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
    async fn classify_conflict(
        &self,
        key: &str,
        revision: u64,
        error: impl Error + Send + Sync + 'static,
    ) -> BusError {
        match self.get(key).await {
            Ok(Some(entry)) if entry.revision != revision => BusError::Conflict(key.to_owned()),
            Ok(None) => BusError::Conflict(key.to_owned()),
            _ => nats_error(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket() -> KeyValue {
        KeyValue::Local(local::LocalKeyValue::default())
    }

    fn number(entry: Option<&Entry>) -> u64 {
        entry.map_or(0, |entry| {
            std::str::from_utf8(&entry.value).unwrap().parse().unwrap()
        })
    }

    /// Adds one to the number at `key` (0 when absent); returns the sum.
    async fn increment(bucket: &KeyValue, key: &str) -> Result<Result<u64, Contended>, BusError> {
        bucket
            .update(key, 64, |entry| async move {
                let next = number(entry.as_ref()) + 1;
                Ok::<_, BusError>(Change::Put(Bytes::from(next.to_string()), next))
            })
            .await
    }

    #[tokio::test]
    async fn an_update_creates_changes_keeps_and_deletes() {
        let bucket = bucket();
        assert_eq!(increment(&bucket, "k").await.unwrap(), Ok(1), "created");
        assert_eq!(increment(&bucket, "k").await.unwrap(), Ok(2));
        let kept = bucket
            .update("k", 1, |entry| async move {
                Ok::<_, BusError>(Change::Keep(number(entry.as_ref())))
            })
            .await
            .unwrap();
        assert_eq!(kept, Ok(2));
        assert_eq!(
            number(bucket.get("k").await.unwrap().as_ref()),
            2,
            "keeping writes nothing"
        );
        let deleted = bucket
            .update("k", 1, |_| async {
                Ok::<_, BusError>(Change::Delete("gone"))
            })
            .await
            .unwrap();
        assert_eq!(deleted, Ok("gone"));
        assert!(bucket.get("k").await.unwrap().is_none());
        let nothing = bucket
            .update("k", 1, |_| async { Ok::<_, BusError>(Change::Delete(())) })
            .await
            .unwrap();
        assert_eq!(nothing, Ok(()), "deleting an absent key is done");
    }

    #[tokio::test]
    async fn an_update_that_keeps_losing_gives_up_after_its_attempts() {
        let bucket = bucket();
        bucket.create("k", Bytes::from_static(b"0")).await.unwrap();
        let mut asked = 0;
        let bucket = &bucket;
        let outcome = bucket
            .update("k", 3, |entry| {
                asked += 1;
                async move {
                    // Another writer gets in between every read and write.
                    let revision = entry.unwrap().revision;
                    bucket
                        .put_at_revision("k", Bytes::from_static(b"9"), revision)
                        .await?;
                    Ok::<_, BusError>(Change::Put(Bytes::from_static(b"1"), ()))
                }
            })
            .await
            .unwrap();
        assert_eq!(outcome, Err(Contended));
        assert_eq!(asked, 3);
    }

    #[tokio::test]
    async fn a_refusal_ends_the_update_as_it_is() {
        #[derive(Debug, PartialEq)]
        enum Refused {
            Limit,
            Bus,
        }
        impl From<BusError> for Refused {
            fn from(_: BusError) -> Self {
                Refused::Bus
            }
        }
        let outcome = bucket()
            .update("k", 5, |_| async { Err::<Change<()>, _>(Refused::Limit) })
            .await;
        assert_eq!(outcome, Err(Refused::Limit));
    }

    #[tokio::test]
    async fn concurrent_updates_all_count() {
        let bucket = bucket();
        let writers: Vec<_> = (0..50)
            .map(|_| {
                let bucket = bucket.clone();
                tokio::spawn(async move { increment(&bucket, "hot").await })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap().unwrap();
        }
        assert_eq!(number(bucket.get("hot").await.unwrap().as_ref()), 50);
    }
}
