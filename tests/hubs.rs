//! The broadcast hubs on two edge instances sharing a real
//! `nats-server -js`: seed 003's `/ws/ui` and seed 004's authenticated
//! `/api/ws/statistics`, with their REST and gRPC senders.

mod support;

use serde_json::{Value, json};
use support::tokens::{admin_token, expiring_in, sign_hs256};
use support::{Client, Nats, Switchboard, WAIT, eventually, get_json};
use switchboard_proto::v1::broadcast_service_client::BroadcastServiceClient;
use switchboard_proto::v1::{StreamMessage, TargetedMessage, UiMessage};

const SECRET: &str = "switchboard-hub-test-secret-0123456789";

fn token(user: &str) -> String {
    sign_hs256(
        json!({"sub": user, "username": format!("{user}-name"), "exp": expiring_in(300)}),
        SECRET.as_bytes(),
    )
}

fn admin() -> String {
    admin_token(SECRET)
}

fn node(nats: &Nats, extra: &[&str]) -> Switchboard {
    let mut args = vec!["--jwt-secret", SECRET];
    args.extend(extra);
    Switchboard::all(Some(nats), &args)
}

async fn post(url: String, token: Option<String>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Skips messages until one of `kind` arrives; a broadcast or personal
/// message is returned without its position (`offset`, `epoch`), which it
/// must carry.
async fn next_of(client: &mut Client, kind: &str) -> Value {
    loop {
        let mut message = client.recv_json().await;
        if message["type"] == kind {
            let welcome = [
                "connection",
                "connection_status",
                "pong",
                "subscription_updated",
                "error",
            ];
            if !welcome.contains(&kind) {
                let object = message.as_object_mut().unwrap();
                assert!(
                    object
                        .remove("offset")
                        .is_some_and(|offset| offset.is_u64())
                        && object
                            .remove("epoch")
                            .is_some_and(|epoch| epoch.is_string()),
                    "a {kind} message carries its position"
                );
            }
            return message;
        }
    }
}

async fn statistics_client(node: &Switchboard, user: &str) -> (Client, Value) {
    let mut client =
        Client::connect(&node.ws(&format!("/api/ws/statistics?token={}", token(user)))).await;
    let welcome = next_of(&mut client, "connection_status").await;
    (client, welcome)
}

#[tokio::test]
async fn a_broadcast_on_one_instance_reaches_ui_clients_on_another() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let mut ui = Client::connect(&b.ws("/ws/ui")).await;
    let connected = ui.expect("connection").await;
    assert_eq!(connected["data"]["status"], "connected");

    let url = |path: &str| format!("{}/api/events/broadcast{path}", a.http());
    let (status, _) = post(url(""), None, json!({"event_type": "x", "data": {}})).await;
    assert_eq!(
        status, 401,
        "auth is on: the broadcast routes want an admin"
    );
    let (status, _) = post(
        url(""),
        Some(token("eve")),
        json!({"event_type": "x", "data": {}}),
    )
    .await;
    assert_eq!(status, 403);

    let (status, _) = post(
        url(""),
        Some(admin()),
        json!({"event_type": "test_event", "data": {"message": "Hello WebSocket"}}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        next_of(&mut ui, "event").await,
        json!({"type": "event", "event_type": "test_event", "data": {"message": "Hello WebSocket"}})
    );
    post(
        url("/action"),
        Some(admin()),
        json!({"action": "sit", "confidence": 0.95, "metadata": {"duration": 5.2}}),
    )
    .await;
    let action = next_of(&mut ui, "event").await;
    assert_eq!(action["event_type"], "sit");
    assert_eq!(action["data"]["confidence"], 0.95);
    assert_eq!(action["data"]["metadata"], json!({"duration": 5.2}));
    assert!(action["data"]["timestamp"].as_str().unwrap().ends_with('Z'));
    let boxes = json!({"boxes": [{"x": 100, "y": 150, "w": 200, "h": 300, "label": "dog", "confidence": 0.95}]});
    post(
        url("/overlay"),
        Some(admin()),
        json!({"overlay_type": "detection", "data": boxes}),
    )
    .await;
    assert_eq!(
        next_of(&mut ui, "overlay").await,
        json!({"type": "overlay", "overlay_type": "detection", "data": boxes})
    );
    post(
        url("/telemetry"),
        Some(admin()),
        json!({"data": {"fps": 30, "latency_ms": 120}}),
    )
    .await;
    assert_eq!(
        next_of(&mut ui, "telemetry").await,
        json!({"type": "telemetry", "data": {"fps": 30, "latency_ms": 120}})
    );

    // Validated: a bad body is a 400 with a reason, and nothing is sent.
    let (status, body) = post(
        url("/action"),
        Some(admin()),
        json!({"action": "sit", "confidence": 3}),
    )
    .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (400, Some("confidence must be between 0 and 1"))
    );
    let (status, _) = post(url("/overlay"), Some(admin()), json!({"data": {}})).await;
    assert_eq!(status, 400);

    // Another backend, over gRPC.
    let mut grpc = BroadcastServiceClient::connect(a.grpc("statistics"))
        .await
        .unwrap();
    grpc.broadcast_ui(UiMessage {
        r#type: "event".into(),
        event_type: "bark".into(),
        overlay_type: String::new(),
        data_json: r#"{"volume": 7}"#.into(),
    })
    .await
    .unwrap();
    assert_eq!(next_of(&mut ui, "event").await["event_type"], "bark");

    // The system's own events show up too.
    let mut realtime = Client::connect(&a.ws("/ws/realtime")).await;
    let session_id = realtime.expect("session_started").await["session_id"].clone();
    let opened = loop {
        let event = next_of(&mut ui, "event").await;
        if event["event_type"] == "session_opened" {
            break event;
        }
    };
    assert_eq!(opened["data"]["session_id"], session_id);
    assert_eq!(opened["data"]["kind"], "realtime");
}

#[tokio::test]
async fn statistics_updates_arrive_once_per_interval_with_two_statistics_replicas() {
    let nats = Nats::start();
    // Each `all` process runs a statistics replica: two replicas.
    let a = node(&nats, &["--statistics-interval-secs", "0.3"]);
    let b = node(&nats, &["--statistics-interval-secs", "0.3"]);
    let (mut on_a, welcome) = statistics_client(&a, "sam").await;
    assert_eq!(welcome["status"], "connected");
    assert_eq!(
        welcome["user"],
        json!({"id": "sam", "username": "sam-name"})
    );
    assert_eq!(
        welcome["message"],
        "WebSocket connection established successfully"
    );
    let (mut on_b, _) = statistics_client(&b, "tia").await;

    for client in [&mut on_a, &mut on_b] {
        let mut ticks = Vec::new();
        while ticks.len() < 8 {
            let update = next_of(client, "statistics_update").await;
            ticks.push(update["tick"].as_u64().unwrap());
            assert!(update["timestamp"].as_str().unwrap().ends_with('Z'));
        }
        for pair in ticks.windows(2) {
            assert!(
                pair[1] > pair[0],
                "one update per interval, never two: {ticks:?}"
            );
        }
    }
    // The figures are this cluster's: both statistics sockets, both edges.
    // Edges report every second: within a few updates both are counted.
    let deadline = std::time::Instant::now() + WAIT;
    let update = loop {
        assert!(std::time::Instant::now() < deadline, "edges never counted");
        let update = next_of(&mut on_a, "statistics_update").await;
        let data = &update["data"];
        if data["edges"] == 2
            && data["connections"]["by_endpoint"]["statistics"] == 2
            && data["events"]["session_opened"] == 2
        {
            break update;
        }
    };
    let data = &update["data"];
    assert_eq!(data["sessions"]["by_kind"]["statistics"], 2);
    assert_eq!(
        data["sessions"]["opened_total"], data["events"]["session_opened"],
        "one count of opened sessions in one message: {data}"
    );
    for field in ["requests", "steps", "frames_processed", "users"] {
        assert!(data[field].is_u64(), "{field} in {data}");
    }
    assert!(data["messages"]["out"].as_u64().unwrap() > 0);

    // The polling fallback returns the same shape.
    let (status, polled) = get_json(&format!(
        "{}/api/statistics?token={}",
        b.http(),
        token("sam")
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(polled["sessions"]["by_kind"]["statistics"], 2);
    let (status, _) = get_json(&format!("{}/api/statistics", b.http())).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_sixth_connection_of_a_user_is_refused_across_instances() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let mut held = Vec::new();
    for node in [&a, &a, &a, &b, &b] {
        held.push(statistics_client(node, "uma").await.0);
    }
    let mut sixth =
        Client::connect(&b.ws(&format!("/api/ws/statistics?token={}", token("uma")))).await;
    let closed = sixth.expect_close().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (
            1008,
            "connection limit reached: at most 5 connections per user"
        )
    );
    let _vic = statistics_client(&a, "vic").await;

    let (status, counts) = get_json(&format!(
        "{}/api/ws/statistics/connections?token={}",
        b.http(),
        admin()
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        counts,
        json!({"total_connections": 6, "total_users": 2, "connections_by_user": {"uma": 5, "vic": 1}})
    );

    // One leaves; a new one fits.
    drop(held.pop());
    let url = b.ws(&format!("/api/ws/statistics?token={}", token("uma")));
    eventually("a slot to free up", || {
        let url = url.clone();
        async move {
            let mut client = Client::connect(&url).await;
            (client.recv_json().await["type"] == "connection_status").then_some(())
        }
    })
    .await;
}

/// Twenty connections of one user opened at the same moment, ten on each
/// edge, for each of eight users in turn: the limit (5) holds while they
/// race. (A session used to join its user's index before its record
/// existed, so a racing open took it for closed and dropped it, and one
/// race in five let more than five in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_racing_across_instances_stay_within_the_limit() {
    const RACING: usize = 20;
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    for user in (0..8).map(|n| format!("racer-{n}")) {
        let url =
            |node: &Switchboard| node.ws(&format!("/api/ws/statistics?token={}", token(&user)));
        let mut racing = tokio::task::JoinSet::new();
        for url in [url(&a), url(&b)].into_iter().cycle().take(RACING) {
            racing.spawn(async move {
                let mut client = Client::connect(&url).await;
                // Admitted: its welcome. Refused: the close (1008).
                match client.next_json().await {
                    Some(welcome) if welcome["type"] == "connection_status" => Some(client),
                    Some(other) => panic!("neither a welcome nor a close: {other}"),
                    None => None,
                }
            });
        }
        let mut admitted = Vec::new();
        while let Some(outcome) = racing.join_next().await {
            admitted.extend(outcome.unwrap());
        }
        assert_eq!(admitted.len(), 5, "{user}: admitted of {RACING} racing");
        // The refused left no session behind.
        let (status, counts) = get_json(&format!(
            "{}/api/ws/statistics/connections?token={}",
            a.http(),
            admin()
        ))
        .await;
        assert_eq!(status, 200);
        assert_eq!(counts["connections_by_user"][&user], 5, "{counts}");
        // The admitted are the user's five: one more is refused.
        let mut one_more = Client::connect(&url(&b)).await;
        assert_eq!(one_more.expect_close().await.code, 1008, "{user}");
    }
}

#[tokio::test]
async fn subscriptions_filter_broadcasts_and_targeted_sends_reach_their_recipients() {
    let nats = Nats::start();
    let a = node(&nats, &["--statistics-interval-secs", "3600"]);
    let b = node(&nats, &["--statistics-interval-secs", "3600"]);
    let (mut wes_a, _) = statistics_client(&a, "wes").await;
    let (mut wes_b, wes_b_welcome) = statistics_client(&b, "wes").await;
    let (mut xan, _) = statistics_client(&a, "xan").await;
    let mut grpc = BroadcastServiceClient::connect(a.grpc("statistics"))
        .await
        .unwrap();
    let to_connection = |connection: &Value, marker: &str| TargetedMessage {
        target: connection.as_str().unwrap().to_owned(),
        message_json: json!({"type": "marker", "n": marker}).to_string(),
    };

    wes_a
        .send_json(json!({"type": "subscribe", "event_types": ["camera_event"]}))
        .await;
    let reply = next_of(&mut wes_a, "subscription_updated").await;
    assert_eq!(reply["event_types"], json!(["camera_event"]));
    let camera = json!({"type": "camera_event", "camera_id": 1, "event_type": "motion_detected", "data": {"details": "zone 1"}});
    let alert = json!({"type": "alert", "alert_type": "warning", "data": {"message": "Unknown face detected"}});
    let (status, _) = post(
        format!("{}/api/ws/statistics/broadcast", b.http()),
        Some(admin()),
        camera.clone(),
    )
    .await;
    assert_eq!(status, 202);
    post(
        format!("{}/api/ws/statistics/broadcast", b.http()),
        Some(admin()),
        alert.clone(),
    )
    .await;

    // wes on A: only the camera event; wes on B (all types): both.
    assert_eq!(next_of(&mut wes_a, "camera_event").await, camera);
    wes_a.send_json(json!({"type": "ping"})).await;
    assert!(
        wes_a.expect("pong").await["timestamp"].is_string(),
        "the alert was filtered out"
    );
    assert_eq!(next_of(&mut wes_b, "camera_event").await, camera);
    assert_eq!(next_of(&mut wes_b, "alert").await, alert);
    grpc.send_to_connection(to_connection(&wes_b_welcome["connection_id"], "to-b"))
        .await
        .unwrap();
    assert_eq!(next_of(&mut wes_b, "marker").await["n"], "to-b");

    // Unsubscribing leaves nothing: the next thing wes on A sees is what is
    // sent to the user (personal messages always arrive), not the alert.
    wes_a
        .send_json(json!({"type": "unsubscribe", "event_types": ["camera_event"]}))
        .await;
    assert_eq!(
        next_of(&mut wes_a, "subscription_updated").await["event_types"],
        json!([])
    );
    post(
        format!("{}/api/ws/statistics/broadcast", a.http()),
        Some(admin()),
        alert.clone(),
    )
    .await;
    post(
        format!("{}/api/ws/statistics/broadcast", a.http()),
        Some(admin()),
        camera.clone(),
    )
    .await;
    let (status, _) = post(
        format!("{}/api/ws/statistics/users/wes/messages", b.http()),
        Some(admin()),
        json!({"type": "notification", "data": "Your alert"}),
    )
    .await;
    assert_eq!(status, 202);
    let mut next = wes_a.recv_json().await;
    let position = next
        .as_object_mut()
        .map(|next| (next.remove("offset"), next.remove("epoch")));
    assert!(matches!(position, Some((Some(_), Some(_)))), "{next}");
    assert_eq!(
        next,
        json!({"type": "notification", "data": "Your alert"}),
        "filtered broadcasts skipped"
    );
    // Both of wes's connections got it; xan did not.
    assert_eq!(
        next_of(&mut wes_b, "notification").await["data"],
        "Your alert"
    );
    grpc.send_to_user(TargetedMessage {
        target: "xan".into(),
        message_json: json!({"type": "marker", "n": "xan"}).to_string(),
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    loop {
        let message = xan.recv_json().await;
        if message["type"] == "marker" {
            break;
        }
        seen.push(message["type"].as_str().unwrap().to_owned());
    }
    assert!(
        !seen.contains(&"notification".to_owned()),
        "xan saw wes's message: {seen:?}"
    );

    // Bad messages: errors; a stream message without a type is refused.
    wes_a.send_json(json!({"type": "subscribe"})).await;
    let error = next_of(&mut wes_a, "error").await;
    assert_eq!(error["code"], "invalid_message");
    wes_a.send_text("hello").await;
    assert_eq!(next_of(&mut wes_a, "error").await["code"], "invalid_json");
    let refused = grpc
        .broadcast_stream(StreamMessage {
            message_json: r#"{"data": 1}"#.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_bad_token_a_flood_and_a_stalled_client_are_closed_without_touching_others() {
    let nats = Nats::start();
    let a = node(
        &nats,
        &[
            "--statistics-rate-limit",
            "5",
            "--statistics-interval-secs",
            "3600",
        ],
    );
    let b = node(&nats, &[]);

    let mut no_token = Client::connect(&a.ws("/api/ws/statistics")).await;
    assert_eq!(
        no_token.expect_close().await,
        support::Closed {
            code: 1008,
            reason: "missing token".into()
        }
    );
    let mut garbage = Client::connect(&a.ws("/api/ws/statistics?token=abc")).await;
    assert_eq!(garbage.expect_close().await.code, 1008);

    let (mut flooder, _) = statistics_client(&a, "yul").await;
    for _ in 0..30 {
        flooder.send_json(json!({"type": "ping"})).await;
    }
    let closed = flooder.expect_close().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "rate limit exceeded: at most 5 messages per second")
    );

    // A UI client that stops reading, and one that keeps up, on edge A;
    // broadcasts from B, large enough to fill every buffer on the way.
    let _stalled = Client::connect(&a.ws("/ws/ui")).await;
    let mut live = Client::connect(&a.ws("/ws/ui")).await;
    live.expect("connection").await;
    let health = format!("{}/health", a.http());
    eventually("both UI clients counted", || {
        let health = health.clone();
        async move { (get_json(&health).await.1["connections"]["ui"] == 2).then_some(()) }
    })
    .await;
    let mut grpc = BroadcastServiceClient::connect(b.grpc("statistics"))
        .await
        .unwrap();
    let padding = "x".repeat(50 * 1024);
    let messages = 600u64;
    let sender = tokio::spawn(async move {
        for n in 0..messages {
            let data = json!({"n": n, "padding": padding}).to_string();
            grpc.broadcast_ui(UiMessage {
                r#type: "telemetry".into(),
                event_type: String::new(),
                overlay_type: String::new(),
                data_json: data,
            })
            .await
            .unwrap();
        }
    });
    for n in 0..messages {
        let message = next_of(&mut live, "telemetry").await;
        assert_eq!(
            message["data"]["n"], n,
            "the live client gets every message, in order"
        );
    }
    sender.await.unwrap();
    eventually("the stalled client to be dropped", || {
        let health = health.clone();
        async move { (get_json(&health).await.1["connections"]["ui"] == 1).then_some(()) }
    })
    .await;
}
