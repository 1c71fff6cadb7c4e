//! A mass disconnect leaves the registry clean: 3,000 realtime clients
//! leaving at once (their TCP connections dropped together) leave no
//! session behind for more than a few seconds, and a client that stays
//! sees no error caused by it. (Before the edge closed sessions in batches,
//! the same test left the session service answering `503` for seconds.)

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::{Nats, Switchboard, WAIT, get_json, realtime_session, sample};

const CLIENTS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_clients_leaving_at_once_leave_no_session_behind() {
    let nats = Nats::start();
    let node = Switchboard::all(Some(&nats), &["--max-connections-per-ip", "0"]);
    let url = node.ws("/ws/realtime");
    let opened = futures::stream::iter(0..CLIENTS)
        .map(|_| {
            let url = url.clone();
            async move {
                let (mut socket, _) =
                    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
                        .await
                        .expect("connects in time")
                        .expect("connects");
                let started = tokio::time::timeout(WAIT, socket.next()).await;
                assert!(matches!(started, Ok(Some(Ok(_)))), "session_started");
                socket
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
    let sessions = format!("{}/sessions", node.http());
    let (_, listed) = get_json(&sessions).await;
    assert_eq!(listed["active_sessions"], CLIENTS, "all registered");

    let (mut bystander, _) = realtime_session(&node).await;
    // Everyone leaves at once: the sockets are dropped, not closed.
    drop(opened);
    let left = Instant::now();
    let mut errors = Vec::new();
    let mut t = 0.0;
    let stale = loop {
        t += 0.02;
        let reply = bystander.call_any(sample(t, 0.1, 9.8, 0.3)).await;
        if reply["type"] != "step_detection" {
            errors.push(reply);
        }
        let (status, listed) = get_json(&sessions).await;
        assert_eq!(status, 200, "GET /sessions during the churn: {listed}");
        let active = listed["active_sessions"].as_u64().unwrap();
        if active == 1 || left.elapsed() > Duration::from_secs(10) {
            break active - 1;
        }
    };
    eprintln!(
        "registry clean {:?} after {CLIENTS} clients left",
        left.elapsed()
    );
    assert_eq!(stale, 0, "sessions left behind after {:?}", left.elapsed());
    assert!(
        left.elapsed() <= Duration::from_secs(5),
        "the registry was clean only after {:?}",
        left.elapsed()
    );
    assert!(
        errors.is_empty(),
        "the bystander saw errors: {:?}",
        json!(errors)
    );
}
