//! `/metrics` after real traffic: the Prometheus text parses, and the
//! counters that traffic must have moved are non-zero (connections by
//! endpoint, messages in and out, client errors by kind, gRPC latency on
//! both sides, outbound drops when a client is dropped).

mod support;

use std::collections::HashMap;

use support::{Client, Switchboard, WAIT, realtime_session, sample};

/// Samples of an OpenMetrics text: `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("malformed value in {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn scrape(url: &str) -> HashMap<String, f64> {
    let response = tokio::time::timeout(WAIT, reqwest::get(url))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    parse(&text)
}

#[tokio::test]
async fn metrics_count_real_traffic() {
    let node = Switchboard::all(None, &[]);
    let (mut realtime, _) = realtime_session(&node).await;
    for i in 0..5 {
        realtime
            .call(sample(f64::from(i) * 0.02, 0.0, 9.8, 0.0), "step_detection")
            .await;
    }
    realtime.send_text("{not json").await;
    realtime.expect("error").await;
    let mut ui = Client::connect(&node.ws("/ws/ui")).await;
    ui.expect("connection").await;

    let samples = scrape(&format!("{}/metrics", node.http())).await;
    let value = |series: &str| {
        samples
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
    };
    assert_eq!(
        value(r#"switchboard_connections{endpoint="realtime"}"#),
        1.0
    );
    assert_eq!(value(r#"switchboard_connections{endpoint="ui"}"#), 1.0);
    assert!(value(r#"switchboard_messages_total{direction="in"}"#) >= 6.0);
    assert!(value(r#"switchboard_messages_total{direction="out"}"#) >= 7.0);
    assert_eq!(
        value(r#"switchboard_client_errors_total{kind="invalid_json"}"#),
        1.0
    );
    let opened = r#"switchboard_grpc_client_duration_seconds_count{method="/switchboard.v1.SessionService/OpenSession"}"#;
    assert!(value(opened) >= 1.0);
    let served = r#"switchboard_grpc_server_duration_seconds_count{method="/switchboard.v1.SessionService/OpenSession"}"#;
    assert!(
        value(served) >= 1.0,
        "in `all` mode the services' side is in the same registry"
    );
    assert!(
        value(
            r#"switchboard_grpc_client_duration_seconds_sum{method="/switchboard.v1.SessionService/OpenSession"}"#
        ) > 0.0
    );
    // The session's detectors, called in the process without the gRPC
    // stack, are still counted as the stream they stand for: once.
    for side in ["client", "server"] {
        let stream = format!(
            r#"switchboard_grpc_{side}_duration_seconds_count{{method="/switchboard.v1.DetectionService/StreamSteps"}}"#
        );
        assert_eq!(value(&stream), 1.0, "{stream}");
    }
    assert_eq!(value("switchboard_nats_publish_failures_total"), 0.0);
}

#[tokio::test]
async fn a_service_role_serves_its_own_metrics() {
    let session = Switchboard::start(&[
        "session",
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let mut client = switchboard_proto::v1::session_service_client::SessionServiceClient::connect(
        session.grpc("session"),
    )
    .await
    .unwrap();
    client
        .count_sessions(switchboard_proto::v1::CountSessionsRequest {})
        .await
        .unwrap();
    let samples = scrape(&format!("http://{}/metrics", session.addr("metrics"))).await;
    let served = r#"switchboard_grpc_server_duration_seconds_count{method="/switchboard.v1.SessionService/CountSessions"}"#;
    assert_eq!(samples.get(served), Some(&1.0), "{samples:#?}");
}
