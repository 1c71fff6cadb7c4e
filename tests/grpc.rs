//! What `grpcurl` relies on, checked on each service: server reflection
//! lists the service, health and reflection (`grpcurl list`), serves the
//! service's descriptor (`grpcurl describe`), and health reports SERVING.
//! Then one real call per service, as the README's `grpcurl` lines make.

mod support;

use futures::StreamExt;
use prost::Message as _;
use support::Switchboard;
use switchboard_proto::v1::detection_service_client::DetectionServiceClient;
use switchboard_proto::v1::session_service_client::SessionServiceClient;
use switchboard_proto::v1::statistics_service_client::StatisticsServiceClient;
use switchboard_proto::v1::{
    AccelSample, CountSessionsRequest, CountStepsRequest, GetServerStatsRequest,
};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

async fn reflect(url: &str, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel(url).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("a response")
        .expect("not an error");
    response.message_response.expect("a message response")
}

async fn listed_services(url: &str) -> Vec<String> {
    match reflect(url, MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(list) => {
            let mut names: Vec<String> = list
                .service
                .into_iter()
                .map(|service| service.name)
                .collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// Method names of `service`, from the descriptor reflection serves.
async fn described_methods(url: &str, service: &str) -> Vec<String> {
    let files = match reflect(
        url,
        MessageRequest::FileContainingSymbol(service.to_owned()),
    )
    .await
    {
        MessageResponse::FileDescriptorResponse(files) => files.file_descriptor_proto,
        other => panic!("unexpected reflection response {other:?}"),
    };
    let short_name = service.rsplit('.').next().unwrap();
    files
        .iter()
        .map(|bytes| {
            prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("descriptor")
        })
        .flat_map(|file| file.service)
        .filter(|described| described.name() == short_name)
        .flat_map(|described| described.method)
        .map(|method| method.name().to_owned())
        .collect()
}

async fn health_of(url: &str, service: &str) -> i32 {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel(url).await);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

#[tokio::test]
async fn every_service_lists_describes_and_reports_health() {
    let node = Switchboard::all(None, &[]);
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    // Each role: its services, each with one of its methods.
    let expectations: [(&str, &[(&str, &str)]); 3] = [
        (
            "session",
            &[("switchboard.v1.SessionService", "TerminateSession")],
        ),
        (
            "detection",
            &[("switchboard.v1.DetectionService", "StreamSteps")],
        ),
        (
            "statistics",
            &[
                ("switchboard.v1.BroadcastService", "BroadcastUi"),
                ("switchboard.v1.StatisticsService", "GetServerStats"),
            ],
        ),
    ];
    for (role, services) in expectations {
        let url = node.grpc(role);
        let mut expected: Vec<String> = [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .iter()
        .chain(services.iter().map(|(service, _)| service))
        .map(|name| name.to_string())
        .collect();
        expected.sort();
        assert_eq!(listed_services(&url).await, expected, "{role}");
        for (service, a_method) in services {
            let methods = described_methods(&url, service).await;
            assert!(
                methods.iter().any(|method| method == a_method),
                "{service}: {methods:?}"
            );
            assert_eq!(health_of(&url, service).await, serving, "{service}");
        }
        assert_eq!(health_of(&url, "").await, serving, "{role} overall");
    }
}

#[tokio::test]
async fn each_service_answers_a_real_call() {
    let node = Switchboard::all(None, &[]);

    let mut sessions = SessionServiceClient::connect(node.grpc("session"))
        .await
        .unwrap();
    let count = sessions
        .count_sessions(CountSessionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.active_sessions, 0);

    let mut statistics = StatisticsServiceClient::connect(node.grpc("statistics"))
        .await
        .unwrap();
    let server = statistics
        .get_server_stats(GetServerStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.active_sessions, 0);

    // Ten seconds of walking at 50 Hz, two steps a second: a clean signal
    // the detector must count within a step or two.
    let samples: Vec<AccelSample> = (0..500)
        .map(|i| {
            let t = f64::from(i) / 50.0;
            let bounce = 3.0 * (2.0 * std::f64::consts::PI * 2.0 * t).sin();
            AccelSample {
                t,
                x: 0.3,
                y: 9.81 + bounce,
                z: 0.5,
            }
        })
        .collect();
    let mut detection = DetectionServiceClient::connect(node.grpc("detection"))
        .await
        .unwrap();
    let counted = detection
        .count_steps(CountStepsRequest { samples })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted.samples, 500);
    assert!(
        (18..=20).contains(&counted.steps),
        "counted {} of 20 steps",
        counted.steps
    );
}
