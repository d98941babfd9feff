//! Server reflection: the descriptor sets the reflection service answers from, so grpcurl can list, describe and call the services without .proto files.
//!
//! envoy-types ships Envoy's generated messages but no encoded descriptor
//! set, so `build.rs` compiles the vendored .proto files (`proto/`, copied
//! from envoy-types) into one.

/// Envoy's rate-limit service and every file it imports, encoded.
pub const RLS_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rls_descriptor_set.bin"));

/// The gRPC reflection service over the rate-limit service, the health
/// service and itself.
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
        .register_encoded_file_descriptor_set(RLS_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}
