//! Generates the gRPC servers and clients of the SPIFFE Workload API (`SpiffeWorkloadAPI`, no
//! proto package) and of svidcar's node API (`svidcar.node.v1.NodeService`) from the hand-written
//! prost messages in `src/agent/proto.rs` and `src/node/proto.rs` (no protoc needed).

const WORKLOAD: &str = "crate::agent::proto";
const NODE: &str = "crate::node::proto";

fn main() {
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
    let unary = |name: &str, route: &str, input: &str, output: &str| {
        method(NODE, name, route, input, output, false)
    };
    let node = Service::builder()
        .name("NodeService")
        .package("svidcar.node.v1")
        .method(unary("join", "Join", "JoinRequest", "NodeSvidResponse"))
        .method(unary(
            "renew_node",
            "RenewNode",
            "RenewNodeRequest",
            "NodeSvidResponse",
        ))
        .method(unary(
            "sign_workload",
            "SignWorkload",
            "SignWorkloadRequest",
            "SignWorkloadResponse",
        ))
        .method(unary(
            "get_bundle",
            "GetBundle",
            "GetBundleRequest",
            "BundleResponse",
        ))
        .build();
    Builder::new().compile(&[service, node]);
}
