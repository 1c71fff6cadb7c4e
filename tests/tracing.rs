//! One broadcast is one trace across processes: a REST call on edge A
//! (continuing the caller's `traceparent`), A's gRPC call to the statistics
//! service, the service, the NATS hop, and edge B delivering it. A small
//! OTLP/HTTP receiver in the test collects what both processes export.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::json;
use support::{Client, Nats, Switchboard, eventually};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_one_trace_across_edge_service_nats_and_edge() {
    let collected = Collected::default();
    let endpoint = receiver(collected.clone()).await;
    let nats = Nats::start();
    let env = |name| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", name),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]
    };
    let a = Switchboard::all_with_env(Some(&nats), &[], &env("node-a"));
    let b = Switchboard::all_with_env(Some(&nats), &[], &env("node-b"));
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

    let expected: BTreeSet<(String, String)> = [
        ("node-a", "http.request"),
        ("node-a", "grpc.client"),
        ("node-a", "grpc.server"),
        ("node-b", "nats.receive"),
    ]
    .into_iter()
    .map(|(service, span)| (service.to_owned(), span.to_owned()))
    .collect();
    eventually("both processes to export the trace's spans", || {
        let seen: BTreeSet<(String, String)> = collected
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, id)| id == trace_id)
            .map(|(service, span, _)| (service.clone(), span.clone()))
            .collect();
        let complete = expected.is_subset(&seen);
        async move { complete.then_some(()) }
    })
    .await;
}
