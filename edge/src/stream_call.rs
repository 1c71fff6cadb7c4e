//! Request and reply over a long-lived bidirectional gRPC stream: the way
//! the edge talks to the detection service, whose detectors live with
//! their stream. One reply per request, in order; every wait is bounded;
//! any failure drops the stream, so the next call opens a fresh one (on
//! whichever replica the channel reaches).

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::error::ClientError;

/// Requests queued on a stream ahead of their replies.
const OUTGOING: usize = 4;

/// One open stream.
pub struct StreamCall<Request, Reply> {
    requests: mpsc::Sender<Request>,
    replies: Streaming<Reply>,
}

impl<Request, Reply> std::fmt::Debug for StreamCall<Request, Reply> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("StreamCall").finish_non_exhaustive()
    }
}

/// `service` could not answer, and why.
pub(crate) fn unavailable(service: &'static str, detail: &str) -> ClientError {
    ClientError::Unavailable {
        service,
        detail: detail.to_owned(),
    }
}

/// Sends `request` on the stream in `slot` (opening it with `open` when the
/// slot is empty) and waits, within `deadline`, for its reply.
pub async fn call<Request, Reply, Open, Opening>(
    slot: &mut Option<StreamCall<Request, Reply>>,
    service: &'static str,
    deadline: Duration,
    open: Open,
    request: Request,
) -> Result<Reply, ClientError>
where
    Open: FnOnce(ReceiverStream<Request>) -> Opening,
    Opening: Future<Output = Result<tonic::Response<Streaming<Reply>>, tonic::Status>>,
{
    if slot.is_none() {
        let (requests, outgoing) = mpsc::channel(OUTGOING);
        let opened = tokio::time::timeout(deadline, open(ReceiverStream::new(outgoing)))
            .await
            .map_err(|_| unavailable(service, "timed out opening the stream"))?
            .map_err(|status| ClientError::from_status(service, status))?;
        *slot = Some(StreamCall {
            requests,
            replies: opened.into_inner(),
        });
    }
    let stream = slot.as_mut().expect("opened above");
    let outcome = async {
        stream
            .requests
            .send(request)
            .await
            .map_err(|_| unavailable(service, "stream closed"))?;
        match tokio::time::timeout(deadline, stream.replies.message()).await {
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => Err(unavailable(service, "stream ended")),
            Ok(Err(status)) => Err(ClientError::from_status(service, status)),
            Err(_) => Err(unavailable(service, "no reply within the deadline")),
        }
    }
    .await;
    if outcome.is_err() {
        *slot = None;
    }
    outcome
}
