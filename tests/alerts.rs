//! `/ws/alerts/{user_id}` as seed 002 describes it, on two edge instances
//! sharing a real `nats-server -js`: JWT, heartbeat, one connection per
//! user across the cluster, alerts that wait until acknowledged, and a fall
//! detected in a realtime stream becoming an alert.

mod support;

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::tokens::{self, sign_hs256};
use support::{Client, Nats, Switchboard, eventually, get_json};

const SECRET: &str = "switchboard-test-secret-0123456789abcdef";

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 token for `user`.
fn token(user: &str) -> String {
    tokens::user_token(SECRET, user)
}

fn admin_token() -> String {
    tokens::admin_token(SECRET)
}

fn sign_rs256(claims: Value, private_key: &str) -> String {
    let pem = std::fs::read(key_file(private_key)).unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

/// The JWT settings every node in these tests runs with: HS256 and RS256.
fn auth_args() -> Vec<String> {
    vec![
        "--jwt-secret".into(),
        SECRET.into(),
        "--jwt-public-key-file".into(),
        key_file("rsa_public.pem").display().to_string(),
    ]
}

fn node(nats: &Nats, extra: &[&str]) -> Switchboard {
    let mut args: Vec<String> = auth_args();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Switchboard::all(Some(nats), &args)
}

/// An alerts connection for `user`, past its `connected` message.
async fn alerts(node: &Switchboard, user: &str) -> (Client, Value) {
    let url = node.ws(&format!("/ws/alerts/{user}?token={}", token(user)));
    let mut client = Client::connect(&url).await;
    let connected = client.expect("connected").await;
    (client, connected)
}

async fn raise_via_rest(node: &Switchboard, user: &str, kind: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/api/alerts", node.http()))
        .bearer_auth(admin_token())
        .json(&json!({
            "user_id": user,
            "anomaly_type": kind,
            "severity": "warning",
            "stream_id": "camera-7",
            "detection_result": {"score": 0.93, "label": kind},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    response.json().await.unwrap()
}

/// Sends a ping and returns the next message that is not an alert-free
/// `pong`... i.e. proves nothing else was queued before the pong.
async fn nothing_pending(client: &mut Client) {
    let reply = client.call_any(json!({"type": "ping"})).await;
    assert_eq!(
        reply["type"], "pong",
        "expected nothing but a pong, got {reply}"
    );
}

#[tokio::test]
async fn an_alert_reaches_the_user_and_an_unacked_one_comes_back_on_another_instance() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);

    let (mut on_a, connected) = alerts(&a, "ada").await;
    assert_eq!(connected["user_id"], "ada");
    assert_eq!(connected["pending_alerts"], 0);

    // Raised through instance B, delivered on instance A.
    let raised = raise_via_rest(&b, "ada", "intrusion").await;
    let alert = on_a.expect("anomaly_detected").await;
    assert_eq!(alert["alert_id"], raised["alert_id"]);
    assert_eq!(alert["user_id"], "ada");
    assert_eq!(alert["anomaly_type"], "intrusion");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["stream_id"], "camera-7");
    assert_eq!(
        alert["detection_result"],
        json!({"score": 0.93, "label": "intrusion"})
    );
    assert_eq!(alert["source"], "api");
    assert!(alert["raised_at"].as_f64().unwrap() > 1.6e9);

    // Not acknowledged; the user leaves and comes back on B.
    drop(on_a);
    let (mut on_b, connected) = alerts(&b, "ada").await;
    assert_eq!(connected["pending_alerts"], 1);
    let again = on_b.expect("anomaly_detected").await;
    assert_eq!(again["alert_id"], raised["alert_id"]);

    // An ack removes it for good.
    let acked = on_b
        .call(
            json!({"type": "ack", "alert_id": raised["alert_id"]}),
            "ack_confirmed",
        )
        .await;
    assert_eq!(acked["alert_id"], raised["alert_id"]);
    let unknown = on_b
        .call(
            json!({"type": "ack", "alert_id": raised["alert_id"]}),
            "error",
        )
        .await;
    assert_eq!(unknown["code"], "not_found", "{unknown}");
    drop(on_b);
    let (mut on_a, connected) = alerts(&a, "ada").await;
    assert_eq!(connected["pending_alerts"], 0);
    nothing_pending(&mut on_a).await;
}

#[tokio::test]
async fn alerts_raised_while_the_user_is_offline_wait_for_them() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let first = raise_via_rest(&a, "bob", "fall").await;
    let second = raise_via_rest(&a, "bob", "smoke").await;
    raise_via_rest(&a, "carol", "not-for-bob").await;

    let (mut bob, connected) = alerts(&a, "bob").await;
    assert_eq!(connected["pending_alerts"], 2);
    assert_eq!(
        bob.expect("anomaly_detected").await["alert_id"],
        first["alert_id"]
    );
    assert_eq!(
        bob.expect("anomaly_detected").await["alert_id"],
        second["alert_id"]
    );
    nothing_pending(&mut bob).await;
}

/// Ten connections of one user opened at the same moment, five on each
/// edge, for each of four users in turn: one stays, every other is
/// replaced. (A connection used to join its user's index before its
/// registry record existed, so a racing one could take it for closed and
/// leave it open beside itself: this failed three times in five.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connections_of_one_user_leave_exactly_one() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let listing_url = format!("{}/ws/connections?token={}", a.http(), admin_token());
    for user in ["eli", "fay", "gus", "hep"] {
        let mut racing = tokio::task::JoinSet::new();
        for n in 0..10 {
            let url = [&a, &b][n % 2].ws(&format!("/ws/alerts/{user}?token={}", token(user)));
            racing.spawn(async move {
                let mut client = Client::connect(&url).await;
                let connected = client.expect("connected").await;
                (
                    client,
                    connected["connection_id"].as_str().unwrap().to_owned(),
                )
            });
        }
        let mut clients = Vec::new();
        while let Some(opened) = racing.join_next().await {
            clients.push(opened.unwrap());
        }
        // The survivor of earlier users is gone with its client.
        let survivor = eventually("one connection left of ten", || async {
            let (_, listing) = get_json(&listing_url).await;
            let theirs: Vec<&Value> = listing["connections"]
                .as_array()?
                .iter()
                .filter(|connection| connection["user_id"] == user)
                .collect();
            match theirs.as_slice() {
                [only] => only["connection_id"].as_str().map(str::to_owned),
                _ => None,
            }
        })
        .await;
        let mut replaced = 0;
        for (mut client, connection_id) in clients {
            if connection_id == survivor {
                nothing_pending(&mut client).await;
                continue;
            }
            client.expect("connection_replaced").await;
            let closed = client.expect_close().await;
            assert_eq!(
                (closed.code, closed.reason.as_str()),
                (1000, "replaced by a newer connection"),
                "{user}"
            );
            replaced += 1;
        }
        assert_eq!(replaced, 9, "{user}");
    }
}

#[tokio::test]
async fn a_second_connection_replaces_the_first_across_instances() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let (mut first, first_connected) = alerts(&a, "dan").await;
    let (mut second, second_connected) = alerts(&b, "dan").await;

    first.expect("connection_replaced").await;
    let closed = first.expect_close().await;
    assert_eq!(closed.code, 1000);
    assert_eq!(closed.reason, "replaced by a newer connection");
    nothing_pending(&mut second).await;

    let (status, listing) = get_json(&format!(
        "{}/ws/connections?token={}",
        a.http(),
        admin_token()
    ))
    .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["total_connections"], 1);
    assert_eq!(listing["total_users"], 1);
    let connection = &listing["connections"][0];
    assert_eq!(connection["user_id"], "dan");
    assert_eq!(
        connection["connection_id"],
        second_connected["connection_id"]
    );
    assert_ne!(
        connection["connection_id"],
        first_connected["connection_id"]
    );
    assert_eq!(connection["connected"], true);
    for field in ["connected_at", "last_heartbeat"] {
        // Seed 002's `2024-12-03T10:30:00`, and `Z`: 20 characters.
        let time = connection[field].as_str().unwrap();
        assert!(
            time.ends_with('Z') && time.len() == 20,
            "{field}: {connection}"
        );
    }
    // Whole seconds, as the seed shows them.
    assert!(connection["uptime_seconds"].is_u64(), "{connection}");
    assert!(
        connection["seconds_since_heartbeat"].is_u64(),
        "{connection}"
    );

    let (status, dan) = get_json(&format!(
        "{}/ws/connections/dan?token={}",
        b.http(),
        admin_token()
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(dan["connected"], true);
    let (_, nobody) = get_json(&format!(
        "{}/ws/connections/nobody?token={}",
        b.http(),
        admin_token()
    ))
    .await;
    assert_eq!(nobody, json!({"user_id": "nobody", "connected": false}));
}

#[tokio::test]
async fn a_connection_without_heartbeats_is_closed_and_cleaned_up_everywhere() {
    let nats = Nats::start();
    let fast = [
        "--heartbeat-interval-secs",
        "0.2",
        "--heartbeat-timeout-secs",
        "1",
    ];
    let a = node(&nats, &fast);
    let b = node(&nats, &fast);
    let (mut silent, _) = alerts(&a, "erin").await;
    let (mut lively, _) = alerts(&a, "fay").await;

    // The server pings both; only fay answers, all along (a task keeps
    // answering while the test looks at the registry).
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let responder = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            tokio::select! {
                _ = &mut stopped => return (lively, pings),
                ping = lively.expect("ping") => {
                    assert!(ping["timestamp"].is_string());
                    lively.send_json(json!({"type": "pong"})).await;
                    pings += 1;
                }
            }
        }
    });
    let closed = silent.expect_close().await;
    assert_eq!(closed.code, 1001, "{closed:?}");
    assert_eq!(closed.reason, "no heartbeat for 1 seconds");

    let url = format!("{}/ws/connections/erin?token={}", b.http(), admin_token());
    eventually("erin to be gone from the registry", || {
        let url = url.clone();
        async move { (get_json(&url).await.1["connected"] == false).then_some(()) }
    })
    .await;
    // fay answered every ping and is still connected.
    let (_, fay) = get_json(&format!(
        "{}/ws/connections/fay?token={}",
        b.http(),
        admin_token()
    ))
    .await;
    assert_eq!(fay["connected"], true);
    stop.send(()).unwrap();
    let (mut lively, pings) = responder.await.unwrap();
    assert!(
        pings >= 2,
        "fay answered {pings} pings through erin's timeout"
    );
    lively.expect("ping").await;
}

#[tokio::test]
async fn every_bad_token_is_refused_with_1008() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let rsa_public_pem = std::fs::read(key_file("rsa_public.pem")).unwrap();
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        "eyJzdWIiOiJnaWwiLCJleHAiOjk5OTk5OTk5OTl9"
    );
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing token"),
        ("garbage", Some("not-a-jwt".into()), "malformed token"),
        ("alg none", Some(unsigned), "malformed token"),
        (
            "expired",
            Some(sign_hs256(
                json!({"sub": "gil", "exp": now() - 3600}),
                SECRET.as_bytes(),
            )),
            "token expired",
        ),
        (
            "wrong HS key",
            Some(sign_hs256(
                json!({"sub": "gil", "exp": now() + 60}),
                b"some-other-secret-0123456789abcdef",
            )),
            "invalid token signature",
        ),
        (
            "wrong RSA key",
            Some(sign_rs256(
                json!({"sub": "gil", "exp": now() + 60}),
                "other_rsa_private.pem",
            )),
            "invalid token signature",
        ),
        (
            "HS256 signed with the RSA public key",
            Some(sign_hs256(
                json!({"sub": "gil", "exp": now() + 60}),
                &rsa_public_pem,
            )),
            "invalid token signature",
        ),
        (
            "another user's token",
            Some(token("hal")),
            "token is not for this user",
        ),
    ];
    for (case, token, reason) in cases {
        let query = token
            .map(|token| format!("?token={token}"))
            .unwrap_or_default();
        let mut client = Client::connect(&a.ws(&format!("/ws/alerts/gil{query}"))).await;
        let closed = client.expect_close().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1008, reason),
            "{case}"
        );
    }

    // The good ones: RS256 with the right key, a Bearer header, an admin.
    let rs256 = sign_rs256(json!({"sub": "gil", "exp": now() + 60}), "rsa_private.pem");
    let mut client = Client::connect(&a.ws(&format!("/ws/alerts/gil?token={rs256}"))).await;
    client.expect("connected").await;
    let mut client =
        Client::connect(&a.ws(&format!("/ws/alerts/ivy?token={}", admin_token()))).await;
    client.expect("connected").await;

    // Pinned to RS256 only, an HS256 token is refused for its algorithm,
    // whatever it is signed with.
    let rs_only = Switchboard::all(
        Some(&nats),
        &[
            "--jwt-public-key-file",
            &key_file("rsa_public.pem").display().to_string(),
            "--jwt-algorithms",
            "RS256",
        ],
    );
    let confused = sign_hs256(json!({"sub": "gil", "exp": now() + 60}), &rsa_public_pem);
    let mut client =
        Client::connect(&rs_only.ws(&format!("/ws/alerts/gil?token={confused}"))).await;
    let closed = client.expect_close().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "token algorithm is not accepted")
    );

    // REST: admin routes want an admin token.
    let (status, body) = get_json(&format!("{}/ws/connections", a.http())).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = get_json(&format!(
        "{}/ws/connections?token={}",
        a.http(),
        token("gil")
    ))
    .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("admin role required"))
    );
}

#[tokio::test]
async fn bad_messages_get_errors_and_a_flood_is_closed_without_touching_others() {
    let nats = Nats::start();
    let a = node(&nats, &["--alerts-rate-limit", "5"]);
    let (mut jo, _) = alerts(&a, "jo").await;
    let (mut kim, _) = alerts(&a, "kim").await;

    jo.send_text("ack 42").await;
    assert_eq!(jo.expect("error").await["code"], "invalid_json");
    let error = jo.call(json!({"type": "ack"}), "error").await;
    assert_eq!(error["code"], "invalid_message");
    let error = jo.call(json!({"type": "dance"}), "error").await;
    assert_eq!(
        error["message"],
        "unknown type \"dance\"; expected one of: ping, pong, ack"
    );

    for _ in 0..40 {
        jo.send_json(json!({"type": "ping"})).await;
    }
    let closed = jo.expect_close().await;
    assert_eq!(closed.code, 1008);
    assert_eq!(
        closed.reason,
        "rate limit exceeded: at most 5 messages per second"
    );
    nothing_pending(&mut kim).await;
}

/// 50 Hz: standing, 0.3 s of free fall, an impact of 4 g, then lying still
/// on the other side, for long enough that the fall is confirmed.
fn fall_samples() -> Vec<Value> {
    let g = 9.81;
    (0..400)
        .map(|i| {
            let t = 1000.0 + f64::from(i) * 0.02;
            let (x, y, z) = match i {
                0..100 => (0.0, g, 0.0),
                100..115 => (0.0, 0.2 * g, 0.0),
                115..117 => (0.0, 4.0 * g, 0.0),
                _ => (g, 0.0, 0.0),
            };
            json!([t, x, y, z])
        })
        .collect()
}

#[tokio::test]
async fn a_fall_in_a_realtime_stream_becomes_an_alert_for_its_user() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let (mut alerts_socket, _) = alerts(&a, "lee").await;

    // The stream is on another instance, authenticated as lee.
    let mut stream = Client::connect(&b.ws(&format!("/ws/realtime?token={}", token("lee")))).await;
    let session_id = stream.expect("session_started").await["session_id"].clone();
    for batch in fall_samples().chunks(25) {
        stream
            .call(json!({ "samples": batch }), "step_detection")
            .await;
    }
    let alert = alerts_socket.expect("anomaly_detected").await;
    assert_eq!(alert["anomaly_type"], "fall");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["stream_id"], session_id);
    assert_eq!(alert["source"], "detection");
    let result = &alert["detection_result"];
    assert_eq!(result["detector"], "fall");
    assert!(
        result["impact_magnitude"].as_f64().unwrap() > 3.0 * 9.81,
        "{result}"
    );
    assert!(
        result["free_fall_seconds"].as_f64().unwrap() >= 0.1,
        "{result}"
    );

    // Without a token a session's stream raises nothing for anyone, and a
    // bad token is refused outright.
    let mut anonymous = Client::connect(&b.ws("/ws/realtime?user_id=lee")).await;
    anonymous.expect("session_started").await;
    for batch in fall_samples().chunks(25) {
        anonymous
            .call(json!({ "samples": batch }), "step_detection")
            .await;
    }
    nothing_pending(&mut alerts_socket).await;
    let mut refused = Client::connect(&b.ws("/ws/realtime?token=nonsense")).await;
    assert_eq!(refused.expect_close().await.code, 1008);
}

#[tokio::test]
async fn an_abnormal_pressure_peak_becomes_an_alert_for_its_user() {
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let (mut alerts_socket, _) = alerts(&a, "mo").await;

    let mut stream = Client::connect(&b.ws(&format!("/ws/pressure?token={}", token("mo")))).await;
    stream
        .call(
            json!({"action": "join_session", "workout_id": "run-1"}),
            "session_joined",
        )
        .await;
    let send = |peak: u32| json!({"action": "pressure_frame", "workout_id": "run-1", "matrix": [[1, 2], [peak, 1]]});
    // A steady stream long enough to learn what normal is...
    for _ in 0..30 {
        stream.call(send(3), "frame_processed").await;
    }
    nothing_pending(&mut alerts_socket).await;
    // ...then a peak three times the usual.
    stream.call(send(9), "frame_processed").await;
    let alert = alerts_socket.expect("anomaly_detected").await;
    assert_eq!(alert["anomaly_type"], "pressure_peak");
    assert_eq!(alert["stream_id"], "run-1");
    let result = &alert["detection_result"];
    assert_eq!(result["peak_pressure"], 9.0);
    assert_eq!(
        (result["row"].as_u64(), result["column"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(result["baseline"].as_f64().unwrap() < 4.0, "{result}");
}

/// Twenty-five alerts for one user raised at the same moment, half through
/// each edge, while the user is connected to one of them: each arrives
/// once, each ack is confirmed, and a reconnect finds none pending. Acking
/// them all at once is not a flood (more messages than the rate limit's
/// burst of 20 used to close the socket with 1008); acks of alerts never
/// delivered still count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_raised_at_once_over_two_edges_arrive_once_each() {
    const ALERTS: usize = 25;
    let nats = Nats::start();
    let a = node(&nats, &[]);
    let b = node(&nats, &[]);
    let (mut ivy, _) = alerts(&a, "ivy").await;
    let mut raising = tokio::task::JoinSet::new();
    for n in 0..ALERTS {
        let url = format!("{}/api/alerts", [&a, &b][n % 2].http());
        raising.spawn(async move {
            let request = reqwest::Client::new()
                .post(url)
                .bearer_auth(admin_token())
                .json(&json!({"user_id": "ivy", "anomaly_type": format!("burst-{n}"), "severity": "warning"}))
                .send();
            let response = tokio::time::timeout(support::WAIT, request)
                .await
                .expect("answered in time")
                .expect("http request");
            assert_eq!(response.status().as_u16(), 201);
            let raised: Value = response.json().await.unwrap();
            raised["alert_id"].as_str().unwrap().to_owned()
        });
    }
    let mut raised = std::collections::BTreeSet::new();
    while let Some(id) = raising.join_next().await {
        raised.insert(id.unwrap());
    }
    assert_eq!(raised.len(), ALERTS, "distinct ids");
    let mut arrived = std::collections::BTreeSet::new();
    while arrived.len() < ALERTS {
        let alert = ivy.expect("anomaly_detected").await;
        let id = alert["alert_id"].as_str().unwrap().to_owned();
        assert!(raised.contains(&id), "{alert}");
        assert!(arrived.insert(id), "arrived twice: {alert}");
    }
    for id in &arrived {
        let acked = ivy
            .call(json!({"type": "ack", "alert_id": id}), "ack_confirmed")
            .await;
        assert_eq!(acked["alert_id"], id.as_str());
    }
    nothing_pending(&mut ivy).await;
    drop(ivy);
    let (mut again, connected) = alerts(&b, "ivy").await;
    assert_eq!(connected["pending_alerts"], 0, "{connected}");
    nothing_pending(&mut again).await;
    // The same acks again: no longer awaited here, so they count.
    for id in &arrived {
        again
            .send_json(json!({"type": "ack", "alert_id": id}))
            .await;
    }
    let closed = again.expect_close().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "rate limit exceeded: at most 10 messages per second")
    );
}
