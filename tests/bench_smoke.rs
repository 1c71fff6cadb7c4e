//! `switchboard-bench` at its tiny size against a real `switchboard all`:
//! every scenario runs once through the binary, exits 0 and writes the JSON
//! it documents, with no loss and no error. No timing is asserted: this is
//! a smoke test on a busy machine, not a measurement.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::Switchboard;

const SECRET: &str = "switchboard-bench-secret-0123456789abcdef";

/// Longest one tiny bench may run.
const LIMIT: Duration = Duration::from_secs(180);

fn node() -> Switchboard {
    Switchboard::all(None, &["--jwt-secret", SECRET])
}

/// Runs `switchboard-bench <scenario> --tiny` against `node` and returns
/// its JSON file.
fn bench(node: &Switchboard, scenario: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args([scenario, "--tiny"])
        .args(["--edge", &node.ws(""), "--http", &node.http()])
        .args(["--jwt-secret", SECRET, "--json"])
        .arg(&json)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("switchboard-bench binary");
    let pid = child.id();
    let (finished, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = finished.send(child.wait_with_output());
    });
    let Ok(output) = output.recv_timeout(LIMIT) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("bench {scenario} did not finish within {LIMIT:?}");
    };
    let output = output.expect("bench output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench {scenario} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("× baseline"),
        "no table on stdout:\n{stdout}"
    );
    let text = std::fs::read_to_string(&json).expect("the JSON file");
    let report: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["scenario"], scenario, "{report}");
    assert!(report["config"].is_object(), "{report}");
    assert!(report["switchboard"].is_object(), "{report}");
    assert!(report["baseline"].is_object(), "{report}");
    let figures = report["figures"].as_array().expect("figures");
    assert!(!figures.is_empty(), "{report}");
    for figure in figures {
        for field in [
            "name",
            "unit",
            "switchboard",
            "baseline",
            "ratio",
            "target",
            "met",
        ] {
            assert!(
                figure.get(field).is_some(),
                "figure without {field}: {figure}"
            );
        }
    }
    report
}

/// The figure called `name`, measured on the deployment.
fn figure(report: &Value, name: &str) -> Value {
    report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|figure| figure["name"] == name)
        .unwrap_or_else(|| panic!("no figure {name}: {report}"))
        .clone()
}

#[test]
fn connections_at_tiny_size() {
    let node = node();
    let report = bench(&node, "connections", &[]);
    for side in ["switchboard", "baseline"] {
        for phase in ["realtime", "ui"] {
            let phase = &report[side][phase];
            assert_eq!(phase["opened"], 10, "{report}");
            assert_eq!(phase["failed"], 0, "{report}");
            assert!(phase["handshake"]["p99_ms"].is_number(), "{report}");
        }
        assert_eq!(report[side]["closed_while_held"], 0, "{report}");
        assert!(report[side]["memory"].is_object(), "{report}");
    }
    assert!(figure(&report, "connect rate /ws/ui")["switchboard"].is_number());
    assert!(figure(&report, "memory per connection /ws/ui").is_object());
}

#[test]
fn realtime_at_tiny_size_closed_loop_and_batched() {
    let node = node();
    for extra in [&[][..], &["--rate", "20", "--batch", "5"][..]] {
        let report = bench(&node, "realtime", extra);
        for side in ["switchboard", "baseline"] {
            let measured = &report[side];
            assert_eq!(measured["sessions_opened"], 4, "{report}");
            assert!(measured["answered"].as_u64().unwrap() > 0, "{report}");
            assert_eq!(measured["unanswered"], 0, "{report}");
            assert_eq!(measured["errors"], serde_json::json!({}), "{report}");
            assert!(measured["latency"]["p99_ms"].is_number(), "{report}");
        }
        assert!(figure(&report, "messages/s")["ratio"].is_number());
        assert_eq!(figure(&report, "errors")["switchboard"], 0.0);
    }
}

#[test]
fn fanout_at_tiny_size() {
    let node = node();
    let report = bench(&node, "fanout", &[]);
    for side in ["switchboard", "baseline"] {
        let measured = &report[side];
        assert_eq!(measured["clients_connected"], 20, "{report}");
        assert_eq!(measured["published"], 5, "{report}");
        assert_eq!(measured["deliveries"], 100, "{report}");
        assert_eq!(measured["lost"], 0, "{report}");
        assert!(measured["full_delivery"]["p99_ms"].is_number(), "{report}");
    }
    assert!(figure(&report, "deliveries/s")["switchboard"].is_number());
}

#[test]
fn alerts_at_tiny_size() {
    let node = node();
    let report = bench(&node, "alerts", &[]);
    for side in ["switchboard", "baseline"] {
        let measured = &report[side];
        assert_eq!(measured["connected"], 2, "{report}");
        assert_eq!(measured["raised"], 4, "{report}");
        assert_eq!(measured["delivered"], 4, "{report}");
        assert_eq!(measured["lost"], 0, "{report}");
        assert!(measured["latency"]["p99_ms"].is_number(), "{report}");
    }
    assert_eq!(figure(&report, "alerts lost")["switchboard"], 0.0);
}
