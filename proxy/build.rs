//! Generates the gRPC client and server of svidcar's control-plane policy service from the
//! hand-written prost messages in `src/control_proto.rs` (no protoc needed).

fn main() {
    use tonic_build::manual::{Builder, Method, Service};
    let codec = "tonic_prost::ProstCodec";
    let service = Service::builder()
        .name("PolicyService")
        .package("svidcar.control.v1")
        .method(
            Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::control_proto::WatchRequest")
                .output_type("crate::control_proto::PolicySnapshot")
                .codec_path(codec)
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .method(
            Method::builder()
                .name("report_decisions")
                .route_name("ReportDecisions")
                .input_type("crate::control_proto::DecisionEventMsg")
                .output_type("crate::control_proto::ReportSummary")
                .codec_path(codec)
                .client_streaming()
                .build(),
        )
        .build();
    Builder::new().compile(&[service]);
}
