//! Positions and resume for the hubs (`/ws/ui`, `/api/ws/statistics`).
//!
//! Every hub message a client gets carries `"offset"` (its number in the
//! hub's history, see [`switchboard_bus::history`]) and `"epoch"` (which
//! changes only when that numbering starts over). A client that reconnects
//! — to any edge — passes the last position it saw, as `?epoch=E&offset=N`
//! on the URL or as `{"type": "resume", "epoch", "offset"}`, and gets
//! every kept message after N it may read, in order, then one `resumed`
//! message, then live ones.
//!
//! The seam: the connection joins the hub first (live messages queue up),
//! then reads the history up to its newest offset L, and drops queued live
//! messages numbered L or less; those after L were queued. So nothing is
//! lost or repeated between history and live. A client resuming with a
//! message after live ones arrived gets only what came before the first
//! live one.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Value, json};
use switchboard_bus::History;
use switchboard_bus::history::Kept;

use crate::connection::{Conn, Flow, Transport};
use crate::error::ClientError;
use crate::times::rfc3339_millis;

/// Longest epoch a client may pass.
const MAX_EPOCH_BYTES: usize = 64;
/// Largest offset a client may pass: every JavaScript number up to it is
/// an exact integer.
const MAX_OFFSET: u64 = (1 << 53) - 1;

/// A position in a hub's history, as a client passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

fn bad(reason: &str) -> ClientError {
    ClientError::InvalidMessage(format!(
        "{reason}; resume with the \"epoch\" (a string) and \"offset\" (a whole number from 0) \
         of the last message you got"
    ))
}

fn epoch(epoch: &str) -> Result<String, ClientError> {
    if epoch.is_empty() || epoch.len() > MAX_EPOCH_BYTES {
        return Err(bad("epoch must be 1 to 64 bytes"));
    }
    Ok(epoch.to_owned())
}

fn offset(offset: u64) -> Result<u64, ClientError> {
    if offset > MAX_OFFSET {
        return Err(bad("offset is too large"));
    }
    Ok(offset)
}

impl Position {
    /// The position a URL's query asks to resume from: `None` without
    /// `epoch` and `offset`.
    pub fn from_query(query: &HashMap<String, String>) -> Option<Result<Self, ClientError>> {
        match (query.get("epoch"), query.get("offset")) {
            (None, None) => None,
            (Some(given), Some(number)) => Some((|| {
                let number = number
                    .parse::<u64>()
                    .map_err(|_| bad("offset must be a whole number from 0"))?;
                Ok(Position {
                    epoch: epoch(given)?,
                    offset: offset(number)?,
                })
            })()),
            _ => Some(Err(bad("epoch and offset go together"))),
        }
    }

    /// The position a `{"type": "resume", "epoch", "offset"}` message asks
    /// for.
    pub fn from_message(message: &Value) -> Result<Self, ClientError> {
        let given = match message.get("epoch") {
            Some(Value::String(given)) => epoch(given)?,
            Some(Value::Number(number)) => epoch(&number.to_string())?,
            _ => return Err(bad("epoch is missing or not a string")),
        };
        let number = message
            .get("offset")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("offset must be a whole number from 0"))?;
        Ok(Position {
            epoch: given,
            offset: offset(number)?,
        })
    }
}

/// A hub message's bytes with its position added (at the end, so it wins
/// over a field of the same name a publisher put in).
pub fn stamped(payload: &[u8], offset: u64, epoch: &str) -> Bytes {
    let text = payload.trim_ascii_end();
    let Some(body) = text.strip_suffix(b"}") else {
        return Bytes::copy_from_slice(payload);
    };
    let empty = body.trim_ascii() == b"{";
    let position = format!(
        "{}\"offset\":{offset},\"epoch\":{}}}",
        if empty { "" } else { "," },
        Value::String(epoch.to_owned())
    );
    let mut bytes = Vec::with_capacity(body.len() + position.len());
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(position.as_bytes());
    Bytes::from(bytes)
}

/// Where a connection is in its hub: what it was last handed, and where
/// live messages started for it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    /// The newest offset handed to the client (or skipped for it).
    pub last: u64,
    /// The first live message's offset, once one was handed.
    pub first_live: Option<u64>,
}

impl Seen {
    /// Whether a live message numbered `offset` is to be handed on (it
    /// was not replayed already); notes it when so.
    pub fn take_live(&mut self, offset: u64) -> bool {
        if offset <= self.last {
            return false;
        }
        self.last = offset;
        self.first_live.get_or_insert(offset);
        true
    }
}

/// Sends a hub connection's `welcome`, then, when its URL asked to resume
/// (`requested`), replays from there ([`resume`]), or says why the position
/// is refused.
pub async fn welcome<T: Transport>(
    welcome: &Value,
    requested: Option<Result<Position, ClientError>>,
    history: &History,
    seen: &mut Seen,
    admits: impl Fn(&Kept) -> bool,
    conn: &mut Conn<'_, T>,
) -> Flow {
    if conn.send(welcome).await.is_err() {
        return Flow::Gone;
    }
    match requested {
        None => Flow::Continue,
        Some(Ok(from)) => {
            // A resume replays from the client's position, not the hub's.
            seen.last = 0;
            resume(history, &from, seen, admits, conn).await
        }
        Some(Err(error)) => conn.send(&super::error_message(&error)).await.into(),
    }
}

/// Replays to the client what `history` kept after `from` that `admits`
/// lets it read, then says `resumed`. `recovered: false`, with the reason,
/// when the epoch changed or the messages after `from` are no longer all
/// kept: the client should then refetch the state it shows.
pub async fn resume<T: Transport>(
    history: &History,
    from: &Position,
    seen: &mut Seen,
    admits: impl Fn(&Kept) -> bool,
    conn: &mut Conn<'_, T>,
) -> Flow {
    let unrecovered = |reason: &str, epoch: &str, offset: u64| {
        json!({
            "type": "resumed",
            "recovered": false,
            "reason": reason,
            "missed": 0,
            "epoch": epoch,
            "offset": offset,
            "timestamp": rfc3339_millis(),
        })
    };
    let window = match history.window().await {
        Ok(window) => window,
        Err(error) => {
            tracing::warn!(%error, "history not readable for a resume");
            let reason = "the history cannot be read now; refetch state";
            let unread = unrecovered(reason, history.epoch(), seen.last);
            return conn.send(&unread).await.into();
        }
    };
    // The epoch as the history says now, not as this edge read it when it
    // started: a stream made anew since is a lost history.
    let current_epoch = window.epoch.clone();
    let unrecovered = |reason: &str, offset: u64| unrecovered(reason, &current_epoch, offset);
    if from.epoch != current_epoch {
        let reason = "the epoch changed: the history was lost; refetch state";
        return conn.send(&unrecovered(reason, window.last)).await.into();
    }
    if from.offset > window.last {
        let reason = "the offset is ahead of the history";
        return conn.send(&unrecovered(reason, window.last)).await.into();
    }
    if from.offset + 1 < window.first {
        let reason = "messages after the offset are older than the history keeps; refetch state";
        return conn.send(&unrecovered(reason, window.last)).await.into();
    }
    // Live messages already handed to the client are not replayed.
    let through = seen.first_live.map_or(window.last, |first| {
        first.saturating_sub(1).min(window.last)
    });
    let kept = match history.read(from.offset, through).await {
        Ok(kept) => kept,
        Err(error) => {
            tracing::warn!(%error, "history not read for a resume");
            let reason = "the history cannot be read now; refetch state";
            return conn.send(&unrecovered(reason, seen.last)).await.into();
        }
    };
    // Offsets are consecutive: fewer than asked means some were trimmed.
    let complete = kept.len() as u64 == through.saturating_sub(from.offset);
    let mut missed = 0u64;
    for message in kept.iter().filter(|message| admits(message)) {
        let payload = stamped(&message.payload, message.offset, &current_epoch);
        if conn.send_shared(payload).await.is_err() {
            return Flow::Gone;
        }
        missed += 1;
    }
    seen.last = seen.last.max(through);
    let resumed = json!({
        "type": "resumed",
        "recovered": complete,
        "missed": missed,
        "epoch": current_epoch,
        "offset": seen.last,
        "timestamp": rfc3339_millis(),
    });
    conn.send(&resumed).await.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn positions_are_stamped_at_the_end_of_the_object() {
        let stamped = stamped(br#"{"type":"event","offset":"mine"}"#, 7, "123");
        assert_eq!(
            &stamped[..],
            br#"{"type":"event","offset":"mine","offset":7,"epoch":"123"}"#
        );
        let value: Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(value["offset"], 7, "the position wins");
        assert_eq!(
            &super::stamped(b"{}", 1, "e")[..],
            br#"{"offset":1,"epoch":"e"}"#
        );
        assert_eq!(&super::stamped(b"[1]", 1, "e")[..], b"[1]");
    }

    #[test]
    fn positions_are_checked_wherever_they_come_from() {
        assert!(Position::from_query(&query(&[])).is_none());
        assert_eq!(
            Position::from_query(&query(&[("epoch", "e1"), ("offset", "5")]))
                .unwrap()
                .unwrap(),
            Position {
                epoch: "e1".into(),
                offset: 5
            }
        );
        for bad in [
            query(&[("epoch", "e1")]),
            query(&[("epoch", "e1"), ("offset", "-1")]),
            query(&[("epoch", "e1"), ("offset", "1.5")]),
            query(&[("epoch", "e1"), ("offset", "99999999999999999999")]),
            query(&[("epoch", "e1"), ("offset", "9007199254740993")]),
            query(&[("epoch", ""), ("offset", "1")]),
        ] {
            assert!(Position::from_query(&bad).unwrap().is_err(), "{bad:?}");
        }
        let good = serde_json::json!({"type": "resume", "epoch": "e", "offset": 3});
        assert_eq!(Position::from_message(&good).unwrap().offset, 3);
        for bad in [
            serde_json::json!({"type": "resume", "offset": 3}),
            serde_json::json!({"type": "resume", "epoch": "e", "offset": -3}),
            serde_json::json!({"type": "resume", "epoch": "e", "offset": "3"}),
            serde_json::json!({"type": "resume", "epoch": ["e"], "offset": 3}),
            serde_json::json!({"type": "resume", "epoch": "e".repeat(65), "offset": 3}),
        ] {
            let error = Position::from_message(&bad).unwrap_err();
            assert!(error.to_string().contains("resume with"), "{error}");
        }
    }

    #[test]
    fn live_messages_replayed_already_are_skipped() {
        let mut seen = Seen {
            last: 10,
            first_live: None,
        };
        assert!(!seen.take_live(9) && !seen.take_live(10));
        assert!(seen.take_live(11));
        assert_eq!(seen.first_live, Some(11));
        assert!(!seen.take_live(11));
    }
}
