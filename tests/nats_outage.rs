//! An edge says the truth while NATS is gone: `/ready` fails within
//! seconds (so a load balancer moves clients elsewhere), `/health` says
//! which dependency is down, and a broadcast is refused with `503` instead
//! of being accepted and lost; a client resuming from its position is told
//! the history cannot be read now, not replayed nothing as if it missed
//! nothing. When NATS is back (same port, same store), all of it recovers
//! by itself: broadcasts are delivered again, and a resume replays what
//! was kept from before, through and after the outage.

mod support;

use serde_json::{Value, json};
use support::{Client, Nats, Switchboard, WAIT, eventually, get_json};

async fn broadcast(node: &Switchboard, event_type: &str) -> u16 {
    let response = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(format!("{}/api/events/broadcast", node.http()))
            .json(&json!({"event_type": event_type, "data": {}}))
            .send(),
    )
    .await
    .expect("answers in time")
    .expect("http request");
    response.status().as_u16()
}

async fn ready(node: &Switchboard) -> (u16, Value) {
    get_json(&format!("{}/ready", node.http())).await
}

#[tokio::test]
async fn readiness_and_broadcasts_follow_nats_and_recover() {
    let mut nats = Nats::start();
    let node = Switchboard::all(Some(&nats), &[]);
    assert_eq!(ready(&node).await.0, 200);
    let mut ui = Client::connect(&node.ws("/ws/ui")).await;
    let welcome = ui.expect("connection").await;
    let position = format!(
        "/ws/ui?epoch={}&offset={}",
        welcome["epoch"].as_str().unwrap(),
        welcome["offset"].as_u64().unwrap()
    );
    assert_eq!(broadcast(&node, "before_outage").await, 202);

    nats.stop();
    let not_ready = eventually("/ready to fail without NATS", || async {
        let (status, body) = ready(&node).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(
        not_ready["reason"], "message bus unreachable",
        "{not_ready}"
    );
    let (status, health) = get_json(&format!("{}/health", node.http())).await;
    assert_eq!(status, 200, "liveness stays green: the process is fine");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["services"]["nats"], "disconnected", "{health}");
    assert!(
        health["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("nats disconnected")),
        "{health}"
    );
    assert_eq!(
        broadcast(&node, "during_outage").await,
        503,
        "refused, not lost"
    );
    let mut resuming = Client::connect(&node.ws(&position)).await;
    resuming.expect("connection").await;
    let resumed = resuming.expect("resumed").await;
    assert_eq!(
        (&resumed["recovered"], &resumed["reason"]),
        (
            &json!(false),
            &json!("the history cannot be read now; refetch state")
        ),
        "{resumed}"
    );

    nats.restart();
    eventually("/ready to recover", || async {
        (ready(&node).await.0 == 200).then_some(())
    })
    .await;
    // Accepted broadcasts are delivered again (the UI hub's subscription
    // is back): retried until the first one arrives, none refused.
    let delivered = eventually("a broadcast to arrive after the outage", || async {
        (broadcast(&node, "after_outage").await == 202).then_some(())
    });
    delivered.await;
    loop {
        let message = ui.recv_json().await;
        assert_ne!(
            message["event_type"], "during_outage",
            "a refused broadcast never arrives"
        );
        if message["event_type"] == "after_outage" {
            break;
        }
    }
    let (_, health) = get_json(&format!("{}/health", node.http())).await;
    assert_eq!(health["services"]["nats"], "connected", "{health}");

    // The history outlived the outage: a resume from before it replays
    // what was accepted on both sides of it, and only that.
    let mut resuming = Client::connect(&node.ws(&position)).await;
    resuming.expect("connection").await;
    let mut replayed = Vec::new();
    let resumed = loop {
        let message = resuming.recv_json().await;
        if message["type"] == "resumed" {
            break message;
        }
        replayed.push(
            message["event_type"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    };
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(replayed.first().map(String::as_str), Some("before_outage"));
    assert!(
        replayed[1..].iter().all(|event| event == "after_outage") && replayed.len() > 1,
        "{replayed:?}"
    );
}
