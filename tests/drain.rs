//! Graceful drain: on SIGTERM an edge stops being ready, tells every
//! connected client to reconnect elsewhere (close 1012 with a reason), lets
//! in-flight work finish, and exits cleanly within its drain deadline.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, Nats, Switchboard, get_json, realtime_session, sample};

#[tokio::test]
async fn sigterm_closes_every_socket_with_1012_and_exits_within_the_deadline() {
    let nats = Nats::start();
    let node = Switchboard::all(Some(&nats), &["--drain-timeout-secs", "5"]);
    let witness = Switchboard::all(Some(&nats), &[]);
    let (status, ready) = get_json(&format!("{}/ready", node.http())).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));

    let (mut realtime, session_id) = realtime_session(&node).await;
    realtime
        .call(sample(1.0, 0.0, 9.8, 0.0), "step_detection")
        .await;
    let mut ui = Client::connect(&node.ws("/ws/ui")).await;
    ui.expect("connection").await;
    let mut pressure = Client::connect(&node.ws("/ws/pressure")).await;
    pressure
        .call(
            json!({"action": "join_session", "workout_id": "drain"}),
            "session_joined",
        )
        .await;

    let started = Instant::now();
    node.terminate();
    for client in [&mut realtime, &mut ui, &mut pressure] {
        let closed = client.expect_close().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1012, "server restarting: reconnect")
        );
    }
    let status = node
        .wait_exit(Duration::from_secs(15))
        .expect("the edge exits");
    assert!(status.success(), "clean exit, got {status}");
    assert!(
        node.logged("\"drained\""),
        "the edge waited for its sockets before it exited"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5 + 2),
        "exited within the drain deadline: {:?}",
        started.elapsed()
    );

    // The drained session was closed in the registry, not left to time out.
    let (status, _) = get_json(&format!("{}/sessions/{session_id}", witness.http())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn readiness_fails_while_the_session_registry_is_unreachable() {
    let nats = Nats::start();
    let (mut session, edge) = Switchboard::session_and_lone_edge(&nats);
    let (status, _) = get_json(&format!("{}/ready", edge.http())).await;
    assert_eq!(status, 200);
    session.kill();
    let (status, body) = get_json(&format!("{}/ready", edge.http())).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("not_ready")));
    let (status, _) = get_json(&format!("{}/health", edge.http())).await;
    assert_eq!(status, 200, "liveness stays up: the edge itself is fine");
}

#[test]
fn probe_exits_zero_only_for_a_healthy_server() {
    let node = Switchboard::all(None, &[]);
    let probe = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("probe")
            .args(args)
            .env_clear()
            .status()
            .unwrap()
            .success()
    };
    assert!(probe(&["grpc", &node.grpc("session")]));
    assert!(probe(&[
        "grpc",
        &node.grpc("detection"),
        "--service",
        "switchboard.v1.DetectionService"
    ]));
    assert!(probe(&["http", &format!("{}/ready", node.http())]));
    assert!(!probe(&["grpc", "http://127.0.0.1:1"]));
    assert!(!probe(&["http", &format!("{}/no-such-page", node.http())]));
}
