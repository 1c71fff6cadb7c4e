//! Socket.IO behind several edges, through the shipped nginx configuration
//! (`deploy/nginx/switchboard.conf`, run by a real nginx with only its
//! `listen` port and its list of edges replaced):
//!
//! - **With its affinity** (`hash $remote_addr consistent` for
//!   `/socket.io/`), the official `socket.io-client` with default options
//!   and HTTP long-polling only connects, joins a workout and gets every
//!   `frame_processed`, from 16 source addresses (127.0.0.2…): every
//!   request of one client reaches one edge (nginx's access log), and the
//!   clients are spread over both edges (each edge's `/health`). The same
//!   clients with the default transports (polling, then the upgrade to
//!   WebSocket) work too, each on the edge its address hashes to.
//! - **Without it** (the same file with the `hash` line removed: plain
//!   round-robin), the same client never connects: every attempt ends in
//!   `connect_error` "xhr post error" / "xhr poll error", HTTP 400
//!   `Session ID unknown` from the edge that did not make the session —
//!   what deploy/README.md tells users they would see.
//!
//! Needs nginx (Debian: `apt-get install nginx`; `NGINX` names another
//! binary) and Node.js. Linux routes all of 127.0.0.0/8 to loopback, which
//! gives the clients their distinct addresses.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Nats, Switchboard, WAIT, eventually, get_json, js_clients};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The shipped configuration, and the lines the test replaces in it.
const CONFIG: &str = "deploy/nginx/switchboard.conf";
const LISTEN: &str = "    listen 80;\n";
const AFFINITY: &str = "    hash $remote_addr consistent;\n";
/// The file the shipped configuration includes for its list of edges,
/// relative to the directory of nginx's main configuration.
const EDGES: &str = "switchboard-edges.conf";

fn nginx_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("NGINX") {
        return binary.into();
    }
    // Debian installs it in /usr/sbin, which a non-root PATH may lack.
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .expect("nginx must be installed (Debian: apt-get install nginx), or NGINX set")
}

/// A free loopback port: bound, read, released (nginx binds it next).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// One request as nginx logged it.
#[derive(Debug)]
struct Access {
    client: String,
    upstream: String,
    status: u16,
    uri: String,
}

impl Access {
    fn sid(&self) -> Option<&str> {
        let query = self.uri.split_once('?')?.1;
        query.split('&').find_map(|pair| pair.strip_prefix("sid="))
    }
}

/// nginx running the shipped configuration in front of `edges`, from a
/// directory of its own (configuration, pid, logs, temporary files);
/// stopped on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    /// With the shipped configuration as is (affinity for `/socket.io/`),
    /// or with its `hash` line removed (round-robin for everything).
    async fn start(edges: &[&Switchboard], affinity: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for nginx");
        // Run as root, nginx's workers are `nobody`: let them in.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let port = free_port();

        let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CONFIG))
            .expect("the shipped nginx configuration");
        let mut config = replace_once(&shipped, LISTEN, &format!("    listen 127.0.0.1:{port};\n"));
        if !affinity {
            config = replace_once(
                &config,
                AFFINITY,
                "    # (round-robin: the test removed `hash`)\n",
            );
        }
        std::fs::write(dir.path().join("switchboard.conf"), config).unwrap();

        let servers: String = edges
            .iter()
            .map(|edge| format!("server {};\n", edge.addr("edge")))
            .collect();
        std::fs::write(dir.path().join(EDGES), servers).unwrap();

        // The main configuration: what Debian's /etc/nginx/nginx.conf
        // provides around conf.d, with every path in this directory.
        let path = dir.path().display();
        let main = format!(
            "pid {path}/nginx.pid;\n\
             error_log {path}/error.log info;\n\
             worker_processes 1;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   log_format switchboard '$remote_addr|$upstream_addr|$status|$request_uri';\n\
             \x20   access_log {path}/access.log switchboard;\n\
             \x20   client_body_temp_path {path}/client_body;\n\
             \x20   proxy_temp_path {path}/proxy;\n\
             \x20   fastcgi_temp_path {path}/fastcgi;\n\
             \x20   uwsgi_temp_path {path}/uwsgi;\n\
             \x20   scgi_temp_path {path}/scgi;\n\
             \x20   include {path}/switchboard.conf;\n\
             }}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();

        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx");
        let mut nginx = Self { child, dir, port };
        let health = format!("{}/health", nginx.url());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            if let Ok(response) = reqwest::get(&health).await
                && response.status().as_u16() == 200
            {
                return nginx;
            }
            assert!(
                Instant::now() < deadline,
                "nginx does not proxy /health:\n{}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Every `/socket.io/` request logged so far.
    fn socketio_requests(&self) -> Vec<Access> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .map(|line| {
                let fields: Vec<&str> = line.splitn(4, '|').collect();
                assert_eq!(fields.len(), 4, "access log line {line:?}");
                Access {
                    client: fields[0].to_owned(),
                    upstream: fields[1].to_owned(),
                    status: fields[2].parse().unwrap_or(0),
                    uri: fields[3].to_owned(),
                }
            })
            .filter(|access| access.uri.starts_with("/socket.io/"))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits (SIGKILL would
        // leave the workers running).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{CONFIG} must contain {from:?} exactly once (the test replaces it)"
    );
    text.replacen(from, to, 1)
}

/// `tests/js/polling_through_proxy.mjs`: Socket.IO clients from
/// `addresses`, connected (or failed) and holding their sockets until
/// [`Clients::finish`].
struct Clients {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// One entry per client: address, connected, errors, transport, …
    report: Vec<Value>,
}

impl Clients {
    async fn start(url: &str, workout: &str, mode: &str, addresses: &[String]) -> Self {
        let js = js_clients("socket.io-client");
        let mut child = tokio::process::Command::new("node")
            .arg(js.join("polling_through_proxy.mjs"))
            .args([url, workout, mode, &addresses.join(",")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed");
        // What the clients say (connect_error, disconnect): shown with
        // TEST_LOG=1, and when no report comes.
        let said = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::clone(&said);
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[node] {line}");
                }
                log.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(3 * WAIT, stdout.next_line())
            .await
            .ok()
            .and_then(|line| line.ok().flatten())
            .unwrap_or_else(|| {
                panic!(
                    "no report from the node client within a minute; it said:\n{}",
                    said.lock().unwrap().join("\n")
                )
            });
        let report: Value = serde_json::from_str(&line).expect("a JSON report");
        let report = report["clients"].as_array().expect("clients").clone();
        Self {
            child,
            stdout,
            report,
        }
    }

    /// Lets the clients leave and disconnect; returns how many left.
    async fn finish(mut self) -> u64 {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        drop(stdin);
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("the clients leave")
            .unwrap()
            .expect("a second report");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the node client exits")
            .unwrap();
        assert!(status.success(), "node client: {status}");
        serde_json::from_str::<Value>(&line).unwrap()["left"]
            .as_u64()
            .unwrap()
    }
}

/// 127.0.0.2, 127.0.0.3, …: one source address per client.
fn addresses(count: u8) -> Vec<String> {
    (2..2 + count).map(|i| format!("127.0.0.{i}")).collect()
}

async fn pressure_connections(edge: &Switchboard) -> u64 {
    let (status, health) = get_json(&format!("{}/health", edge.http())).await;
    assert_eq!(status, 200, "{health}");
    health["connections"]["pressure"]
        .as_u64()
        .unwrap_or_else(|| panic!("no connections.pressure in {health}"))
}

/// Which edge served each client address, from the access log; fails if
/// one address's requests reached more than one edge, or failed.
fn edge_by_client(requests: &[Access]) -> BTreeMap<String, String> {
    let mut upstreams: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for access in requests {
        // 499: nginx's "the client closed the request" (a poll still
        // open when a client closes); anything else from 400 up is a
        // failure.
        assert!(
            access.status < 400 || access.status == 499,
            "a request through the sticky proxy failed: {access:?}"
        );
        upstreams
            .entry(access.client.clone())
            .or_default()
            .insert(access.upstream.clone());
    }
    upstreams
        .into_iter()
        .map(|(client, upstreams)| {
            assert_eq!(
                upstreams.len(),
                1,
                "{client}'s requests reached several edges: {upstreams:?}"
            );
            (client, upstreams.into_iter().next().unwrap())
        })
        .collect()
}

fn assert_all_worked(report: &[Value], transport: &str, workout: &str) {
    let count = report.len() as u64;
    for client in report {
        assert_eq!(client["connected"], true, "{client}");
        assert_eq!(client["errors"], serde_json::json!([]), "{client}");
        assert_eq!(client["transport"], transport, "{client}");
        assert_eq!(client["joined"]["workout_id"], workout, "{client}");
        assert_eq!(client["joined"]["status"], "joined", "{client}");
        let mut sequences: Vec<u64> = client["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sequence| sequence.as_u64().unwrap())
            .collect();
        sequences.sort_unstable();
        assert_eq!(
            sequences,
            (1..=count).collect::<Vec<_>>(),
            "every client hears every client's frame, whichever edge holds it: {client}"
        );
    }
}

#[tokio::test]
async fn socket_io_works_through_the_shipped_nginx_config_on_two_edges() {
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let nginx = Nginx::start(&[&a, &b], true).await;
    let edges: BTreeSet<String> = [a.addr("edge"), b.addr("edge")]
        .iter()
        .map(ToString::to_string)
        .collect();

    // 16 addresses: the chance that a hash puts them all on one of two
    // edges is 2^-15.
    let clients = addresses(16);
    let polling = Clients::start(&nginx.url(), "proxied", "polling", &clients).await;
    assert_all_worked(&polling.report, "polling", "proxied");

    // Every client is connected now; each edge counts the ones it holds.
    let (on_a, on_b) = (
        pressure_connections(&a).await,
        pressure_connections(&b).await,
    );
    assert_eq!(on_a + on_b, 16, "each client is on exactly one edge");
    assert!(
        on_a > 0 && on_b > 0,
        "the hash spreads clients over both edges: {on_a} on one, {on_b} on the other"
    );
    let requests = nginx.socketio_requests();
    let polled = edge_by_client(&requests);
    assert_eq!(polled.keys().cloned().collect::<Vec<_>>(), {
        let mut sorted = clients.clone();
        sorted.sort();
        sorted
    });
    assert_eq!(
        polled.values().cloned().collect::<BTreeSet<_>>(),
        edges,
        "both edges served clients"
    );
    assert_eq!(polling.finish().await, 16);

    // The same addresses with the default transports: polling, then the
    // upgrade (a request carrying the sid, so it needs the same edge too).
    let upgrading = Clients::start(&nginx.url(), "upgraded", "default", &clients).await;
    assert_all_worked(&upgrading.report, "websocket", "upgraded");
    for client in &upgrading.report {
        assert_eq!(client["upgraded"], true, "{client}");
    }
    assert_eq!(upgrading.finish().await, 16);
    // nginx logs a WebSocket when it closes.
    let requests = eventually("nginx to log the 16 closed WebSockets", || {
        let requests = nginx.socketio_requests();
        let upgrades = requests
            .iter()
            .filter(|access| access.uri.contains("transport=websocket"))
            .count();
        async move { (upgrades >= 16).then_some(requests) }
    })
    .await;
    let upgrades: Vec<&Access> = requests
        .iter()
        .filter(|access| access.uri.contains("transport=websocket"))
        .collect();
    assert_eq!(
        upgrades.len(),
        16,
        "one WebSocket per client: {upgrades:#?}"
    );
    assert!(
        upgrades.iter().all(|access| access.status == 101),
        "{upgrades:#?}"
    );
    assert_eq!(
        edge_by_client(&requests),
        polled,
        "each address still reaches the edge it hashes to, for every request"
    );
}

#[tokio::test]
async fn round_robin_breaks_socket_io_polling() {
    let nats = Nats::start();
    let a = Switchboard::all(Some(&nats), &[]);
    let b = Switchboard::all(Some(&nats), &[]);
    let nginx = Nginx::start(&[&a, &b], false).await;

    // The same client as above, through the same file minus its affinity.
    let client = Clients::start(&nginx.url(), "proxied", "polling", &addresses(1)).await;
    let report = &client.report[0];
    assert_eq!(report["connected"], false, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert!(errors.len() >= 3, "{report}");
    for error in errors {
        let message = error["message"].as_str().unwrap();
        assert!(
            message == "xhr post error" || message == "xhr poll error",
            "connect_error {error}"
        );
        assert_eq!(error["description"], 400, "{error}");
        let body: Value = serde_json::from_str(error["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["message"], "Session ID unknown", "{error}");
    }
    assert_eq!(client.finish().await, 0);

    // In nginx's log: each session was made on one edge and refused (400)
    // by the other.
    let mut by_sid: BTreeMap<String, Vec<&Access>> = BTreeMap::new();
    let requests = nginx.socketio_requests();
    for access in &requests {
        if let Some(sid) = access.sid() {
            by_sid.entry(sid.to_owned()).or_default().push(access);
        }
    }
    let mut refused_sessions = 0;
    for (sid, accesses) in &by_sid {
        let edges_with = |status: u16| -> BTreeSet<&str> {
            accesses
                .iter()
                .filter(|access| access.status == status)
                .map(|access| access.upstream.as_str())
                .collect()
        };
        let (served, refused) = (edges_with(200), edges_with(400));
        assert!(
            served.len() <= 1 && served.is_disjoint(&refused),
            "session {sid}: served by {served:?}, refused by {refused:?}: {accesses:#?}"
        );
        if !refused.is_empty() {
            refused_sessions += 1;
        }
    }
    assert!(
        refused_sessions >= 3,
        "one session refused per connection attempt: {requests:#?}"
    );
}
