//! What differs per operating system: where the configuration file is looked for, the
//! credential stores secrets may live in, TLS to the KMS, and where the logs go. (Compiled as
//! `crate::platform` from the provider crate's `src/lib.rs`.)

pub mod config_paths;
pub mod credentials;
pub mod logging;
pub mod tls;
