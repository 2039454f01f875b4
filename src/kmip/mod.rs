//! Talking to the Cosmian KMS: KMIP 2.1 in JSON-TTLV over HTTP(S).

pub mod client;
pub mod operations;
mod resolver;
pub mod ttlv;

pub use client::{KmsClient, KmsError};
