//! Generates the gRPC server and client of the SPIFFE Workload API (`SpiffeWorkloadAPI`, no
//! proto package) from the hand-written prost messages in `src/agent/proto.rs` (no protoc
//! needed). svidcar's own APIs come from `.proto` files in `svidcar-api`.

const WORKLOAD: &str = "crate::agent::proto";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/agent/proto.rs");
    use tonic_build::manual::{Builder, Method, Service};
    let codec = "tonic_prost::ProstCodec";
    let method = |proto: &str, name: &str, route: &str, input: &str, output: &str, stream: bool| {
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
            WORKLOAD,
            "fetch_x509_svid",
            "FetchX509SVID",
            "X509SvidRequest",
            "X509SvidResponse",
            true,
        ))
        .method(method(
            WORKLOAD,
            "fetch_x509_bundles",
            "FetchX509Bundles",
            "X509BundlesRequest",
            "X509BundlesResponse",
            true,
        ))
        .method(method(
            WORKLOAD,
            "fetch_jwt_svid",
            "FetchJWTSVID",
            "JwtSvidRequest",
            "JwtSvidResponse",
            false,
        ))
        .method(method(
            WORKLOAD,
            "fetch_jwt_bundles",
            "FetchJWTBundles",
            "JwtBundlesRequest",
            "JwtBundlesResponse",
            true,
        ))
        .method(method(
            WORKLOAD,
            "validate_jwt_svid",
            "ValidateJWTSVID",
            "ValidateJwtSvidRequest",
            "ValidateJwtSvidResponse",
            false,
        ))
        .build();
    Builder::new().compile(&[service]);
}
