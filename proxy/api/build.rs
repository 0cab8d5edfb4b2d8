//! Generates the messages and gRPC stubs of svidcar's own APIs from the checked-in `.proto`
//! files, with protox (a protobuf compiler in Rust), so no `protoc` is needed.

const PROTOS: &[&str] = &[
    "proto/svidcar/control/v1/policy.proto",
    "proto/svidcar/node/v1/node.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let files = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        // The join token must never reach a log: `Debug` is written by hand.
        .skip_debug(["svidcar.node.v1.JoinRequest"])
        // The decision log stores events in their wire form, as JSON lines.
        .type_attribute(
            "svidcar.control.v1.DecisionEventMsg",
            // `default`: records written before a field existed still read.
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .compile_fds(files)?;
    Ok(())
}
