//! The cluster-wide usage record, written by group commit.
//!
//! Every usage report adds to the one `server` record. Written directly,
//! each report is a compare-and-swap on that one key: with thousands of
//! sessions reporting, the writers mostly collide, and every collision is
//! another round trip (and, past the retry limit, a failed report). So each
//! replica has one writer for it: a report queues its delta (in a bounded
//! queue), the writer takes everything queued, adds the sum in one
//! compare-and-swap, and answers every report of the batch with that
//! write's outcome.
//!
//! A report still returns only once its delta is stored, so nothing
//! acknowledged can be lost, and a failed write fails every report in it
//! (the edges keep and resend failed deltas). Under light load a batch is
//! one report, and nothing changes but the extra hop to the writer task.

use switchboard_bus::KeyValue;
use switchboard_proto::v1::{ServerStats, Usage};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::{SERVER_KEY, add, modify};

/// Reports waiting for the writer; a full queue makes reporters wait.
const QUEUE: usize = 1024;

/// One usage report's share of the server record.
struct Report {
    delta: Usage,
    new_user: bool,
    done: oneshot::Sender<Result<(), Status>>,
}

/// The handle reports go through; the writer task ends with the last one.
#[derive(Clone, Debug)]
pub(crate) struct ServerTotals {
    reports: mpsc::Sender<Report>,
}

impl ServerTotals {
    /// Starts the writer of `bucket`'s server record.
    pub(crate) fn start(bucket: KeyValue) -> Self {
        let (reports, queued) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(bucket, queued));
        Self { reports }
    }

    /// Adds `delta` (and one user when `new_user`) to the server record;
    /// returns once it is stored.
    pub(crate) async fn add(&self, delta: Usage, new_user: bool) -> Result<(), Status> {
        let stopped = || Status::unavailable("the statistics writer stopped");
        let (done, outcome) = oneshot::channel();
        self.reports
            .send(Report {
                delta,
                new_user,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn write_batches(bucket: KeyValue, mut queued: mpsc::Receiver<Report>) {
    let mut batch = Vec::with_capacity(QUEUE);
    while queued.recv_many(&mut batch, QUEUE).await > 0 {
        let mut delta = Usage::default();
        let mut new_users = 0;
        for report in &batch {
            add(&mut delta, &report.delta);
            new_users += u64::from(report.new_user);
        }
        let written = modify(&bucket, SERVER_KEY, |server: &mut ServerStats| {
            add(server.usage.get_or_insert_with(Usage::default), &delta);
            server.users += new_users;
        })
        .await
        .map(|_| ());
        if let Err(status) = &written {
            tracing::warn!(reports = batch.len(), code = ?status.code(), message = status.message(), "server usage not stored");
        }
        for report in batch.drain(..) {
            let _ = report.done.send(written.clone());
        }
    }
}
