//! Closing sockets from anywhere in the cluster.
//!
//! The session service publishes a `SessionControl` on
//! `switchboard.edge.<edge_id>.control` when a session is terminated or
//! times out. Each edge subscribes to its own subject and hands the message
//! to the socket it holds through that socket's one-message slot. The
//! table of held sockets is the only thing an edge keeps, and only for as
//! long as the sockets are open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message as _;
use switchboard_bus::Subscription;
use switchboard_proto::v1::SessionControl;
use tokio::sync::oneshot;

/// The sockets this edge holds, by session id.
#[derive(Debug, Default)]
pub struct Sockets {
    held: Mutex<HashMap<String, oneshot::Sender<SessionControl>>>,
}

/// Removes its socket from the table when the connection ends.
#[derive(Debug)]
pub struct HeldSocket {
    sockets: Arc<Sockets>,
    session_id: String,
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        self.sockets.lock().remove(&self.session_id);
    }
}

impl Sockets {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<SessionControl>>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a socket; control messages for `session_id` arrive on the
    /// returned receiver until the guard is dropped.
    pub fn hold(
        self: &Arc<Self>,
        session_id: &str,
    ) -> (HeldSocket, oneshot::Receiver<SessionControl>) {
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(session_id.to_owned(), sender);
        let guard = HeldSocket {
            sockets: Arc::clone(self),
            session_id: session_id.to_owned(),
        };
        (guard, receiver)
    }

    /// Sockets currently held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn deliver(&self, control: SessionControl) {
        // A socket takes one control message in its life: the first ends it.
        let sender = self.lock().remove(&control.session_id);
        match sender {
            Some(sender) => {
                if sender.send(control).is_err() {
                    tracing::debug!("socket already closing, control message dropped");
                }
            }
            None => {
                tracing::debug!(session_id = %control.session_id, "control for a socket not held here");
            }
        }
    }
}

/// Hands every control message on `subscription` to its socket.
pub async fn route(mut subscription: Subscription, sockets: Arc<Sockets>) {
    while let Some(message) = subscription.next().await {
        match SessionControl::decode(message.payload.as_ref()) {
            Ok(control) => sockets.deliver(control),
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "undecodable control message");
            }
        }
    }
    tracing::warn!("control subscription ended");
}
