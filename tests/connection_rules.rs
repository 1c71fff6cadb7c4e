//! Every WebSocket endpoint keeps the same rules, because one connection
//! driver runs them all: one table of endpoints, one test per rule, each
//! run against every endpoint.
//!
//! - a message over the size limit closes with 1009 and one wording;
//! - a client's Close is answered with the client's own code (RFC 6455
//!   section 5.5.1), not dropped (which a client sees as 1006);
//! - a binary frame gets the endpoint's `error` (`unsupported_message`) and
//!   the connection goes on;
//! - a text frame that is not UTF-8 closes with 1007, any other protocol
//!   violation (a reserved bit) with 1002;
//! - a drain closes every socket with 1012 and one wording;
//! - where a token is required or offered, a bad one closes with 1008;
//! - where a rate limit applies, a flood closes with 1008 and one wording,
//!   and protocol-level pings never count toward it.

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Switchboard, WAIT};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Bytes, Message};

const SECRET: &str = "connection-rules-secret-0123456789abcdef";
const LIMIT: usize = 1024;
const RATE: u32 = 5;

fn token(sub: &str) -> String {
    support::tokens::user_token(SECRET, sub)
}

/// One endpoint, as a client meets it.
struct Endpoint {
    name: &'static str,
    /// The path for user `user` (who holds a valid token where it matters).
    path: fn(&str) -> String,
    /// The type of the message the server sends on open, if any.
    welcome: Option<&'static str>,
    /// A message the endpoint answers, and the answer's type.
    request: fn() -> Value,
    reply: &'static str,
    /// The path with a bad token, where the endpoint takes tokens.
    bad_token: Option<&'static str>,
    /// Whether the endpoint limits its message rate.
    rate_limited: bool,
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            name: "realtime",
            path: |_| "/ws/realtime".into(),
            welcome: Some("session_started"),
            request: || json!({"x": 0.1, "y": 9.8, "z": 0.3}),
            reply: "step_detection",
            bad_token: Some("/ws/realtime?token=garbage"),
            rate_limited: false,
        },
        Endpoint {
            name: "alerts",
            path: |user| format!("/ws/alerts/{user}?token={}", token(user)),
            welcome: Some("connected"),
            request: || json!({"type": "ping"}),
            reply: "pong",
            bad_token: Some("/ws/alerts/u1?token=garbage"),
            rate_limited: true,
        },
        Endpoint {
            name: "pressure",
            path: |_| "/ws/pressure".into(),
            welcome: None,
            request: || json!({"action": "join_session", "workout_id": "w1"}),
            reply: "session_joined",
            bad_token: Some("/ws/pressure?token=garbage"),
            rate_limited: false,
        },
        Endpoint {
            name: "ui",
            path: |_| "/ws/ui".into(),
            welcome: Some("connection"),
            request: || json!({"type": "ping"}),
            reply: "pong",
            bad_token: None,
            rate_limited: false,
        },
        Endpoint {
            name: "statistics",
            path: |user| format!("/api/ws/statistics?token={}", token(user)),
            welcome: Some("connection_status"),
            request: || json!({"type": "ping"}),
            reply: "pong",
            bad_token: Some("/api/ws/statistics?token=garbage"),
            rate_limited: true,
        },
    ]
}

fn node() -> Switchboard {
    let rate = RATE.to_string();
    let limit = LIMIT.to_string();
    Switchboard::all_with_env(
        None,
        &[
            "--max-message-bytes",
            &limit,
            "--alerts-rate-limit",
            &rate,
            "--statistics-rate-limit",
            &rate,
        ],
        &[("SWITCHBOARD_JWT_SECRET", SECRET)],
    )
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw client: frames as sent, close frames as received.
struct Raw {
    socket: Socket,
    endpoint: &'static str,
}

/// How the server ended a connection, as the client saw it.
#[derive(Debug, PartialEq)]
struct Closed {
    code: u16,
    reason: String,
}

impl Raw {
    async fn open(node: &Switchboard, endpoint: &Endpoint, user: &str) -> Self {
        let url = node.ws(&(endpoint.path)(user));
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connects in time")
            .expect("connects");
        let mut raw = Self {
            socket,
            endpoint: endpoint.name,
        };
        if let Some(welcome) = endpoint.welcome {
            raw.expect(welcome).await;
        }
        raw
    }

    async fn send(&mut self, message: Message) {
        tokio::time::timeout(WAIT, self.socket.send(message))
            .await
            .expect("sends in time")
            .unwrap_or_else(|error| panic!("{}: send failed: {error}", self.endpoint));
    }

    /// The next JSON message.
    async fn next_json(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no message in time", self.endpoint))
                .unwrap_or_else(|| panic!("{}: socket ended", self.endpoint))
                .unwrap_or_else(|error| panic!("{}: socket failed: {error}", self.endpoint));
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Close(frame) => panic!("{}: closed: {frame:?}", self.endpoint),
                _ => continue,
            }
        }
    }

    /// The next message of type `kind`, past what the server sends on its
    /// own (the hubs' broadcasts and system events, the alerts ping).
    async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let message = self.next_json().await;
            let unasked = ["event", "statistics_update", "ping"]
                .contains(&message["type"].as_str().unwrap_or_default());
            if message["type"] == kind || !unasked {
                assert_eq!(message["type"], kind, "{}: {message}", self.endpoint);
                return message;
            }
        }
    }

    /// The server's close frame (skipping other messages); 1006 when the
    /// connection dropped without one.
    async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(WAIT, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{}: not closed in time", self.endpoint))
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    };
                }
                Some(Ok(Message::Close(None))) => {
                    return Closed {
                        code: 1005,
                        reason: String::new(),
                    };
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => {
                    return Closed {
                        code: 1006,
                        reason: String::new(),
                    };
                }
            }
        }
    }
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009_everywhere() {
    let node = node();
    for endpoint in endpoints() {
        let mut client = Raw::open(&node, &endpoint, "u-big").await;
        client.send(Message::text("x".repeat(LIMIT + 1))).await;
        assert_eq!(
            client.closed().await,
            Closed {
                code: 1009,
                reason: format!("message too big: the limit is {LIMIT} bytes")
            },
            "{}",
            endpoint.name
        );
    }
}

#[tokio::test]
async fn a_clients_close_is_answered_with_its_own_code_everywhere() {
    let node = node();
    for endpoint in endpoints() {
        let mut client = Raw::open(&node, &endpoint, "u-close").await;
        let frame = CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        };
        client.send(Message::Close(Some(frame))).await;
        assert_eq!(
            client.closed().await,
            Closed {
                code: 4001,
                reason: "bye".into()
            },
            "{}: the server must answer, not drop",
            endpoint.name
        );
    }
}

#[tokio::test]
async fn a_binary_frame_gets_an_error_and_the_connection_goes_on_everywhere() {
    let node = node();
    for endpoint in endpoints() {
        let mut client = Raw::open(&node, &endpoint, "u-binary").await;
        client.send(Message::binary(vec![1, 2, 3])).await;
        let error = client.expect("error").await;
        assert_eq!(
            error["code"], "unsupported_message",
            "{}: {error}",
            endpoint.name
        );
        client
            .send(Message::text((endpoint.request)().to_string()))
            .await;
        client.expect(endpoint.reply).await;
    }
}

#[tokio::test]
async fn protocol_violations_close_with_1007_or_1002_everywhere() {
    let node = node();
    for endpoint in endpoints() {
        let mut client = Raw::open(&node, &endpoint, "u-utf8").await;
        let not_utf8 = Frame::message(
            Bytes::from_static(&[0x66, 0xff, 0xfe]),
            OpCode::Data(Data::Text),
            true,
        );
        client.send(Message::Frame(not_utf8)).await;
        assert_eq!(client.closed().await.code, 1007, "{}", endpoint.name);

        let mut client = Raw::open(&node, &endpoint, "u-rsv").await;
        let mut reserved =
            Frame::message(Bytes::from_static(b"{}"), OpCode::Data(Data::Text), true);
        reserved.header_mut().rsv1 = true;
        client.send(Message::Frame(reserved)).await;
        assert_eq!(client.closed().await.code, 1002, "{}", endpoint.name);
    }
}

#[tokio::test]
async fn a_bad_token_closes_with_1008_where_tokens_are_taken() {
    let node = node();
    for endpoint in endpoints() {
        let Some(path) = endpoint.bad_token else {
            continue;
        };
        let (mut socket, _) = tokio_tungstenite::connect_async(node.ws(path))
            .await
            .expect("the upgrade succeeds; the refusal is a close");
        let closed = loop {
            match tokio::time::timeout(WAIT, socket.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("{}: {other:?}", endpoint.name),
            }
        };
        assert_eq!(u16::from(closed.code), 1008, "{}", endpoint.name);
        assert_eq!(closed.reason, "malformed token", "{}", endpoint.name);
    }
}

#[tokio::test]
async fn a_flood_closes_with_1008_where_rates_are_limited_and_pings_never_count() {
    let node = node();
    for endpoint in endpoints()
        .into_iter()
        .filter(|endpoint| endpoint.rate_limited)
    {
        // Protocol pings, many more than the limit allows messages: fine.
        let mut client = Raw::open(&node, &endpoint, "u-pings").await;
        for _ in 0..(RATE * 10) {
            client.send(Message::Ping(Bytes::from_static(b"k"))).await;
        }
        client
            .send(Message::text((endpoint.request)().to_string()))
            .await;
        client.expect(endpoint.reply).await;

        let mut client = Raw::open(&node, &endpoint, "u-flood").await;
        for _ in 0..(RATE * 10) {
            client
                .send(Message::text((endpoint.request)().to_string()))
                .await;
        }
        assert_eq!(
            client.closed().await,
            Closed {
                code: 1008,
                reason: format!("rate limit exceeded: at most {RATE} messages per second")
            },
            "{}",
            endpoint.name
        );
    }
}

#[tokio::test]
async fn a_drain_closes_every_endpoint_with_1012() {
    let node = node();
    let mut clients = Vec::new();
    for endpoint in endpoints() {
        clients.push(Raw::open(&node, &endpoint, "u-drain").await);
    }
    node.terminate();
    for client in &mut clients {
        assert_eq!(
            client.closed().await,
            Closed {
                code: 1012,
                reason: "server restarting: reconnect".into()
            },
            "{}",
            client.endpoint
        );
    }
    assert!(
        node.wait_exit(Duration::from_secs(10)).is_some(),
        "the edge exits once its sockets are closed"
    );
}
