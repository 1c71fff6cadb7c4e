//! System events cannot flood the UI hub: a burst of 2,000 realtime joins
//! while 200 `/ws/ui` clients read costs each client a bounded number of
//! messages (at most 20 shown a second, bursts of 40, the rest summed up
//! once a second in `system_events_suppressed`), not one per join; no
//! reading client is closed; and the statistics still count every join.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use serde_json::Value;
use support::{Nats, Switchboard, WAIT, eventually, get_json};
use tokio_tungstenite::tungstenite::Message;

const JOINS: usize = 2000;
const VIEWERS: usize = 200;

/// What one `/ws/ui` client saw: `session_opened` events shown to it, the
/// joins the summaries said were not, and whether it was closed.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    shown: u64,
    summed_up: u64,
    closed: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_costs_each_viewer_a_bounded_number_of_messages() {
    let nats = Nats::start();
    let node = Switchboard::all_with_env(
        Some(&nats),
        &["--max-connections-per-ip", "0"],
        &[("SWITCHBOARD_JWT_SECRET", SECRET)],
    );
    let mut viewers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..VIEWERS {
        let (mut socket, _) = tokio_tungstenite::connect_async(node.ws("/ws/ui"))
            .await
            .expect("connects");
        let seen = Arc::new(Mutex::new(Seen::default()));
        viewers.push(Arc::clone(&seen));
        tasks.push(tokio::spawn(async move {
            while let Some(message) = socket.next().await {
                let Ok(Message::Text(text)) = message else {
                    break;
                };
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                let mut seen = seen.lock().unwrap();
                match message["event_type"].as_str() {
                    Some("session_opened") => seen.shown += 1,
                    Some("system_events_suppressed") => {
                        seen.summed_up += message["data"]["suppressed"]["session_opened"]
                            .as_u64()
                            .unwrap_or_default();
                    }
                    _ => {}
                }
            }
            seen.lock().unwrap().closed = true;
        }));
    }
    let seen = |viewers: &[Arc<Mutex<Seen>>]| -> Vec<Seen> {
        viewers.iter().map(|seen| *seen.lock().unwrap()).collect()
    };

    let started = Instant::now();
    let url = node.ws("/ws/realtime");
    let joined = futures::stream::iter(0..JOINS)
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
    let burst = started.elapsed();

    // The statistics count every join, shown or not.
    eventually("every join counted", || async {
        let counted = counted_joins(&node).await;
        (counted >= JOINS as u64).then_some(())
    })
    .await;
    // Every join is shown to each viewer or summed up for it (the last
    // summary comes within a second).
    eventually("every join shown or summed up to every viewer", || {
        let seens = seen(&viewers);
        async move {
            seens
                .iter()
                .all(|seen| seen.closed || seen.shown + seen.summed_up >= JOINS as u64)
                .then_some(())
        }
    })
    .await;
    let seens = seen(&viewers);
    drop(joined);
    for task in tasks {
        task.abort();
    }

    let bound = 40 + 20 * (burst.as_secs() + 3);
    for seen in &seens {
        assert!(!seen.closed, "a reading viewer was closed: {seen:?}");
        assert!(
            seen.shown <= bound,
            "{} session_opened shown to one viewer in a {burst:?} burst; at most {bound}",
            seen.shown
        );
        assert_eq!(
            seen.shown + seen.summed_up,
            JOINS as u64,
            "every join shown or summed up: {seen:?}"
        );
    }
}

const SECRET: &str = "system-events-secret-0123456789abcdef";

/// `events.session_opened` in the statistics (the polling fallback's
/// figures, cluster-wide).
async fn counted_joins(node: &Switchboard) -> u64 {
    let claims =
        serde_json::json!({"sub": "ops", "exp": jsonwebtoken::get_current_timestamp() + 60});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (_, statistics) = get_json(&format!("{}/api/statistics?token={token}", node.http())).await;
    statistics["events"]["session_opened"]
        .as_u64()
        .unwrap_or_default()
}
