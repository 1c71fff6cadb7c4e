//! The console (`/console`), in a real browser against a real cluster: two
//! `switchboard all` edges over one `nats-server -js`, the console opened
//! on one of them in Debian's headless Chromium (playwright-core, driven by
//! `tests/js/console/driver.mjs`), and real clients on the other edge. What
//! the operator sees is asserted on the page's DOM; what the page does is
//! asserted on the clients it reaches:
//!
//! - the overview lists both edges (from the `edges` bucket);
//! - a realtime session opened on the other edge appears, its step count
//!   rising as it walks; terminating it from the page closes its socket;
//! - alerts and statistics connections are listed per user, and one is
//!   disconnected from the page; a `/ws/ui` client on the other edge is
//!   listed and disconnected too;
//! - a broadcast composed on the page reaches a `/ws/ui` client on the
//!   other edge;
//! - pressure frames streamed to a workout redraw the page's heatmap;
//! - an alert raised from the page is listed as pending;
//! - a user's token is refused (the feed closes 1008, the login box says
//!   so), an admin's typed into the login box is taken, and the admin
//!   routes answer 401/403 over REST (the feed closes 1008).
//!
//! The same scenario runs in Debian's headless Firefox (`firefox-esr`,
//! driven over WebDriver BiDi by `tests/js/console/firefox.mjs`), so the
//! console is shown to work in both browsers.
//!
//! Each page is photographed into `target/tmp/console` (Firefox's into
//! `target/tmp/console-firefox`) or, with `CONSOLE_SCREENSHOTS=docs/console`,
//! Chromium's into the repository, where README.md shows them.

mod support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::driver::Driver;
use support::{Client, Nats, Switchboard, WAIT, delete_json, get_json, realtime_session, sample};

const SECRET: &str = "console-test-secret-0123456789abcdef01234";

/// A JWT for `sub` (an admin's with `admin`), minted with `switchboard
/// token` as an operator would.
fn token(sub: &str, admin: bool) -> String {
    support::tokens::minted(SECRET, sub, admin)
}

/// Two edges (each `switchboard all`) of one cluster.
fn cluster(nats: &Nats) -> (Switchboard, Switchboard) {
    let env = [("SWITCHBOARD_JWT_SECRET", SECRET)];
    (
        Switchboard::all_with_env(Some(nats), &[], &env),
        Switchboard::all_with_env(Some(nats), &[], &env),
    )
}

async fn edge_id(edge: &Switchboard) -> String {
    let (status, health) = get_json(&format!("{}/health", edge.http())).await;
    assert_eq!(status, 200, "{health}");
    health["edge_id"].as_str().unwrap().to_owned()
}

/// The browsers the console is tested in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// Debian's `chromium`, through playwright-core.
    Chromium,
    /// Debian's `firefox-esr`, through WebDriver BiDi.
    Firefox,
}

impl Engine {
    /// The driver script (under `tests/js`) and the browser it needs.
    fn driver(self) -> (&'static str, String, &'static str) {
        match self {
            Engine::Chromium => (
                "console/driver.mjs",
                std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "chromium",
            ),
            Engine::Firefox => (
                "console/firefox.mjs",
                std::env::var("FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".into()),
                "firefox-esr",
            ),
        }
    }
}

/// Where an engine's screenshots go.
fn screenshots(engine: Engine) -> PathBuf {
    let dir = match (engine, std::env::var_os("CONSOLE_SCREENSHOTS")) {
        (Engine::Chromium, Some(dir)) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir),
        (Engine::Chromium, None) => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"),
        (Engine::Firefox, _) => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-firefox"),
    };
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// A browser driver (`tests/js/console/driver.mjs` for Chromium,
/// `firefox.mjs` for Firefox): one JSON command per line.
struct Browser {
    engine: Engine,
    driver: Driver,
}

impl Browser {
    async fn start(engine: Engine) -> Self {
        let (script, browser, package) = engine.driver();
        let (driver, _) = Driver::start(script, &browser, package).await;
        Self { engine, driver }
    }

    /// Sends one command; fails the test, with what the page said, unless
    /// it succeeded.
    async fn call(&mut self, command: Value) -> Value {
        let answer = self.driver.send(command.clone()).await;
        assert_eq!(
            answer["ok"], true,
            "{} failed: {}\npage: {:#}",
            command["cmd"], answer["error"], answer["page"]
        );
        answer
    }

    async fn open(&mut self, url: &str) -> String {
        let answer = self
            .call(json!({"cmd": "open", "url": url, "width": 1366, "height": 860}))
            .await;
        answer["handle"].as_str().unwrap().to_owned()
    }

    /// Waits, at most [`WAIT`], until the JS expression `until` holds.
    async fn wait(&mut self, page: &str, until: &str) {
        self.call(json!({"cmd": "wait", "handle": page, "until": until, "timeout_ms": WAIT.as_millis() as u64}))
            .await;
    }

    async fn eval(&mut self, page: &str, expression: &str) -> Value {
        self.call(json!({"cmd": "eval", "handle": page, "expression": expression}))
            .await["value"]
            .clone()
    }

    async fn click(&mut self, page: &str, selector: &str) {
        self.call(json!({"cmd": "click", "handle": page, "selector": selector}))
            .await;
    }

    async fn fill(&mut self, page: &str, selector: &str, value: &str) {
        self.call(json!({"cmd": "fill", "handle": page, "selector": selector, "value": value}))
            .await;
    }

    async fn select(&mut self, page: &str, selector: &str, value: &str) {
        self.call(json!({"cmd": "select", "handle": page, "selector": selector, "value": value}))
            .await;
    }

    async fn screenshot(&mut self, page: &str, name: &str) {
        let path = screenshots(self.engine).join(format!("{name}.png"));
        self.call(json!({"cmd": "screenshot", "handle": page, "path": path}))
            .await;
        assert!(path.exists(), "no screenshot at {}", path.display());
    }

    async fn tab(&mut self, page: &str, name: &str) {
        self.click(page, &format!("#tabs button[data-page={name}]"))
            .await;
        self.wait(
            page,
            &format!("!document.querySelector('#page-{name}').hidden"),
        )
        .await;
    }
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

/// The step count the page shows for `session_id`, once it shows one
/// above `above`.
async fn shown_steps_above(browser: &mut Browser, page: &str, session_id: &str, above: u64) -> u64 {
    let cell = format!("document.querySelector('tr[data-session-id=\"{session_id}\"] .steps')");
    browser
        .wait(
            page,
            &format!("Number({cell}?.textContent ?? -1) > {above}"),
        )
        .await;
    browser
        .eval(page, &format!("Number({cell}.textContent)"))
        .await
        .as_u64()
        .unwrap()
}

/// Reads `client` until its server closes it; returns the message types
/// it got on the way.
async fn read_to_close(client: &mut Client) -> Vec<String> {
    let mut kinds = Vec::new();
    while let Some(message) = client.next_json().await {
        kinds.push(message["type"].as_str().unwrap_or_default().to_owned());
    }
    kinds
}

/// The next message of `kind` whose `field` is `value`, skipping others
/// (system events, pings).
async fn next_where(client: &mut Client, kind: &str, field: &str, value: &str) -> Value {
    loop {
        let message = client.recv_json().await;
        if message["type"] == kind && message[field] == value {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster_live_and_acts_on_it() {
    console_scenario(Engine::Chromium).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_the_same_in_firefox() {
    console_scenario(Engine::Firefox).await;
}

async fn console_scenario(engine: Engine) {
    let nats = Nats::start();
    let (a, b) = cluster(&nats);
    let (id_a, id_b) = (edge_id(&a).await, edge_id(&b).await);
    let admin = token("ops", true);
    let mut browser = Browser::start(engine).await;
    let page = browser
        .open(&format!("{}/console?token={admin}", a.http()))
        .await;

    // Overview: both edges, live, and a few seconds of charts.
    browser
        .wait(
            &page,
            &format!(
                "(() => {{ const ids = [...document.querySelectorAll('#edges tbody tr')].map(r => r.dataset.edgeId); \
                 return ids.length === 2 && ids.includes('{id_a}') && ids.includes('{id_b}'); }})()"
            ),
        )
        .await;
    browser
        .wait(
            &page,
            "document.body.dataset.feed === 'live' && window.switchboardConsole.history.length >= 4 \
             && document.querySelector('[data-service=session]')?.textContent === 'session: serving'",
        )
        .await;
    let token_in_address_bar = browser
        .eval(&page, "location.search.includes('token')")
        .await;
    assert_eq!(
        token_in_address_bar, false,
        "the token stays out of the address bar"
    );

    // Sessions: a walker on the other edge, its steps rising on the page.
    let (mut walker, session_id) = realtime_session(&b).await;
    walker
        .call(json!({"samples": walking(100.0)}), "step_detection")
        .await;
    browser.tab(&page, "sessions").await;
    let first = shown_steps_above(&mut browser, &page, &session_id, 0).await;
    walker
        .call(json!({"samples": walking(102.0)}), "step_detection")
        .await;
    let later = shown_steps_above(&mut browser, &page, &session_id, first).await;
    assert!(later > first);
    browser.screenshot(&page, "sessions").await;

    // Terminate it from the page: the walker's socket, on the other edge,
    // is told and closed.
    browser
        .click(
            &page,
            &format!("tr[data-session-id=\"{session_id}\"] button.terminate"),
        )
        .await;
    let kinds = read_to_close(&mut walker).await;
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("session_terminated"),
        "{kinds:?}"
    );
    browser
        .wait(
            &page,
            &format!("!document.querySelector('tr[data-session-id=\"{session_id}\"]')"),
        )
        .await;

    // Connections: alice's alerts socket and bob's statistics stream, on
    // both edges; alice's is ended from the page.
    let mut alice =
        Client::connect(&b.ws(&format!("/ws/alerts/alice?token={}", token("alice", false)))).await;
    let bob =
        Client::connect(&a.ws(&format!("/api/ws/statistics?token={}", token("bob", false)))).await;
    browser.tab(&page, "connections").await;
    browser
        .wait(
            &page,
            "[...document.querySelectorAll('#alerts-connections tbody tr')].some(r => r.textContent.startsWith('alice')) \
             && [...document.querySelectorAll('#statistics-connections tbody tr')].some(r => r.textContent.startsWith('bob1'))",
        )
        .await;
    browser.screenshot(&page, "connections").await;
    browser
        .click(&page, "#alerts-connections tbody tr button.terminate")
        .await;
    let closed = alice.expect_close().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "terminated: terminated via REST")
    );
    browser
        .wait(
            &page,
            "![...document.querySelectorAll('#alerts-connections tbody tr')].some(r => r.textContent.startsWith('alice'))",
        )
        .await;
    drop(bob);
    // A /ws/ui client on the other edge, no registry session: listed by its
    // edge, and disconnected from the page through that edge.
    let mut viewer = Client::connect(&b.ws("/ws/ui")).await;
    let welcome = viewer.expect("connection").await;
    let viewer_id = welcome["data"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let row = format!("#ui-clients tbody tr[data-connection-id='{viewer_id}']");
    browser
        .wait(
            &page,
            &format!("document.querySelector(\"{row}\") !== null"),
        )
        .await;
    browser
        .click(&page, &format!("{row} button.disconnect"))
        .await;
    let closed = viewer.expect_close().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1000, "ended by the cluster: disconnected by an operator")
    );
    browser
        .wait(
            &page,
            &format!("document.querySelector(\"{row}\") === null"),
        )
        .await;

    // Events: a broadcast composed on the page reaches a /ws/ui client on
    // the other edge, and the page's own feed shows it.
    let mut ui = Client::connect(&b.ws("/ws/ui")).await;
    ui.expect("connection").await;
    browser.tab(&page, "events").await;
    browser.select(&page, "#compose-kind", "overlay").await;
    browser.fill(&page, "#compose-name", "zone").await;
    browser
        .fill(
            &page,
            "#compose-data",
            r#"{"zone": "console-test", "points": [[0, 0], [4, 3]]}"#,
        )
        .await;
    browser.click(&page, "#composer button[type=submit]").await;
    let overlay = next_where(&mut ui, "overlay", "overlay_type", "zone").await;
    assert_eq!(
        overlay["data"],
        json!({"zone": "console-test", "points": [[0, 0], [4, 3]]})
    );
    browser
        .wait(
            &page,
            "document.querySelector('#compose-result').dataset.status === '202' \
             && !!document.querySelector('#events li[data-type=overlay][data-name=zone]')",
        )
        .await;
    browser.screenshot(&page, "events").await;

    // Workouts: frames streamed on the other edge redraw the heatmap.
    browser.tab(&page, "workouts").await;
    browser.fill(&page, "#workout-id", "console-w1").await;
    browser
        .click(&page, "#workout-form button[type=submit]")
        .await;
    browser
        .wait(
            &page,
            "document.querySelector('#workout-status').textContent.startsWith('watching')",
        )
        .await;
    let mut sensor = Client::connect(&b.ws("/ws/pressure")).await;
    sensor
        .call(
            json!({"action": "join_session", "workout_id": "console-w1"}),
            "session_joined",
        )
        .await;
    let frame = |matrix: Value| json!({"action": "pressure_frame", "workout_id": "console-w1", "matrix": matrix, "nodes": []});
    sensor
        .call(
            frame(json!([
                [0, 2, 4, 2],
                [1, 8, 12, 3],
                [0, 6, 9, 2],
                [0, 1, 2, 0]
            ])),
            "frame_processed",
        )
        .await;
    browser
        .wait(
            &page,
            "document.querySelector('#heatmap').dataset.sequence === '1'",
        )
        .await;
    browser
        .eval(
            &page,
            "window.firstHeatmap = document.querySelector('#heatmap').toDataURL(); true",
        )
        .await;
    sensor
        .call(
            frame(json!([
                [9, 1, 0, 0],
                [14, 3, 0, 0],
                [11, 2, 0, 1],
                [5, 1, 0, 0]
            ])),
            "frame_processed",
        )
        .await;
    browser
        .wait(
            &page,
            "document.querySelector('#heatmap').dataset.sequence === '2' \
             && document.querySelector('#heatmap').toDataURL() !== window.firstHeatmap \
             && document.querySelector('[data-stat=\"total pressure\"]').textContent === '47.0'",
        )
        .await;
    browser.screenshot(&page, "workouts").await;

    // Alerts: raised from the page, listed as pending for the user.
    browser.tab(&page, "alerts").await;
    browser.fill(&page, "#alert-user", "carol").await;
    browser.select(&page, "#alert-severity", "critical").await;
    browser
        .click(&page, "#alert-form button[type=submit]")
        .await;
    browser
        .wait(
            &page,
            "document.querySelector('.pending-user[data-user=carol]')?.dataset.pending === '1'",
        )
        .await;
    let (status, pending) = get_json(&format!("{}/api/alerts/carol?token={admin}", b.http())).await;
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["pending"], 1, "{pending}");
    assert_eq!(pending["alerts"][0]["severity"], "critical", "{pending}");
    browser.screenshot(&page, "alerts").await;

    // Back to the overview, which has now seen all of the above.
    browser.tab(&page, "overview").await;
    browser
        .wait(&page, "window.switchboardConsole.history.length >= 8")
        .await;
    browser.screenshot(&page, "overview").await;

    // A user's token: the feed is refused and the login box says so.
    let refused = browser
        .open(&format!(
            "{}/console?token={}",
            b.http(),
            token("mallory", false)
        ))
        .await;
    browser
        .wait(
            &refused,
            "document.body.dataset.feed === 'refused' && !document.querySelector('#login').hidden \
             && document.querySelector('#login-error').textContent.includes('refused')",
        )
        .await;
    browser.screenshot(&refused, "login-refused").await;
    // The login box: an admin's token opens the console.
    browser.fill(&refused, "#token", &admin).await;
    browser.click(&refused, "#login button[type=submit]").await;
    browser
        .wait(
            &refused,
            "document.body.dataset.feed === 'live' && document.querySelector('#login').hidden \
             && document.querySelectorAll('#edges tbody tr').length === 2",
        )
        .await;
}

#[tokio::test]
async fn the_admin_routes_refuse_anyone_but_an_admin() {
    let nats = Nats::start();
    let (a, b) = cluster(&nats);
    let (id_a, id_b) = (edge_id(&a).await, edge_id(&b).await);
    let foreign = support::tokens::minted("another-cluster-secret-0123456789abcdef", "ops", true);
    let user = token("mallory", false);

    let cluster_url = format!("{}/api/admin/cluster", a.http());
    for (query, expected) in [
        (String::new(), 401),
        (format!("?token={foreign}"), 401),
        (format!("?token={user}"), 403),
    ] {
        let (status, body) = get_json(&format!("{cluster_url}{query}")).await;
        assert_eq!(status, expected, "{query}: {body}");
    }
    let (status, body) = get_json(&format!("{}/api/alerts/alice?token={user}", a.http())).await;
    assert_eq!(status, 403, "{body}");
    // Disconnecting a hub client: an admin's only, ids checked.
    let disconnect = |edge: &str, connection: &str, token: &str| {
        format!(
            "{}/api/admin/edges/{edge}/connections/{connection}?token={token}",
            a.http()
        )
    };
    for (url, expected) in [
        (disconnect(&id_b, "c1", &foreign), 401),
        (disconnect(&id_b, "c1", &user), 403),
        (disconnect(&id_b, "c1.>", &token("ops", true)), 400),
        (disconnect(&id_b, "c1", &token("ops", true)), 202),
    ] {
        let (status, body) = delete_json(&url).await;
        assert_eq!(status, expected, "{url}: {body}");
    }

    for query in ["", &format!("?token={foreign}"), &format!("?token={user}")] {
        let mut feed = Client::connect(&a.ws(&format!("/api/admin/ws{query}"))).await;
        assert_eq!(feed.expect_close().await.code, 1008, "{query}");
    }

    // An admin's feed: snapshots of the whole cluster, every second.
    let admin = token("ops", true);
    let mut feed = Client::connect(&a.ws(&format!("/api/admin/ws?token={admin}"))).await;
    let mut seen = Vec::new();
    let snapshot = loop {
        let snapshot = feed.expect("cluster").await;
        seen.push(snapshot["timestamp"].as_f64().unwrap());
        let edges: Vec<&str> = snapshot["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|edge| edge["edge_id"].as_str().unwrap())
            .collect();
        if edges.contains(&id_a.as_str()) && edges.contains(&id_b.as_str()) && seen.len() >= 2 {
            break snapshot;
        }
    };
    assert_eq!(snapshot["edge_id"], id_a);
    assert_eq!(snapshot["services"]["session"], "serving", "{snapshot}");
    assert_eq!(snapshot["services"]["nats"], "connected", "{snapshot}");
    assert_eq!(snapshot["bus"]["mode"], "nats", "{snapshot}");
    let streams: Vec<&str> = snapshot["bus"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stream| stream["name"].as_str().unwrap())
        .collect();
    assert!(streams.contains(&"KV_edges"), "{streams:?}");
    for edge in snapshot["edges"].as_array().unwrap() {
        assert!(
            edge["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{edge}"
        );
        assert_eq!(edge["draining"], false, "{edge}");
        assert!(edge["uptime_seconds"].as_f64().unwrap() >= 0.0, "{edge}");
    }
    let by_id = |id: &str| {
        snapshot["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|edge| edge["edge_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_id(&id_a)["address"],
        a.http().trim_start_matches("http://")
    );
    assert_eq!(
        by_id(&id_b)["address"],
        b.http().trim_start_matches("http://")
    );
    assert!(seen.windows(2).all(|pair| pair[1] > pair[0]), "{seen:?}");

    let (status, body) = get_json(&format!("{cluster_url}?token={admin}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "cluster");

    // The page itself holds nothing and is served to anyone.
    let page = reqwest::get(format!("{}/console", b.http())).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/console/console.js"));
}
