//! cosmian-pkcs11: a PKCS#11 provider that lets OpenSSH (and any PKCS#11 client) sign with
//! keys held in a Cosmian KMS. Private keys never leave the KMS: each signature is one KMIP
//! Sign request.
//!
//! Layers, from the C ABI inwards:
//! - [`ffi`]: the three exported symbols, the function tables, pointer checks (thin);
//! - [`provider`]: the PKCS#11 API as safe Rust, with the specification's state rules;
//! - [`session`], [`token`], [`signing`]: sessions, the key objects and their attributes, the
//!   per-mechanism Sign recipes;
//! - [`kmip`]: JSON-TTLV and the KMS operations over HTTP(S);
//! - [`config`]: configuration file and environment;
//! - `platform` (the `cosmian-pkcs11-platform` crate, `platform/`): what differs per OS,
//!   config paths, credential stores, logging, private files;
//! - [`asn1`]: DER in and out (SPKI, ECDSA signatures, DigestInfo, EC attributes);
//! - [`agent`]: `cosmian-ssh-agent`, and [`diagnosis`] its `check` command.

// Unsafe code (src/ffi, and setsockopt in src/kmip/transport.rs): each operation in an `unsafe`
// block of its own, with a `// SAFETY:` comment saying why it is sound, inside `unsafe fn`s too
// (denied for the whole workspace by `[workspace.lints]` in Cargo.toml).
// `pub` only where `internals` re-exports; everything else is `pub(crate)` (checked by `cargo xtask tidy`).
#![cfg_attr(feature = "internals", warn(unreachable_pub))]

// Every entry point catches panics (`catch_unwind` in src/ffi) so that none unwinds into the
// C caller; with `panic = "abort"` a panic would instead kill the caller (ssh, ssh-agent).
#[cfg(panic = "abort")]
compile_error!(
    "cosmian-pkcs11 must be built with panic = \"unwind\": a panic must become CKR_GENERAL_ERROR, not abort the PKCS#11 client"
);

pub mod agent;
mod asn1;
mod config;
mod diagnosis;
mod error;
mod ffi;
mod kmip;
mod provider;
mod session;
mod signing;
mod token;

use cosmian_pkcs11_platform as platform;

/// The parsers of untrusted input and the JSON-TTLV codec, for the fuzz targets (`fuzz/`) and
/// the benchmark's raw KMIP client (`xtask/src/bench`), with the `internals` feature. Not an API:
/// the C ABI is the provider's only interface.
#[cfg(feature = "internals")]
pub mod internals {
    pub use crate::agent::read_message as read_agent_message;
    pub use crate::asn1::{Curve, PublicKey, ecdsa_der_to_raw, parse_digest_info};
    pub use crate::config::KmsConfig;
    pub use crate::kmip::ttlv::Ttlv;
    #[cfg(target_os = "linux")]
    pub use cosmian_pkcs11_platform::credentials::{dbus, secret_service};
}

/// Locks a mutex, recovering it if a panicking thread poisoned it: every entry point catches
/// panics, and the state behind these locks stays consistent between statements.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads a read-write lock, recovering it as [`lock`] does.
pub(crate) fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes a read-write lock, recovering it as [`lock`] does.
pub(crate) fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
