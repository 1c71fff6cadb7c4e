//! Closing registry sessions when their sockets end, in batches, with
//! retries: a mass disconnect (a network blip, a load balancer dropping
//! thousands of clients) becomes a few `CloseSessions` calls instead of
//! thousands of `CloseSession` calls that time out against each other, and
//! a close that fails is tried again instead of leaving a stale session for
//! the inactivity sweep.
//!
//! One task per edge. The first close never waits for a batch: a batch is
//! whatever queued while the previous call was in flight. A session the
//! registry no longer knows is done; one it could not close this time is
//! retried with backoff, [`ATTEMPTS`] times, then left to the sweep (and
//! logged).

use std::collections::HashSet;
use std::time::Duration;

use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::{CloseSessionRequest, CloseSessionsRequest};
use tokio::sync::{mpsc, oneshot};

use crate::settings::TimedChannel;

/// Closes queued before a connection's end waits for room.
const QUEUE: usize = 65_536;
/// Sessions closed in one call (the session service's own limit).
const BATCH: usize = 1000;
/// Tries per session.
pub const ATTEMPTS: u32 = 6;
/// The first retry's wait; each next one doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

enum Work {
    Close(CloseSessionRequest),
    /// Answered once everything queued before it is done.
    Flush(oneshot::Sender<()>),
}

/// The edge's closer: cheap to clone.
#[derive(Clone, Debug)]
pub struct Closer {
    work: mpsc::Sender<Work>,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Close(request) => write!(formatter, "Close({})", request.session_id),
            Work::Flush(_) => formatter.write_str("Flush"),
        }
    }
}

impl Closer {
    /// Starts the closer's task.
    pub fn start(registry: SessionServiceClient<TimedChannel>) -> Self {
        let (work, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(registry, queue));
        Self { work }
    }

    /// Closes `request`'s session, soon.
    pub async fn close(&self, request: CloseSessionRequest) {
        if self.work.send(Work::Close(request)).await.is_err() {
            tracing::warn!("the closer has stopped; the sweep will close the session");
        }
    }

    /// Completes once every close asked before is done (or given up).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.work.send(Work::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }
}

async fn run(registry: SessionServiceClient<TimedChannel>, mut queue: mpsc::Receiver<Work>) {
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(work) = next {
            match work {
                Work::Close(request) => batch.push(request),
                Work::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < BATCH {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        close_all(&registry, batch).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Closes `batch`, retrying what fails.
async fn close_all(
    registry: &SessionServiceClient<TimedChannel>,
    mut batch: Vec<CloseSessionRequest>,
) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        if batch.is_empty() {
            return;
        }
        let request = CloseSessionsRequest {
            sessions: batch.clone(),
        };
        match registry.clone().close_sessions(request).await {
            Ok(response) => {
                let failed: HashSet<String> = response.into_inner().failed.into_iter().collect();
                batch.retain(|request| failed.contains(&request.session_id));
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), sessions = batch.len(), attempt, "closing sessions failed");
            }
        }
        if !batch.is_empty() && attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    if !batch.is_empty() {
        tracing::warn!(
            sessions = batch.len(),
            "sessions not closed; the inactivity sweep will"
        );
    }
}
