//! An edge stays reachable under a flood of connections. With its file
//! descriptors lowered (as a small container has them): one address
//! opening idle sockets is capped per address, many addresses together hit
//! the edge's maximum and get a clean `503` with `Retry-After` before
//! anything is read, idle and slowloris sockets are closed after the
//! header-read timeout, and meanwhile `/health` (on its own listener) and a
//! legitimate client from another address are served.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::{Client, Switchboard, WAIT, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const DESCRIPTORS: u32 = 512;
/// The edge's default maximum for that limit: descriptors less its reserve.
const MAX_CONNECTIONS: usize = 512 - 256;
const PER_IP: usize = 100;
const HEADER_TIMEOUT_SECS: u64 = 3;

fn edge() -> Switchboard {
    let per_ip = PER_IP.to_string();
    let timeout = HEADER_TIMEOUT_SECS.to_string();
    Switchboard::start_with_descriptors(
        DESCRIPTORS,
        &[
            "all",
            "--http-addr",
            "127.0.0.1:0",
            "--ops-addr",
            "127.0.0.1:0",
            "--max-connections-per-ip",
            &per_ip,
            "--header-read-timeout-secs",
            &timeout,
        ],
    )
}

/// A TCP connection from `from` (any 127.0.0.0/8 address is this machine).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connects in time")
        .expect("connects")
}

/// What the server sent before closing, within `limit`: its response
/// head, or nothing; and whether it closed.
async fn answer(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return true,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .unwrap_or(false);
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

async fn healthy(url: &str) -> bool {
    let response = tokio::time::timeout(WAIT, reqwest::get(url)).await;
    matches!(response, Ok(Ok(response)) if response.status().is_success())
}

#[tokio::test]
async fn a_flood_of_idle_sockets_cannot_take_the_edge() {
    let node = edge();
    let addr = node.addr("edge");
    let ops = node.addr("ops");
    node.wait_logged("\"soft\":512");
    node.wait_logged(&format!("\"max_connections\":{MAX_CONNECTIONS}"));

    // One address, 300 idle sockets with one byte each: the first PER_IP
    // are held (until the header timeout), the rest refused at once.
    let flooder: IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut stream = connect_from(flooder, addr).await;
        let _ = stream.write_all(b"G").await;
        held.push(stream);
    }
    // Meanwhile a client from another address is served, and the probes.
    let stream = connect_from("127.0.0.2".parse().unwrap(), addr).await;
    let (mut legitimate, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("ws://{addr}/ws/realtime"), stream),
    )
    .await
    .expect("upgrades in time")
    .expect("a legitimate client gets in");
    let started = tokio::time::timeout(WAIT, legitimate.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.to_text().unwrap().contains("session_started"),
        "{started:?}"
    );
    assert!(healthy(&format!("http://{ops}/health")).await);

    // Each ends one of two ways: refused at once (429), or held, then
    // closed without a word at the header-read timeout.
    let answers =
        futures::future::join_all(held.iter_mut().map(|stream| answer(stream, WAIT))).await;
    let mut timed_out = 0;
    for (index, (head, closed)) in answers.into_iter().enumerate() {
        assert!(closed, "socket {index} still open");
        if head.is_empty() {
            timed_out += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 429"), "socket {index}: {head:?}");
            assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
            refused += 1;
        }
    }
    assert_eq!(
        (refused, timed_out),
        (300 - PER_IP, PER_IP),
        "per-address limit"
    );

    // Many addresses together (the legitimate client still connected):
    // the edge's maximum, then 503.
    let mut others = Vec::new();
    for i in 0..MAX_CONNECTIONS - 1 {
        let from: IpAddr = format!("127.0.1.{}", 1 + i % 200).parse().unwrap();
        others.push(connect_from(from, addr).await);
    }
    let mut over = connect_from("127.0.2.1".parse().unwrap(), addr).await;
    let (head, closed) = answer(&mut over, WAIT).await;
    assert!(closed && head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_lowercase().contains("retry-after: 1"), "{head}");
    assert!(head.contains("over_capacity"), "{head}");

    // The probes are served meanwhile, on their own listener.
    assert!(healthy(&format!("http://{ops}/health")).await);

    // Idle sockets are closed after the header-read timeout; then a
    // legitimate client from another address gets in.
    let started = Instant::now();
    let (_, closed) = answer(&mut others[0], WAIT).await;
    assert!(closed, "an idle socket is closed");
    assert!(
        started.elapsed() <= Duration::from_secs(HEADER_TIMEOUT_SECS + 5),
        "within the header timeout: {:?}",
        started.elapsed()
    );
    drop(others);
    drop(held);
    let url = format!("ws://{addr}/ws/realtime");
    let mut client = eventually("a legitimate client to get in", || {
        let url = url.clone();
        async move {
            let (socket, _) = tokio_tungstenite::connect_async(url).await.ok()?;
            Some(socket)
        }
    })
    .await;
    let started = tokio::time::timeout(WAIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.to_text().unwrap().contains("session_started"));
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["per_ip", "max_connections"] {
        assert!(
            metrics.contains(&format!(
                "switchboard_refused_connections_total{{reason=\"{reason}\"}}"
            )),
            "{reason} counted: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_slowloris_upgrade_is_closed_within_the_header_timeout() {
    let node = edge();
    let addr = node.addr("edge");
    let mut stream = connect_from("127.0.0.1".parse().unwrap(), addr).await;
    let request = format!(
        "GET /ws/realtime HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let started = Instant::now();
    let mut sent = 0;
    for byte in request.bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        sent += 1;
        if started.elapsed() > Duration::from_secs(HEADER_TIMEOUT_SECS + 5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (head, closed) = answer(&mut stream, WAIT).await;
    assert!(closed, "closed");
    assert!(!head.contains("101"), "never upgraded: {head}");
    assert!(
        sent < request.len(),
        "closed before the request was complete"
    );
    assert!(
        started.elapsed() <= Duration::from_secs(HEADER_TIMEOUT_SECS + 5),
        "{:?}",
        started.elapsed()
    );
    // The edge serves others all along.
    let mut client = Client::connect(&node.ws("/ws/ui")).await;
    client.expect("connection").await;
}
