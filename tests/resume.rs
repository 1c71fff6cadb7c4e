//! Nothing lost across reconnects: `/ws/ui` and statistics-stream clients
//! that reconnect to *another* edge with their last position get exactly
//! the messages broadcast meanwhile, in order, then live ones — after a
//! clean disconnect, after their edge was killed (`kill -9`) mid-broadcast,
//! and after `nats-server` restarted on its store. Two edges over a real
//! `nats-server -js`; every message carries a sequence number `n` in its
//! payload, and the tests check the numbers each client got.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use support::{Client, Nats, Switchboard, WAIT, eventually};

const SECRET: &str = "switchboard-resume-test-secret-0123456789";

fn token(user: &str) -> String {
    support::tokens::user_token(SECRET, user)
}

fn admin() -> String {
    support::tokens::admin_token(SECRET)
}

fn node(nats: &Nats, extra: &[&str]) -> Switchboard {
    let mut args = vec!["--jwt-secret", SECRET];
    args.extend(extra);
    Switchboard::all(Some(nats), &args)
}

/// POSTs as an admin; the status.
async fn post(url: String, body: Value) -> u16 {
    let request = reqwest::Client::new()
        .post(url)
        .bearer_auth(admin())
        .json(&body)
        .send();
    match tokio::time::timeout(WAIT, request).await {
        Ok(Ok(response)) => response.status().as_u16(),
        _ => 0,
    }
}

/// Broadcasts message `n` on every channel the tests watch, through
/// `node`: a UI event, a statistics broadcast, a message to ada and one
/// to bob. Retries until accepted (NATS may be coming back).
async fn broadcast(node: &Switchboard, n: u64) {
    broadcast_through(&node.http(), n).await;
}

async fn broadcast_through(base: &str, n: u64) {
    let sends = [
        (
            format!("{base}/api/events/broadcast"),
            json!({"event_type": "tick", "data": {"n": n}}),
        ),
        (
            format!("{base}/api/ws/statistics/broadcast"),
            json!({"type": "camera_event", "n": n}),
        ),
        (
            format!("{base}/api/ws/statistics/users/ada/messages"),
            json!({"type": "note", "n": n}),
        ),
        (
            format!("{base}/api/ws/statistics/users/bob/messages"),
            json!({"type": "note", "n": n, "secret": "bob's"}),
        ),
    ];
    for (url, body) in sends {
        eventually("a broadcast accepted", || {
            let (url, body) = (url.clone(), body.clone());
            async move { (post(url, body).await == 202).then_some(()) }
        })
        .await;
    }
}

/// What a client watching one hub collected: the `n` of each test message,
/// in arrival order, and the last position it saw.
#[derive(Debug, Default)]
struct Seen {
    numbers: Vec<u64>,
    epoch: String,
    offset: u64,
}

impl Seen {
    /// Notes a message's position (every hub message carries one) and, if
    /// it is one of the test's, its number.
    fn note(&mut self, message: &Value, wanted: &dyn Fn(&Value) -> Option<u64>) {
        if let (Some(epoch), Some(offset)) = (message["epoch"].as_str(), message["offset"].as_u64())
        {
            if message["type"] != "resumed" {
                assert!(
                    offset > self.offset || self.epoch != epoch,
                    "offsets only grow: {offset} after {}: {message}",
                    self.offset
                );
            }
            self.epoch = epoch.to_owned();
            self.offset = offset;
        }
        if let Some(n) = wanted(message) {
            self.numbers.push(n);
        }
    }
}

fn ui_tick(message: &Value) -> Option<u64> {
    (message["type"] == "event" && message["event_type"] == "tick")
        .then(|| message["data"]["n"].as_u64())
        .flatten()
}

/// Ada's statistics messages: broadcasts as `1000 + n`, personal as `n`.
fn ada_message(message: &Value) -> Option<u64> {
    assert_ne!(message["secret"], "bob's", "ada got bob's message");
    match message["type"].as_str() {
        Some("camera_event") => message["n"].as_u64().map(|n| 1000 + n),
        Some("note") => message["n"].as_u64(),
        _ => None,
    }
}

/// Reads `client` until `done` says so, noting everything; `resumed` is
/// returned when one arrives.
async fn read_until(
    client: &mut Client,
    seen: &mut Seen,
    wanted: &dyn Fn(&Value) -> Option<u64>,
    done: impl Fn(&Seen) -> bool,
) -> Option<Value> {
    let mut resumed = None;
    while !done(seen) {
        let message = client.recv_json().await;
        if message["type"] == "resumed" {
            resumed = Some(message.clone());
        }
        seen.note(&message, wanted);
    }
    resumed
}

fn has_all(numbers: &[u64], range: std::ops::RangeInclusive<u64>) -> bool {
    let got: BTreeSet<u64> = numbers.iter().copied().collect();
    range.into_iter().all(|n| got.contains(&n))
}

/// Every number in `range`, each exactly once, in order.
fn exactly(numbers: &[u64], range: std::ops::RangeInclusive<u64>, who: &str) {
    let expected: Vec<u64> = range.collect();
    assert_eq!(numbers, expected, "{who}: lost, repeated or out of order");
}

/// Splits ada's numbers into broadcasts and personal messages.
fn ada_split(numbers: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let broadcasts = numbers
        .iter()
        .filter(|n| **n > 1000)
        .map(|n| n - 1000)
        .collect();
    let personal = numbers.iter().copied().filter(|n| *n < 1000).collect();
    (broadcasts, personal)
}

async fn ui_client(node: &Switchboard, position: Option<&Seen>) -> Client {
    let path = match position {
        Some(seen) => format!("/ws/ui?epoch={}&offset={}", seen.epoch, seen.offset),
        None => "/ws/ui".to_owned(),
    };
    Client::connect(&node.ws(&path)).await
}

async fn ada_client(node: &Switchboard, position: Option<&Seen>) -> Client {
    let mut path = format!("/api/ws/statistics?token={}", token("ada"));
    if let Some(seen) = position {
        path.push_str(&format!("&epoch={}&offset={}", seen.epoch, seen.offset));
    }
    Client::connect(&node.ws(&path)).await
}

/// Both clients, connected to `node`, having seen numbers up to `through`.
async fn watch(node: &Switchboard, through: u64) -> (Client, Seen, Client, Seen) {
    let (mut ui, mut ui_seen) = (ui_client(node, None).await, Seen::default());
    let (mut ada, mut ada_seen) = (ada_client(node, None).await, Seen::default());
    // The welcome carries the position to resume from.
    let welcome = ui.expect("connection").await;
    assert!(welcome["epoch"].is_string() && welcome["offset"].is_u64());
    ui_seen.note(&welcome, &ui_tick);
    let welcome = ada.expect("connection_status").await;
    assert!(welcome["epoch"].is_string() && welcome["offset"].is_u64());
    ada_seen.note(&welcome, &ada_message);
    for n in 1..=through {
        broadcast(node, n).await;
    }
    read_until(&mut ui, &mut ui_seen, &ui_tick, |seen| {
        has_all(&seen.numbers, 1..=through)
    })
    .await;
    read_until(&mut ada, &mut ada_seen, &ada_message, |seen| {
        let (broadcasts, personal) = ada_split(&seen.numbers);
        has_all(&broadcasts, 1..=through) && has_all(&personal, 1..=through)
    })
    .await;
    (ui, ui_seen, ada, ada_seen)
}

/// Reads until the `resumed` message, noting the replayed ones.
async fn read_resumed(
    client: &mut Client,
    seen: &mut Seen,
    wanted: &dyn Fn(&Value) -> Option<u64>,
) -> Value {
    loop {
        let message = client.recv_json().await;
        if message["type"] == "resumed" {
            return message;
        }
        seen.note(&message, wanted);
    }
}

/// Reconnects both clients to `node` with their positions; they must
/// recover. Then broadcasts `live` there, and checks that across both
/// connections each client got every number from 1 to the last, once, in
/// order.
async fn resume_and_check(
    node: &Switchboard,
    mut ui_seen: Seen,
    mut ada_seen: Seen,
    broadcasting: Option<tokio::task::JoinHandle<()>>,
    live: std::ops::RangeInclusive<u64>,
) {
    let mut ui = ui_client(node, Some(&ui_seen)).await;
    let mut ada = ada_client(node, Some(&ada_seen)).await;
    ui.expect("connection").await;
    ada.expect("connection_status").await;
    let resumed = read_resumed(&mut ui, &mut ui_seen, &ui_tick).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["offset"], ui_seen.offset, "{resumed}");
    let resumed = read_resumed(&mut ada, &mut ada_seen, &ada_message).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert!(resumed["missed"].as_u64().unwrap() > 0, "{resumed}");
    // Broadcasts that went on during the resume finish.
    if let Some(broadcasting) = broadcasting {
        tokio::time::timeout(WAIT * 3, broadcasting)
            .await
            .expect("the broadcasts finish")
            .unwrap();
    }

    let last = *live.end();
    for n in live {
        broadcast(node, n).await;
    }
    read_until(&mut ui, &mut ui_seen, &ui_tick, |seen| {
        seen.numbers.last() == Some(&last)
    })
    .await;
    read_until(&mut ada, &mut ada_seen, &ada_message, |seen| {
        let (broadcasts, personal) = ada_split(&seen.numbers);
        broadcasts.last() == Some(&last) && personal.last() == Some(&last)
    })
    .await;
    exactly(&ui_seen.numbers, 1..=last, "/ws/ui");
    let (broadcasts, personal) = ada_split(&ada_seen.numbers);
    exactly(&broadcasts, 1..=last, "statistics broadcasts");
    exactly(&personal, 1..=last, "ada's messages");
}

#[tokio::test]
async fn clients_resume_on_the_other_edge_with_exactly_what_they_missed() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let (ui, ui_seen, ada, ada_seen) = watch(&a, 5).await;
    drop((ui, ada));
    // Broadcasts go on from the other edge while they are away.
    for n in 6..=15 {
        broadcast(&b, n).await;
    }
    resume_and_check(&b, ui_seen, ada_seen, None, 16..=20).await;
}

#[tokio::test]
async fn clients_of_a_killed_edge_resume_on_the_other_without_a_gap() {
    let nats = Nats::start();
    let mut a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let (mut ui, mut ui_seen, mut ada, mut ada_seen) = watch(&a, 3).await;
    // Broadcasts go on from b, steadily, while a is killed under them.
    let sent = Arc::new(AtomicU64::new(3));
    let broadcaster = {
        let sent = Arc::clone(&sent);
        let b_http = b.http();
        tokio::spawn(async move {
            for n in 4..=100 {
                broadcast_through(&b_http, n).await;
                sent.store(n, Ordering::SeqCst);
            }
        })
    };
    eventually("some broadcasts after the start", || {
        let sent = sent.load(Ordering::SeqCst);
        async move { (sent >= 10).then_some(()) }
    })
    .await;
    a.kill();
    // What reached the clients before the kill, up to the socket's end.
    while let Some(message) = ui.next_json().await {
        ui_seen.note(&message, &ui_tick);
    }
    while let Some(message) = ada.next_json().await {
        ada_seen.note(&message, &ada_message);
    }
    // At least one message for ada is stored after the last she saw, so
    // her resume has something to replay (on a busy machine the
    // broadcaster could otherwise still be behind when she resumes).
    let last_seen = ada_split(&ada_seen.numbers)
        .1
        .into_iter()
        .max()
        .unwrap_or(0);
    eventually("a message for ada after the kill", || {
        let sent = sent.load(Ordering::SeqCst);
        async move { (sent > last_seen).then_some(()) }
    })
    .await;
    // They resume on b while the broadcasts go on: the seam between
    // history and live is crossed under load.
    resume_and_check(&b, ui_seen, ada_seen, Some(broadcaster), 101..=105).await;
}

#[tokio::test]
async fn clients_resume_after_nats_restarted_on_its_store() {
    let mut nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let (ui, ui_seen, ada, ada_seen) = watch(&a, 5).await;
    drop((ui, ada));
    nats.restart();
    // Broadcasts are refused until the edge is back on NATS, then kept.
    for n in 6..=12 {
        broadcast(&b, n).await;
    }
    resume_and_check(&b, ui_seen, ada_seen, None, 13..=16).await;
}

#[tokio::test]
async fn resumes_that_cannot_recover_say_so_and_bad_ones_get_an_error() {
    let nats = Nats::start();
    let a = node(&nats, &["--history-messages", "5"]);
    let mut ui = ui_client(&a, None).await;
    let welcome = ui.expect("connection").await;
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    let offset = welcome["offset"].as_u64().unwrap();
    for n in 1..=10 {
        broadcast(&a, n).await;
    }
    // Beyond the window: ten were sent, five are kept.
    let mut late = Client::connect(&a.ws(&format!("/ws/ui?epoch={epoch}&offset={offset}"))).await;
    late.expect("connection").await;
    let resumed = late.expect("resumed").await;
    assert_eq!(resumed["recovered"], false, "{resumed}");
    assert!(
        resumed["reason"].as_str().unwrap().contains("older"),
        "{resumed}"
    );
    assert_eq!(resumed["epoch"], epoch.as_str());
    // A stale epoch, as after the history was lost.
    let stale = json!({"type": "resume", "epoch": "1", "offset": 1});
    let resumed = late.call(stale, "resumed").await;
    assert_eq!(resumed["recovered"], false);
    assert!(
        resumed["reason"].as_str().unwrap().contains("epoch"),
        "{resumed}"
    );
    // An offset ahead of the history.
    let ahead = json!({"type": "resume", "epoch": epoch, "offset": 1_000_000});
    let resumed = late.call(ahead, "resumed").await;
    assert_eq!(resumed["recovered"], false);
    assert!(
        resumed["reason"].as_str().unwrap().contains("ahead"),
        "{resumed}"
    );
    // Malformed: an error, and the connection stays up.
    for bad in [
        json!({"type": "resume", "epoch": epoch, "offset": -1}),
        json!({"type": "resume", "epoch": epoch, "offset": "3"}),
        json!({"type": "resume", "epoch": epoch, "offset": 1e300}),
        json!({"type": "resume", "offset": 3}),
        json!({"type": "resume", "epoch": {"x": 1}, "offset": 3}),
    ] {
        let error = late.call(bad.clone(), "error").await;
        assert!(
            error["message"].as_str().unwrap().contains("resume with"),
            "{bad}: {error}"
        );
    }
    let mut malformed = Client::connect(&a.ws("/ws/ui?epoch=x&offset=-5")).await;
    malformed.expect("connection").await;
    malformed.expect("error").await;
    assert_eq!(
        malformed.call(json!({"type": "ping"}), "pong").await["type"],
        "pong"
    );
    // Within the window, from the position of the 8th: 9 and 10 only.
    let history = {
        let mut fresh = Seen::default();
        let position = format!("/ws/ui?epoch={epoch}&offset={}", offset + 7);
        let mut client = Client::connect(&a.ws(&position)).await;
        client.expect("connection").await;
        let resumed = read_resumed(&mut client, &mut fresh, &ui_tick).await;
        assert_eq!(resumed["recovered"], true, "{resumed}");
        fresh.numbers
    };
    // System events may be among the kept; the ticks are 8, 9, 10 or a
    // suffix of them, once each, in order.
    assert!(
        history.ends_with(&[9, 10]) || history.ends_with(&[10]),
        "{history:?}"
    );

    // A statistics client never resumes into another user's messages.
    let mut bob = Client::connect(&a.ws(&format!(
        "/api/ws/statistics?token={}&epoch={}&offset=0",
        token("bob"),
        "0"
    )))
    .await;
    bob.expect("connection_status").await;
    let resumed = bob.expect("resumed").await;
    assert_eq!(resumed["recovered"], false);
    let stream_epoch = resumed["epoch"].as_str().unwrap().to_owned();
    let last = resumed["offset"].as_u64().unwrap();
    let from = last.saturating_sub(4);
    let mut bob = Client::connect(&a.ws(&format!(
        "/api/ws/statistics?token={}&epoch={stream_epoch}&offset={from}",
        token("bob"),
    )))
    .await;
    bob.expect("connection_status").await;
    let mut own = 0;
    loop {
        let message = bob.recv_json().await;
        if message["type"] == "resumed" {
            assert_eq!(message["recovered"], true, "{message}");
            break;
        }
        if message["type"] == "note" {
            assert_eq!(
                message["secret"], "bob's",
                "bob got ada's message: {message}"
            );
            own += 1;
        }
    }
    assert!(own >= 1, "bob's own kept message is replayed");
}
