//! Seed 001's pressure streaming: Socket.IO (the official JavaScript
//! client) and plain WebSocket, workout rooms across instances, statistics
//! checked against hand-computed values, and every acknowledged frame
//! persisted even when the edge dies mid-stream.

mod support;

use serde_json::{Value, json};
use support::{Client, Nats, Switchboard, get_json, js_clients};

async fn joined(node: &Switchboard, workout_id: &str) -> Client {
    let mut client = Client::connect(&node.ws("/ws/pressure")).await;
    let reply = client
        .call(
            json!({"action": "join_session", "workout_id": workout_id}),
            "session_joined",
        )
        .await;
    // The seed's fields, and the workout's position (tests/room_resume.rs).
    let position = json!({"epoch": reply["epoch"], "offset": reply["offset"]});
    assert_eq!(
        reply,
        json!({"type": "session_joined", "workout_id": workout_id, "status": "joined", "epoch": position["epoch"], "offset": position["offset"]})
    );
    assert!(
        reply["epoch"].is_string() && reply["offset"].is_u64(),
        "{reply}"
    );
    client
}

fn frame(workout_id: &str, matrix: Value, timestamp: f64) -> Value {
    json!({"action": "pressure_frame", "workout_id": workout_id, "matrix": matrix, "nodes": [{"id": 1}], "timestamp": timestamp})
}

fn close_to(actual: &Value, expected: f64) -> bool {
    actual
        .as_f64()
        .is_some_and(|value| (value - expected).abs() < 1e-9)
}

#[tokio::test]
async fn a_websocket_client_streams_frames_with_hand_checked_statistics() {
    let node = Switchboard::all(None, &[]);
    let mut client = joined(&node, "w1").await;

    // [[1, 2], [3, 4]]: row 0 is the front, column 0 the left.
    let processed = client
        .call(
            frame("w1", json!([[1, 2], [3, 4]]), 1000.0),
            "frame_processed",
        )
        .await;
    assert_eq!(processed["workout_id"], "w1");
    assert_eq!(processed["frame_count"], 1);
    assert_eq!(
        processed["timestamp"], 1000,
        "whole numbers without a fraction"
    );
    assert_eq!(
        processed["sequence"], 1,
        "frames are numbered per workout from 1"
    );
    let stats = &processed["stats"];
    assert_eq!(
        (stats["rows"].as_u64(), stats["columns"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(close_to(&stats["total_pressure"], 10.0), "{stats}");
    assert!(close_to(&stats["mean_pressure"], 2.5));
    assert!(close_to(&stats["peak_pressure"], 4.0));
    assert_eq!(
        (stats["peak_row"].as_u64(), stats["peak_column"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(stats["contact_cells"], 4);
    assert!(close_to(&stats["contact_area_ratio"], 1.0));
    // Centre: rows (0·3 + 1·7)/10, columns (0·4 + 1·6)/10.
    assert!(
        close_to(&stats["center_of_pressure"]["row"], 0.7),
        "{stats}"
    );
    assert!(close_to(&stats["center_of_pressure"]["column"], 0.6));
    // Left column 1 + 3 of 10; front row 1 + 2 of 10.
    assert!(close_to(&stats["left_right_balance"], 0.4));
    assert!(close_to(&stats["front_back_balance"], 0.3));

    // 3×3 with one pressed centre cell: the middle row and column split in half.
    let processed = client
        .call(
            frame("w1", json!([[0, 0, 0], [0, 5, 0], [0, 0, 0]]), 1000.25),
            "frame_processed",
        )
        .await;
    let stats = &processed["stats"];
    assert_eq!(processed["frame_count"], 2);
    assert_eq!(processed["sequence"], 2);
    assert!(close_to(&stats["mean_pressure"], 5.0 / 9.0));
    assert_eq!(stats["contact_cells"], 1);
    assert!(close_to(&stats["contact_area_ratio"], 1.0 / 9.0));
    assert!(close_to(&stats["center_of_pressure"]["row"], 1.0));
    assert!(close_to(&stats["left_right_balance"], 0.5));
    assert!(close_to(&stats["front_back_balance"], 0.5));

    // An empty frame has no centre and no balance.
    let processed = client
        .call(
            frame("w1", json!([[0, 0], [0, 0]]), 1000.5),
            "frame_processed",
        )
        .await;
    assert_eq!(processed["stats"]["center_of_pressure"], Value::Null);
    assert_eq!(processed["stats"]["left_right_balance"], Value::Null);

    // Another workout numbers its frames from 1; a frame without a
    // timestamp gets the edge's clock in milliseconds, as `Date.now()`.
    client
        .call(
            json!({"action": "join_session", "workout_id": "w1b"}),
            "session_joined",
        )
        .await;
    let processed = client
        .call(
            json!({"action": "pressure_frame", "workout_id": "w1b", "matrix": [[1]]}),
            "frame_processed",
        )
        .await;
    assert_eq!(processed["sequence"], 1, "{processed}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let stamped = processed["timestamp"].as_i64().expect("whole milliseconds");
    assert!(
        (now_ms - stamped).abs() < 60_000,
        "{stamped} is not Unix ms near {now_ms}"
    );

    // Bad frames: an error each, and the socket and the workout go on.
    let cases = [
        (
            frame("w2", json!([[1]]), 1.0),
            "not joined to workout w2: send join_session first",
        ),
        (
            frame("w1", json!([[1, 2], [3]]), 1.0),
            "row 1 has 1 values, expected 2",
        ),
        (
            frame("w1", json!([[1, "x"]]), 1.0),
            "matrix[0][1] must be a number",
        ),
        (frame("w1", json!([[1, -2]]), 1.0), "negative"),
        (frame("w1", json!(vec![vec![1; 65]; 2]), 1.0), "at most 64"),
        (
            json!({"action": "pressure_frame", "matrix": [[1]]}),
            "missing workout_id",
        ),
        (
            json!({"action": "pressure_frame", "workout_id": "w1"}),
            "missing matrix",
        ),
        (json!({"action": "dance"}), "unknown action \"dance\""),
    ];
    for (bad, message) in cases {
        let error = client.call(bad.clone(), "error").await;
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{bad} → {error}"
        );
    }
    let unknown = client.call(json!({"action": "dance"}), "error").await;
    assert_eq!(
        unknown["code"], "unknown_action",
        "the code /ws/realtime uses"
    );
    client.send_text("{not json").await;
    assert_eq!(client.expect("error").await["code"], "invalid_json");
    let processed = client
        .call(frame("w1", json!([[2]]), 1001.0), "frame_processed")
        .await;
    assert_eq!(processed["frame_count"], 4, "only good frames count");

    // HTTP clients post frames into the same room.
    let response = reqwest::Client::new()
        .post(format!("{}/api/workouts/w1/frames", node.http()))
        .json(&json!({"matrix": [[1, 1], [1, 1]], "nodes": null, "timestamp": 1002.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["frame_count"], 5);
    assert_eq!(
        client.expect("frame_processed").await["frame_count"],
        5,
        "the room hears HTTP frames too"
    );

    // The summary and the frames, in order, a page at a time.
    let (status, summary) = get_json(&format!("{}/api/workouts/w1", node.http())).await;
    assert_eq!(status, 200);
    assert_eq!(summary["frame_count"], 5);
    assert!(
        close_to(&summary["aggregate"]["max_peak_pressure"], 5.0),
        "{summary}"
    );
    assert!(close_to(
        &summary["aggregate"]["mean_total_pressure"],
        (10.0 + 5.0 + 0.0 + 2.0 + 4.0) / 5.0
    ));
    let (_, page) = get_json(&format!("{}/api/workouts/w1/frames?limit=3", node.http())).await;
    let timestamps: Vec<f64> = page["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["timestamp"].as_f64().unwrap())
        .collect();
    assert_eq!(timestamps, [1000.0, 1000.25, 1000.5]);
    assert_eq!(
        page["frames"][0]["matrix"],
        json!([[1, 2], [3, 4]]),
        "as the client sent it"
    );
    assert_eq!(page["frames"][0]["nodes"], json!([{"id": 1}]));
    let after = page["next_after"].as_u64().expect("a next page");
    let (_, rest) = get_json(&format!(
        "{}/api/workouts/w1/frames?after={after}",
        node.http()
    ))
    .await;
    let timestamps: Vec<f64> = rest["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["timestamp"].as_f64().unwrap())
        .collect();
    assert_eq!(timestamps, [1001.0, 1002.0]);
    assert_eq!(rest["next_after"], Value::Null);
    let (status, _) = get_json(&format!("{}/api/workouts/unknown", node.http())).await;
    assert_eq!(status, 404);

    // Leaving ends the stream for this client.
    let ended = client
        .call(
            json!({"action": "leave_session", "workout_id": "w1"}),
            "session_ended",
        )
        .await;
    assert_eq!(ended["workout_id"], "w1");
    let error = client.call(frame("w1", json!([[1]]), 1.0), "error").await;
    assert!(error["message"].as_str().unwrap().starts_with("not joined"));
}

#[tokio::test]
async fn a_workout_room_spans_instances() {
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let mut on_a = joined(&a, "shared").await;
    let mut on_b = joined(&b, "shared").await;
    for i in 1..=3u64 {
        let sender = if i % 2 == 1 { &mut on_a } else { &mut on_b };
        sender
            .send_json(frame("shared", json!([[i, 0], [0, 0]]), i as f64))
            .await;
        for client in [&mut on_a, &mut on_b] {
            let processed = client.expect("frame_processed").await;
            assert_eq!(
                processed["frame_count"], i,
                "counts are per workout, cluster-wide"
            );
            assert_eq!(processed["timestamp"], i);
        }
    }
}

#[tokio::test]
async fn every_acknowledged_frame_survives_the_edge_dying_mid_stream() {
    let nats = Nats::start();
    let mut doomed = Switchboard::all(Some(&nats), &[]);
    let survivor = Switchboard::all(Some(&nats), &[]);
    let mut client = joined(&doomed, "crash").await;

    // Stream without waiting for replies, note every acknowledgement, and
    // kill the edge while frames are in flight.
    let mut acknowledged = Vec::new();
    for i in 0..200u32 {
        client
            .send_json(frame("crash", json!([[i, 1], [1, 1]]), f64::from(i)))
            .await;
        if i >= 5 {
            let processed = client.expect("frame_processed").await;
            acknowledged.push(processed["timestamp"].as_f64().unwrap());
        }
        if i == 40 {
            doomed.kill();
            break;
        }
    }
    assert!(
        acknowledged.len() >= 30,
        "{} acknowledged",
        acknowledged.len()
    );

    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let url = format!(
            "{}/api/workouts/crash/frames?after={after}&limit=50",
            survivor.http()
        );
        let (status, page) = get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        stored.extend(
            page["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["timestamp"].as_f64().unwrap()),
        );
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    for timestamp in &acknowledged {
        assert!(
            stored.contains(timestamp),
            "acknowledged frame {timestamp} is missing from {stored:?}"
        );
    }
    let sorted = {
        let mut sorted = stored.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    };
    assert_eq!(
        stored, sorted,
        "frames are listed in the order they were sent"
    );
}

#[tokio::test]
async fn the_official_socket_io_client_works_across_two_instances() {
    let js = js_clients("socket.io-client");
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let frames = 5;
    let output = tokio::process::Command::new("node")
        .arg(js.join("pressure_flow.mjs"))
        .args([
            a.http(),
            b.http(),
            "sio-workout".to_owned(),
            frames.to_string(),
        ])
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(90), output)
        .await
        .expect("the node client finishes")
        .expect("node must be installed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node client failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");

    assert_eq!(report["transports"], json!(["websocket", "polling"]));
    for reply in report["joined"].as_array().unwrap() {
        assert_eq!(reply["workout_id"], "sio-workout");
        assert_eq!(reply["status"], "joined");
    }
    for client in ["sender", "watcher"] {
        let seen = report[client].as_array().unwrap();
        let counts: Vec<u64> = seen
            .iter()
            .map(|frame| frame["frame_count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, (1..=frames).collect::<Vec<u64>>(), "{client}");
        // Frame i presses one cell with value i.
        for (i, frame) in seen.iter().enumerate() {
            let value = (i + 1) as f64;
            assert!(
                close_to(&frame["stats"]["total_pressure"], value),
                "{frame}"
            );
            assert!(close_to(&frame["stats"]["peak_pressure"], value));
            assert_eq!(frame["stats"]["contact_cells"], 1);
            assert_eq!(frame["timestamp"].as_f64(), Some(1000.0 + value));
        }
    }
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("not joined to workout not-joined")
    );
    assert_eq!(report["ended"]["workout_id"], "sio-workout");
}

#[tokio::test]
async fn a_socketio_client_with_a_bad_token_gets_connect_error_with_the_reason() {
    let js = js_clients("socket.io-client");
    let node = Switchboard::all_with_env(
        None,
        &[],
        &[(
            "SWITCHBOARD_JWT_SECRET",
            "pressure-test-secret-0123456789abcdef",
        )],
    );
    // Socket.IO's way to refuse authentication: the client's connect_error,
    // from the handshake's `auth` or the `token` query parameter alike.
    let script = r#"
        import { io } from "socket.io-client";
        const [url] = process.argv.slice(1);
        const reasons = [];
        for (const options of [{ auth: { token: "garbage" } }, { query: { token: "garbage" } }]) {
          const socket = io(url, { ...options, transports: ["websocket"], reconnection: false });
          reasons.push(await new Promise((resolve) => {
            socket.on("connect", () => resolve("connected"));
            socket.on("connect_error", (error) => resolve(error.message));
          }));
          socket.close();
        }
        console.log(JSON.stringify(reasons));
    "#;
    let output = tokio::process::Command::new("node")
        .args(["--input-type=module", "-e", script, &node.http()])
        .current_dir(&js)
        .output();
    let output = tokio::time::timeout(support::WAIT, output)
        .await
        .expect("the node client finishes")
        .expect("node must be installed");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reasons: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(reasons, json!(["malformed token", "malformed token"]));
}

#[tokio::test]
async fn a_websocket_sender_faster_than_the_edge_gets_every_reply() {
    let node = Switchboard::all(None, &[]);
    let mut sender = joined(&node, "fast").await;
    let mut watcher = joined(&node, "fast").await;
    const FRAMES: u64 = 2000;
    // Frames far faster than the edge analyses and stores them (5,000 a
    // second), none waiting for its reply, so they queue up: the case
    // where a sender's replies, once room broadcasts through a queue of
    // 64, were dropped. Replies to its own frames are replies now.
    let mut ticks = tokio::time::interval(std::time::Duration::from_micros(200));
    for i in 1..=FRAMES {
        ticks.tick().await;
        sender
            .send_json(frame("fast", json!([[i % 7, 1], [2, 3]]), i as f64))
            .await;
    }
    let mut sequences = Vec::new();
    while sequences.len() < FRAMES as usize {
        let reply = sender.expect("frame_processed").await;
        sequences.push(reply["sequence"].as_u64().unwrap());
    }
    assert_eq!(
        sequences,
        (1..=FRAMES).collect::<Vec<_>>(),
        "every reply, once, in order"
    );
    // The other member hears of the frames as room events (at most its
    // queue's worth may be lost if it reads slowly; it reads here).
    let heard = watcher.expect("frame_processed").await;
    assert_eq!(heard["workout_id"], "fast");
}
