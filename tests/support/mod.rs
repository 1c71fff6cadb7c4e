//! Test support: real processes on ports the OS picks, real clients, and
//! waits that are always bounded and always wait on a condition.
//!
//! - [`Nats`]: a `nats-server -js` of the test's own (random port, its own
//!   store directory), killed on drop.
//! - [`Switchboard`]: the `switchboard` binary in any role, JSON logs
//!   parsed to learn the addresses it bound; killed on drop.
//! - [`Client`]: a WebSocket client that speaks JSON.
//! - [`eventually`]: polls a condition until it holds or a deadline passes.
//! - [`driver`]: a real browser behind a Node driver script, one JSON
//!   command per line.
//! - [`venv`]: tools from PyPI, pinned, in virtualenvs under `target/`.
//! - [`tokens`]: users' and admins' JWTs, signed here or minted by
//!   `switchboard token`.
//!
//! Set `TEST_LOG=1` to see every process's output.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the support module"
)]

pub mod driver;
pub mod tokens;
pub mod venv;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How long any single wait in a test may take before it fails. Generous:
/// the suite must pass on two busy cores.
pub const WAIT: Duration = Duration::from_secs(20);

fn test_log() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}

/// Lines a child printed, shared with the thread that reads them.
#[derive(Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Output {
    fn follow(self: &Arc<Self>, name: String, stream: impl std::io::Read + Send + 'static) {
        let output = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if test_log() {
                    eprintln!("[{name}] {line}");
                }
                output.lines.lock().unwrap().push(line);
                output.changed.notify_all();
            }
        });
    }

    /// Waits until some line satisfies `find`, and returns what it found.
    fn wait_for<T>(&self, what: &str, mut find: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(found) = lines.iter().find_map(|line| find(line)) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; output so far:\n{}",
                lines.join("\n")
            );
            lines = self.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    fn contains(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
    }
}

/// A `nats-server` with JetStream, on a random loopback port.
pub struct Nats {
    child: Child,
    store: tempfile::TempDir,
    port: u16,
    pub url: String,
}

/// Runs `nats-server -js` on `port` (`-1`: any) with its store in `store`;
/// returns the process once it listens, and the port.
fn nats_server(port: &str, store: &std::path::Path) -> (Child, u16) {
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", port, "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server must be installed (apt-get install nats-server)");
    let output = Arc::new(Output::default());
    output.follow("nats".into(), child.stderr.take().unwrap());
    let port: u16 = output.wait_for("nats-server to listen", |line| {
        line.split("Listening for client connections on 127.0.0.1:")
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
    });
    (child, port)
}

impl Nats {
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let (child, port) = nats_server("-1", store.path());
        Self {
            child,
            store,
            port,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    /// Stops the server at once (SIGKILL): an outage, as clients see it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same store, as a
    /// restarted server (or pod) comes back.
    pub fn restart(&mut self) {
        self.stop();
        let (child, _) = nats_server(&self.port.to_string(), self.store.path());
        self.child = child;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `switchboard` process.
pub struct Switchboard {
    child: Mutex<Child>,
    output: Arc<Output>,
    args: Vec<String>,
}

impl Switchboard {
    /// Starts `switchboard <args>` with JSON logs and a clean environment.
    pub fn start(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        Self::spawn(args)
    }

    /// `switchboard all` with extra environment variables.
    pub fn all_with_env(nats: Option<&Nats>, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec!["all", "--http-addr", "127.0.0.1:0"];
        if let Some(nats) = nats {
            args.extend(["--nats-url", nats.url.as_str()]);
        }
        args.extend(extra);
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn_with(args, env)
    }

    /// `switchboard all` on a free port, joined to `nats` when given.
    pub fn all(nats: Option<&Nats>, extra: &[&str]) -> Self {
        let mut args = vec!["all", "--http-addr", "127.0.0.1:0"];
        if let Some(nats) = nats {
            args.extend(["--nats-url", nats.url.as_str()]);
        }
        args.extend(extra);
        Self::start(&args)
    }

    /// A `session` role and an `edge` that calls it, joined to `nats`,
    /// with no detection or statistics service to reach: for what an edge
    /// does when the registry comes and goes.
    pub fn session_and_lone_edge(nats: &Nats) -> (Switchboard, Switchboard) {
        let session = Switchboard::start(&[
            "session",
            "--grpc-addr",
            "127.0.0.1:0",
            "--nats-url",
            &nats.url,
        ]);
        let nowhere = "http://127.0.0.1:1";
        let edge =
            Switchboard::edge_calling(nats, [&session.grpc("session"), nowhere, nowhere], &[]);
        (session, edge)
    }

    /// `switchboard edge` on a free port, joined to `nats`, calling the
    /// services that `session`, `detection` and `statistics` run.
    pub fn edge(
        nats: &Nats,
        session: &Switchboard,
        detection: &Switchboard,
        statistics: &Switchboard,
        extra: &[&str],
    ) -> Self {
        let urls = [
            session.grpc("session"),
            detection.grpc("detection"),
            statistics.grpc("statistics"),
        ];
        Self::edge_calling(nats, urls.each_ref().map(String::as_str), extra)
    }

    /// `switchboard edge` on a free port, joined to `nats`, calling the
    /// session, detection and statistics services at `urls` (in that
    /// order; detection's may list several replicas).
    pub fn edge_calling(nats: &Nats, urls: [&str; 3], extra: &[&str]) -> Self {
        let [session, detection, statistics] = urls;
        let mut args = vec![
            "edge",
            "--http-addr",
            "127.0.0.1:0",
            "--nats-url",
            &nats.url,
            "--session-url",
            session,
            "--detection-url",
            detection,
            "--statistics-url",
            statistics,
        ];
        args.extend(extra);
        Self::start(&args)
    }

    fn spawn(args: Vec<String>) -> Self {
        Self::spawn_with(args, Vec::new())
    }

    fn spawn_with(args: Vec<String>, env: Vec<(String, String)>) -> Self {
        Self::spawn_command(Command::new(env!("CARGO_BIN_EXE_switchboard")), args, env)
    }

    /// `switchboard <args>` with at most `descriptors` open files (soft and
    /// hard limit, set by util-linux's `prlimit`, which then runs it).
    pub fn start_with_descriptors(descriptors: u32, args: &[&str]) -> Self {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={descriptors}:{descriptors}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_switchboard"));
        let args = args.iter().map(|arg| arg.to_string()).collect();
        Self::spawn_command(command, args, Vec::new())
    }

    fn spawn_command(mut command: Command, args: Vec<String>, env: Vec<(String, String)>) -> Self {
        command
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SWITCHBOARD_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("switchboard binary");
        let output = Arc::new(Output::default());
        let name = args.first().cloned().unwrap_or_default();
        output.follow(name.clone(), child.stdout.take().unwrap());
        output.follow(name, child.stderr.take().unwrap());
        Self {
            child: Mutex::new(child),
            output,
            args,
        }
    }

    /// Fails the test, with the process's output, if it has exited.
    fn assert_running(&self) {
        if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
            let lines = self.output.lines.lock().unwrap().join("\n");
            panic!(
                "switchboard {:?} exited ({status}); its output:\n{lines}",
                self.args
            );
        }
    }

    /// The address `role` listens on, once it does.
    pub fn addr(&self, role: &str) -> SocketAddr {
        self.output.wait_for(&format!("{role} to listen"), |line| {
            let log: Value = serde_json::from_str(line).ok()?;
            (log["message"] == "listening" && log["role"] == role)
                .then(|| log["addr"].as_str()?.parse().ok())
                .flatten()
        })
    }

    pub fn http(&self) -> String {
        self.assert_running();
        format!("http://{}", self.addr("edge"))
    }

    pub fn ws(&self, path: &str) -> String {
        self.assert_running();
        format!("ws://{}{path}", self.addr("edge"))
    }

    /// gRPC URL of a service role.
    pub fn grpc(&self, role: &str) -> String {
        format!("http://{}", self.addr(role))
    }

    /// `switchboard <args>` with extra environment variables (which may
    /// override the JSON log format).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        let env = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Self::spawn_with(args, env)
    }

    /// Every line the process printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.output.lines.lock().unwrap().clone()
    }

    /// Whether the process logged a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.output.contains(needle)
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_logged(&self, needle: &str) {
        self.output
            .wait_for(needle, |line| line.contains(needle).then_some(()));
    }

    /// The process id (for `/proc/<pid>/…`).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Sends the process `signal`, as `kill` names it (`-TERM`, `-STOP`).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Asks the process to shut down (SIGTERM), as Kubernetes does.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Stops the process (SIGSTOP) as a hung one: its sockets stay open
    /// and nothing answers. Returns once every thread of it is stopped (a
    /// stop reaches each thread in its own time).
    pub async fn freeze(&self) {
        self.signal("-STOP");
        let tasks = format!("/proc/{}/task", self.pid());
        eventually("every thread of the process to stop", || {
            let stopped = std::fs::read_dir(&tasks).is_ok_and(|threads| {
                threads.flatten().all(|thread| {
                    // The state follows the command name, in parentheses.
                    std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
                        stat.rsplit_once(") ")
                            .is_some_and(|(_, state)| state.starts_with('T'))
                    })
                })
            });
            async move { stopped.then_some(()) }
        })
        .await;
    }

    /// Lets a frozen process go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Waits, at most `limit`, for the process to exit.
    pub fn wait_exit(&self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL): a crash, not a shutdown.
    pub fn kill(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the same command again (after [`kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let fresh = Self::spawn(self.args.clone());
        *self = fresh;
    }
}

impl Drop for Switchboard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` until it returns `Some`, failing after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, WAIT, condition).await
}

/// [`eventually`], failing after `limit` (for what takes a cluster's
/// recovery, e.g. electing leaders after a server was killed).
pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client that speaks JSON; every wait is bounded by [`WAIT`].
pub struct Client {
    socket: Socket,
}

/// A [`Client`] whose pings a task answers ([`Client::answering_pings`]).
pub struct AnsweringClient {
    received: tokio::sync::mpsc::Receiver<Result<Value, Closed>>,
}

impl AnsweringClient {
    /// The next message other than a `ping`, waiting up to `limit`; how
    /// the server closed the socket if it did.
    pub async fn next_json_within(&mut self, limit: Duration) -> Result<Value, Closed> {
        tokio::time::timeout(limit, self.received.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("the reading task ended without saying why")
    }

    /// The next message other than a `ping`, which must be of `kind`.
    pub async fn expect_within(&mut self, kind: &str, limit: Duration) -> Value {
        let message = self.next_json_within(limit).await.unwrap_or_else(|closed| {
            panic!("expected a {kind} message, the socket closed: {closed:?}")
        });
        assert_eq!(
            message["type"], kind,
            "expected a {kind} message, got {message}"
        );
        message
    }
}

/// How a server closed a socket.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("timed out connecting to {url}"))
            .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"));
        Self { socket }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        tokio::time::timeout(WAIT, self.socket.send(Message::text(text)))
            .await
            .expect("timed out sending")
            .expect("send failed");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        tokio::time::timeout(WAIT, self.socket.send(Message::binary(bytes)))
            .await
            .expect("timed out sending")
            .expect("send failed");
    }

    /// The next JSON message; panics on close, timeout or non-JSON.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("timed out waiting for a message")
                .expect("socket ended")
                .expect("socket failed");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str())
                        .unwrap_or_else(|error| panic!("not JSON ({error}): {text}"));
                }
                Message::Close(frame) => panic!("socket closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next JSON message, or `None` once the socket closed or failed
    /// (its server was killed, say); panics on timeout or non-JSON.
    pub async fn next_json(&mut self) -> Option<Value> {
        self.next_json_within(WAIT).await
    }

    /// [`next_json`](Self::next_json), waiting up to `limit` (for what
    /// takes a cluster's recovery, longer than one [`WAIT`]).
    pub async fn next_json_within(&mut self, limit: Duration) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(limit, self.socket.next())
                .await
                .expect("timed out waiting for a message");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(
                        serde_json::from_str(text.as_str())
                            .unwrap_or_else(|error| panic!("not JSON ({error}): {text}")),
                    );
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Hands the socket to a task that answers the server's JSON `ping`s
    /// with `pong`, as a real alerts client does all along, and passes on
    /// everything else: for a test that does other things for longer than
    /// the server's heartbeat timeout while the socket must stay open.
    pub fn answering_pings(mut self) -> AnsweringClient {
        let (messages, received) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let closed = match self.socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let message: Value = serde_json::from_str(text.as_str())
                            .unwrap_or_else(|error| panic!("not JSON ({error}): {text}"));
                        if message["type"] == "ping" {
                            let pong = serde_json::json!({"type": "pong"}).to_string();
                            if self.socket.send(Message::text(pong)).await.is_err() {
                                return;
                            }
                        } else if messages.send(Ok(message)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(Some(frame)))) => Closed {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    },
                    Some(Ok(Message::Close(None))) | Some(Err(_)) | None => Closed {
                        code: u16::from(CloseCode::Status),
                        reason: String::new(),
                    },
                    Some(Ok(_)) => continue,
                };
                let _ = messages.send(Err(closed)).await;
                return;
            }
        });
        AnsweringClient { received }
    }

    /// The next message, which must be of `kind` (`type` field).
    pub async fn expect(&mut self, kind: &str) -> Value {
        let message = self.recv_json().await;
        assert_eq!(
            message["type"], kind,
            "expected a {kind} message, got {message}"
        );
        message
    }

    /// Sends `request` and returns the reply, which must be of `kind`.
    pub async fn call(&mut self, request: Value, kind: &str) -> Value {
        self.send_json(request).await;
        self.expect(kind).await
    }

    /// Sends `request` and returns whatever comes back.
    pub async fn call_any(&mut self, request: Value) -> Value {
        self.send_json(request).await;
        self.recv_json().await
    }

    /// Waits for the server's close frame, skipping other messages.
    pub async fn expect_close(&mut self) -> Closed {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("timed out waiting for close");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    };
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Closed {
                        code: u16::from(CloseCode::Status),
                        reason: String::new(),
                    };
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// A `/ws/realtime` session, opened and past `session_started`.
pub async fn realtime_session(node: &Switchboard) -> (Client, String) {
    let mut client = Client::connect(&node.ws("/ws/realtime")).await;
    let started = client.expect("session_started").await;
    let session_id = started["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    (client, session_id)
}

/// One accelerometer sample in the documented format.
pub fn sample(t: f64, x: f64, y: f64, z: f64) -> Value {
    serde_json::json!({"timestamp": t, "x": x, "y": y, "z": z})
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let response = tokio::time::timeout(WAIT, reqwest::get(url))
        .await
        .expect("timed out")
        .expect("http request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

pub async fn delete_json(url: &str) -> (u16, Value) {
    let response = tokio::time::timeout(WAIT, reqwest::Client::new().delete(url).send())
        .await
        .expect("timed out")
        .expect("http request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Session ids listed by `GET /sessions` on `node`.
pub async fn listed_sessions(node: &Switchboard) -> Vec<String> {
    let (status, body) = get_json(&format!("{}/sessions", node.http())).await;
    assert_eq!(status, 200, "{body}");
    body["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .map(|session| session["session_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Counts of a map, for readable assertions.
pub fn count_by<'a>(items: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    counts
}

/// `tests/js`, the official JavaScript clients (socket.io-client, wscat),
/// with `package` installed: `npm ci` from the lock file when it is missing.
pub fn js_clients(package: &str) -> std::path::PathBuf {
    let js = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !js.join("node_modules").join(package).exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&js)
            .status()
            .expect("npm must be installed (Node.js)");
        assert!(status.success(), "npm ci failed in tests/js");
    }
    js
}
