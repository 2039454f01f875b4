//! What differs per operating system: where the configuration file is looked for and where
//! the logs go. (Compiled as `crate::platform` from the provider crate's `src/lib.rs`.)

pub mod config_paths;
pub mod logging;
