//! Usage records, written by group commit.
//!
//! Every usage report adds to its user's record and to the one `server`
//! record. Written report by report, each is a compare-and-swap on a hot
//! key (the server record always; a user's record too when many sessions
//! share a user, as every anonymous session shares `anonymous`): writers
//! mostly collide, every collision is another round trip, and past the
//! retry limit a report fails. So each replica has one writer: a report
//! queues its delta (in a bounded queue), the writer takes everything
//! queued, sums it per user, writes each user's sum with one
//! compare-and-swap (several users at once), then the server's, and
//! answers every report of the batch with the outcome of its writes.
//!
//! A report still returns only once its delta is stored, so nothing
//! acknowledged can be lost; a report whose user write failed is left out
//! of the server sum and fails (the edges keep and resend failed deltas).
//! Under light load a batch is one report, and nothing changes but the
//! hop to the writer task.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use switchboard_bus::KeyValue;
use switchboard_proto::error::ServiceError;
use switchboard_proto::v1::{ServerStats, Usage};
use tokio::sync::{mpsc, oneshot};

use crate::{CountersError, SERVER_KEY, add, modify, user_key};

/// Reports waiting for the writer; a full queue makes reporters wait.
const QUEUE: usize = 1024;
/// Users' records written at once.
const CONCURRENT_WRITES: usize = 16;

/// How a batch's writes ended for the reports of one user: the error, if
/// any, is shared by all of them.
type Outcome = Result<(), Arc<CountersError>>;

/// One usage report.
struct Report {
    user_id: String,
    delta: Usage,
    done: oneshot::Sender<Outcome>,
}

/// The handle reports go through; the writer task ends with the last one.
#[derive(Clone, Debug)]
pub(crate) struct UsageWriter {
    reports: mpsc::Sender<Report>,
}

impl UsageWriter {
    /// Starts the writer of `bucket`'s usage records.
    pub(crate) fn start(bucket: KeyValue) -> Self {
        let (reports, queued) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(bucket, queued));
        Self { reports }
    }

    /// Adds `delta` to `user_id`'s record and the server's; returns once
    /// both are stored.
    pub(crate) async fn add(&self, user_id: &str, delta: Usage) -> Result<(), CountersError> {
        let (done, outcome) = oneshot::channel();
        self.reports
            .send(Report {
                user_id: user_id.to_owned(),
                delta,
                done,
            })
            .await
            .map_err(|_| CountersError::WriterStopped)?;
        outcome
            .await
            .map_err(|_| CountersError::WriterStopped)?
            .map_err(CountersError::Batch)
    }
}

/// One user's share of a batch.
#[derive(Default)]
struct UserBatch {
    delta: Usage,
    reports: Vec<oneshot::Sender<Outcome>>,
}

async fn write_batches(bucket: KeyValue, mut queued: mpsc::Receiver<Report>) {
    let mut batch = Vec::with_capacity(QUEUE);
    while queued.recv_many(&mut batch, QUEUE).await > 0 {
        let mut users: HashMap<String, UserBatch> = HashMap::new();
        for report in batch.drain(..) {
            let user = users.entry(report.user_id).or_default();
            add(&mut user.delta, &report.delta);
            user.reports.push(report.done);
        }
        // Each user's sum, several users at once; `Ok(true)`: a new user.
        let written: Vec<(UserBatch, Result<bool, CountersError>)> =
            futures::stream::iter(users.into_iter().map(|(user_id, user)| {
                let bucket = &bucket;
                async move {
                    let outcome = modify(bucket, &user_key(&user_id), |total: &mut Usage| {
                        add(total, &user.delta);
                    })
                    .await;
                    (user, outcome)
                }
            }))
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut server_delta = Usage::default();
        let mut new_users = 0;
        for (user, outcome) in &written {
            if let Ok(created) = outcome {
                add(&mut server_delta, &user.delta);
                new_users += u64::from(*created);
            }
        }
        let server: Outcome = modify(&bucket, SERVER_KEY, |server: &mut ServerStats| {
            add(
                server.usage.get_or_insert_with(Usage::default),
                &server_delta,
            );
            server.users += new_users;
        })
        .await
        .map(|_| ())
        .map_err(Arc::new);
        for (user, outcome) in written {
            let outcome = outcome.map_err(Arc::new).and_then(|_| server.clone());
            if let Err(error) = &outcome {
                tracing::warn!(reports = user.reports.len(), code = ?error.error_code(), %error, "usage not stored");
            }
            for report in user.reports {
                let _ = report.send(outcome.clone());
            }
        }
    }
}
