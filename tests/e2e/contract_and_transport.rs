//! The contract is discoverable (reflection, health) and the transport behaves as DESIGN.md's
//! request path says: request ids, UNIMPLEMENTED with a clear message, the message size limit,
//! and gRPC-Web with CORS for browsers.

use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::storage_test;
use crate::support::{Backend, TestDb, TestServer};

storage_test!(
    reflection_lists_the_seven_services,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let server = TestServer::start(&db).await;
        let client = server.client().await;
        assert_eq!(
            client.health_check("").await.expect("health"),
            ServingStatus::Serving
        );

        let services = client.reflection_list_services().await;
        for expected in platform_api::SERVICE_NAMES {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
        for expected in [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
        assert_eq!(
            services.len(),
            platform_api::SERVICE_NAMES.len() + 3,
            "{services:?}"
        );
        server.stop().await;
    }
);

#[tokio::test]
async fn each_service_reports_its_own_health() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let client = server.client().await;
    for service in platform_api::SERVICE_NAMES {
        assert_eq!(
            client.health_check(service).await.expect(service),
            ServingStatus::Serving
        );
    }
    let unknown = client
        .health_check("no.such.Service")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let client = server.client().await;
    let health = HealthCheckRequest::default().encode_to_vec();

    let response = client
        .call_raw(
            "/grpc.health.v1.Health/Check",
            health.clone(),
            &[("x-request-id", "req-42")],
        )
        .await
        .expect("check");
    assert_eq!(
        response.metadata().get("x-request-id").expect("echoed"),
        "req-42"
    );

    let response = client
        .call_raw("/grpc.health.v1.Health/Check", health.clone(), &[])
        .await
        .expect("check");
    let generated = response.metadata().get("x-request-id").expect("generated");
    uuid::Uuid::parse_str(generated.to_str().expect("ascii")).expect("a uuid");

    // A request id that could pollute logs is replaced, not echoed.
    let response = client
        .call_raw(
            "/grpc.health.v1.Health/Check",
            health,
            &[("x-request-id", &"x".repeat(500))],
        )
        .await
        .expect("check");
    let replaced = response.metadata().get("x-request-id").expect("replaced");
    assert_ne!(replaced.len(), 500);

    // Errors carry it too, so a failed call can be found in the log.
    let status = client
        .call_raw(
            "/platform.iam.v1.IamService/GetTenant",
            vec![],
            &[("x-request-id", "req-err")],
        )
        .await
        .expect_err("unimplemented");
    assert_eq!(
        status.metadata().get("x-request-id").expect("on errors"),
        "req-err"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_methods_answer_unimplemented_and_every_contract_rpc_is_served() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let client = server.client().await;

    let status = client
        .call_raw("/platform.nothing.v1.NoService/Nothing", vec![1, 2, 3], &[])
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status.message().contains("unknown method"),
        "{}",
        status.message()
    );

    let status = client
        .call_raw("/grpc.health.v1.Health/NoSuchMethod", vec![], &[])
        .await
        .expect_err("unknown method of a known service");
    assert_eq!(status.code(), Code::Unimplemented);

    // Every RPC of the contract is served: an empty request from an admin gets an answer of its
    // own (a validation error at worst), never UNIMPLEMENTED or INTERNAL; without a token the
    // same call is refused before anything else.
    let admin = server.admin().await;
    let mut served = 0;
    for rpc in platformd::contract::rpcs().values() {
        if rpc.client_streaming || rpc.server_streaming {
            continue;
        }
        let path: &'static str = Box::leak(rpc.path().into_boxed_str());
        if let Err(status) = admin.call_raw(path, vec![], &[]).await {
            assert_ne!(status.code(), Code::Unimplemented, "{path}: {status:?}");
            assert_ne!(status.code(), Code::Internal, "{path}: {status:?}");
        }
        let status = client.call_raw(path, vec![], &[]).await.expect_err(path);
        assert_eq!(status.code(), Code::Unauthenticated, "{path}");
        served += 1;
    }
    assert!(served >= 90, "the contract has {served} unary RPCs");
    // The server is still healthy after all of that.
    assert_eq!(
        client.health_check("").await.expect("health"),
        ServingStatus::Serving
    );
    server.stop().await;
}

#[tokio::test]
async fn messages_over_the_limit_are_refused_without_harm() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let client = server.client().await;

    // Just over 4 MiB: a health check whose service name is 4 MiB + 1 byte.
    let big = HealthCheckRequest {
        service: "a".repeat(4 * 1024 * 1024 + 1),
    }
    .encode_to_vec();
    let status = client
        .call_raw("/grpc.health.v1.Health/Check", big, &[])
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit"), "{}", status.message());

    // Just under the limit is served (and answers NOT_FOUND for that odd service name).
    let fits = HealthCheckRequest {
        service: "a".repeat(4 * 1024 * 1024 - 16),
    }
    .encode_to_vec();
    let status = client
        .call_raw("/grpc.health.v1.Health/Check", fits, &[])
        .await
        .expect_err("unknown service name");
    assert_eq!(status.code(), Code::NotFound);

    // A malformed message is a clean error, not a crash.
    let status = client
        .call_raw("/grpc.health.v1.Health/Check", vec![0xff, 0xff, 0xff], &[])
        .await
        .expect_err("garbage");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(
        client.health_check("").await.expect("still up"),
        ServingStatus::Serving
    );
    server.stop().await;
}

/// Sends one raw HTTP/1.1 request and returns the whole response bytes.
async fn http1(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response));
    read.await.expect("response in time").expect("read");
    response
}

#[tokio::test]
async fn browsers_reach_the_api_over_grpc_web_with_cors() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;

    // CORS preflight, as a browser sends it before a gRPC-Web call from another origin.
    let preflight = format!(
        "OPTIONS /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {}\r\nOrigin: http://portal.example\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,authorization\r\n\
         Connection: close\r\n\r\n",
        server.addr
    );
    let response = String::from_utf8_lossy(&http1(server.addr, preflight.as_bytes()).await)
        .to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains("access-control-allow-origin: *"),
        "{response}"
    );
    assert!(response.contains("authorization"), "{response}");

    // A gRPC-Web unary call over HTTP/1.1: the framed request, then data + trailer frames back.
    let message = HealthCheckRequest::default().encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let mut request = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {}\r\nOrigin: http://portal.example\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nX-Request-Id: web-1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let response = http1(server.addr, &request).await;
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("content-type: application/grpc-web+proto"),
        "{text}"
    );
    assert!(text.contains("x-request-id: web-1"), "{text}");
    assert!(text.contains("access-control-allow-origin: *"), "{text}");
    // The trailer frame (flag 0x80) carries grpc-status 0.
    assert!(text.contains("grpc-status:0"), "{text}");
    // The data frame carries HealthCheckResponse{status: SERVING (1)}: field 1, varint 1.
    assert!(
        response.windows(7).any(|w| w == [0, 0, 0, 0, 2, 8, 1]),
        "{text}"
    );
    server.stop().await;
}
