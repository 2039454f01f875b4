//! Talking to the Cosmian KMS: KMIP 2.1 in JSON-TTLV over HTTP(S).

pub mod client;
pub mod operations;
mod resolver;
mod transport;
pub mod ttlv;

pub use client::{KmsClient, KmsError};
