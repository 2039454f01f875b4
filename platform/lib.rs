//! What differs per operating system, and nothing else: where the configuration file is looked
//! for ([`config_paths`]), the credential stores secrets may live in ([`credentials`]), where
//! the logs go ([`logging`]), and files only their user may read or change ([`files`]).
//!
//! A crate of its own so that imports run one way: the provider uses it, it knows nothing of
//! the provider (it returns plain paths, bytes and strings; secrets in buffers wiped on drop).

// Unsafe code (libc calls): each operation in an `unsafe` block of its own, with a
// `// SAFETY:` comment saying why it is sound, inside `unsafe fn`s too (denied for the whole
// workspace by `[workspace.lints]` in Cargo.toml).

pub mod config_paths;
pub mod credentials;
pub mod files;
pub mod logging;
