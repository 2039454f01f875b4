//! Talking to the Cosmian KMS: KMIP 2.1 in JSON-TTLV over HTTP(S).

pub(crate) mod client;
pub(crate) mod operations;
mod resolver;
mod transport;
pub(crate) mod ttlv;

pub(crate) use client::{KmsClient, KmsError};
