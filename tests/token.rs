//! `switchboard token` is how a developer gets a token without writing
//! code: what it prints, with the server's own settings, is accepted by
//! every endpoint that needs one (the alerts socket, the statistics stream
//! and its polling fallback, admin routes), and a numeric `sub` reaches
//! seed 004's `connection_status` as a number. A server started with a
//! short HS256 secret says so.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::{Client, Switchboard, get_json};

const SECRET: &str = "a-development-secret-of-32-bytes!";

/// `switchboard token <args>` with the server's secret in its environment,
/// as a developer runs it; its stdout is the token and nothing else.
fn token(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("token")
        .args(args)
        .env_clear()
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .expect("switchboard token runs");
    assert!(
        output.status.success(),
        "switchboard token {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    let token = stdout.trim_end_matches('\n');
    assert_eq!(
        token.split('.').count(),
        3,
        "one JWT, nothing else: {stdout:?}"
    );
    assert!(!token.contains(char::is_whitespace), "{stdout:?}");
    token.to_owned()
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let response = tokio::time::timeout(
        support::WAIT,
        reqwest::Client::new().post(url).json(&body).send(),
    )
    .await
    .expect("timed out")
    .expect("http request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn minted_tokens_open_every_authenticated_endpoint() {
    let node = Switchboard::all_with_env(None, &[], &[("SWITCHBOARD_JWT_SECRET", SECRET)]);
    let alice = token(&["--sub", "alice"]);
    let admin = token(&["--sub", "ops", "--admin", "--ttl", "10m"]);

    // Seed 002: the user's alerts socket.
    let mut alerts = Client::connect(&node.ws(&format!("/ws/alerts/alice?token={alice}"))).await;
    alerts.expect("connected").await;
    alerts.call(json!({"type": "ping"}), "pong").await;

    // Admin routes: raise an alert for alice, see her connection.
    let (status, raised) = post(
        &format!("{}/api/alerts?token={admin}", node.http()),
        json!({"user_id": "alice", "anomaly_type": "fall", "severity": "warning"}),
    )
    .await;
    assert_eq!(status, 201, "{raised}");
    assert_eq!(
        alerts.expect("anomaly_detected").await["alert_id"],
        raised["alert_id"]
    );
    let (status, connection) = get_json(&format!(
        "{}/ws/connections/alice?token={admin}",
        node.http()
    ))
    .await;
    assert_eq!(
        (status, &connection["connected"]),
        (200, &json!(true)),
        "{connection}"
    );
    let (status, _) = post(
        &format!("{}/api/events/broadcast?token={admin}", node.http()),
        json!({"event_type": "sit", "data": {}}),
    )
    .await;
    assert_eq!(status, 202);
    // A user's token is not an admin's.
    let (status, _) = get_json(&format!("{}/ws/connections?token={alice}", node.http())).await;
    assert_eq!(status, 403);

    // Seed 004: the statistics stream and its polling fallback. A numeric
    // sub stays a number; the username comes from the usual claims.
    let numeric = token(&["--sub", "1", "--claim", "preferred_username=admin"]);
    let mut statistics =
        Client::connect(&node.ws(&format!("/api/ws/statistics?token={numeric}"))).await;
    let status = statistics.expect("connection_status").await;
    assert_eq!(status["user"], json!({"id": 1, "username": "admin"}));
    let (code, polled) = get_json(&format!("{}/api/statistics?token={alice}", node.http())).await;
    assert_eq!(code, 200, "{polled}");
    assert!(polled["sessions"].is_object(), "{polled}");
}

#[tokio::test]
async fn a_short_secret_is_warned_about_at_start() {
    let node = Switchboard::all_with_env(None, &[], &[("SWITCHBOARD_JWT_SECRET", "short")]);
    node.http();
    node.wait_logged("the JWT secret is shorter than 32 bytes");
    let long = Switchboard::all_with_env(None, &[], &[("SWITCHBOARD_JWT_SECRET", SECRET)]);
    // Logged once the edge's settings are read, after any warning about them.
    long.wait_logged("edge listening");
    assert!(!long.logged("the JWT secret is shorter"));
}
