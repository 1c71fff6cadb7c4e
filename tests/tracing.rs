//! One action is one trace across processes, as an operator reading
//! Jaeger expects:
//!
//! - a broadcast: a REST call on edge A (continuing the caller's
//!   `traceparent`), which publishes it on NATS itself, and edge B
//!   delivering it;
//! - a sensor message: a pressure frame on edge A's socket, its message on
//!   the long-lived detection stream, the alert the detection service
//!   stores, the session service storing the frame, and edge B delivering
//!   both the room's `frame_processed` and the alert; and a realtime sample
//!   through its detection stream.
//!
//! A small OTLP/HTTP receiver in the test collects what both processes
//! export.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::json;
use support::{Client, Nats, Switchboard, eventually};

const SECRET: &str = "switchboard-test-secret-0123456789abcdef";

/// (service name, span name, trace id as hex)
type Collected = Arc<Mutex<Vec<(String, String, String)>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Starts an OTLP/HTTP receiver on a free port; returns its URL.
async fn receiver(collected: Collected) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let collected = collected.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut collected = collected.lock().unwrap();
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .iter()
                        .flat_map(|resource| &resource.attributes)
                        .find(|attribute| attribute.key == "service.name")
                        .and_then(|attribute| attribute.value.as_ref())
                        .and_then(|value| match &value.value {
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(name)) => Some(name.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource_spans.scope_spans {
                        for span in scope.spans {
                            collected.push((service.clone(), span.name, hex(&span.trace_id)));
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A whole system (`all`) on `nats` with `args`, exporting its spans as
/// `name` to the OTLP receiver at `endpoint`.
fn traced(nats: &Nats, endpoint: &str, name: &str, args: &[&str]) -> Switchboard {
    Switchboard::all_with_env(
        Some(nats),
        args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_SERVICE_NAME", name),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
}

fn token(user: &str) -> String {
    support::tokens::user_token(SECRET, user)
}

/// Waits until one trace holds every (service, span) of `expected`; returns
/// its id.
async fn one_trace_with(collected: &Collected, expected: &[(&str, &str)]) -> String {
    let expected: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(service, span)| ((*service).to_owned(), (*span).to_owned()))
        .collect();
    eventually(&format!("one trace with {expected:?}"), || {
        let mut traces: std::collections::BTreeMap<String, BTreeSet<(String, String)>> =
            Default::default();
        for (service, span, id) in collected.lock().unwrap().iter() {
            traces
                .entry(id.clone())
                .or_default()
                .insert((service.clone(), span.clone()));
        }
        let found = traces
            .into_iter()
            .find(|(_, spans)| expected.is_subset(spans))
            .map(|(id, _)| id);
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_one_trace_across_edge_nats_and_edge() {
    let collected = Collected::default();
    let endpoint = receiver(collected.clone()).await;
    let nats = Nats::start();
    let a = traced(&nats, &endpoint, "node-a", &[]);
    let b = traced(&nats, &endpoint, "node-b", &[]);
    let mut ui = Client::connect(&b.ws("/ws/ui")).await;
    ui.expect("connection").await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(format!("{}/api/events/broadcast", a.http()))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"event_type": "traced", "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    loop {
        let message = ui.recv_json().await;
        if message["event_type"] == "traced" {
            break;
        }
    }

    let id = one_trace_with(
        &collected,
        &[("node-a", "http.request"), ("node-b", "nats.receive")],
    )
    .await;
    assert_eq!(id, trace_id, "the trace continues the caller's traceparent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_message_is_one_trace_through_detection_nats_and_the_delivering_edge() {
    let collected = Collected::default();
    let endpoint = receiver(collected.clone()).await;
    let nats = Nats::start();
    // Tokens signed with SECRET: alerts are for authenticated users.
    let auth = ["--jwt-secret", SECRET];
    let a = traced(&nats, &endpoint, "node-a", &auth);
    let b = traced(&nats, &endpoint, "node-b", &auth);

    // On edge B: mo's alerts, and a watcher in the workout's room.
    let mut alerts = Client::connect(&b.ws(&format!("/ws/alerts/mo?token={}", token("mo")))).await;
    alerts.expect("connected").await;
    let mut watcher = Client::connect(&b.ws("/ws/pressure")).await;
    let join = json!({"action": "join_session", "workout_id": "run-1"});
    watcher.call(join.clone(), "session_joined").await;

    // On edge A: mo's insole. Steady frames, then one abnormal peak, which
    // raises an alert for mo.
    let mut insole = Client::connect(&a.ws(&format!("/ws/pressure?token={}", token("mo")))).await;
    insole.call(join, "session_joined").await;
    let frame = |peak: u32| json!({"action": "pressure_frame", "workout_id": "run-1", "matrix": [[1, 2], [peak, 1]]});
    for _ in 0..30 {
        insole.call(frame(3), "frame_processed").await;
    }
    insole.call(frame(9), "frame_processed").await;
    let alert = alerts.expect("anomaly_detected").await;
    assert_eq!(alert["anomaly_type"], "pressure_peak");

    // Only the abnormal frame's trace has an alert delivery in it.
    one_trace_with(
        &collected,
        &[
            ("node-a", "ws.message"),
            ("node-a", "detection.frame"),
            ("node-a", "grpc.server"),
            ("node-b", "room.deliver"),
            ("node-b", "alert.deliver"),
        ],
    )
    .await;

    // A realtime sample: the edge's message and its detection-stream step.
    let mut realtime = Client::connect(&a.ws("/ws/realtime")).await;
    realtime.expect("session_started").await;
    realtime
        .call(json!({"x": 0.1, "y": 9.8, "z": 0.3}), "step_detection")
        .await;
    one_trace_with(
        &collected,
        &[("node-a", "ws.message"), ("node-a", "detection.steps")],
    )
    .await;
}
