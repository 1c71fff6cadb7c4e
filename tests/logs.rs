//! Client-supplied strings cannot forge log lines: they are logged as
//! structured fields, escaped, also in the text format people read (a
//! `workout_id` with a newline used to start a line of its own).

mod support;

use serde_json::json;
use support::{Client, Switchboard, eventually};

/// A free port the OS picked (the edge binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_newline_in_a_workout_id_stays_inside_its_field() {
    let addr = format!("127.0.0.1:{}", free_port());
    let node = Switchboard::start_with_env(
        &["all", "--http-addr", &addr],
        &[("SWITCHBOARD_LOG_FORMAT", "text"), ("RUST_LOG", "info")],
    );
    let health = format!("http://{addr}/health");
    eventually("the edge to answer", || async {
        reqwest::get(&health)
            .await
            .ok()
            .filter(|response| response.status().is_success())
    })
    .await;
    let forged = "2026-01-01T00:00:00.000000Z  WARN switchboard: forged";
    let mut client = Client::connect(&format!("ws://{addr}/ws/pressure")).await;
    client
        .call(
            json!({"action": "join_session", "workout_id": format!("w1\n{forged}")}),
            "session_joined",
        )
        .await;
    node.wait_logged("joined workout");
    let lines = node.lines();
    let joined = lines
        .iter()
        .find(|line| line.contains("joined workout"))
        .unwrap();
    assert!(
        joined.contains(r"w1\n2026"),
        "escaped in its field: {joined}"
    );
    assert!(
        !lines.iter().any(|line| line.starts_with(forged)),
        "a forged line:\n{}",
        lines.join("\n")
    );
}
