//! Server reflection: the descriptor sets the reflection service answers from, so grpcurl can list and describe services without .proto files.
//!
//! envoy-types ships Envoy's generated messages but no encoded descriptor
//! set, so the rate-limit service is not described here (yet): reflection
//! lists the health service and itself. See docs/envoy.md for calling the
//! rate-limit service with grpcurl and Envoy's .proto files.

/// The gRPC reflection service over every descriptor set this crate has.
///
/// # Errors
/// When a descriptor set does not decode (a build problem, never the request's).
pub fn service() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}
