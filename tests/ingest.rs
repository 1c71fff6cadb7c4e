//! Idempotent ingest (issue #14, "Nothing lost across reconnects"): a
//! pressure frame or a realtime sensor message sent again with its id is
//! stored and counted once, and answered with the original result.
//!
//! Pressure frames carry a `message_id`; the session service stores them
//! with JetStream's de-duplication (or, without NATS, its own bounded map),
//! so a resend through another edge is caught too. Realtime messages carry a
//! `seq` (or `message_id`) per connection, answered from the connection's
//! recent replies.

mod support;

use std::collections::HashMap;

use serde_json::{Value, json};
use support::{Client, Nats, Switchboard, get_json, js_clients, realtime_session, sample};

const FRAMES: u64 = 20;
const RESENT: u64 = 10;

async fn joined(node: &Switchboard, workout_id: &str) -> Client {
    let mut client = Client::connect(&node.ws("/ws/pressure")).await;
    client
        .call(
            json!({"action": "join_session", "workout_id": workout_id}),
            "session_joined",
        )
        .await;
    client
}

/// Reads the room's `frame_processed` on `client` up to frame `last`, in
/// order: so a connection that joined while another sent frames has none
/// of their fan-out left to read.
async fn heard_through(client: &mut Client, last: u64) {
    let mut expected = 1;
    while expected <= last {
        let heard = client.expect("frame_processed").await;
        assert_eq!(heard["sequence"], expected, "{heard}");
        expected += 1;
    }
}

/// Frame `i` of a workout, with message id `f-<i>`: one pressed cell of
/// value `i`, so each frame has stats of its own.
fn frame(workout_id: &str, i: u64) -> Value {
    let mut matrix = vec![vec![0u64; 3]; 2];
    matrix[(i % 2) as usize][(i % 3) as usize] = i;
    json!({
        "action": "pressure_frame",
        "workout_id": workout_id,
        "matrix": matrix,
        "nodes": [{"id": i}],
        "timestamp": 1000 + i,
        "message_id": format!("f-{i}"),
    })
}

/// What a repeated reply must repeat of the original.
fn original_result(reply: &Value) -> Value {
    json!({
        "workout_id": reply["workout_id"],
        "sequence": reply["sequence"],
        "stats": reply["stats"],
        "timestamp": reply["timestamp"],
        "message_id": reply["message_id"],
    })
}

/// Every stored frame of a workout, through REST, each page in turn.
async fn stored_frames(node: &Switchboard, workout_id: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    let mut after = 0;
    loop {
        let url = format!(
            "{}/api/workouts/{workout_id}/frames?after={after}&limit=7",
            node.http()
        );
        let (status, page) = get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        frames.extend(page["frames"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => return frames,
        }
    }
}

/// The workout shows `count` frames, each once, numbered 1..=count, with
/// message ids `f-1`.. (or `prefix-1`..) in order.
async fn assert_stored_once(node: &Switchboard, workout_id: &str, prefix: &str, count: u64) {
    let (status, workout) = get_json(&format!("{}/api/workouts/{workout_id}", node.http())).await;
    assert_eq!(status, 200, "{workout}");
    assert_eq!(workout["frame_count"], count, "{workout}");
    let frames = stored_frames(node, workout_id).await;
    let listed: Vec<(u64, String)> = frames
        .iter()
        .map(|frame| {
            (
                frame["sequence"].as_u64().unwrap(),
                frame["message_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = (1..=count).map(|i| (i, format!("{prefix}-{i}"))).collect();
    assert_eq!(listed, expected, "each frame stored once, in order");
}

#[tokio::test]
async fn a_pressure_client_resending_its_last_frames_through_another_edge_stores_each_once() {
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let workout = "resend-ws";
    // Another member of the room, to see what the room is told.
    let mut watcher = joined(&a, workout).await;

    // The connection the client resends on, through the other edge (its
    // own session service, the same NATS); it joins first, and reads the
    // room's fan-out of the originals, so every frame_processed it gets
    // after them is a reply to its resends.
    let mut resender = joined(&b, workout).await;
    let mut sender = joined(&a, workout).await;
    let mut originals = HashMap::new();
    for i in 1..=FRAMES {
        let reply = sender.call(frame(workout, i), "frame_processed").await;
        assert_eq!(reply["sequence"], i, "{reply}");
        assert_eq!(reply["message_id"], format!("f-{i}"));
        assert_eq!(reply["stats"]["total_pressure"], i);
        originals.insert(i, reply);
    }
    drop(sender);
    heard_through(&mut resender, FRAMES).await;

    // The last frames again, unchanged, on the other edge.
    for i in FRAMES - RESENT + 1..=FRAMES {
        let reply = resender.call(frame(workout, i), "frame_processed").await;
        assert_eq!(
            original_result(&reply),
            original_result(&originals[&i]),
            "the resend of frame {i} repeats its original result"
        );
        assert_eq!(reply["frame_count"], FRAMES, "nothing counted again");
    }
    assert_stored_once(&a, workout, "f", FRAMES).await;
    assert_stored_once(&b, workout, "f", FRAMES).await;

    // The room heard of each frame once: after the 20 originals, the next
    // event it gets is a new frame's, not a resend's.
    for i in 1..=FRAMES {
        let heard = watcher.expect("frame_processed").await;
        assert_eq!(heard["sequence"], i, "{heard}");
    }
    let new = resender
        .call(frame(workout, FRAMES + 1), "frame_processed")
        .await;
    assert_eq!(new["sequence"], FRAMES + 1);
    let heard = watcher.expect("frame_processed").await;
    assert_eq!(heard["sequence"], FRAMES + 1, "{heard}");
    assert_eq!(heard["message_id"], format!("f-{}", FRAMES + 1));
}

#[tokio::test]
async fn a_socket_io_client_resending_after_a_reconnect_stores_each_frame_once() {
    let js = js_clients("socket.io-client");
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let workout = "resend-sio";
    let output = tokio::process::Command::new("node")
        .arg(js.join("pressure_resend.mjs"))
        .args([
            a.http(),
            b.http(),
            workout.to_owned(),
            FRAMES.to_string(),
            RESENT.to_string(),
        ])
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), output)
        .await
        .expect("the node client finishes")
        .expect("node must be installed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node client failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");

    let original = report["original"].as_array().unwrap();
    assert_eq!(original.len() as u64, FRAMES);
    for (i, reply) in (1..).zip(original) {
        assert_eq!(reply["type"], "frame_processed");
        assert_eq!(reply["sequence"], i, "{reply}");
        assert_eq!(reply["message_id"], format!("sio-{i}"));
    }
    let again = report["again"].as_array().unwrap();
    assert_eq!(again.len() as u64, RESENT);
    for (reply, i) in again.iter().zip(FRAMES - RESENT + 1..) {
        assert_eq!(
            original_result(reply),
            original_result(&original[(i - 1) as usize]),
            "the resend of frame {i} repeats its original result"
        );
        assert_eq!(reply["frame_count"], FRAMES);
    }
    assert_stored_once(&b, workout, "sio", FRAMES).await;
}

async fn post_frame(node: &Switchboard, workout_id: &str, body: Value) -> (u16, Value) {
    let response = tokio::time::timeout(
        support::WAIT,
        reqwest::Client::new()
            .post(format!("{}/api/workouts/{workout_id}/frames", node.http()))
            .json(&body)
            .send(),
    )
    .await
    .expect("timed out")
    .expect("http request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// A REST client's resend: 200 (not 201) with the original result.
async fn check_rest_resend(node: &Switchboard, workout: &str) {
    let body = |value: u64| json!({"matrix": [[value, 1], [1, 1]], "timestamp": 5000 + value, "message_id": "rest-1"});
    let (status, created) = post_frame(node, workout, body(9)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["message_id"], "rest-1");
    // Sent again, even restamped or altered, it is the frame stored first.
    for resend in [body(9), body(3)] {
        let (status, again) = post_frame(node, workout, resend).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again, created, "the original result again");
    }
    let (status, second) = post_frame(
        node,
        workout,
        json!({"matrix": [[1]], "message_id": "rest-2"}),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(
        second["sequence"],
        created["sequence"].as_u64().unwrap() + 1
    );
    let frames = stored_frames(node, workout).await;
    let ids: Vec<&str> = frames
        .iter()
        .filter_map(|frame| frame["message_id"].as_str())
        .collect();
    assert_eq!(ids, ["rest-1", "rest-2"]);
    assert_eq!(frames[0]["stats"]["total_pressure"], 12, "the first body's");
}

#[tokio::test]
async fn a_rest_resend_answers_200_with_the_original_sequence() {
    let nats = Nats::start();
    let node = Switchboard::all(Some(&nats), &[]);
    check_rest_resend(&node, "resend-rest").await;
}

#[tokio::test]
async fn without_nats_a_resend_is_stored_and_counted_once_too() {
    let node = Switchboard::all(None, &[]);
    let workout = "resend-embedded";
    let mut resender = joined(&node, workout).await;
    let mut sender = joined(&node, workout).await;
    let mut originals = HashMap::new();
    for i in 1..=5 {
        let reply = sender.call(frame(workout, i), "frame_processed").await;
        originals.insert(i, reply);
    }
    drop(sender);
    heard_through(&mut resender, 5).await;
    let mut sender = resender;
    for i in 3..=5 {
        let reply = sender.call(frame(workout, i), "frame_processed").await;
        assert_eq!(original_result(&reply), original_result(&originals[&i]));
        assert_eq!(reply["frame_count"], 5);
    }
    // A frame without an id is never taken for another.
    let mut unnamed = frame(workout, 6);
    unnamed.as_object_mut().unwrap().remove("message_id");
    for sequence in [6, 7] {
        let reply = sender.call(unnamed.clone(), "frame_processed").await;
        assert_eq!(reply["sequence"], sequence);
        assert!(reply.get("message_id").is_none(), "{reply}");
    }
    let (_, summary) = get_json(&format!("{}/api/workouts/{workout}", node.http())).await;
    assert_eq!(summary["frame_count"], 7, "{summary}");
    assert_eq!(stored_frames(&node, workout).await.len(), 7);
    check_rest_resend(&node, "resend-embedded-rest").await;
}

/// Two seconds of walking at 50 Hz from `start`: a 2 Hz bounce.
fn walking(start: f64) -> Vec<Value> {
    (0..100)
        .map(|i| {
            let t = start + f64::from(i) * 0.02;
            let bounce = 3.0 * (2.0 * std::f64::consts::PI * 2.0 * t).sin();
            sample(t, 0.2, 9.81 + bounce, 0.1)
        })
        .collect()
}

#[tokio::test]
async fn a_realtime_message_sent_again_is_answered_from_the_cache_and_not_detected_twice() {
    let node = Switchboard::all(None, &[]);
    let (mut client, _) = realtime_session(&node).await;
    let first = client
        .call(
            json!({"samples": walking(100.0), "seq": 1}),
            "step_detection",
        )
        .await;
    assert_eq!(first["seq"], 1);
    assert_eq!(first["total_predictions"], 1);
    let second = client
        .call(
            json!({"samples": walking(102.0), "seq": 2}),
            "step_detection",
        )
        .await;
    assert_eq!(second["total_predictions"], 2);
    assert!(
        second["total_steps"].as_u64().unwrap() > 0,
        "walking makes steps: {second}"
    );

    // Sent again: the same reply, word for word, and nothing counted.
    let again = client
        .call(
            json!({"samples": walking(102.0), "seq": 2}),
            "step_detection",
        )
        .await;
    assert_eq!(again, second);
    let again = client
        .call(
            json!({"samples": walking(100.0), "seq": 1}),
            "step_detection",
        )
        .await;
    assert_eq!(again, first);

    let third = client
        .call(
            json!({"samples": walking(104.0), "message_id": "batch-3"}),
            "step_detection",
        )
        .await;
    assert_eq!(third["message_id"], "batch-3");
    assert!(third.get("seq").is_none(), "{third}");
    assert_eq!(
        third["total_predictions"], 3,
        "the resends were not detected"
    );
    let again = client
        .call(
            json!({"samples": walking(104.0), "message_id": "batch-3"}),
            "step_detection",
        )
        .await;
    assert_eq!(again, third);

    let stats = client
        .call(json!({"action": "stats"}), "stats_response")
        .await;
    assert_eq!(stats["user_stats"]["total_predictions"], 3, "{stats}");
    assert_eq!(stats["user_stats"]["total_steps"], third["total_steps"]);

    // Without an id, a message sent twice is two messages.
    let plain = client
        .call(sample(200.0, 0.0, 9.8, 0.0), "step_detection")
        .await;
    assert!(plain.get("seq").is_none() && plain.get("message_id").is_none());
    let plain = client
        .call(sample(200.0, 0.0, 9.8, 0.0), "step_detection")
        .await;
    assert_eq!(plain["total_predictions"], 5);
}

#[tokio::test]
async fn bad_ids_are_refused_with_an_error_and_the_connection_goes_on() {
    let node = Switchboard::all(None, &[]);
    let mut pressure = joined(&node, "bad-ids").await;
    let long = "m".repeat(129);
    for bad in [json!(7), json!(""), json!(long), json!({"id": 1})] {
        let mut message = frame("bad-ids", 1);
        message["message_id"] = bad.clone();
        let error = pressure.call(message, "error").await;
        assert_eq!(
            error,
            json!({"type": "error", "code": "invalid_message", "message": "message_id must be a string of 1 to 128 bytes"}),
            "for {bad}"
        );
    }
    let reply = pressure.call(frame("bad-ids", 1), "frame_processed").await;
    assert_eq!(reply["sequence"], 1, "nothing bad was stored");

    let (status, body) =
        post_frame(&node, "bad-ids", json!({"matrix": [[1]], "message_id": ""})).await;
    assert_eq!(status, 400, "{body}");

    let (mut realtime, _) = realtime_session(&node).await;
    for (bad, message) in [
        (
            json!({"x": 0, "y": 9.8, "z": 0, "seq": -1}),
            "\"seq\" must be a non-negative integer, got -1",
        ),
        (
            json!({"x": 0, "y": 9.8, "z": 0, "seq": 1.5}),
            "\"seq\" must be a non-negative integer, got 1.5",
        ),
        (
            json!({"samples": [[1, 0, 9.8, 0]], "seq": "1"}),
            "\"seq\" must be a non-negative integer, got a string",
        ),
        (
            json!({"x": 0, "y": 9.8, "z": 0, "message_id": ""}),
            "\"message_id\" must be a string of 1 to 128 bytes, got an empty string",
        ),
    ] {
        let error = realtime.call(bad, "error").await;
        assert_eq!(error["code"], "invalid_message", "{error}");
        assert_eq!(error["message"], message);
    }
    let reply = realtime
        .call(
            json!({"x": 0, "y": 9.8, "z": 0, "timestamp": 1.0, "seq": 0}),
            "step_detection",
        )
        .await;
    assert_eq!(
        reply["total_predictions"], 1,
        "the refused were not detected"
    );
    assert_eq!(reply["seq"], 0);
}

#[tokio::test]
async fn the_dedup_window_is_a_setting_and_an_existing_stream_takes_it() {
    let nats = Nats::start();
    // The first process lays the frames stream out with the default window
    // (600 s); the second, restarted with a three-second window, updates it.
    let first = Switchboard::all(Some(&nats), &[]);
    let (status, stored) = post_frame(
        &first,
        "window",
        json!({"matrix": [[1]], "message_id": "w-1"}),
    )
    .await;
    assert_eq!(status, 201, "{stored}");
    drop(first);
    let node =
        Switchboard::all_with_env(Some(&nats), &[], &[("SWITCHBOARD_DEDUP_WINDOW_SECS", "3")]);
    let (status, again) = post_frame(
        &node,
        "window",
        json!({"matrix": [[2]], "message_id": "w-2"}),
    )
    .await;
    assert_eq!((status, again["sequence"].as_u64()), (201, Some(2)));
    // Within the window a resend is the original; once it has passed, the
    // same id is a new frame.
    let (status, repeated) = post_frame(
        &node,
        "window",
        json!({"matrix": [[2]], "message_id": "w-2"}),
    )
    .await;
    assert_eq!((status, &repeated), (200, &again));
    let renewed = support::eventually("the three-second window to pass", || async {
        let (status, body) = post_frame(
            &node,
            "window",
            json!({"matrix": [[2]], "message_id": "w-1"}),
        )
        .await;
        (status == 201).then_some(body)
    })
    .await;
    assert_eq!(renewed["sequence"], 3, "{renewed}");
}

/// Frames appended to a workout's log by writers that failed before
/// counting them leave its count behind the log; that happened when a NATS
/// server was lost (the log took appends while the count's bucket elected a
/// leader), and past 16 such frames the workout took no frame again. Here
/// forty are appended straight into the JetStream log, as such writers
/// left them: the next frame is stored at the log's end and counted there.
#[tokio::test]
async fn a_workout_whose_count_fell_behind_its_log_takes_frames_again() {
    use prost::Message as _;
    use switchboard_proto::v1::PressureFrame;

    let nats = Nats::start();
    let node = Switchboard::all(Some(&nats), &[]);
    let workout = "fell-behind";
    let (status, first) = post_frame(&node, workout, json!({"matrix": [[1, 1], [1, 1]]})).await;
    assert_eq!((status, &first["sequence"]), (201, &json!(1)), "{first}");

    let client = tokio::time::timeout(support::WAIT, async_nats::connect(&nats.url))
        .await
        .expect("connects in time")
        .expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    let token: String = workout.bytes().map(|byte| format!("{byte:02x}")).collect();
    const UNCOUNTED: u64 = 40;
    for number in 2..=1 + UNCOUNTED {
        let orphan = PressureFrame {
            workout_id: workout.to_owned(),
            sequence: number,
            timestamp: number as f64,
            ..Default::default()
        };
        let subject = format!("switchboard.log.frames.{token}.{number}");
        let acked = jetstream
            .publish(subject, orphan.encode_to_vec().into())
            .await
            .expect("published");
        tokio::time::timeout(support::WAIT, acked)
            .await
            .expect("acknowledged in time")
            .expect("stored");
    }

    let (status, next) = post_frame(&node, workout, json!({"matrix": [[2, 2], [2, 2]]})).await;
    assert_eq!(status, 201, "{next}");
    assert_eq!(next["sequence"], 2 + UNCOUNTED, "{next}");
    assert_eq!(next["frame_count"], 2 + UNCOUNTED, "{next}");
}

/// Posts every one of `bodies` to `workout` at the same moment, in turn
/// through each of `nodes`; each one's status and body.
async fn post_at_once(
    nodes: [&Switchboard; 2],
    workout: &str,
    bodies: impl Iterator<Item = Value>,
) -> Vec<(u16, Value)> {
    let mut posting = tokio::task::JoinSet::new();
    for (n, body) in bodies.enumerate() {
        let url = format!("{}/api/workouts/{workout}/frames", nodes[n % 2].http());
        posting.spawn(async move {
            let request = reqwest::Client::new().post(url).json(&body).send();
            let response = tokio::time::timeout(support::WAIT, request)
                .await
                .expect("answered in time")
                .expect("http request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON body"))
        });
    }
    let mut posted = Vec::new();
    while let Some(outcome) = posting.join_next().await {
        posted.push(outcome.unwrap());
    }
    posted
}

/// Forty frames of one workout posted at the same moment, half through
/// each of two edges: each is stored once and counted, numbered 1 to 40.
/// (A writer used to step one number per number taken, at most 16: the
/// last ones got 503 "took new frames concurrently too often".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_one_workout_posted_at_once_over_two_edges_are_all_stored() {
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let workout = "all-at-once";
    let bodies = (0..40u64).map(|n| json!({"matrix": [[n, 1], [1, 1]], "timestamp": n}));
    let posted = post_at_once([&a, &b], workout, bodies).await;
    let mut sequences = Vec::new();
    for (status, body) in posted {
        assert_eq!(status, 201, "{body}");
        sequences.push(body["sequence"].as_u64().unwrap());
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=40).collect::<Vec<_>>());
    let (_, record) = get_json(&format!("{}/api/workouts/{workout}", a.http())).await;
    assert_eq!(record["frame_count"], 40, "{record}");
}

/// One frame sent ten times at the same moment with one `message_id`, half
/// through each of two edges: stored once (one 201), the others answered
/// with its result (200), counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frame_sent_ten_times_at_once_over_two_edges_is_stored_once() {
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let workout = "same-frame";
    let body = json!({"matrix": [[7, 1], [1, 1]], "timestamp": 1.5, "message_id": "once"});
    let posted = post_at_once([&a, &b], workout, std::iter::repeat_n(body, 10)).await;
    let mut statuses = Vec::new();
    for (status, body) in posted {
        assert_eq!(body["sequence"], 1, "{body}");
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 200, 200, 201]);
    let (_, record) = get_json(&format!("{}/api/workouts/{workout}", b.http())).await;
    assert_eq!(record["frame_count"], 1, "{record}");
}
