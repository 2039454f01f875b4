//! The raw KMIP client the provider is measured against: one ureq agent, and the requests the
//! provider sends (Sign, its Locate of tagged public keys, its batched Export), encoded by the
//! provider's own JSON-TTLV codec.

use cosmian_pkcs11_testbed::KmsServer;

use super::failed;
use cosmian_pkcs11::internals::Ttlv;

/// A minimal KMIP client: one ureq agent (kept-alive connections, as many idle ones as the
/// provider keeps; over TLS, ureq's rustls with the test CA as its only root); answers read and
/// parsed.
pub(super) struct RawKmip {
    agent: ureq::Agent,
    url: String,
}

impl RawKmip {
    /// A client with no connection yet, trusting `ca` (PEM).
    pub(super) fn new(kms: &KmsServer, ca: &str) -> Self {
        let roots = ureq::tls::parse_pem(ca.as_bytes())
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
            .build();
        let agent = ureq::Agent::config_builder().max_idle_connections_per_host(4).tls_config(tls).build().into();
        Self { agent, url: kms.url() }
    }

    fn post(&self, path: &str, body: &str) -> Result<serde_json::Value, String> {
        let mut answer = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(failed("raw KMIP request"))?;
        let text =
            answer.body_mut().with_config().limit(16 << 20).read_to_string().map_err(failed("raw KMIP answer"))?;
        serde_json::from_str(&text).map_err(|e| format!("raw KMIP answer ({e}): {text:.300}"))
    }

    /// Sends a Sign request (`body`, see `KeyType::sign_request`); `Err` unless it is answered
    /// with a signature.
    pub(super) fn sign(&self, body: &str) -> Result<(), String> {
        let answer = self.post("/kmip/2_1", body)?;
        let signed = children(&answer).any(|i| i["tag"] == "SignatureData");
        signed.then_some(()).ok_or_else(|| format!("Sign answered {answer:.300}"))
    }

    /// The provider's Locate, raw: the pages of the tagged active public keys (see
    /// `locate_tagged`).
    pub(super) fn locate(&self, tag: &str) -> Result<Vec<String>, String> {
        let mut ids: Vec<String> = Vec::new();
        loop {
            let answer = self.post("/kmip/2_1", &locate_request(tag, ids.len()).to_json())?;
            let page: Vec<String> = children(&answer)
                .filter(|i| i["tag"] == "UniqueIdentifier")
                .filter_map(|i| i["value"].as_str().map(str::to_owned))
                .collect();
            let before = ids.len();
            let known: std::collections::HashSet<String> = ids.iter().cloned().collect();
            ids.extend(page.iter().filter(|id| !known.contains(*id)).cloned());
            if page.len() < 1000 || ids.len() == before {
                return Ok(ids);
            }
        }
    }

    /// The provider's batched Export of public keys, raw; the number of keys exported.
    pub(super) fn export(&self, ids: &[String]) -> Result<usize, String> {
        let answer = self.post("/kmip", &export_request(ids).to_json())?;
        Ok(children(&answer).filter(|i| i["tag"] == "BatchItem").count())
    }
}

/// One page of the Locate: the active public keys tagged `tag`, from `offset` on.
fn locate_request(tag: &str, offset: usize) -> Ttlv {
    // The tags attribute's value: a JSON array in a TextString.
    let tag_json = serde_json::Value::from(vec![tag]).to_string();
    let attributes = Ttlv::structure(
        "Attributes",
        vec![
            Ttlv::enumeration("ObjectType", "PublicKey"),
            Ttlv::enumeration("State", "Active"),
            Ttlv::structure(
                "Attribute",
                vec![
                    Ttlv::text("VendorIdentification", "cosmian"),
                    Ttlv::text("AttributeName", "tag"),
                    Ttlv::text("AttributeValue", &tag_json),
                ],
            ),
        ],
    );
    Ttlv::structure(
        "Locate",
        vec![Ttlv::integer("MaximumItems", 1000), Ttlv::integer("OffsetItems", offset as i64), attributes],
    )
}

/// The batched Export of the public keys `ids`, in PKCS#8.
fn export_request(ids: &[String]) -> Ttlv {
    let header = Ttlv::structure(
        "RequestHeader",
        vec![
            Ttlv::structure(
                "ProtocolVersion",
                vec![Ttlv::integer("ProtocolVersionMajor", 2), Ttlv::integer("ProtocolVersionMinor", 1)],
            ),
            Ttlv::integer("BatchCount", ids.len() as i64),
        ],
    );
    let exports = ids.iter().map(|id| {
        let payload = Ttlv::structure(
            "RequestPayload",
            vec![Ttlv::text("UniqueIdentifier", id), Ttlv::enumeration("KeyFormatType", "PKCS8")],
        );
        Ttlv::structure("BatchItem", vec![Ttlv::enumeration("Operation", "Export"), payload])
    });
    Ttlv::structure("RequestMessage", std::iter::once(header).chain(exports).collect())
}

/// The items of a JSON-TTLV structure.
fn children(structure: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    structure["value"].as_array().into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bodies as the benchmark wrote them before it used the provider's encoder.

    #[test]
    fn locate_is_the_providers() {
        assert_eq!(
            locate_request("enum-10", 1000).to_json(),
            r#"{"tag":"Locate","value":[{"tag":"MaximumItems","type":"Integer","value":1000},{"tag":"OffsetItems","type":"Integer","value":1000},{"tag":"Attributes","value":[{"tag":"ObjectType","type":"Enumeration","value":"PublicKey"},{"tag":"State","type":"Enumeration","value":"Active"},{"tag":"Attribute","value":[{"tag":"VendorIdentification","type":"TextString","value":"cosmian"},{"tag":"AttributeName","type":"TextString","value":"tag"},{"tag":"AttributeValue","type":"TextString","value":"[\"enum-10\"]"}]}]}]}"#
        );
    }

    #[test]
    fn batched_export_is_the_providers() {
        assert_eq!(
            export_request(&["a".into(), "b".into()]).to_json(),
            r#"{"tag":"RequestMessage","value":[{"tag":"RequestHeader","value":[{"tag":"ProtocolVersion","value":[{"tag":"ProtocolVersionMajor","type":"Integer","value":2},{"tag":"ProtocolVersionMinor","type":"Integer","value":1}]},{"tag":"BatchCount","type":"Integer","value":2}]},{"tag":"BatchItem","value":[{"tag":"Operation","type":"Enumeration","value":"Export"},{"tag":"RequestPayload","value":[{"tag":"UniqueIdentifier","type":"TextString","value":"a"},{"tag":"KeyFormatType","type":"Enumeration","value":"PKCS8"}]}]},{"tag":"BatchItem","value":[{"tag":"Operation","type":"Enumeration","value":"Export"},{"tag":"RequestPayload","value":[{"tag":"UniqueIdentifier","type":"TextString","value":"b"},{"tag":"KeyFormatType","type":"Enumeration","value":"PKCS8"}]}]}]}"#
        );
    }
}
