//! Closing sockets from anywhere in the cluster.
//!
//! The session service publishes a `SessionControl` on
//! `switchboard.edge.<edge_id>.control` when a session is terminated or
//! times out. Each edge subscribes to its own subject and hands the message
//! to the socket it holds through that socket's one-message slot. The
//! table of held sockets is the only thing an edge keeps, and only for as
//! long as the sockets are open.
//!
//! A control can overtake its socket: a connection racing a newer one of
//! the same user is replaced as soon as its registry session exists,
//! before its edge has the answer to the open and holds the socket. Such a
//! control waits ([`UNCLAIMED_FOR`], at most [`MAX_UNCLAIMED`] of them)
//! and is handed to the socket when it is held, so it still closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prost::Message as _;
use switchboard_bus::Subscription;
use switchboard_proto::v1::SessionControl;
use tokio::sync::oneshot;

/// How long a control for a socket not held (yet) waits for it.
pub const UNCLAIMED_FOR: Duration = Duration::from_secs(30);

/// Most controls waiting for their sockets; past it, a new one is dropped.
pub const MAX_UNCLAIMED: usize = 4096;

/// The sockets this edge holds, by session id.
#[derive(Debug, Default)]
pub struct Sockets {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    held: HashMap<String, oneshot::Sender<SessionControl>>,
    /// Controls that came before their sockets were held, with when.
    unclaimed: HashMap<String, (Instant, SessionControl)>,
}

/// Removes its socket from the table when the connection ends.
#[derive(Debug)]
pub struct HeldSocket {
    sockets: Arc<Sockets>,
    session_id: String,
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        self.sockets.lock().held.remove(&self.session_id);
    }
}

impl Sockets {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a socket; control messages for `session_id` arrive on the
    /// returned receiver until the guard is dropped (one that came before
    /// is there at once).
    pub fn hold(
        self: &Arc<Self>,
        session_id: &str,
    ) -> (HeldSocket, oneshot::Receiver<SessionControl>) {
        let (sender, receiver) = oneshot::channel();
        {
            let mut table = self.lock();
            match table.unclaimed.remove(session_id) {
                Some((at, control)) if at.elapsed() < UNCLAIMED_FOR => {
                    // The socket takes one control in its life: this one.
                    let _ = sender.send(control);
                }
                _ => {
                    table.held.insert(session_id.to_owned(), sender);
                }
            }
        }
        let guard = HeldSocket {
            sockets: Arc::clone(self),
            session_id: session_id.to_owned(),
        };
        (guard, receiver)
    }

    /// Sockets currently held.
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn deliver(&self, control: SessionControl) {
        let mut table = self.lock();
        // A socket takes one control message in its life: the first ends it.
        match table.held.remove(&control.session_id) {
            Some(sender) => {
                if sender.send(control).is_err() {
                    tracing::debug!("socket already closing, control message dropped");
                }
            }
            None => table.keep_unclaimed(control, Instant::now()),
        }
    }
}

impl Table {
    /// Keeps `control` for a socket that may be held soon (or was here and
    /// left, or never was: it then expires unclaimed).
    fn keep_unclaimed(&mut self, control: SessionControl, now: Instant) {
        if self.unclaimed.len() >= MAX_UNCLAIMED {
            self.unclaimed
                .retain(|_, (at, _)| now.duration_since(*at) < UNCLAIMED_FOR);
        }
        if self.unclaimed.len() >= MAX_UNCLAIMED {
            tracing::warn!(session_id = %control.session_id, "control for a socket not held here dropped: too many waiting");
            return;
        }
        tracing::debug!(session_id = %control.session_id, "control for a socket not held here (yet)");
        self.unclaimed
            .entry(control.session_id.clone())
            .or_insert((now, control));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn control(session_id: &str) -> SessionControl {
        SessionControl {
            session_id: session_id.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn a_control_reaches_a_socket_held_before_or_after_it() {
        let sockets = Arc::new(Sockets::default());
        let (_held, mut early) = sockets.hold("s1");
        sockets.deliver(control("s1"));
        assert_eq!(early.try_recv().unwrap().session_id, "s1");

        // The control overtook the socket: it is there when it is held.
        sockets.deliver(control("s2"));
        assert_eq!(sockets.len(), 0);
        let (_held, mut late) = sockets.hold("s2");
        assert_eq!(late.try_recv().unwrap().session_id, "s2");
        // Taken once: the next socket of that id starts clean.
        let (_held, mut again) = sockets.hold("s2");
        assert!(again.try_recv().is_err());
    }

    #[test]
    fn unclaimed_controls_expire_and_are_bounded() {
        let sockets = Arc::new(Sockets::default());
        let long_ago = Instant::now()
            .checked_sub(UNCLAIMED_FOR + Duration::from_secs(1))
            .expect("the clock is past the window");
        sockets.lock().keep_unclaimed(control("old"), long_ago);
        let (_held, mut old) = sockets.hold("old");
        assert!(
            old.try_recv().is_err(),
            "an expired control is not handed on"
        );

        let now = Instant::now();
        for n in 0..MAX_UNCLAIMED {
            sockets
                .lock()
                .keep_unclaimed(control(&format!("s{n}")), now);
        }
        sockets.deliver(control("one-too-many"));
        let (_held, mut dropped) = sockets.hold("one-too-many");
        assert!(dropped.try_recv().is_err(), "past the bound it is dropped");

        // Expired ones make room.
        let table = &mut *sockets.lock();
        table.unclaimed.clear();
        for n in 0..MAX_UNCLAIMED {
            table.keep_unclaimed(control(&format!("s{n}")), long_ago);
        }
        table.keep_unclaimed(control("fresh"), now);
        assert_eq!(table.unclaimed.len(), 1);
        assert!(table.unclaimed.contains_key("fresh"));
    }
}
