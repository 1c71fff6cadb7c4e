//! A real browser, driven by a Node script under `tests/js` that speaks one
//! JSON command per line on stdin and answers each with one JSON line on
//! stdout (`{"id", "ok", ...}`), after a first `{"ready": ...}` line. The
//! browser suites (`tests/browser.rs`, `tests/console.rs`) each have their
//! own script and commands; starting it, the line protocol and showing what
//! the driver said when something fails are the same, here.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{WAIT, js_clients};

/// A running driver script and its browser.
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// What it wrote to stderr (`TEST_LOG=1` also prints it).
    said: Arc<Mutex<Vec<String>>>,
}

impl Driver {
    /// Starts `node tests/js/<script>` for the browser at `browser` (Debian's
    /// `package`); returns it with its ready line.
    pub async fn start(script: &str, browser: &str, package: &str) -> (Self, Value) {
        assert!(
            std::path::Path::new(browser).exists(),
            "{browser} is missing: install Debian's {package} (apt-get install {package})"
        );
        let js = js_clients("playwright-core");
        let mut child = tokio::process::Command::new("node")
            .arg(js.join(script))
            .current_dir(&js)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed (Node.js)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let show = std::env::var_os("TEST_LOG").is_some();
        let said = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&said);
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if show {
                    eprintln!("[browser] {line}");
                }
                log.lock().unwrap().push(line);
            }
        });
        let ready = tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .expect("timed out waiting for the browser driver to start")
            .unwrap();
        let Some(ready) = ready else {
            // Let the last of its stderr arrive.
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            panic!(
                "the browser driver exited before it was ready:\n{}",
                said.lock().unwrap().join("\n")
            );
        };
        let ready: Value = serde_json::from_str(&ready).expect("the driver's ready line");
        let driver = Self {
            child,
            stdin,
            stdout,
            next_id: 0,
            said,
        };
        (driver, ready)
    }

    /// Sends one command and returns the driver's answer to it, whatever
    /// it says.
    pub async fn send(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let answer = tokio::time::timeout(WAIT + Duration::from_secs(10), self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser driver did not answer {command}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the browser driver exited:\n{}", self.said()));
        let answer: Value = serde_json::from_str(&answer).expect("the driver's answer");
        assert_eq!(answer["id"], self.next_id, "{answer}");
        answer
    }

    /// Commands sent so far (a number no earlier command had).
    pub fn sent(&self) -> u64 {
        self.next_id
    }

    /// Everything the driver wrote to stderr so far.
    pub fn said(&self) -> String {
        self.said.lock().unwrap().join("\n")
    }

    /// Whether its process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Driver {
    /// Asks the driver to end (SIGTERM: it closes its browser, which a
    /// killed driver would leave behind) and waits for it, a few seconds
    /// at most; whatever is left is killed (`kill_on_drop`).
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else {
            return;
        };
        let asked = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if asked.is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline && self.running() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
