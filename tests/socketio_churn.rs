//! Socket.IO connections are released: after hundreds of official
//! `socket.io-client` clients (websocket-only, polling-only and default
//! transports) have each connected, joined a workout, sent a frame, left
//! and disconnected cleanly, the edge holds nothing for them:
//!
//! - every client's events were answered on the way (`session_joined`,
//!   its `frame_processed`, `session_ended`, each within 20 s; a client
//!   emits `join_session` as soon as it is connected, so an event the
//!   edge drops because it arrived before the connection's handlers were
//!   registered fails the churn);
//! - `GET /health` `connections.pressure` and the `/metrics` gauge
//!   `switchboard_connections{endpoint="pressure"}` come back to 0;
//! - the runtime's alive tasks (`switchboard_runtime_alive_tasks`) come
//!   back to where they were before the churn, and the resident memory
//!   (`VmRSS`) does not grow with the number of clients served;
//! - SIGTERM with no client left ends the process in a few seconds, not
//!   at its 25 s drain deadline (which a connection still counted would
//!   make it wait out).
//!
//! Needs Node.js (the clients: `tests/js/socketio_churn.mjs`).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Switchboard, WAIT, eventually, get_json, js_clients};

/// Clients before the baseline is taken: what the first connections start
/// once (gRPC channels, …) is not a leak.
const WARM_UP: usize = 30;
/// Clients churned after it, in rounds: each round's memory is compared.
const ROUNDS: usize = 3;
const PER_ROUND: usize = 150;
const CONCURRENCY: usize = 10;
/// Tasks that may be alive after the churn beyond the baseline (timers,
/// pooled connections that come and go; measured: none); a leak is at
/// least one per client, 150 a round.
const TASK_SLACK: i64 = 10;
/// Resident memory the last rounds may add over the first (measured: under
/// 0.5 MiB when nothing leaks; about 40 KiB per client when connections
/// were kept, 12 MiB over these 300 clients).
const RSS_SLACK_KIB: u64 = 4 * 1024;
const GAUGE: &str = r#"switchboard_connections{endpoint="pressure"}"#;
const ALIVE_TASKS: &str = "switchboard_runtime_alive_tasks";

/// Runs `clients` through `tests/js/socketio_churn.mjs`; returns once Node
/// has exited, so every disconnection has reached the edge.
async fn churn(node: &Switchboard, clients: usize) {
    let js = js_clients("socket.io-client");
    let output = tokio::process::Command::new("node")
        .arg(js.join("socketio_churn.mjs"))
        .args([node.http(), clients.to_string(), CONCURRENCY.to_string()])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .expect("the churn finishes within 5 minutes")
        .expect("node must be installed");
    assert!(
        output.status.success(),
        "churn failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    let by_mode = &report["by_mode"];
    let third = (clients / 3) as u64;
    assert_eq!(by_mode["websocket/websocket"], third, "{report}");
    assert_eq!(by_mode["polling/polling"], third, "{report}");
    assert_eq!(
        by_mode["default/websocket"], third,
        "default clients upgraded: {report}"
    );
}

/// The samples of `/metrics`: `name{labels}` → value.
async fn metrics(node: &Switchboard) -> HashMap<String, f64> {
    let response = tokio::time::timeout(WAIT, reqwest::get(format!("{}/metrics", node.http())))
        .await
        .expect("timed out")
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn alive_tasks(node: &Switchboard) -> Option<i64> {
    metrics(node)
        .await
        .get(ALIVE_TASKS)
        .map(|&value| value as i64)
}

async fn pressure_connections(node: &Switchboard) -> u64 {
    let (status, health) = get_json(&format!("{}/health", node.http())).await;
    assert_eq!(status, 200, "{health}");
    health["connections"]["pressure"]
        .as_u64()
        .unwrap_or_else(|| panic!("no connections.pressure in {health}"))
}

/// The process's resident memory, in KiB.
fn rss_kib(node: &Switchboard) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// Every Socket.IO connection released: `/health` and `/metrics` say 0.
async fn released(node: &Switchboard, after: &str) {
    let mut last = 0;
    let released = tokio::time::timeout(WAIT, async {
        loop {
            last = pressure_connections(node).await;
            if last == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        released.is_ok(),
        "after {after}, /health still counts {last} Socket.IO connections (connections.pressure): \
         clients that disconnected cleanly are not released"
    );
    eventually(
        &format!("the {GAUGE} gauge back to 0 after {after}"),
        move || async move { (metrics(node).await.get(GAUGE).copied() == Some(0.0)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn socket_io_connections_are_released_after_clients_disconnect() {
    let node = Switchboard::all(None, &["--drain-timeout-secs", "25"]);

    churn(&node, WARM_UP).await;
    released(&node, &format!("{WARM_UP} clients")).await;
    let tasks_before = alive_tasks(&node).await;
    if tasks_before.is_none() {
        eprintln!("no {ALIVE_TASKS} in /metrics: alive tasks not checked");
    }

    let mut rss = Vec::new();
    let mut tasks = Vec::new();
    for round in 1..=ROUNDS {
        churn(&node, PER_ROUND).await;
        released(&node, &format!("round {round} of {PER_ROUND} clients")).await;
        if let Some(before) = tasks_before {
            // Bounded, on a condition: tasks of the last connections may
            // take a moment to finish.
            let mut now = i64::MAX;
            let settled = tokio::time::timeout(WAIT, async {
                loop {
                    now = alive_tasks(&node).await.expect(ALIVE_TASKS);
                    if now <= before + TASK_SLACK {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
            assert!(
                settled.is_ok(),
                "after round {round} ({} clients), {now} tasks alive, {before} before: \
                 tasks are left behind by disconnected clients",
                round * PER_ROUND
            );
            tasks.push(now);
        }
        rss.push(rss_kib(&node));
    }
    let grown = rss.last().unwrap().saturating_sub(rss[0]);
    assert!(
        grown <= RSS_SLACK_KIB,
        "resident memory grew by {grown} KiB over {} more clients (VmRSS after each round: {rss:?} KiB)",
        (ROUNDS - 1) * PER_ROUND
    );

    // No client left: SIGTERM finds nothing to drain.
    let started = Instant::now();
    node.terminate();
    let status = node.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "no exit within 5 s of SIGTERM with no client connected (drain deadline 25 s; \
             drain deadline passed: {})",
            node.logged("drain deadline passed")
        )
    });
    assert!(status.success(), "clean exit, got {status}");
    assert!(
        node.logged("\"drained\""),
        "the drain found every socket closed"
    );
    eprintln!(
        "alive tasks {tasks_before:?} before, {tasks:?} after each round; \
         VmRSS {rss:?} KiB after each round; exited {:?} after SIGTERM",
        started.elapsed()
    );
}
