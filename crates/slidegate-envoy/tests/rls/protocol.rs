//! The gRPC surface: malformed input, health and reflection.

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use std::time::Duration;

use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::decide::RULES;
use crate::helpers::{OK, channel, descriptor, request, spawn, with_hits};

fn assert_invalid(result: Result<RateLimitResponse, tonic::Status>, says: &str) {
    let status = result.expect_err("the request is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(says),
        "{:?} lacks {says:?}",
        status.message()
    );
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments_and_count_nothing() {
    let rls = spawn(RULES).await;
    let key3 = || descriptor(&[("key3", "alice")]);
    assert_invalid(
        rls.call(request("", vec![key3()])).await,
        "domain must not be empty",
    );
    assert_invalid(
        rls.call(request("test-domain", vec![])).await,
        "at least one descriptor",
    );
    assert_invalid(
        rls.call(request(
            "test-domain",
            vec![key3(), descriptor(&[("", "x")])],
        ))
        .await,
        "descriptors[1].entries[0].key must not be empty",
    );
    assert_invalid(
        rls.call(request("test-domain", vec![key3(), descriptor(&[])]))
            .await,
        "descriptors[1] has no entries",
    );
    assert_invalid(
        rls.call(request("test-domain", vec![key3(); 5000])).await,
        "5000 descriptors; at most 64",
    );
    assert_invalid(
        rls.call(request(
            "test-domain",
            vec![key3(), with_hits(descriptor(&[("key2", "a")]), u64::MAX)],
        ))
        .await,
        "descriptors[1].hits_addend 18446744073709551615 is above",
    );
    let mut huge = request("test-domain", vec![key3()]);
    huge.hits_addend = u32::MAX;
    assert_invalid(rls.call(huge).await, "hits_addend 4294967295 is above");
    let long = "v".repeat(300);
    assert_invalid(
        rls.call(request(
            "test-domain",
            vec![key3(), descriptor(&[("key2", &long)])],
        ))
        .await,
        "descriptors[1]: the entries' values make an invalid counter key",
    );
    assert_invalid(
        rls.call(request(
            "test-domain",
            vec![descriptor(&[("key2", "a\u{1b}[31m")])],
        ))
        .await,
        "control character",
    );
    // None of those counted key3 (1 per hour): it is still free.
    let response = rls.ok(request("test-domain", vec![key3()])).await;
    assert_eq!(response.overall_code, OK);
    assert_eq!(response.statuses[0].limit_remaining, 0);
}

/// Sends raw bytes as the request message and reads a response message.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = RateLimitResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = RateLimitResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<RateLimitResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        RateLimitResponse::decode(bytes)
            .map(Some)
            .map_err(|error| tonic::Status::internal(error.to_string()))
    }
}

#[tokio::test]
async fn malformed_protobuf_is_a_grpc_error_and_the_server_keeps_serving() {
    let rls = spawn(RULES).await;
    let mut grpc = tonic::client::Grpc::new(channel(rls.addr).await);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    );
    // Field 1 (domain) says 100 bytes follow; 2 do. Then a varint that never ends.
    for garbage in [
        vec![0x0a, 100, b'x', b'y'],
        vec![
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(tonic::Request::new(garbage), path.clone(), RawCodec)
            .await
            .expect_err("garbage is refused");
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    }
    // A well-formed message on the same raw path, and the typed client, still work.
    let good = request("test-domain", vec![descriptor(&[("key2", "alice")])]).encode_to_vec();
    grpc.ready().await.unwrap();
    let response = grpc
        .unary(tonic::Request::new(good), path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.overall_code, OK);
    assert_eq!(
        rls.ok(request("test-domain", vec![descriptor(&[("key2", "bob")])]))
            .await
            .overall_code,
        OK
    );
}

#[tokio::test]
async fn health_follows_the_replicas_readiness() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let rls = spawn(RULES).await;
    let mut health = HealthClient::new(channel(rls.addr).await);
    let services = ["", slidegate_envoy::server::RATE_LIMIT_SERVICE];
    for service in services {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    // Watch answers each change as it happens.
    let mut watched = health
        .watch(HealthCheckRequest {
            service: slidegate_envoy::server::RATE_LIMIT_SERVICE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    async fn next(watched: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
        tokio::time::timeout(Duration::from_secs(10), watched.message())
            .await
            .expect("a health change within 10 s")
            .unwrap()
            .unwrap()
            .status
    }
    assert_eq!(next(&mut watched).await, ServingStatus::Serving as i32);
    rls.ready.send(false).unwrap();
    assert_eq!(next(&mut watched).await, ServingStatus::NotServing as i32);
    let overall = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.status, ServingStatus::NotServing as i32);
    rls.ready.send(true).unwrap();
    assert_eq!(next(&mut watched).await, ServingStatus::Serving as i32);
    // Not ready still answers ShouldRateLimit: readiness is for balancers.
    let answer = rls
        .ok(request(
            "test-domain",
            vec![descriptor(&[("key", "value")])],
        ))
        .await;
    assert_eq!(answer.statuses.len(), 1);
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let rls = spawn(RULES).await;
    let mut reflection = ServerReflectionClient::new(channel(rls.addr).await);
    let ask = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "envoy.service.ratelimit.v3.RateLimitService".into(),
        )),
        // What grpcurl asks next: each imported file by name.
        ask(MessageRequest::FileByFilename(
            "envoy/extensions/common/ratelimit/v3/ratelimit.proto".into(),
        )),
        ask(MessageRequest::FileByFilename(
            "google/protobuf/duration.proto".into(),
        )),
    ];
    let mut answers = reflection
        .server_reflection_info(tokio_stream_of(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected the list of services");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"envoy.service.ratelimit.v3.RateLimitService".to_owned()),
        "{names:?}"
    );
    // The service's file, then the files it imports, so grpcurl can build requests.
    for expected in [
        "envoy/service/ratelimit/v3/rls.proto",
        "envoy/extensions/common/ratelimit/v3/ratelimit.proto",
        "google/protobuf/duration.proto",
    ] {
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected the file {expected}");
        };
        let names: Vec<String> = files
            .file_descriptor_proto
            .iter()
            .map(|file| {
                envoy_types::pb::google::protobuf::FileDescriptorProto::decode(file.as_slice())
                    .unwrap()
                    .name
                    .unwrap_or_default()
            })
            .collect();
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} is not in {names:?}"
        );
    }
}

/// A finite stream of `items` (what a client-streaming call sends).
fn tokio_stream_of<T: Send + 'static>(
    items: Vec<T>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> {
    tonic::codegen::tokio_stream::iter(items)
}
