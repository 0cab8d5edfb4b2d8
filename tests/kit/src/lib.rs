//! `svidcar-testkit`: the pieces svidcar's end-to-end tests, its benchmarks and `svidcar demo`
//! share. [`wait`] polls a condition until it holds or a deadline passes and,
//! on timeout, says what was awaited and for how long — instead of ad-hoc sleep loops.
//! [`pair`] issues SVIDs from a throwaway CA into in-memory credential stores (no PEM files)
//! and starts a client proxy (explicit outbound route → mTLS) and a server proxy (explicit
//! inbound → an app address) on loopback ports chosen by the OS, and an echo app to put
//! behind it. [`bench`] is the benchmarks' `main` and their medians.
//!
//! Not part of the product: nothing here is used by `svidcar run`, `agent` or `control`.

pub mod bench;
pub mod pair;
pub mod wait;

pub use pair::{
    client_config, credentials, echo_app, server_config, start_proxy, store, KitError, Pair,
    PairBuilder,
};
pub use wait::{try_wait_for, try_wait_until, wait_for, wait_until, Outcome, TimedOut, Wait};
