//! Empty: the stage is `tests/spiffe.rs`.
