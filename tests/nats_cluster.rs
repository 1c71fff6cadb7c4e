//! State survives the loss of a NATS server: on a 3-node JetStream cluster
//! (three `nats-server` processes with routes) with `--jetstream-replicas
//! 3`, the server leading the session registry's stream is killed
//! (`kill -9`), and sessions, pressure frames and alerts go on, the edge
//! reconnecting through the other servers of its `NATS_URL` list. And an
//! alerts socket reads on when the server holding its mailbox reader's
//! consumer is the one killed.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, Switchboard, WAIT, eventually, eventually_within, get_json};

const SECRET: &str = "nats-cluster-secret-0123456789abcdef";

/// A free port the OS picked (a route address must be known in advance).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One server of the cluster, with what it logged.
struct Server {
    name: String,
    client_port: u16,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three JetStream servers in one cluster, each with its own store.
struct Cluster {
    servers: Vec<Server>,
    _stores: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start() -> Self {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_urls = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        let mut stores = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let store = tempfile::tempdir().unwrap();
            let name = format!("n{index}");
            let client_port = free_port();
            let mut child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &client_port.to_string(), "-js"])
                .args(["--server_name", &name, "--cluster_name", "switchboard"])
                .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
                .args(["--routes", &route_urls, "-sd"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nats-server must be installed");
            let lines = Arc::new(Mutex::new(Vec::new()));
            let stderr = child.stderr.take().unwrap();
            let sink = Arc::clone(&lines);
            let verbose = std::env::var_os("TEST_LOG").is_some();
            let label = name.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if verbose {
                        eprintln!("[{label}] {line}");
                    }
                    sink.lock().unwrap().push(line);
                }
            });
            servers.push(Server {
                name,
                client_port,
                child,
                lines,
            });
            stores.push(store);
        }
        let cluster = Self {
            servers,
            _stores: stores,
        };
        // Each listens before anyone connects (an edge given no server
        // that answers exits).
        for index in 0..cluster.servers.len() {
            cluster.logged_by_server(index, "Listening for client connections");
        }
        cluster
    }

    /// Waits until server `index` logs a line with `needle`.
    fn logged_by_server(&self, index: usize, needle: &str) {
        let deadline = Instant::now() + WAIT;
        let server = &self.servers[index];
        while !server
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
        {
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?}",
                server.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `NATS_URL` for the whole cluster.
    fn url(&self) -> String {
        self.servers
            .iter()
            .map(|server| format!("nats://127.0.0.1:{}", server.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server that logged that it leads `stream`, once one has.
    fn leader_of(&self, stream: &str) -> usize {
        self.logged_by(&format!("new stream leader for '$G > {stream}'"))
    }

    /// The server that logged a line with `needle`, once one has.
    fn logged_by(&self, needle: &str) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(index) = self.servers.iter().position(|server| {
                server
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|line| line.contains(needle))
            }) {
                return index;
            }
            assert!(Instant::now() < deadline, "no server logged {needle:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills a server at once (SIGKILL).
    fn kill(&mut self, index: usize) -> String {
        let server = self.servers.remove(index);
        server.name.clone()
    }
}

fn token(sub: &str, admin: bool) -> String {
    let mut claims = json!({"sub": sub, "exp": support::tokens::expiring_in(600)});
    if admin {
        claims["roles"] = json!(["admin"]);
    }
    support::tokens::sign_hs256(claims, SECRET.as_bytes())
}

/// A realtime session opens (the registry's bucket takes a write) and
/// answers a sample.
async fn a_session_works(node: &Switchboard) -> bool {
    let Ok(Ok((mut socket, _))) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(node.ws("/ws/realtime")),
    )
    .await
    else {
        return false;
    };
    use futures::{SinkExt, StreamExt};
    let started = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
    let Ok(Some(Ok(started))) = started else {
        return false;
    };
    if !started
        .to_text()
        .unwrap_or_default()
        .contains("session_started")
    {
        return false;
    }
    let sample = json!({"x": 0.1, "y": 9.8, "z": 0.3}).to_string();
    if socket.send(sample.into()).await.is_err() {
        return false;
    }
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
    matches!(reply, Ok(Some(Ok(reply))) if reply.to_text().unwrap_or_default().contains("step_detection"))
}

/// A pressure frame is stored (the frames log takes a write): `sequence`.
async fn a_frame_is_stored(node: &Switchboard) -> Option<u64> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/workouts/w1/frames", node.http()))
        .json(&json!({"matrix": [[1, 2], [3, 4]]}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if response.status().as_u16() != 201 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["sequence"].as_u64()
}

/// A pressure frame with a `message_id` is answered: its status (201
/// stored, 200 stored before) and body.
async fn a_frame_with_an_id_is_answered(node: &Switchboard, id: &str) -> Option<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/workouts/w1/frames", node.http()))
        .json(&json!({"matrix": [[5, 6], [7, 8]], "message_id": id}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    if status != 201 && status != 200 {
        return None;
    }
    Some((status, response.json().await.ok()?))
}

/// An alert is raised (the mailbox takes a write): its id.
async fn an_alert_is_raised(node: &Switchboard) -> Option<String> {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/alerts?token={}",
            node.http(),
            token("ops", true)
        ))
        .json(&json!({"user_id": "mo", "anomaly_type": "fall", "severity": "warning"}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if response.status().as_u16() != 201 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["alert_id"].as_str().map(str::to_owned)
}

/// `switchboard all` on `cluster`, three copies of everything, with
/// `env` besides the JWT secret.
fn node_on(cluster: &Cluster, env: &[(&str, &str)]) -> Switchboard {
    let mut env = env.to_vec();
    env.push(("SWITCHBOARD_JWT_SECRET", SECRET));
    Switchboard::all_with_env(
        None,
        &["--nats-url", &cluster.url(), "--jetstream-replicas", "3"],
        &env,
    )
}

/// mo's alerts socket, past its `connected`, answering every ping all
/// along as a real client does (a silent one is rightly closed as dead,
/// with 1001), while the test looks elsewhere for as long as a cluster's
/// recovery takes.
async fn mos_alerts(node: &Switchboard) -> support::AnsweringClient {
    let mut alerts =
        Client::connect(&node.ws(&format!("/ws/alerts/mo?token={}", token("mo", false))))
            .await
            .answering_pings();
    alerts.expect_within("connected", WAIT).await;
    alerts
}

/// How long the cluster may take to recover from a lost server: its
/// streams elect new leaders (every replicated stream and bucket, one Raft
/// group each), and clients' consumers are made anew, on two busy cores.
const RECOVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_frames_and_alerts_survive_losing_a_nats_server() {
    let mut cluster = Cluster::start();
    let node = node_on(
        &cluster,
        &[
            // A heartbeat timeout shorter than a registry call that waits
            // out the recovery (the 5 s gRPC timeout): a client that
            // answers every ping is still not taken for dead meanwhile.
            ("SWITCHBOARD_HEARTBEAT_INTERVAL_SECS", "1"),
            ("SWITCHBOARD_HEARTBEAT_TIMEOUT_SECS", "3"),
        ],
    );
    eventually("the edge to work on the cluster", || async {
        a_session_works(&node).await.then_some(())
    })
    .await;
    // Every service up (the statistics service opens its state last).
    eventually("every service serving", || async {
        let (_, health) = get_json(&format!("{}/health", node.http())).await;
        (health["status"] == "healthy").then_some(())
    })
    .await;
    let mut alerts = mos_alerts(&node).await;
    let before = eventually("a frame stored", || a_frame_is_stored(&node)).await;
    let raised = eventually("an alert raised", || an_alert_is_raised(&node)).await;
    assert_eq!(
        alerts.expect_within("anomaly_detected", WAIT).await["alert_id"],
        raised.as_str()
    );

    let leader = cluster.leader_of("KV_sessions");
    let killed = cluster.kill(leader);
    eprintln!("killed {killed}, the sessions bucket's leader");

    eventually_within("a session to open after the loss", RECOVERY, || async {
        a_session_works(&node).await.then_some(())
    })
    .await;
    let after = eventually_within("a frame stored after the loss", RECOVERY, || {
        a_frame_is_stored(&node)
    })
    .await;
    // (A try that timed out on the client's side may still have stored its
    // frame: numbers go on from `before`, with no gap.)
    assert!(after > before, "the workout's frames go on, numbered on");
    let (_, page) = get_json(&format!("{}/api/workouts/w1/frames?limit=500", node.http())).await;
    let numbers: Vec<u64> = page["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|frame| frame["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=after).collect::<Vec<_>>(),
        "every frame kept, numbered 1, 2, 3…"
    );
    let raised = eventually_within("an alert raised after the loss", RECOVERY, || {
        an_alert_is_raised(&node)
    })
    .await;
    // The reader's consumer lived on a server that may be the one killed:
    // it is made anew on another once the stream has a new leader, which
    // on two busy cores can take longer than one WAIT.
    let delivered = loop {
        let message = alerts
            .next_json_within(RECOVERY)
            .await
            .unwrap_or_else(|closed| panic!("the alerts socket stays open; closed: {closed:?}"));
        if message["type"] == "anomaly_detected" {
            break message;
        }
    };
    assert_eq!(
        delivered["alert_id"],
        raised.as_str(),
        "delivered after the loss"
    );

    // On three replicas too, a frame sent again with its id (as a client
    // whose try timed out would) is stored once and answered as before.
    let (_, first) = eventually_within("a frame with an id stored", RECOVERY, || {
        a_frame_with_an_id_is_answered(&node, "cluster-1")
    })
    .await;
    let (status, again) = a_frame_with_an_id_is_answered(&node, "cluster-1")
        .await
        .expect("the resend is answered");
    assert_eq!((status, &again), (200, &first), "the original result again");
    let (_, page) = get_json(&format!("{}/api/workouts/w1/frames?limit=500", node.http())).await;
    let with_id = page["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|frame| frame["message_id"] == "cluster-1")
        .count();
    assert_eq!(with_id, 1, "stored once");
}

/// An alerts socket reads its user's mailbox through a consumer that lives
/// on one server. Killing that server tells the reader nothing: it must
/// notice by itself (its pull does not end in time), make a new consumer
/// on the servers left, and deliver an alert raised after the loss, with
/// the socket open all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_socket_reads_on_when_the_server_holding_its_reader_is_killed() {
    let mut cluster = Cluster::start();
    let node = node_on(&cluster, &[]);
    eventually("an alert raised", || an_alert_is_raised(&node)).await;
    let mut alerts = mos_alerts(&node).await;
    alerts.expect_within("anomaly_detected", WAIT).await;

    // The socket's reader is the stream's one consumer; the server that
    // leads it holds it.
    let holder = cluster.logged_by("new consumer leader for '$G > MAILBOX_ALERTS > ");
    let killed = cluster.kill(holder);
    eprintln!("killed {killed}, which held the alerts reader's consumer");

    let raised = eventually_within("an alert raised after the loss", RECOVERY, || {
        an_alert_is_raised(&node)
    })
    .await;
    let delivered = alerts
        .next_json_within(RECOVERY)
        .await
        .unwrap_or_else(|closed| panic!("the alerts socket stays open; closed: {closed:?}"));
    assert_eq!(delivered["type"], "anomaly_detected", "{delivered}");
    assert_eq!(
        delivered["alert_id"],
        raised.as_str(),
        "delivered after the loss"
    );
}
