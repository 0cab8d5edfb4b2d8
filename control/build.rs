//! Generates the gRPC server and client of the SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto
//! package) from the hand-written prost messages in `src/agent/proto.rs` (no protoc needed).

fn main() {
    use tonic_build::manual::{Builder, Method, Service};
    let codec = "tonic_prost::ProstCodec";
    let proto = "crate::agent::proto";
    let method = |name: &str, route: &str, input: &str, output: &str, stream: bool| {
        let b = Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("{proto}::{input}"))
            .output_type(format!("{proto}::{output}"))
            .codec_path(codec);
        if stream {
            b.server_streaming().build()
        } else {
            b.build()
        }
    };
    let service = Service::builder()
        .name("SpiffeWorkloadAPI")
        .package("")
        .method(method(
            "fetch_x509_svid",
            "FetchX509SVID",
            "X509SvidRequest",
            "X509SvidResponse",
            true,
        ))
        .method(method(
            "fetch_x509_bundles",
            "FetchX509Bundles",
            "X509BundlesRequest",
            "X509BundlesResponse",
            true,
        ))
        .method(method(
            "fetch_jwt_svid",
            "FetchJWTSVID",
            "JwtSvidRequest",
            "JwtSvidResponse",
            false,
        ))
        .method(method(
            "fetch_jwt_bundles",
            "FetchJWTBundles",
            "JwtBundlesRequest",
            "JwtBundlesResponse",
            true,
        ))
        .method(method(
            "validate_jwt_svid",
            "ValidateJWTSVID",
            "ValidateJwtSvidRequest",
            "ValidateJwtSvidResponse",
            false,
        ))
        .build();
    Builder::new().compile(&[service]);
}
