//! Talking to the Cosmian KMS: KMIP 2.1 in JSON-TTLV over HTTP(S), TLS with rustls ([`tls`]).

pub(crate) mod client;
pub(crate) mod operations;
mod resolver;
mod tls;
mod transport;
pub(crate) mod ttlv;

pub(crate) use client::{Kind as KmsErrorKind, KmsClient, KmsError};
