//! `/ws/realtime` and its REST routes, as seed 000 describes them, against
//! one `switchboard all` process on the embedded default (no NATS).

mod support;

use serde_json::json;
use support::{
    Client, Switchboard, delete_json, get_json, listed_sessions, realtime_session, sample,
};

fn is_timestamp_string(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .and_then(|text| text.parse::<f64>().ok())
        .is_some_and(|seconds| seconds > 1.6e9)
}

#[tokio::test]
async fn a_session_speaks_every_message_of_seed_000() {
    let node = Switchboard::all(None, &[]);

    // Connect: session_started.
    let mut client = Client::connect(&node.ws("/ws/realtime")).await;
    let started = client.expect("session_started").await;
    let session_id = started["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        started["message"],
        "Step detection session initialized successfully"
    );
    assert!(is_timestamp_string(&started["timestamp"]), "{started}");

    // A single sample: step_detection with every field.
    let reply = client
        .call(sample(100.0, 0.1, 9.8, 0.2), "step_detection")
        .await;
    assert_eq!(reply["session_id"], session_id.as_str());
    assert_eq!(reply["step_detected"], false);
    assert_eq!(reply["total_steps"], 0);
    assert_eq!(reply["total_predictions"], 1);
    assert!(reply["buffer_size"].is_u64(), "{reply}");
    assert!(is_timestamp_string(&reply["timestamp"]), "{reply}");
    let prediction = &reply["prediction"];
    let magnitude = prediction["magnitude"].as_f64().unwrap();
    assert!(
        (magnitude - (0.1f64 * 0.1 + 9.8 * 9.8 + 0.2 * 0.2).sqrt()).abs() < 1e-9,
        "{prediction}"
    );
    for field in ["score", "threshold", "confidence"] {
        assert!(
            prediction[field].is_f64(),
            "prediction.{field} in {prediction}"
        );
    }
    assert_eq!(prediction["samples"], 1);

    // A batch is one message, one reply.
    let batch = json!({"samples": (1..=25).map(|i| sample(100.0 + f64::from(i) * 0.02, 0.0, 9.81, 0.0)).collect::<Vec<_>>()});
    let reply = client.call(batch, "step_detection").await;
    assert_eq!(reply["total_predictions"], 2);
    assert_eq!(reply["prediction"]["samples"], 25);

    // stats: user_stats for this session, server_stats for the cluster.
    let stats = client
        .call(json!({"action": "stats"}), "stats_response")
        .await;
    assert_eq!(stats["status"], "success");
    assert_eq!(stats["session_id"], session_id.as_str());
    assert_eq!(stats["user_stats"]["total_requests"], 3);
    assert!(stats["user_stats"]["session_duration"].as_f64().unwrap() >= 0.0);
    assert!(stats["user_stats"]["last_activity"].as_f64().unwrap() > 1.6e9);
    assert_eq!(stats["server_stats"]["active_sessions"], 1);
    assert!(
        stats["server_stats"]["total_server_requests"]
            .as_u64()
            .unwrap()
            >= 3,
        "{stats}"
    );

    // reset: the counter goes back to zero, the connection stays.
    let reset = client
        .call(json!({"action": "reset"}), "reset_response")
        .await;
    assert_eq!(reset["status"], "success");
    assert_eq!(
        reset["message"],
        "Step counter has been reset for this session"
    );
    assert_eq!(reset["total_steps"], 0);
    let reply = client
        .call(sample(101.0, 0.0, 9.81, 0.0), "step_detection")
        .await;
    assert_eq!(
        reply["total_predictions"], 1,
        "predictions restart after reset"
    );

    // stop: stop_response with session_stats, then a normal close.
    let stop = client
        .call(json!({"action": "stop"}), "stop_response")
        .await;
    assert_eq!(stop["status"], "success");
    assert_eq!(
        stop["message"],
        "Step detection stopped. WebSocket connection will be closed."
    );
    assert_eq!(stop["session_stats"]["total_requests"], 6);
    assert!(stop["session_stats"]["duration"].as_f64().unwrap() >= 0.0);
    assert_eq!(client.expect_close().await.code, 1000);
    assert!(
        listed_sessions(&node).await.is_empty(),
        "a stopped session leaves the registry"
    );
}

#[tokio::test]
async fn embedded_default_says_it_is_single_instance() {
    let node = Switchboard::all(None, &[]);
    let (status, health) = get_json(&format!("{}/health", node.http())).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["mode"], "single-instance");
    assert_eq!(health["services"]["session"], "serving");
    assert_eq!(health["services"]["detection"], "serving");
    assert_eq!(health["services"]["statistics"], "serving");
    node.wait_logged("single-instance mode");
}

#[tokio::test]
async fn rest_lists_shows_and_terminates_sessions() {
    let node = Switchboard::all(None, &[]);
    let (mut first, first_id) = realtime_session(&node).await;
    let (_second, second_id) = realtime_session(&node).await;

    let mut listed = listed_sessions(&node).await;
    listed.sort();
    let mut expected = vec![first_id.clone(), second_id.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    first
        .call(sample(5.0, 0.0, 9.8, 0.0), "step_detection")
        .await;
    let (status, session) = get_json(&format!("{}/sessions/{first_id}", node.http())).await;
    assert_eq!(status, 200);
    assert_eq!(session["session_id"], first_id.as_str());
    assert_eq!(session["kind"], "realtime");
    assert!(session["started_at"].as_f64().unwrap() > 1.6e9);

    let (status, missing) = get_json(&format!("{}/sessions/no-such-session", node.http())).await;
    assert_eq!(status, 404);
    assert_eq!(missing["detail"], "session no-such-session not found");

    let (status, terminated) = delete_json(&format!("{}/sessions/{first_id}", node.http())).await;
    assert_eq!(status, 200);
    assert_eq!(terminated["status"], "terminated");
    let notice = first.expect("session_terminated").await;
    assert_eq!(notice["session_id"], first_id.as_str());
    assert_eq!(first.expect_close().await.code, 1000);
    assert_eq!(listed_sessions(&node).await, vec![second_id]);

    let (status, _) = delete_json(&format!("{}/sessions/{first_id}", node.http())).await;
    assert_eq!(status, 404, "terminating twice finds nothing");
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_session_goes_on() {
    let node = Switchboard::all(None, &[]);
    let (mut client, session_id) = realtime_session(&node).await;
    let (mut bystander, _) = realtime_session(&node).await;

    let cases = [
        ("{not json", "invalid_json"),
        (r#"{"action": "dance"}"#, "unknown_action"),
        (r#"{"action": 42}"#, "invalid_message"),
        (r#"{"x": "1", "y": 2, "z": 3}"#, "invalid_message"),
        (r#"{"x": 1, "y": 2}"#, "invalid_message"),
        (r#"{"x": 1e999, "y": 2, "z": 3}"#, "invalid_json"),
        (r#"{"x": 1e300, "y": 2, "z": 3}"#, "invalid_message"),
        (r#"{"samples": "many"}"#, "invalid_message"),
        (r#"[]"#, "invalid_message"),
        (r#"null"#, "invalid_message"),
    ];
    for (text, code) in cases {
        client.send_text(text).await;
        let error = client.expect("error").await;
        assert_eq!(error["code"], code, "for {text}: {error}");
        assert_eq!(error["status"], "error");
        assert_eq!(error["session_id"], session_id.as_str());
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    client.send_binary(vec![1, 2, 3]).await;
    assert_eq!(client.expect("error").await["code"], "unsupported_message");

    // The session is intact: the next good sample is its first prediction.
    let reply = client
        .call(sample(1.0, 0.0, 9.8, 0.0), "step_detection")
        .await;
    assert_eq!(reply["total_predictions"], 1);

    // Oversize: close 1009 for that socket only.
    let oversize = format!(r#"{{"padding": "{}"}}"#, "x".repeat(70 * 1024));
    client.send_text(oversize).await;
    let closed = client.expect_close().await;
    assert_eq!(closed.code, 1009, "{closed:?}");
    assert!(closed.reason.contains("65536"), "{closed:?}");
    let reply = bystander
        .call(sample(1.0, 0.0, 9.8, 0.0), "step_detection")
        .await;
    assert_eq!(reply["total_predictions"], 1, "other connections go on");
}

#[tokio::test]
async fn inactivity_closes_the_session_with_timeout_response() {
    let node = Switchboard::all(None, &["--inactivity-timeout-secs", "2"]);
    let (mut idle, idle_id) = realtime_session(&node).await;
    let (mut busy, busy_id) = realtime_session(&node).await;

    // The busy session keeps sending for longer than the timeout, and the
    // idle one times out meanwhile.
    let mut t = 0.0;
    let timeout = loop {
        tokio::select! {
            message = idle.recv_json() => break message,
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                t += 0.2;
                busy.call(sample(t, 0.0, 9.8, 0.0), "step_detection").await;
            }
        }
    };
    assert_eq!(timeout["type"], "timeout_response", "{timeout}");
    assert_eq!(timeout["status"], "timeout");
    assert_eq!(timeout["session_id"], idle_id.as_str());
    assert_eq!(
        timeout["message"],
        "Connection closed due to 2 seconds of inactivity"
    );
    assert_eq!(idle.expect_close().await.code, 1000);

    // The busy session lived through it.
    busy.call(sample(t + 0.2, 0.0, 9.8, 0.0), "step_detection")
        .await;
    assert_eq!(listed_sessions(&node).await, vec![busy_id]);
}

/// A registry that lost a session behind the edge's back (closed directly,
/// its control message never sent) ends the socket at its next usage
/// report, which runs beside the client's messages, not in their way.
#[tokio::test]
async fn a_session_the_registry_forgot_ends_at_its_next_report() {
    use switchboard_proto::v1::CloseSessionRequest;
    use switchboard_proto::v1::session_service_client::SessionServiceClient;

    let node = Switchboard::all(None, &[]);
    let (mut client, session_id) = realtime_session(&node).await;
    let mut sessions = SessionServiceClient::connect(node.grpc("session"))
        .await
        .unwrap();
    sessions
        .close_session(CloseSessionRequest {
            session_id: session_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Activity the next report carries to a registry that no longer has it.
    client
        .call(sample(1.0, 0.0, 9.8, 0.0), "step_detection")
        .await;
    let ended = client.expect("session_terminated").await;
    assert_eq!(ended["session_id"], session_id.as_str());
    assert_eq!(
        ended["message"],
        "Session no longer registered (timed out or terminated)"
    );
    assert_eq!(client.expect_close().await.code, 1000);
}
