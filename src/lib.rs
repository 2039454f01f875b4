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
//! - [`config`], [`platform`]: configuration file and environment, per-OS paths and logging;
//! - [`asn1`]: DER in and out (SPKI, ECDSA signatures, DigestInfo, EC attributes).

// Every entry point catches panics (`catch_unwind` in src/ffi) so that none unwinds into the
// C caller; with `panic = "abort"` a panic would instead kill the caller (ssh, ssh-agent).
#[cfg(panic = "abort")]
compile_error!("cosmian-pkcs11 must be built with panic = \"unwind\": a panic must become CKR_GENERAL_ERROR, not abort the PKCS#11 client");

pub mod asn1;
pub mod config;
pub mod error;
mod ffi;
pub mod kmip;
#[path = "../platform/mod.rs"]
pub mod platform;
pub mod provider;
pub mod session;
pub mod signing;
pub mod token;

/// Locks a mutex, recovering it if a panicking thread poisoned it: every entry point catches
/// panics, and the state behind these locks stays consistent between statements.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
