//! Workout rooms resume across reconnects (issue #14): a member whose edge
//! drains reconnects to another edge with the last position it saw and
//! gets exactly the frames it missed, in order, then `resumed`, then live
//! frames: none lost, none twice, checked by offsets. Over Socket.IO with
//! the official client (websocket and polling) and over `/ws/pressure`
//! (URL query and the `resume` action); and what a position the log
//! cannot continue, or a malformed one, gets.

mod support;

use serde_json::{Value, json};
use support::{Client, Closed, Nats, Switchboard, WAIT, js_clients};
use tokio::io::AsyncBufReadExt;

fn frame(workout_id: &str, n: u64) -> Value {
    json!({"action": "pressure_frame", "workout_id": workout_id, "matrix": [[n, 0], [0, 1]], "nodes": [], "timestamp": 1000 + n})
}

/// Checks what a member heard after reconnecting: `session_joined`, the
/// frames after `from` replayed in order, `resumed` (recovered, with the
/// number it replayed), then live frames, up to `total`: every offset
/// once, in order, in one epoch.
fn assert_resumed(heard: &[Value], from: u64, total: u64, epoch: &str) {
    let kinds: Vec<&str> = heard.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "session_joined", "{heard:?}");
    assert_eq!(heard[0]["epoch"], epoch);
    let resumed_at = kinds
        .iter()
        .position(|kind| *kind == "resumed")
        .expect("resumed");
    let resumed = &heard[resumed_at];
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["epoch"], epoch);
    let replayed: Vec<u64> = heard[1..resumed_at]
        .iter()
        .map(|m| {
            assert_eq!(
                m["type"], "frame_processed",
                "only replayed frames before resumed"
            );
            assert_eq!(m["epoch"], epoch);
            m["offset"].as_u64().unwrap()
        })
        .collect();
    let last = resumed["offset"].as_u64().unwrap();
    assert_eq!(replayed, (from + 1..=last).collect::<Vec<_>>(), "replayed");
    assert_eq!(resumed["missed"].as_u64(), Some(last - from));
    let live: Vec<u64> = heard[resumed_at + 1..]
        .iter()
        .filter(|m| m["type"] == "frame_processed")
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        live,
        (last + 1..=total).collect::<Vec<_>>(),
        "live after resumed"
    );
    for message in heard.iter().filter(|m| m["type"] == "frame_processed") {
        let offset = message["offset"].as_u64().unwrap();
        assert_eq!(message["sequence"].as_u64(), Some(offset));
        assert_eq!(
            message["stats"]["peak_pressure"].as_u64(),
            Some(offset.max(1)),
            "frame {offset} is the one sent as {offset}: {message}"
        );
    }
}

async fn run_socketio(nats: &Nats, b: &Switchboard, transport: &str, form: &str) {
    let js = js_clients("socket.io-client");
    let a = Switchboard::all(Some(nats), &["--drain-timeout-secs", "5"]);
    let workout_id = format!("resume-{transport}-{form}");
    let mut node = tokio::process::Command::new("node")
        .arg(js.join("room_resume.mjs"))
        .args([&a.http(), &b.http(), &workout_id, transport, form])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    let mut lines = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(3 * WAIT, lines.next_line())
            .await
            .expect("a line from the node client")
            .expect("node's stdout")
    };
    assert_eq!(next_line().await.as_deref(), Some("drain"));
    a.terminate();
    let report = next_line().await;
    let status = tokio::time::timeout(WAIT, node.wait())
        .await
        .expect("node exits")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut err) = node.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "node client failed: {stderr}");
    let report: Value = serde_json::from_str(&report.expect("a report")).expect("JSON");
    assert_eq!(report["transports"], json!([transport, transport]));
    assert_eq!(
        report["reason"], "io server disconnect",
        "the draining edge disconnected it"
    );

    let heard: Vec<(String, Value)> = report["heard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            // Socket.IO events carry their name in `type` too.
            assert_eq!(h["data"]["type"], h["event"], "{h}");
            (h["phase"].as_str().unwrap().to_owned(), h["data"].clone())
        })
        .collect();
    let on_a: Vec<Value> = heard
        .iter()
        .filter(|(phase, _)| phase == "a")
        .map(|(_, m)| m.clone())
        .collect();
    let on_b: Vec<Value> = heard
        .iter()
        .filter(|(phase, _)| phase == "b")
        .map(|(_, m)| m.clone())
        .collect();
    let epoch = on_a[0]["epoch"]
        .as_str()
        .expect("session_joined has an epoch");
    assert!(
        epoch.bytes().all(|b| b.is_ascii_digit()) && epoch.len() > 15,
        "with NATS the epoch is the stream's creation time in nanoseconds: {epoch}"
    );
    assert_eq!(on_a[0]["offset"], 0, "a new workout has no frame yet");
    let before: Vec<u64> = on_a[1..]
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    let from = report["position"]["offset"].as_u64().unwrap();
    assert_eq!(before, (1..=from).collect::<Vec<_>>(), "on edge A");
    assert_eq!(report["position"]["epoch"], epoch);
    let total = report["total"].as_u64().unwrap();
    assert_resumed(&on_b, from, total, epoch);
    let resumed = on_b.iter().find(|m| m["type"] == "resumed").unwrap();
    assert!(
        resumed["missed"].as_u64().unwrap() >= 10,
        "at least the frames sent while it was away: {resumed}"
    );
    assert_eq!(resumed["workout_id"], workout_id.as_str());

    let bad = report["bad"].as_array().unwrap();
    assert_eq!(bad[0]["event"], "error", "{bad:?}");
    assert_eq!(bad[0]["data"]["code"], "invalid_message");
    assert_eq!(bad[0]["data"]["message"], "auth: epoch must be a string");
    assert_eq!(bad[1]["event"], "session_joined", "the socket stays up");
}

#[tokio::test]
async fn a_socketio_member_resumes_on_another_edge_after_a_drain() {
    let nats = Nats::start();
    let b = Switchboard::all(Some(&nats), &[]);
    run_socketio(&nats, &b, "websocket", "auth").await;
    run_socketio(&nats, &b, "polling", "join").await;
}

/// How a `/ws/pressure` member passes its position.
#[derive(Clone, Copy, Debug)]
enum Form {
    Query,
    Action,
}

async fn run_websocket(nats: &Nats, b: &Switchboard, form: Form) {
    let workout_id = format!("resume-ws-{form:?}");
    let a = Switchboard::all(Some(nats), &["--drain-timeout-secs", "5"]);
    let join = json!({"action": "join_session", "workout_id": workout_id});
    let mut member = Client::connect(&a.ws("/ws/pressure")).await;
    let joined = member.call(join.clone(), "session_joined").await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    assert_eq!(joined["offset"], 0);
    let mut sender = Client::connect(&b.ws("/ws/pressure")).await;
    sender.call(join.clone(), "session_joined").await;

    let mut sent = 0;
    for _ in 0..3 {
        sent += 1;
        let reply = sender
            .call(frame(&workout_id, sent), "frame_processed")
            .await;
        assert_eq!(
            (reply["offset"].as_u64(), reply["epoch"].as_str()),
            (Some(sent), Some(epoch.as_str()))
        );
    }
    let mut last = 0;
    while last < 3 {
        let event = member.expect("frame_processed").await;
        assert_eq!(event["offset"].as_u64(), Some(last + 1), "{event}");
        assert_eq!(event["epoch"], epoch.as_str());
        last += 1;
    }

    a.terminate();
    assert_eq!(
        member.expect_close().await,
        Closed {
            code: 1012,
            reason: "server restarting: reconnect".into()
        }
    );
    for _ in 0..7 {
        sent += 1;
        sender
            .call(frame(&workout_id, sent), "frame_processed")
            .await;
    }

    // Back on edge B, while the sender goes on: the live frames race the
    // replay.
    let mut member = match form {
        Form::Query => {
            let url = b.ws(&format!("/ws/pressure?epoch={epoch}&offset={last}"));
            let mut member = Client::connect(&url).await;
            member.send_json(join.clone()).await;
            member
        }
        Form::Action => {
            let mut member = Client::connect(&b.ws("/ws/pressure")).await;
            member
                .send_json(json!({"action": "resume", "workout_id": workout_id, "epoch": epoch, "offset": last}))
                .await;
            member
        }
    };
    let live_workout = workout_id.clone();
    let live = tokio::spawn(async move {
        for _ in 0..10 {
            sent += 1;
            let reply = sender
                .call(frame(&live_workout, sent), "frame_processed")
                .await;
            assert_eq!(reply["offset"].as_u64(), Some(sent));
        }
        sent
    });
    let total = live.await.unwrap();
    let mut heard = Vec::new();
    while !heard
        .iter()
        .any(|m: &Value| m["type"] == "frame_processed" && m["offset"] == total)
    {
        heard.push(member.recv_json().await);
    }
    assert_resumed(&heard, last, total, &epoch);
    let resumed = heard.iter().find(|m| m["type"] == "resumed").unwrap();
    assert!(resumed["missed"].as_u64().unwrap() >= 7, "{resumed}");
}

#[tokio::test]
async fn a_websocket_member_resumes_on_another_edge_by_query_and_by_action() {
    let nats = Nats::start();
    let b = Switchboard::all(Some(&nats), &[]);
    run_websocket(&nats, &b, Form::Query).await;
    run_websocket(&nats, &b, Form::Action).await;
}

#[tokio::test]
async fn positions_the_log_cannot_continue_are_not_recovered_and_bad_ones_are_errors() {
    let node = Switchboard::all(None, &[]);
    let mut sender = Client::connect(&node.ws("/ws/pressure")).await;
    let joined = sender
        .call(
            json!({"action": "join_session", "workout_id": "far"}),
            "session_joined",
        )
        .await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty(), "in process, the log has an epoch too");
    // More frames than a resume replays, sent without waiting.
    const FRAMES: u64 = 1005;
    for n in 1..=FRAMES {
        sender.send_json(frame("far", n)).await;
    }
    let mut replies = 0;
    while replies < FRAMES {
        sender.expect("frame_processed").await;
        replies += 1;
    }

    let mut member = Client::connect(&node.ws("/ws/pressure")).await;
    let resume = |epoch: &str, offset: u64| json!({"action": "resume", "workout_id": "far", "epoch": epoch, "offset": offset});
    let not_recovered = async |member: &mut Client, request: Value| {
        let joined = member.call(request, "session_joined").await;
        assert_eq!(joined["offset"], FRAMES);
        let resumed = member.expect("resumed").await;
        assert_eq!(resumed["recovered"], false, "{resumed}");
        assert_eq!(resumed["offset"], FRAMES, "the log's end: refetch up to it");
        assert_eq!(resumed["epoch"], epoch.as_str());
        assert_eq!(resumed["workout_id"], "far");
        resumed
    };
    let stale = not_recovered(&mut member, resume("another-epoch", 1000)).await;
    assert!(
        stale["reason"].as_str().unwrap().starts_with("stale epoch"),
        "{stale}"
    );
    let behind = not_recovered(&mut member, resume(&epoch, 2)).await;
    assert_eq!(behind["missed"], FRAMES - 2);
    assert_eq!(
        behind["reason"],
        "1003 frames missed; at most 1000 are replayed: refetch them"
    );
    let ahead = not_recovered(&mut member, resume(&epoch, FRAMES + 1)).await;
    assert!(
        ahead["reason"].as_str().unwrap().contains("ahead"),
        "{ahead}"
    );

    // Just within the cap: replayed.
    member.send_json(resume(&epoch, FRAMES - 1000)).await;
    member.expect("session_joined").await;
    for offset in FRAMES - 999..=FRAMES {
        let replayed = member.expect("frame_processed").await;
        assert_eq!(replayed["offset"], offset);
    }
    let resumed = member.expect("resumed").await;
    assert_eq!(
        (resumed["recovered"].as_bool(), resumed["missed"].as_u64()),
        (Some(true), Some(1000))
    );

    // Malformed positions: an error each, and the connection goes on.
    for (request, message) in [
        (
            json!({"action": "resume", "workout_id": "far", "epoch": 7, "offset": 1}),
            "epoch must be a string",
        ),
        (
            json!({"action": "resume", "workout_id": "far", "epoch": "e".repeat(65), "offset": 1}),
            "epoch must be 1 to 64 bytes",
        ),
        (
            json!({"action": "join_session", "workout_id": "far", "epoch": epoch, "offset": -1}),
            "offset must not be negative",
        ),
        (
            json!({"action": "resume", "workout_id": "far", "epoch": epoch, "offset": 2.5}),
            "offset must be a whole number (a frame's offset)",
        ),
        (
            json!({"action": "resume", "workout_id": "far", "epoch": epoch, "offset": "12"}),
            "offset must be a number",
        ),
        (
            json!({"action": "resume", "workout_id": "far", "epoch": epoch, "offset": 1e30}),
            "offset must be a whole number (a frame's offset)",
        ),
        (
            json!({"action": "resume", "workout_id": "far", "epoch": epoch, "offset": 1u64 << 62}),
            "offset must be at most 9007199254740991",
        ),
        (
            json!({"action": "resume", "workout_id": "far"}),
            "resume needs epoch and offset (from the last frame_processed seen)",
        ),
    ] {
        let error = member.call(request.clone(), "error").await;
        assert_eq!(
            (error["code"].as_str(), error["message"].as_str()),
            (Some("invalid_message"), Some(message)),
            "{request}"
        );
    }
    let processed = member.call(frame("far", 1), "frame_processed").await;
    assert_eq!(
        processed["offset"],
        FRAMES + 1,
        "still joined, still working"
    );

    // A malformed position in the URL is the first join's error.
    let url = node.ws(&format!("/ws/pressure?epoch={epoch}&offset=-4"));
    let mut queried = Client::connect(&url).await;
    let join = json!({"action": "join_session", "workout_id": "far"});
    let error = queried.call(join.clone(), "error").await;
    assert_eq!(error["message"], "query: offset must not be negative");
    let joined = queried.call(join, "session_joined").await;
    assert_eq!(joined["offset"], FRAMES + 1);
}

#[tokio::test]
async fn a_recreated_stream_is_a_new_epoch_and_old_positions_are_stale() {
    let nats = Nats::start();
    let node = Switchboard::all(Some(&nats), &[]);
    let join = json!({"action": "join_session", "workout_id": "reset"});
    let mut sender = Client::connect(&node.ws("/ws/pressure")).await;
    sender.call(join.clone(), "session_joined").await;
    let mut old = None;
    for n in 1..=3 {
        let reply = sender.call(frame("reset", n), "frame_processed").await;
        old = Some(reply["epoch"].as_str().unwrap().to_owned());
    }
    let old = old.unwrap();

    // The frames' stream is lost and made again, empty (as after an
    // operator deleted it, or a store lost).
    let client = tokio::time::timeout(WAIT, async_nats::connect(&nats.url))
        .await
        .unwrap()
        .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream.get_stream("LOG_FRAMES").await.unwrap();
    let config = stream.cached_info().config.clone();
    assert!(jetstream.delete_stream("LOG_FRAMES").await.unwrap().success);
    jetstream.create_stream(config).await.unwrap();

    let mut member = Client::connect(&node.ws("/ws/pressure")).await;
    let joined = member
        .call(
            json!({"action": "resume", "workout_id": "reset", "epoch": old, "offset": 3}),
            "session_joined",
        )
        .await;
    let new = joined["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new, old, "a new stream, a new epoch");
    assert!(new.parse::<u128>().unwrap() > old.parse::<u128>().unwrap());
    let resumed = member.expect("resumed").await;
    assert_eq!(resumed["recovered"], false, "{resumed}");
    assert_eq!(resumed["epoch"], new.as_str());
    assert!(
        resumed["reason"]
            .as_str()
            .unwrap()
            .starts_with("stale epoch"),
        "{resumed}"
    );

    // Frames go on, in the new epoch.
    let reply = sender.call(frame("reset", 4), "frame_processed").await;
    assert_eq!(reply["epoch"], new.as_str());
    let heard = member.expect("frame_processed").await;
    assert_eq!(
        (heard["epoch"].as_str(), heard["offset"].as_u64()),
        (Some(new.as_str()), Some(4))
    );
}

#[tokio::test]
async fn without_the_session_service_a_join_stands_and_a_resume_is_an_error() {
    let nats = Nats::start();
    let (mut session, edge) = Switchboard::session_and_lone_edge(&nats);
    let mut client = Client::connect(&edge.ws("/ws/pressure")).await;
    let joined = client
        .call(
            json!({"action": "join_session", "workout_id": "w1"}),
            "session_joined",
        )
        .await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    session.kill();

    // Live frames need no position: the join stands without one.
    let joined = client
        .call(
            json!({"action": "join_session", "workout_id": "w2"}),
            "session_joined",
        )
        .await;
    assert_eq!(
        joined,
        json!({"type": "session_joined", "workout_id": "w2", "status": "joined"})
    );
    // A resume cannot replay: an error, and the connection goes on.
    let error = client
        .call(
            json!({"action": "resume", "workout_id": "w3", "epoch": epoch, "offset": 0}),
            "error",
        )
        .await;
    assert_eq!(error["code"], "service_unavailable", "{error}");
    client
        .call(
            json!({"action": "leave_session", "workout_id": "w2"}),
            "session_ended",
        )
        .await;
}
