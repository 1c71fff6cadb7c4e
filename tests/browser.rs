//! The seeds' front ends, run in a real browser: headless Chromium (Debian's
//! `chromium`, driven by playwright-core from `tests/js`) loads pages served
//! from **another origin than the edge** and runs each seed's own flow as
//! the seed describes it (`tests/js/browser/pages`):
//!
//! - seed 000: `new WebSocket(".../ws/realtime")`, samples, `stats`, `stop`,
//!   and `fetch` of `/sessions` and `/sessions/{id}` (GET, DELETE);
//! - seed 001: the `socket.io-client` browser bundle with default options
//!   (polling, then the upgrade to WebSocket) through a workout;
//! - seed 002: `useAnomalyAlerts` (heartbeat, `ack`, reconnection with
//!   backoff) across an edge restart, with an alert raised while it was away;
//! - seed 003: `useWebSocket` on `/ws/ui` receiving the seed's four curl
//!   broadcasts and the page's own `fetch` POST; and the README's
//!   reconnect loop, resuming from its last position with nothing lost;
//! - seed 004: `WebSocketService` (subscribe, `statistics_update`,
//!   `camera_event`) and its fallback to polling `GET /api/statistics` with
//!   a bearer token when the WebSocket is refused;
//! - and an allow-list of origins: a listed page is served, a foreign one is
//!   refused (CORS, WebSocket upgrade, Socket.IO).
//!
//! Why a browser: CORS, preflights and the `Origin` of WebSocket upgrades
//! are enforced by browsers only; the other tests' clients never see them.
//! The assertions are on what each page could read (its `window.report`)
//! and on what the browser saw on the wire (status and headers of every
//! request to the edge, preflights and refused ones included, from the
//! DevTools protocol). Without CORS on the edge these tests fail: the
//! pages' `fetch` and Socket.IO polling are blocked.

mod support;

use serde_json::{Value, json};
use support::driver::Driver;
use support::{Client, Nats, Switchboard, WAIT, get_json, realtime_session};

const SECRET: &str = "browser-test-secret-0123456789abcdef0123";

/// A JWT for `sub` (an admin's with `admin`), valid for ten minutes,
/// minted as a developer would: `switchboard token`, signed with [`SECRET`].
fn token(sub: &str, admin: bool) -> String {
    support::tokens::minted(SECRET, sub, admin)
}

/// Which CORS answer a page's origin should get from the edge.
#[derive(Clone, Copy)]
enum Cors<'a> {
    /// No allow-list: `Access-Control-Allow-Origin: *`.
    Any,
    /// On the allow-list: the origin mirrored, credentials allowed.
    Listed(&'a str),
}

/// `tests/js/browser/driver.mjs`: Chromium and two page servers (the
/// "listed" and the "foreign" origin), one JSON command per line.
struct Browser {
    driver: Driver,
    /// `http://127.0.0.1:<port>`: where pages are served from.
    listed: String,
    /// Another page server, hence another origin.
    foreign: String,
}

/// What a page reported, what its console said, what the browser saw on
/// the network.
struct Snapshot(Value);

impl Snapshot {
    fn report(&self) -> &Value {
        &self.0["report"]
    }

    /// The page's flow ran to its end without an exception.
    fn assert_flow_succeeded(&self) {
        assert_eq!(
            self.report()["done"],
            true,
            "the page's flow did not finish\n{self}"
        );
        assert!(
            self.report()["failure"].is_null(),
            "the page's flow failed: {}\n{self}",
            self.report()["failure"]
        );
    }

    /// Messages the page received, of `kind` (`type`).
    fn received(&self, kind: &str) -> Vec<&Value> {
        self.report()["received"]
            .as_array()
            .expect("report.received")
            .iter()
            .filter(|message| message["type"] == kind)
            .collect()
    }

    fn console_says(&self, needle: &str) -> bool {
        self.0["console"]
            .as_array()
            .unwrap()
            .iter()
            .any(|line| line["text"].as_str().unwrap().contains(needle))
    }

    /// Requests to the edge whose URL contains `path`, as the browser saw
    /// them: `method` (`OPTIONS` for CORS preflights), the `status` and
    /// `headers` of the response if one came, the `failure` and
    /// `cors_error` if the page was not given it.
    fn requests(&self, method: &str, path: &str) -> Vec<&Value> {
        self.0["network"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| {
                entry["method"] == method && entry["url"].as_str().unwrap().contains(path)
            })
            .collect()
    }

    /// Those of [`Self::requests`] that got a response.
    fn responses(&self, method: &str, path: &str) -> Vec<&Value> {
        let mut responses = self.requests(method, path);
        responses.retain(|entry| entry["status"].is_number());
        responses
    }

    /// Every response the page got from the edge at `path` carried the CORS
    /// headers `cors` calls for (and there was at least one).
    fn assert_cors(&self, method: &str, path: &str, cors: Cors<'_>) {
        let responses = self.responses(method, path);
        assert!(!responses.is_empty(), "no {method} {path} response\n{self}");
        for response in responses {
            assert_allows(response, cors);
        }
    }

    /// The browser asked before sending `method` to `path` (with `header`,
    /// if given): a CORS preflight, and the edge said yes.
    fn assert_preflight(&self, method: &str, path: &str, header: Option<&str>, cors: Cors<'_>) {
        let preflights = self.responses("OPTIONS", path);
        assert!(
            !preflights.is_empty(),
            "no preflight before {method} {path}\n{self}"
        );
        for preflight in preflights {
            let status = preflight["status"].as_u64().unwrap();
            assert!(
                (200..300).contains(&status),
                "preflight before {method} {path}: {preflight}"
            );
            assert_allows(preflight, cors);
            let lists = |name: &str, wanted: &str| {
                preflight["headers"][name]
                    .as_str()
                    .unwrap_or_default()
                    .split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(wanted))
            };
            assert!(
                lists("access-control-allow-methods", method),
                "{method} not allowed: {preflight}"
            );
            if let Some(header) = header {
                assert!(
                    lists("access-control-allow-headers", header),
                    "{header} not allowed: {preflight}"
                );
            }
        }
    }
}

/// A response (or preflight) carries the CORS headers `cors` calls for.
fn assert_allows(response: &Value, cors: Cors<'_>) {
    let headers = &response["headers"];
    match cors {
        Cors::Any => {
            assert_eq!(headers["access-control-allow-origin"], "*", "{response}");
            assert!(
                headers["access-control-allow-credentials"].is_null(),
                "no credentials with *: {response}"
            );
        }
        Cors::Listed(origin) => {
            assert_eq!(headers["access-control-allow-origin"], origin, "{response}");
            assert_eq!(
                headers["access-control-allow-credentials"], "true",
                "{response}"
            );
        }
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string_pretty(&self.0).unwrap();
        const LIMIT: usize = 24_000;
        if text.len() > LIMIT {
            let cut: String = text.chars().take(LIMIT).collect();
            write!(f, "page snapshot (truncated):\n{cut}…")
        } else {
            write!(f, "page snapshot:\n{text}")
        }
    }
}

impl Browser {
    async fn start() -> Self {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let (driver, ready) = Driver::start("browser/driver.mjs", &chromium, "chromium").await;
        let origin = |name: &str| ready["ready"]["origins"][name].as_str().unwrap().to_owned();
        Self {
            listed: origin("listed"),
            foreign: origin("foreign"),
            driver,
        }
    }

    /// Sends one command and returns the driver's answer to it.
    async fn call(&mut self, command: Value) -> Value {
        self.driver.send(command).await
    }

    /// Opens `page` from `origin` (one of [`Self::listed`], [`Self::foreign`])
    /// with `query`, in a fresh browser context.
    async fn open(&mut self, origin: &str, page: &str, query: Value) -> String {
        let origin = if origin == self.listed {
            "listed"
        } else {
            assert_eq!(origin, self.foreign, "not a page server's origin");
            "foreign"
        };
        let answer = self
            .call(json!({"cmd": "open", "origin": origin, "page": page, "query": query}))
            .await;
        assert_eq!(
            answer["ok"], true,
            "cannot open {page}: {}",
            answer["error"]
        );
        answer["handle"].as_str().unwrap().to_owned()
    }

    /// Waits (at most [`WAIT`]) until the JS expression `until` holds in the
    /// page, and returns the page's snapshot then.
    async fn wait(&mut self, page: &str, until: &str) -> Snapshot {
        let answer = self
            .call(json!({"cmd": "wait", "handle": page, "until": until, "timeout_ms": WAIT.as_millis() as u64}))
            .await;
        let snapshot = Snapshot(answer["snapshot"].clone());
        assert_eq!(
            answer["ok"], true,
            "waiting for the page: {}\n{snapshot}",
            answer["error"]
        );
        snapshot
    }

    async fn close(&mut self, page: &str) {
        let answer = self.call(json!({"cmd": "close", "handle": page})).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
}

/// Runs `curl` (the real binary) with `args`, as the seed writes the
/// command, and returns the HTTP status and the body.
async fn curl(args: &[&str]) -> (u16, String) {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl timed out")
    .expect("curl must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

async fn post_json(url: String, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("timed out")
        .expect("http request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Seed 000's page on `origin`: a session, then the REST API on another
/// session, which is terminated from the page.
async fn realtime_page(browser: &mut Browser, edge: &Switchboard, origin: &str, cors: Cors<'_>) {
    let (mut other, other_id) = realtime_session(edge).await;
    let page = browser
        .open(
            origin,
            "realtime.html",
            json!({"edge": edge.http(), "other_session": other_id}),
        )
        .await;
    let seen = browser.wait(&page, "report.done").await;
    seen.assert_flow_succeeded();
    let report = seen.report();

    let kinds: Vec<&str> = report["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "session_started",
            "step_detection",
            "step_detection",
            "step_detection",
            "step_detection",
            "step_detection",
            "stats_response",
            "stop_response"
        ],
        "{seen}"
    );
    let session_id = seen.received("session_started")[0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for message in report["received"].as_array().unwrap() {
        assert_eq!(message["session_id"], session_id.as_str(), "{message}");
    }
    let detections = seen.received("step_detection");
    for (i, detection) in detections.iter().enumerate() {
        assert_eq!(detection["total_predictions"], i + 1, "{detection}");
        let samples = if i == 0 { 1 } else { 50 };
        assert_eq!(detection["prediction"]["samples"], samples, "{detection}");
    }
    let stats = seen.received("stats_response")[0];
    assert_eq!(stats["status"], "success", "{stats}");
    assert_eq!(stats["user_stats"]["total_predictions"], 5, "{stats}");
    let stop = seen.received("stop_response")[0];
    assert_eq!(stop["status"], "success", "{stop}");
    assert_eq!(stop["session_stats"]["total_predictions"], 5, "{stop}");
    assert!(
        stop["session_stats"]["total_steps"].as_u64().unwrap() > 0,
        "four seconds of walking, no step counted: {stop}"
    );
    assert_eq!(report["close"]["code"], 1000, "{seen}");
    assert_eq!(report["close"]["wasClean"], true, "{seen}");

    // What the page could read over REST, cross-origin.
    let rest = &report["rest"];
    assert_eq!(rest["list"]["status"], 200, "GET /sessions\n{seen}");
    let listed: Vec<&str> = rest["list"]["body"]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|session| session["session_id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&session_id.as_str()), "{seen}");
    assert!(listed.contains(&other_id.as_str()), "{seen}");
    assert_eq!(rest["own"]["status"], 200, "GET /sessions/{{own}}\n{seen}");
    assert_eq!(rest["own"]["body"]["session_id"], session_id.as_str());
    assert_eq!(rest["own"]["body"]["kind"], "realtime");
    assert_eq!(rest["own"]["body"]["total_predictions"], 5, "{seen}");
    assert_eq!(
        rest["other"]["status"], 200,
        "GET /sessions/{{other}}\n{seen}"
    );
    assert_eq!(rest["other"]["body"]["session_id"], other_id.as_str());
    assert_eq!(
        rest["terminate"]["status"], 200,
        "DELETE /sessions/{{other}} (preflighted)\n{seen}"
    );
    assert_eq!(rest["terminate"]["body"]["status"], "terminated", "{seen}");
    seen.assert_cors("GET", "/sessions", cors);
    seen.assert_cors("DELETE", "/sessions/", cors);
    seen.assert_preflight("DELETE", "/sessions/", None, cors);

    // The session the page terminated ends on its own socket.
    let terminated = other.expect("session_terminated").await;
    assert_eq!(terminated["session_id"], other_id.as_str());
    assert_eq!(other.expect_close().await.code, 1000);
    browser.close(&page).await;
}

/// Seed 001's page on `origin`: a workout over Socket.IO with default
/// options, which start on polling and upgrade to WebSocket.
async fn pressure_page(browser: &mut Browser, edge: &Switchboard, origin: &str, cors: Cors<'_>) {
    let workout = format!("browser-{}", browser.driver.sent());
    let page = browser
        .open(
            origin,
            "pressure.html",
            json!({"edge": edge.http(), "workout_id": workout, "frames": 6}),
        )
        .await;
    let seen = browser.wait(&page, "report.done").await;
    seen.assert_flow_succeeded();
    let report = seen.report();
    assert_eq!(
        report["opened_on"], "polling",
        "default options start on polling\n{seen}"
    );
    assert_eq!(report["upgraded_to"], "websocket", "{seen}");
    let polls = seen.responses("GET", "transport=polling");
    assert!(!polls.is_empty(), "{seen}");
    assert!(polls.iter().all(|poll| poll["status"] == 200), "{seen}");
    let upgrades = seen.responses("WEBSOCKET", "transport=websocket");
    assert_eq!(upgrades.len(), 1, "{seen}");
    assert_eq!(upgrades[0]["status"], 101, "{seen}");
    assert_eq!(report["transport_before_leaving"], "websocket");
    assert_eq!(report["connected_after_disconnect"], false);

    let received = report["received"].as_array().unwrap();
    let events: Vec<&str> = received
        .iter()
        .map(|message| message["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "session_joined",
            "frame_processed",
            "frame_processed",
            "frame_processed",
            "frame_processed",
            "frame_processed",
            "frame_processed",
            "session_ended"
        ],
        "{seen}"
    );
    assert_eq!(received[0]["data"]["workout_id"], workout.as_str());
    assert_eq!(received[0]["data"]["status"], "joined");
    let frames = report["frames"].as_array().unwrap();
    let mut last_sequence = None;
    for (i, processed) in received[1..7].iter().enumerate() {
        let data = &processed["data"];
        let value = i + 1;
        assert_eq!(data["workout_id"], workout.as_str(), "{data}");
        assert_eq!(data["frame_count"], value, "{data}");
        assert_eq!(
            data["timestamp"].as_f64(),
            frames[i]["timestamp"].as_f64(),
            "{data}"
        );
        assert_eq!(data["stats"]["total_pressure"], value as f64, "{data}");
        assert_eq!(data["stats"]["peak_pressure"], value as f64, "{data}");
        assert_eq!(data["stats"]["peak_row"], value % 2, "{data}");
        assert_eq!(data["stats"]["peak_column"], value % 3, "{data}");
        let sequence = data["sequence"].as_u64().expect("sequence");
        assert!(last_sequence < Some(sequence), "{data}");
        last_sequence = Some(sequence);
    }
    assert_eq!(received[7]["data"]["workout_id"], workout.as_str());
    seen.assert_cors("GET", "/socket.io/", cors);
    browser.close(&page).await;

    // The frames the page streamed were stored.
    let (status, stored) = get_json(&format!("{}/api/workouts/{workout}", edge.http())).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["frame_count"], 6, "{stored}");
}

/// The probe page on `origin`: fetch (simple and preflighted), a WebSocket
/// and Socket.IO, each tried once.
async fn probe_page(browser: &mut Browser, edge: &Switchboard, origin: &str) -> Snapshot {
    let page = browser
        .open(origin, "probe.html", json!({"edge": edge.http()}))
        .await;
    let seen = browser.wait(&page, "report.done").await;
    seen.assert_flow_succeeded();
    browser.close(&page).await;
    seen
}

/// A listed origin may do everything the seeds' front ends do.
fn assert_probe_served(seen: &Snapshot, origin: &str) {
    let report = seen.report();
    assert_eq!(report["get"]["status"], 200, "GET /health\n{seen}");
    assert_eq!(report["get"]["body"]["status"], "healthy", "{seen}");
    assert_eq!(
        report["post"]["status"], 202,
        "POST /api/events/broadcast (preflighted)\n{seen}"
    );
    assert_eq!(report["websocket"]["opened"], true, "{seen}");
    assert_eq!(report["websocket"]["messages"][0]["type"], "connection");
    assert_eq!(report["socketio"]["connected"], true, "{seen}");
    seen.assert_cors("GET", "/health", Cors::Listed(origin));
    seen.assert_preflight(
        "POST",
        "/api/events/broadcast",
        Some("content-type"),
        Cors::Listed(origin),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_000_page_on_another_origin_streams_samples_and_manages_sessions_over_rest() {
    let edge = Switchboard::all(None, &[]);
    let mut browser = Browser::start().await;
    let origin = browser.listed.clone();
    realtime_page(&mut browser, &edge, &origin, Cors::Any).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_001_page_streams_a_workout_with_socketio_default_transports() {
    let edge = Switchboard::all(None, &[]);
    let mut browser = Browser::start().await;
    let origin = browser.listed.clone();
    pressure_page(&mut browser, &edge, &origin, Cors::Any).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_002_page_acks_alerts_and_reconnects_with_backoff_after_the_edge_restarts() {
    let nats = Nats::start();
    let node_args = |addr: &str| -> Vec<String> {
        [
            "all",
            "--http-addr",
            addr,
            "--nats-url",
            &nats.url,
            "--jwt-secret",
            SECRET,
            "--heartbeat-interval-secs",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let start = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Switchboard::start(&args)
    };
    let mut edge = start(&node_args("127.0.0.1:0"));
    let addr = edge.http().trim_start_matches("http://").to_owned();
    let other_edge = start(&node_args("127.0.0.1:0"));
    let admin = token("ops", true);
    let raise = |on: String, kind: &'static str| {
        let admin = admin.clone();
        async move {
            let (status, alert) = post_json(
                format!("{on}/api/alerts"),
                Some(&admin),
                json!({"user_id": "alice", "anomaly_type": kind, "severity": "warning"}),
            )
            .await;
            assert_eq!(status, 201, "{alert}");
            alert["alert_id"].as_str().unwrap().to_owned()
        }
    };

    let mut browser = Browser::start().await;
    let origin = browser.listed.clone();
    let page = browser
        .open(
            &origin,
            "alerts.html",
            json!({
                "edge": edge.http(),
                "user_id": "alice",
                "token": token("alice", false),
                "initial_delay": 200,
                "max_delay": 1600,
                "heartbeat_interval": 300,
                "heartbeat_timeout": 5000,
            }),
        )
        .await;
    browser
        .wait(&page, "report.received.some(m => m.type === 'connected')")
        .await;

    // An alert, acknowledged by the page.
    let first = raise(edge.http(), "intrusion").await;
    let seen = browser
        .wait(
            &page,
            &format!(
                "report.received.some(m => m.type === 'ack_confirmed' && m.alert_id === '{first}')"
            ),
        )
        .await;
    let alerts = seen.received("anomaly_detected");
    assert_eq!(alerts.len(), 1, "{seen}");
    assert_eq!(alerts[0]["alert_id"], first.as_str());
    assert_eq!(alerts[0]["user_id"], "alice");
    assert_eq!(alerts[0]["anomaly_type"], "intrusion");
    assert_eq!(alerts[0]["severity"], "warning");
    assert_eq!(seen.report()["connected"], true);

    // Heartbeats both ways: the page's pings answered, the server's ping
    // (every second) answered by the page.
    let seen = browser
        .wait(
            &page,
            "report.received.some(m => m.type === 'ping') \
             && report.received.filter(m => m.type === 'pong').length >= 2 \
             && report.sent.some(m => m.type === 'pong')",
        )
        .await;
    assert!(
        seen.report()["sent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["type"] == "ping")
    );

    // The edge restarts: SIGTERM (drain, close 1012), then a new process on
    // the same port. Meanwhile an alert is raised through the other edge.
    edge.terminate();
    assert!(
        edge.wait_exit(WAIT).is_some(),
        "the edge did not exit on SIGTERM"
    );
    let second = raise(other_edge.http(), "smoke").await;
    // The page keeps trying, with growing delays, while nobody listens.
    browser
        .wait(
            &page,
            "report.log.filter(e => e.kind === 'close' && !e.opened).length >= 3",
        )
        .await;
    edge = start(&node_args(&addr));
    assert_eq!(edge.http(), format!("http://{addr}"));

    let seen = browser
        .wait(
            &page,
            &format!(
                "report.received.some(m => m.type === 'ack_confirmed' && m.alert_id === '{second}')"
            ),
        )
        .await;
    let report = seen.report();
    let ids: Vec<&str> = seen
        .received("anomaly_detected")
        .iter()
        .map(|alert| alert["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [first.as_str(), second.as_str()],
        "each alert once\n{seen}"
    );
    let connected = seen.received("connected");
    assert_eq!(connected.len(), 2, "{seen}");
    assert_eq!(connected[1]["pending_alerts"], 1, "{seen}");

    let log = report["log"].as_array().unwrap();
    let closes: Vec<&Value> = log.iter().filter(|e| e["kind"] == "close").collect();
    assert_eq!(closes[0]["code"], 1012, "the drain's close\n{seen}");
    assert_eq!(closes[0]["reason"], "server restarting: reconnect");
    assert_eq!(closes[0]["opened"], true);
    assert!(closes[1..].iter().all(|close| close["opened"] == false));
    let delays: Vec<u64> = log
        .iter()
        .filter(|e| e["kind"] == "reconnect_scheduled")
        .map(|e| e["delay"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..delays.len() as u32)
        .map(|attempt| (200 << attempt).min(1600))
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    assert_eq!(delays, expected, "exponential backoff from 200 ms to 1.6 s");
    let opens = log.iter().filter(|e| e["kind"] == "open").count();
    assert_eq!(opens, 2, "{seen}");
    assert_eq!(report["connected"], true);
    assert_eq!(report["alerts"], json!([first, second]));
}

/// The README's reconnect loop for seed 003's UI, in the browser: a page on
/// another origin closes its `/ws/ui` socket, misses two broadcasts, and
/// reconnects with the position of the last message it got; it gets the
/// two, in order, then `resumed`, then live messages, each once.
#[tokio::test(flavor = "multi_thread")]
async fn seed_003_page_resumes_after_a_reconnect_with_nothing_lost() {
    let edge = Switchboard::all(None, &[]);
    let mut browser = Browser::start().await;
    let origin = browser.listed.clone();
    let page = browser
        .open(&origin, "ui_resume.html", json!({"edge": edge.http()}))
        .await;
    let seen = browser.wait(&page, "report.done === true").await;
    seen.assert_flow_succeeded();
    let report = seen.report();
    assert_eq!(report["numbers"], json!([1, 2, 3, 4]), "{seen}");
    let resumed = &report["resumed"];
    assert_eq!(resumed["recovered"], true, "{seen}");
    assert!(resumed["missed"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(resumed["epoch"], report["away_from"]["epoch"], "{seen}");
    seen.assert_cors("POST", "/api/events/broadcast", Cors::Any);
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_003_page_receives_the_seed_curl_broadcasts_and_its_own() {
    let edge = Switchboard::all(None, &[]);
    let mut browser = Browser::start().await;
    let origin = browser.listed.clone();
    let page = browser
        .open(&origin, "ui.html", json!({"edge": edge.http()}))
        .await;
    let seen = browser.wait(&page, "report.ready === true").await;
    let own = &seen.report()["own_broadcast"];
    assert_eq!(
        own["status"], 202,
        "the page's own POST (preflighted)\n{seen}"
    );
    seen.assert_cors("POST", "/api/events/broadcast", Cors::Any);
    seen.assert_preflight(
        "POST",
        "/api/events/broadcast",
        Some("content-type"),
        Cors::Any,
    );

    // The seed's four commands, as written (but for the host).
    let http = edge.http();
    let seed_commands: [(String, &str); 4] = [
        (
            format!("{http}/api/events/broadcast"),
            r#"{
    "event_type": "test_event",
    "data": {"message": "Hello WebSocket"}
  }"#,
        ),
        (
            format!("{http}/api/events/broadcast/action"),
            r#"{
    "action": "sit",
    "confidence": 0.95,
    "metadata": {"duration": 5.2}
  }"#,
        ),
        (
            format!("{http}/api/events/broadcast/overlay"),
            r#"{
    "overlay_type": "detection",
    "data": {
      "boxes": [
        {"x": 100, "y": 150, "w": 200, "h": 300, "label": "dog", "confidence": 0.95}
      ]
    }
  }"#,
        ),
        (
            format!("{http}/api/events/broadcast/telemetry"),
            r#"{
    "data": {
      "fps": 30,
      "latency_ms": 120,
      "temperature": 45.5
    }
  }"#,
        ),
    ];
    for (url, body) in &seed_commands {
        let (status, answer) = curl(&[
            "-X",
            "POST",
            url,
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ])
        .await;
        assert_eq!(status, 202, "{url}: {answer}");
    }

    let seen = browser
        .wait(&page, "report.received.some(m => m.type === 'telemetry')")
        .await;
    let report = seen.report();
    let received = report["received"].as_array().unwrap();
    assert_eq!(received[0]["type"], "connection", "{seen}");
    assert_eq!(received[0]["data"]["status"], "connected");
    assert_eq!(report["isConnected"], true);
    let broadcasts: Vec<Value> = received
        .iter()
        .filter(|message| {
            matches!(message["type"].as_str(), Some("overlay" | "telemetry"))
                || matches!(
                    message["event_type"].as_str(),
                    Some("bookmark" | "test_event" | "sit")
                )
        })
        .map(without_position)
        .collect();
    assert_eq!(broadcasts.len(), 5, "{seen}");
    assert_eq!(broadcasts[0]["type"], "event");
    assert_eq!(broadcasts[0]["event_type"], "bookmark");
    assert_eq!(broadcasts[0]["data"]["note"], "from the browser");
    assert_eq!(
        broadcasts[1],
        json!({"type": "event", "event_type": "test_event", "data": {"message": "Hello WebSocket"}})
    );
    assert_eq!(broadcasts[2]["type"], "event");
    assert_eq!(broadcasts[2]["event_type"], "sit");
    assert_eq!(broadcasts[2]["data"]["confidence"], 0.95);
    assert_eq!(broadcasts[2]["data"]["metadata"], json!({"duration": 5.2}));
    let boxes =
        json!([{"x": 100, "y": 150, "w": 200, "h": 300, "label": "dog", "confidence": 0.95}]);
    assert_eq!(
        broadcasts[3],
        json!({"type": "overlay", "overlay_type": "detection", "data": {"boxes": boxes}})
    );
    assert_eq!(
        broadcasts[4],
        json!({"type": "telemetry", "data": {"fps": 30, "latency_ms": 120, "temperature": 45.5}})
    );
    // The VideoPlayer acted on them.
    assert_eq!(report["sat"], true);
    assert_eq!(report["detection_boxes"], boxes);
    assert!(seen.console_says("Dog sat down!"));
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_004_page_subscribes_and_falls_back_to_polling_when_refused() {
    // One statistics connection per user, so a second one is refused (1008)
    // although its token is good: the seed's fallback must then poll.
    let edge = Switchboard::all(
        None,
        &[
            "--jwt-secret",
            SECRET,
            "--statistics-interval-secs",
            "1",
            "--statistics-max-connections",
            "1",
        ],
    );
    let mut browser = Browser::start().await;
    let origin = browser.listed.clone();
    let page = browser
        .open(
            &origin,
            "statistics.html",
            json!({"edge": edge.http(), "token": token("dave", false)}),
        )
        .await;
    let seen = browser
        .wait(
            &page,
            "report.received.some(m => m.type === 'subscription_updated') \
             && report.updates.length >= 1",
        )
        .await;
    let status = &seen.received("connection_status")[0];
    assert_eq!(status["status"], "connected", "{seen}");
    assert_eq!(status["user"]["id"], "dave");
    let mut subscribed: Vec<&str> = seen.received("subscription_updated")[0]["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kind| kind.as_str().unwrap())
        .collect();
    subscribed.sort_unstable();
    assert_eq!(subscribed, ["camera_event", "statistics_update"], "{seen}");
    assert_eq!(seen.report()["statuses"], json!(["connected"]));
    let update = &seen.report()["updates"][0];
    assert!(update["tick"].is_number(), "{update}");
    assert!(update["data"]["sessions"]["active"].is_number(), "{update}");

    // An alert (not subscribed to), then a camera event (subscribed).
    let admin = token("ops", true);
    let camera = json!({
        "type": "camera_event",
        "timestamp": "2025-10-10T12:00:00.000Z",
        "camera_id": 1,
        "event_type": "motion_detected",
        "data": {"details": "Motion detected in zone 1"}
    });
    let alert = json!({
        "type": "alert",
        "timestamp": "2025-10-10T12:00:00.000Z",
        "alert_type": "warning",
        "data": {"message": "Unknown face detected", "camera_id": 1}
    });
    for message in [&alert, &camera] {
        let (status, answer) = post_json(
            format!("{}/api/ws/statistics/broadcast", edge.http()),
            Some(&admin),
            message.clone(),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
    }
    let updates_before = seen.report()["updates"].as_array().unwrap().len();
    let seen = browser
        .wait(
            &page,
            &format!(
                "report.camera_events.length >= 1 && report.updates.length > {updates_before}"
            ),
        )
        .await;
    let camera_events: Vec<Value> = seen.report()["camera_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(without_position)
        .collect();
    assert_eq!(camera_events, std::slice::from_ref(&camera));
    assert!(
        seen.received("alert").is_empty(),
        "unsubscribed alert delivered\n{seen}"
    );

    // The same user's page on another origin: over the limit, refused, so
    // it polls GET /api/statistics with its bearer token.
    let carol = token("carol", false);
    let mut held = Client::connect(&edge.ws(&format!("/api/ws/statistics?token={carol}"))).await;
    held.expect("connection_status").await;
    let foreign = browser.foreign.clone();
    let polling = browser
        .open(
            &foreign,
            "statistics.html",
            json!({"edge": edge.http(), "token": carol, "poll_interval": 300}),
        )
        .await;
    let seen = browser
        .wait(
            &polling,
            "report.updates.length >= 2 || report.polling_errors.length >= 2",
        )
        .await;
    let report = seen.report();
    assert_eq!(report["closes"][0]["code"], 1008, "{seen}");
    assert_eq!(
        report["closes"][0]["reason"],
        "connection limit reached: at most 1 connections per user"
    );
    // Opened, closed with 1008 at once, and no retry: polling instead.
    assert_eq!(
        report["statuses"],
        json!(["connected", "polling"]),
        "{seen}"
    );
    assert_eq!(
        report["polling_errors"],
        json!([]),
        "the polls failed\n{seen}"
    );
    for update in report["updates"].as_array().unwrap() {
        assert_eq!(update["source"], "polling");
        assert!(update["data"]["sessions"]["active"].is_number(), "{update}");
        assert!(
            update["data"]["connections"]["total"].is_number(),
            "{update}"
        );
    }
    seen.assert_cors("GET", "/api/statistics", Cors::Any);
    seen.assert_preflight("GET", "/api/statistics", Some("authorization"), Cors::Any);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_allow_list_the_seed_pages_on_a_listed_origin_are_served() {
    let mut browser = Browser::start().await;
    let listed = browser.listed.clone();
    let edge = Switchboard::all(None, &["--allowed-origins", &listed]);
    realtime_page(&mut browser, &edge, &listed, Cors::Listed(&listed)).await;
    pressure_page(&mut browser, &edge, &listed, Cors::Listed(&listed)).await;
    let seen = probe_page(&mut browser, &edge, &listed).await;
    assert_probe_served(&seen, &listed);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_allow_list_a_page_on_a_foreign_origin_is_refused() {
    let mut browser = Browser::start().await;
    let (listed, foreign) = (browser.listed.clone(), browser.foreign.clone());
    let edge = Switchboard::all_with_env(None, &[], &[("SWITCHBOARD_ALLOWED_ORIGINS", &listed)]);

    // The listed origin works (so the refusal below is about the origin).
    let seen = probe_page(&mut browser, &edge, &listed).await;
    assert_probe_served(&seen, &listed);

    let seen = probe_page(&mut browser, &edge, &foreign).await;
    let report = seen.report();
    for attempt in ["get", "post"] {
        assert!(
            report[attempt]["status"].is_null(),
            "{attempt} was served\n{seen}"
        );
        assert_eq!(
            report[attempt]["error"], "TypeError: Failed to fetch",
            "{attempt}\n{seen}"
        );
    }
    assert!(
        seen.console_says("has been blocked by CORS policy"),
        "{seen}"
    );
    // What the browser got, though the page could not read it: 403, for
    // the request and for the preflight alike. Chromium does not always
    // report the response of a request it blocks (its network events race
    // under load), so each is checked when reported, and one at least must
    // be; the edge's answer itself is read below, without a browser.
    let refused = seen.responses("GET", "/health");
    let preflights = seen.responses("OPTIONS", "/api/events/broadcast");
    assert!(refused.len() <= 1 && preflights.len() <= 1, "{seen}");
    assert!(
        !(refused.is_empty() && preflights.is_empty()),
        "no refusal reported\n{seen}"
    );
    for response in refused.iter().chain(&preflights) {
        assert_eq!(response["status"], 403, "{seen}");
    }
    assert!(
        seen.requests("POST", "/api/events/broadcast")[0]["status"].is_null(),
        "the POST was sent after a refused preflight\n{seen}"
    );
    // (The body is the edge's JSON error; a browser hides it from the
    // page and from DevTools' protocol, so it is read here without one.)
    let response = reqwest::Client::new()
        .get(format!("{}/health", edge.http()))
        .header("Origin", &foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "forbidden_origin", "{body}");

    assert_eq!(report["websocket"]["opened"], false, "{seen}");
    assert_eq!(report["websocket"]["close"]["code"], 1006);
    assert!(
        seen.console_says("Unexpected response code: 403"),
        "the upgrade must be refused with 403\n{seen}"
    );
    assert_eq!(report["socketio"]["connected"], false, "{seen}");
    assert!(report["socketio"]["connect_error"].is_string());
    // Every poll was refused: answered 403, or seen failing before the
    // browser's record of its answer came (the page is snapshotted as soon
    // as Socket.IO gives up).
    let polled = seen.requests("GET", "/socket.io/");
    assert!(!polled.is_empty(), "{seen}");
    for polled in polled {
        let refused = polled["status"] == 403
            || (polled["status"].is_null() && polled["failure"].is_string());
        assert!(refused, "{polled}");
    }

    // Clients that are not browsers (no Origin) are not affected.
    let (status, health) = get_json(&format!("{}/health", edge.http())).await;
    assert_eq!(status, 200, "{health}");
}

/// A hub message without its position (`offset`, `epoch`), which every
/// broadcast carries (checked here).
fn without_position(message: &Value) -> Value {
    let mut message = message.clone();
    let object = message.as_object_mut().expect("a JSON object");
    assert!(
        object
            .remove("offset")
            .is_some_and(|offset| offset.is_u64())
            && object
                .remove("epoch")
                .is_some_and(|epoch| epoch.is_string()),
        "a hub message carries its position: {message}"
    );
    message
}
