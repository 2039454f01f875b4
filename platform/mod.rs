//! What differs per operating system: where the configuration file is looked for, the
//! credential stores secrets may live in, TLS to the KMS, and where the logs go. (Compiled as
//! `crate::platform` from the provider crate's `src/lib.rs`.)

pub(crate) mod config_paths;
pub(crate) mod credentials;
pub(crate) mod logging;
pub(crate) mod tls;
