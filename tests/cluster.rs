//! Several processes sharing one real `nats-server -js` behave as one
//! cluster: sessions listed from any edge, terminated from any edge,
//! cluster-wide statistics, state that outlives a service restart, and an
//! edge that recovers when a service comes back.

mod support;

use serde_json::{Value, json};
use support::{
    Client, Nats, Switchboard, delete_json, eventually, get_json, listed_sessions,
    realtime_session, sample,
};

#[tokio::test]
async fn two_all_processes_on_one_nats_are_one_cluster() {
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    assert_ne!(
        a.addr("session"),
        b.addr("session"),
        "internal ports never collide"
    );

    let (mut on_a, id_a) = realtime_session(&a).await;
    let (mut on_b, id_b) = realtime_session(&b).await;

    // Sessions listed from both edges.
    for node in [&a, &b] {
        let mut listed = listed_sessions(node).await;
        listed.sort();
        let mut expected = vec![id_a.clone(), id_b.clone()];
        expected.sort();
        assert_eq!(listed, expected);
    }
    let (_, health) = get_json(&format!("{}/health", a.http())).await;
    assert_eq!(health["mode"], "cluster");

    // Cluster-wide statistics: requests made on B show in A's server_stats.
    for i in 0..3 {
        on_b.call(sample(f64::from(i), 0.0, 9.8, 0.0), "step_detection")
            .await;
    }
    on_b.call(json!({"action": "stats"}), "stats_response")
        .await;
    let stats = on_a
        .call(json!({"action": "stats"}), "stats_response")
        .await;
    assert_eq!(stats["server_stats"]["active_sessions"], 2, "{stats}");
    assert!(
        stats["server_stats"]["total_server_requests"]
            .as_u64()
            .unwrap()
            >= 5,
        "B's 4 requests and A's own: {stats}"
    );

    // Terminate from B a session held by A: A closes that socket.
    let (status, _) = delete_json(&format!("{}/sessions/{id_a}", b.http())).await;
    assert_eq!(status, 200);
    let notice = on_a.expect("session_terminated").await;
    assert_eq!(notice["session_id"], id_a.as_str());
    assert_eq!(on_a.expect_close().await.code, 1000);
    assert_eq!(listed_sessions(&a).await, vec![id_b.clone()]);

    // And the other way round.
    let (status, _) = delete_json(&format!("{}/sessions/{id_b}", a.http())).await;
    assert_eq!(status, 200);
    on_b.expect("session_terminated").await;
    assert_eq!(on_b.expect_close().await.code, 1000);
    assert!(listed_sessions(&b).await.is_empty());
}

#[tokio::test]
async fn the_inactivity_timeout_is_enforced_by_the_cluster() {
    let nats = Nats::start();
    // The registry lives in `services`; the socket is held by an edge-only
    // process that has no timer of its own. The timeout reaches it over NATS.
    let services = Switchboard::all(Some(&nats), &["--inactivity-timeout-secs", "1"]);
    let edge = Switchboard::edge(&nats, &services, &services, &services, &[]);
    let (mut client, session_id) = realtime_session(&edge).await;
    let timeout = client.expect("timeout_response").await;
    assert_eq!(timeout["status"], "timeout");
    assert_eq!(timeout["session_id"], session_id.as_str());
    assert_eq!(
        timeout["message"],
        "Connection closed due to 1 second of inactivity"
    );
    assert_eq!(client.expect_close().await.code, 1000);
    assert!(listed_sessions(&services).await.is_empty());
}

/// The statistics role on a free port, reading live sessions from
/// `session`.
fn statistics_role(nats: &Nats, session: &Switchboard) -> Switchboard {
    Switchboard::start(&[
        "statistics",
        "--grpc-addr",
        "127.0.0.1:0",
        "--nats-url",
        &nats.url,
        "--session-url",
        &session.grpc("session"),
    ])
}

/// The roles as separate processes, as in production.
struct Roles {
    session: Switchboard,
    detection: Switchboard,
    /// Not touched by the tests, but the edge needs it running.
    _statistics: Switchboard,
    edge: Switchboard,
}

impl Roles {
    fn start(nats: &Nats) -> Self {
        Self::start_with_edge(nats, &[])
    }

    /// The roles, with `edge_extra` on the edge's command line.
    fn start_with_edge(nats: &Nats, edge_extra: &[&str]) -> Self {
        let local = "127.0.0.1:0";
        let session =
            Switchboard::start(&["session", "--grpc-addr", local, "--nats-url", &nats.url]);
        let detection = Switchboard::start(&["detection", "--grpc-addr", local]);
        let statistics = statistics_role(nats, &session);
        let edge = Switchboard::edge(
            nats,
            &session,
            &detection,
            &statistics,
            &[&["--grpc-timeout-ms", "2000"], edge_extra].concat(),
        );
        Self {
            session,
            detection,
            _statistics: statistics,
            edge,
        }
    }

    /// Restarts a service on the very address it had, as a Kubernetes
    /// Service would keep the address stable.
    fn restart(service: &mut Switchboard, role: &str, extra: &[&str]) {
        let addr = service.addr(role).to_string();
        service.kill();
        let mut args = vec![role, "--grpc-addr", addr.as_str()];
        args.extend(extra);
        *service = Switchboard::start(&args);
        service.addr(role);
    }
}

#[tokio::test]
async fn a_detection_restart_is_an_error_message_then_recovery() {
    detection_restart_is_an_error_message_then_recovery(&[]).await;
}

/// The same with one `StreamSteps` stream per session instead of the
/// shared lanes.
#[tokio::test]
async fn with_a_stream_per_session_a_detection_restart_is_an_error_then_recovery() {
    detection_restart_is_an_error_message_then_recovery(&["--detection-streams", "0"]).await;
}

async fn detection_restart_is_an_error_message_then_recovery(edge_extra: &[&str]) {
    let nats = Nats::start();
    let mut roles = Roles::start_with_edge(&nats, edge_extra);
    let (mut client, _) = realtime_session(&roles.edge).await;
    client
        .call(sample(1.0, 0.0, 9.8, 0.0), "step_detection")
        .await;

    roles.detection.kill();
    client.send_json(sample(1.02, 0.0, 9.8, 0.0)).await;
    let error = client.expect("error").await;
    assert_eq!(error["code"], "service_unavailable", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("detection service unavailable"),
        "{error}"
    );

    Roles::restart(&mut roles.detection, "detection", &[]);
    // Until the edge's channel reconnects, samples get errors; then replies.
    let mut t = 1.04;
    let reply = errors_until_replies(&mut client, &mut t, "detection never answered again").await;
    assert!(reply["total_predictions"].as_u64().unwrap() >= 2, "{reply}");
}

#[tokio::test]
async fn a_hung_detection_replica_is_an_error_at_the_deadline_then_recovery() {
    hung_detection_is_an_error_at_the_deadline_then_recovery(&[]).await;
}

#[tokio::test]
async fn with_a_stream_per_session_a_hung_detection_replica_is_an_error_at_the_deadline() {
    hung_detection_is_an_error_at_the_deadline_then_recovery(&["--detection-streams", "0"]).await;
}

/// A replica that stops answering (stopped with SIGSTOP: its connections
/// stay up, nothing is reset) costs a message its deadline (the edge's
/// `--grpc-timeout-ms`, 2 s here), not the session; once it answers again,
/// so does the session.
async fn hung_detection_is_an_error_at_the_deadline_then_recovery(edge_extra: &[&str]) {
    let nats = Nats::start();
    let roles = Roles::start_with_edge(&nats, edge_extra);
    let (mut client, _) = realtime_session(&roles.edge).await;
    client
        .call(sample(1.0, 0.0, 9.8, 0.0), "step_detection")
        .await;

    roles.detection.freeze().await;
    let sent = std::time::Instant::now();
    client.send_json(sample(1.02, 0.0, 9.8, 0.0)).await;
    let error = client.expect("error").await;
    let waited = sent.elapsed();
    roles.detection.thaw();
    assert_eq!(error["code"], "service_unavailable", "{error}");
    assert_eq!(
        error["message"], "detection service unavailable: no reply within the deadline",
        "{error}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(1900),
        "the error came before the deadline: {waited:?}"
    );

    let mut t = 1.04;
    let reply = errors_until_replies(&mut client, &mut t, "detection never answered again").await;
    assert!(reply["total_predictions"].as_u64().unwrap() >= 2, "{reply}");
}

/// Sends samples from `t` on (advancing it) while they are answered with
/// `service_unavailable`, until one gets its `step_detection`, which is
/// returned; fails with `what` after [`support::WAIT`].
async fn errors_until_replies(client: &mut Client, t: &mut f64, what: &str) -> Value {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        assert!(std::time::Instant::now() < deadline, "{what}");
        *t += 0.02;
        let reply = client.call_any(sample(*t, 0.0, 9.8, 0.0)).await;
        if reply["type"] == "step_detection" {
            return reply;
        }
        assert_eq!(reply["code"], "service_unavailable", "{reply}");
        // Paced: each failed message may be a reconnection attempt.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_session_service_restart_loses_no_session() {
    let nats = Nats::start();
    let mut roles = Roles::start(&nats);
    let (mut client, session_id) = realtime_session(&roles.edge).await;
    client
        .call(sample(1.0, 0.0, 9.8, 0.0), "step_detection")
        .await;
    client
        .call(json!({"action": "stats"}), "stats_response")
        .await;

    roles.session.kill();
    let (status, body) = get_json(&format!("{}/sessions", roles.edge.http())).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "service_unavailable");
    let error = client.call(json!({"action": "stats"}), "error").await;
    assert_eq!(error["code"], "service_unavailable");

    let nats_url = nats.url.clone();
    Roles::restart(&mut roles.session, "session", &["--nats-url", &nats_url]);
    let session = eventually("the session registry to answer again", || {
        let url = format!("{}/sessions/{session_id}", roles.edge.http());
        async move {
            let (status, body) = get_json(&url).await;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert_eq!(session["session_id"], session_id.as_str());
    assert!(
        session["total_requests"].as_u64().unwrap() >= 2,
        "{session}"
    );
    let stats = client
        .call(json!({"action": "stats"}), "stats_response")
        .await;
    assert_eq!(stats["server_stats"]["active_sessions"], 1);
}

#[tokio::test]
async fn an_edge_whose_session_service_is_down_refuses_with_a_reason() {
    let nats = Nats::start();
    let mut roles = Roles::start(&nats);
    roles.edge.addr("edge");
    roles.session.kill();
    let mut client = Client::connect(&roles.edge.ws("/ws/realtime")).await;
    let error = client.expect("error").await;
    assert_eq!(error["code"], "service_unavailable");
    let closed = client.expect_close().await;
    assert_eq!(closed.code, 1013, "{closed:?}");
}

/// The roles as separate processes with two detection replicas, both
/// named to the edge (`--detection-url doomed,survivor`).
struct TwoReplicas {
    _session: Switchboard,
    doomed: Switchboard,
    survivor: Switchboard,
    _statistics: Switchboard,
    edge: Switchboard,
}

impl TwoReplicas {
    /// The roles, with `edge_extra` on the edge's command line.
    fn start(nats: &Nats, edge_extra: &[&str]) -> Self {
        let local = "127.0.0.1:0";
        let session =
            Switchboard::start(&["session", "--grpc-addr", local, "--nats-url", &nats.url]);
        let doomed = Switchboard::start(&["detection", "--grpc-addr", local]);
        let survivor = Switchboard::start(&["detection", "--grpc-addr", local]);
        let statistics = statistics_role(nats, &session);
        let replicas = format!(
            "{},{}",
            doomed.grpc("detection"),
            survivor.grpc("detection")
        );
        let edge = Switchboard::edge_calling(
            nats,
            [
                &session.grpc("session"),
                &replicas,
                &statistics.grpc("statistics"),
            ],
            edge_extra,
        );
        Self {
            _session: session,
            doomed,
            survivor,
            _statistics: statistics,
            edge,
        }
    }
}

/// Messages the clients send, on average, before the kill; each sends this
/// many after it.
const BEFORE_KILL: u64 = 30;
const AFTER_KILL: u64 = 30;

#[tokio::test]
async fn a_detection_replica_killed_mid_stream_loses_no_session() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let nats = Nats::start();
    // (Every field bound: one left to `..` would stop at once.)
    let TwoReplicas {
        _session,
        mut doomed,
        survivor,
        _statistics,
        edge,
    } = TwoReplicas::start(&nats, &[]);

    // Sixteen sessions stream without pause; the chance that the doomed
    // replica holds none of them is 2^-16.
    let replies = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (mut client, session_id) = realtime_session(&edge).await;
        let (replies, killed) = (replies.clone(), killed.clone());
        clients.push(tokio::spawn(async move {
            // No pause: messages are in flight when the replica dies.
            let mut buffer_sizes = Vec::new();
            let mut after_kill = 0;
            let mut n = 0;
            while after_kill < AFTER_KILL {
                n += 1;
                let seen_killed = killed.load(Ordering::Relaxed);
                let t = n as f64 * 0.02;
                let reply = client.call_any(sample(t, 0.3, 9.8, 0.1)).await;
                assert_eq!(reply["type"], "step_detection", "message {n}: {reply}");
                assert_eq!(reply["total_predictions"], n, "{reply}");
                buffer_sizes.push(reply["buffer_size"].as_u64().unwrap());
                replies.fetch_add(1, Ordering::Relaxed);
                if seen_killed {
                    after_kill += 1;
                }
            }
            // The session is still the registry's.
            let stats = client
                .call(json!({"action": "stats"}), "stats_response")
                .await;
            assert_eq!(stats["user_stats"]["total_predictions"], n, "{stats}");
            (client, session_id, buffer_sizes)
        }));
    }
    support::eventually("the sessions under way", || {
        let under_way = replies.load(Ordering::Relaxed) >= 16 * BEFORE_KILL;
        async move { under_way.then_some(()) }
    })
    .await;
    // Health names every replica, not only the first.
    let health_url = format!("{}/health", edge.http());
    let (_, health) = get_json(&health_url).await;
    assert_eq!(health["services"]["detection"], "serving", "{health}");
    let doomed_url = doomed.grpc("detection");
    let survivor_url = survivor.grpc("detection");
    for url in [&doomed_url, &survivor_url] {
        assert_eq!(health["detection_replicas"][url], "serving", "{health}");
    }
    doomed.kill();
    killed.store(true, Ordering::Relaxed);

    let mut moved = 0;
    let mut still_open = Vec::new();
    for client in clients {
        let (client, session_id, buffer_sizes) = client.await.expect("client task");
        still_open.push(client);
        // A session whose detectors were on the killed replica starts
        // afresh on the survivor: its detector's buffer shrinks once.
        if buffer_sizes.windows(2).any(|pair| pair[1] < pair[0]) {
            moved += 1;
        }
        assert!(
            listed_sessions(&edge).await.contains(&session_id),
            "{session_id} is still live"
        );
    }
    assert!(moved > 0, "no session was on the killed replica");
    // The edge says which replica went, and that detection still serves.
    let health = eventually("health showing the killed replica", || async {
        let (_, health) = get_json(&health_url).await;
        (health["services"]["detection"] == "partly_serving").then_some(health)
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["detection_replicas"][&survivor_url], "serving",
        "{health}"
    );
    assert_ne!(
        health["detection_replicas"][&doomed_url], "serving",
        "{health}"
    );
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains(&doomed_url), "{health}");
    assert!(!reasons.contains(&survivor_url), "{health}");

    // Other detection calls (here frames over HTTP) leave the killed
    // replica, the first one named, for the survivor: the call that finds
    // it gone may fail, every call after it is answered.
    let frames = format!("{}/api/workouts/after-kill/frames", edge.http());
    let post_frame = |timestamp: f64| {
        let frames = frames.clone();
        async move {
            reqwest::Client::new()
                .post(frames)
                .json(&json!({"matrix": [[1, 1], [1, 1]], "timestamp": timestamp}))
                .send()
                .await
                .map(|response| response.status().as_u16())
        }
    };
    eventually("a frame analysed by the survivor", || async {
        (post_frame(1000.0).await.ok() == Some(201)).then_some(())
    })
    .await;
    for n in 1..=5 {
        let status = post_frame(1000.0 + f64::from(n)).await;
        assert_eq!(status.ok(), Some(201), "frame {n} after the failover");
    }
    assert!(
        edge.logged("detection lane lost"),
        "the edge saw the replica go"
    );
}

/// With one `StreamSteps` stream per session (`--detection-streams 0`)
/// and two replicas named, a session whose replica is killed gets an
/// error, then replies from the other replica; new sessions go there at
/// once. (These streams used to open on the first URL only.)
#[tokio::test]
async fn with_a_stream_per_session_a_killed_replica_hands_its_sessions_to_the_next() {
    let nats = Nats::start();
    let TwoReplicas {
        _session,
        mut doomed,
        survivor: _survivor,
        _statistics,
        edge,
    } = TwoReplicas::start(&nats, &["--detection-streams", "0"]);
    let (mut client, _) = realtime_session(&edge).await;
    for n in 1..=3 {
        client
            .call(sample(f64::from(n) * 0.02, 0.0, 9.8, 0.0), "step_detection")
            .await;
    }
    doomed.kill();

    // Errors while the stream and then the first replica fail, then replies.
    let mut t = 1.0;
    errors_until_replies(
        &mut client,
        &mut t,
        "the session never reached the other replica",
    )
    .await;
    for _ in 0..5 {
        t += 0.02;
        client
            .call(sample(t, 0.0, 9.8, 0.0), "step_detection")
            .await;
    }
    let (mut newcomer, _) = realtime_session(&edge).await;
    newcomer
        .call(sample(0.02, 0.0, 9.8, 0.0), "step_detection")
        .await;
}

/// Ten sessions streaming at once, half on each of two edges: the
/// cluster's request count is exactly what they sent, once every edge has
/// reported (statistics replicas add to one record by compare-and-swap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_counts_every_request_of_sessions_on_two_edges() {
    const SESSIONS: usize = 10;
    const MESSAGES: u64 = 20;
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let mut streaming = tokio::task::JoinSet::new();
    for n in 0..SESSIONS {
        let (mut client, _) = realtime_session([&a, &b][n % 2]).await;
        streaming.spawn(async move {
            for i in 1..=MESSAGES {
                client
                    .call(sample(i as f64 * 0.02, 0.0, 9.81, 0.0), "step_detection")
                    .await;
            }
            client
        });
    }
    let mut clients = Vec::new();
    while let Some(client) = streaming.join_next().await {
        clients.push(client.unwrap());
    }
    // Predictions: sensor messages only (a `stats` request is a request,
    // not a prediction).
    let expected = SESSIONS as u64 * MESSAGES;
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let stats = clients[0]
            .call(json!({"action": "stats"}), "stats_response")
            .await;
        let counted = stats["server_stats"]["total_predictions"].as_u64().unwrap();
        assert!(counted <= expected, "counted twice: {stats}");
        if counted == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{counted} of {expected} predictions counted: {stats}"
        );
        // Edges report every few seconds; no need to ask more often.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
