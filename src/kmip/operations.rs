//! The KMIP operations the provider sends, built and read as measured against the server:
//! Locate (tagged public and private keys, batched, paged), a batched Export of the public keys with their attributes,
//! and Sign. Never a Get or Export of a private key.

use super::client::{Kind as KmsErrorKind, KmsClient, KmsError};
use super::ttlv::{Ttlv, Value};
use crate::asn1::Hash;
use crate::config::Secret;

/// The server caps a Locate answer at this many ids.
const LOCATE_PAGE: i64 = 1000;

/// What to sign: a message, or a hash computed by the caller or by us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SignInput {
    Data(Vec<u8>),
    Digest(Vec<u8>),
}

/// One Sign request's parameters and input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SignRequest {
    /// `CryptographicParameters` items, in KMIP order: (tag, enumeration variant).
    pub parameters: Vec<(&'static str, &'static str)>,
    pub input: SignInput,
}

fn hash_name(h: Hash) -> &'static str {
    match h {
        Hash::Sha1 => "SHA1",
        Hash::Sha256 => "SHA256",
        Hash::Sha384 => "SHA384",
        Hash::Sha512 => "SHA512",
    }
}

impl SignRequest {
    pub(crate) fn ecdsa(hash: Hash, input: SignInput) -> Self {
        let algorithm = match hash {
            Hash::Sha1 => "ECDSAWithSHA1",
            Hash::Sha256 => "ECDSAWithSHA256",
            Hash::Sha384 => "ECDSAWithSHA384",
            Hash::Sha512 => "ECDSAWithSHA512",
        };
        Self { parameters: vec![("DigitalSignatureAlgorithm", algorithm)], input }
    }

    pub(crate) fn eddsa(message: Vec<u8>) -> Self {
        Self { parameters: Vec::new(), input: SignInput::Data(message) }
    }

    /// PKCS#1 v1.5 over a hash. Without `DigitalSignatureAlgorithm` the server signs PSS.
    pub(crate) fn rsa_pkcs1(hash: Hash, digest: Vec<u8>) -> Self {
        let algorithm = match hash {
            Hash::Sha1 => "SHA1WithRSAEncryption",
            Hash::Sha256 => "SHA256WithRSAEncryption",
            Hash::Sha384 => "SHA384WithRSAEncryption",
            Hash::Sha512 => "SHA512WithRSAEncryption",
        };
        Self {
            parameters: vec![
                ("PaddingMethod", "PKCS1v15"),
                ("HashingAlgorithm", hash_name(hash)),
                ("DigitalSignatureAlgorithm", algorithm),
                ("CryptographicAlgorithm", "RSA"),
            ],
            input: SignInput::Digest(digest),
        }
    }

    /// RSA-PSS over a hash; the server uses MGF1 with that hash and a salt of its length.
    pub(crate) fn rsa_pss(hash: Hash, digest: Vec<u8>) -> Self {
        Self {
            parameters: vec![
                ("PaddingMethod", "PSS"),
                ("HashingAlgorithm", hash_name(hash)),
                ("DigitalSignatureAlgorithm", "RSASSAPSS"),
                ("CryptographicAlgorithm", "RSA"),
            ],
            input: SignInput::Digest(digest),
        }
    }

    fn to_ttlv(&self, private_key_id: &str) -> Ttlv {
        let mut items = vec![Ttlv::text("UniqueIdentifier", private_key_id)];
        if !self.parameters.is_empty() {
            let params = self.parameters.iter().map(|(tag, variant)| Ttlv::enumeration(tag, variant)).collect();
            items.push(Ttlv::structure("CryptographicParameters", params));
        }
        items.push(match &self.input {
            SignInput::Data(d) => Ttlv::bytes("Data", d),
            SignInput::Digest(d) => Ttlv::bytes("DigestedData", d),
        });
        Ttlv::structure("Sign", items)
    }
}

/// Signs with the private key `private_key_id`; returns the KMS's `SignatureData` as is.
pub(crate) fn sign(client: &KmsClient, private_key_id: &str, request: &SignRequest) -> Result<Vec<u8>, KmsError> {
    let answer = client.call(&request.to_ttlv(private_key_id))?;
    answer
        .child("SignatureData")
        .and_then(Ttlv::as_bytes)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| KmsError::new(KmsErrorKind::Malformed, "SignResponse without SignatureData"))
}

/// The `Attribute` structure of a vendor tag set, as Locate takes it.
fn tag_attribute(vendor_id: &str, tags: &[&str]) -> Ttlv {
    let json = serde_json::to_string(tags).unwrap_or_default();
    Ttlv::structure(
        "Attribute",
        vec![
            Ttlv::text("VendorIdentification", vendor_id),
            Ttlv::text("AttributeName", "tag"),
            Ttlv::text("AttributeValue", &json),
        ],
    )
}

/// At most this many Locate rounds per listing (10,000 keys with a server that pages).
pub(crate) const MAX_LOCATE_ROUNDS: usize = 10;

/// The ids of the `Active` public and private keys carrying `tag`, located together in one
/// batched `RequestMessage` per page round (see [`add_locate_page`]), at most
/// [`MAX_LOCATE_ROUNDS`] rounds, none started after `deadline`. The private ids are what
/// confirms a cached public key's private half (`token::Token::load`). Revoking a key pair
/// deactivates both halves: a revoked key is in neither list.
pub(crate) fn locate_key_pairs(
    client: &KmsClient,
    vendor_id: &str,
    tag: &str,
    deadline: std::time::Instant,
) -> Result<(Vec<String>, Vec<String>), KmsError> {
    let mut lists = [(Vec::new(), true), (Vec::new(), true)];
    for round in 0.. {
        if !lists.iter().any(|(_, more)| *more) {
            break;
        }
        if round == MAX_LOCATE_ROUNDS {
            tracing::warn!(rounds = round, "stopped listing after {MAX_LOCATE_ROUNDS} Locate pages");
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(KmsError::new(
                KmsErrorKind::Timeout,
                format!("listing the keys: past its deadline after {round} Locate rounds"),
            ));
        }
        let wanted: Vec<usize> = (0..2).filter(|i| lists[*i].1).collect();
        let requests = wanted
            .iter()
            .map(|i| locate_request(vendor_id, tag, ["PublicKey", "PrivateKey"][*i], lists[*i].0.len(), LOCATE_PAGE))
            .collect();
        for (i, answer) in wanted.into_iter().zip(client.batch(requests)?) {
            let page =
                answer?.children_tagged("UniqueIdentifier").filter_map(Ttlv::as_text).map(str::to_owned).collect();
            let (ids, more) = &mut lists[i];
            *more = add_locate_page(ids, page);
        }
    }
    let [(public, _), (private, _)] = lists;
    Ok((public, private))
}

/// Whether the KMS accepts `token`: one Locate of at most one tagged public key, sent with
/// it (PIN mode's check of a PIN before the client carries it).
pub(crate) fn check_token(client: &KmsClient, vendor_id: &str, tag: &str, token: &Secret) -> Result<(), KmsError> {
    client.call_as(&locate_request(vendor_id, tag, "PublicKey", 0, 1), Some(token)).map(drop)
}

/// A Locate of at most `max` of the `Active` objects of `object_type` carrying `tag`, from
/// `offset` on.
fn locate_request(vendor_id: &str, tag: &str, object_type: &str, offset: usize, max: i64) -> Ttlv {
    Ttlv::structure(
        "Locate",
        vec![
            Ttlv::integer("MaximumItems", max),
            Ttlv::integer("OffsetItems", offset as i64),
            Ttlv::structure(
                "Attributes",
                vec![
                    Ttlv::enumeration("ObjectType", object_type),
                    Ttlv::enumeration("State", "Active"),
                    tag_attribute(vendor_id, &[tag]),
                ],
            ),
        ],
    )
}

/// Adds a Locate page to `ids` (without repeats); whether to ask for the next page. Only a full
/// page that brought new ids calls for another: KMS 5.28 ignores `OffsetItems` and answers
/// the same first 1,000 ids again, so with it paging stops after one extra Locate and the
/// keys past the first 1,000 cannot be listed (logged).
fn add_locate_page(ids: &mut Vec<String>, page: Vec<String>) -> bool {
    let full = page.len() as i64 >= LOCATE_PAGE;
    let mut known: std::collections::HashSet<String> = ids.iter().cloned().collect();
    let before = ids.len();
    for id in page {
        if known.insert(id.clone()) {
            ids.push(id);
        }
    }
    if full && ids.len() == before {
        tracing::warn!(
            listed = ids.len(),
            "the KMS caps Locate at {LOCATE_PAGE} ids and does not page further: only the first {} tagged keys are offered",
            ids.len()
        );
    }
    full && ids.len() > before
}

/// A public key of the KMS with what the token needs to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemoteKey {
    pub public_id: String,
    /// From the public key's `PrivateKeyLink`.
    pub private_id: String,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    pub name: Option<String>,
    pub tags: Vec<String>,
}

/// At most this many Exports per `RequestMessage`: one message per Locate page, so a listing
/// stays one Export round trip for up to 1,000 keys (KMS 5.28's Locate cap), and an answer is
/// at most 1,000 x 16 KiB (the Export cap in `client`), 16 MiB, however many keys a server
/// that pages lists.
pub(crate) const EXPORT_BATCH: usize = 1000;

/// Fetches the public keys and their attributes: one batched round trip per
/// [`EXPORT_BATCH`] keys, none started after `deadline`.
pub(crate) fn export_public_keys(
    client: &KmsClient,
    vendor_id: &str,
    public_ids: &[String],
    deadline: std::time::Instant,
) -> Result<Vec<Result<RemoteKey, KmsError>>, KmsError> {
    let mut keys = Vec::with_capacity(public_ids.len());
    for (round, ids) in public_ids.chunks(EXPORT_BATCH).enumerate() {
        if std::time::Instant::now() > deadline {
            return Err(KmsError::new(
                KmsErrorKind::Timeout,
                format!(
                    "listing the keys: past its deadline after {round} Export messages of {}",
                    public_ids.len().div_ceil(EXPORT_BATCH)
                ),
            ));
        }
        let requests = ids
            .iter()
            .map(|id| {
                Ttlv::structure(
                    "Export",
                    vec![Ttlv::text("UniqueIdentifier", id), Ttlv::enumeration("KeyFormatType", "PKCS8")],
                )
            })
            .collect();
        // Each Export answer read into its key as soon as it is decoded, and dropped.
        let answers = client.batch_each(requests, |i, answer| {
            let id = ids.get(i).map_or("", String::as_str);
            answer.and_then(|a| read_exported_public_key(id, vendor_id, &a))
        })?;
        keys.extend(answers);
    }
    Ok(keys)
}

/// Reads an `Export` answer of a public key.
fn read_exported_public_key(public_id: &str, vendor_id: &str, answer: &Ttlv) -> Result<RemoteKey, KmsError> {
    let malformed = |what: &str| KmsError::new(KmsErrorKind::Malformed, format!("Export of {public_id}: {what}"));
    if answer.find("ObjectType").and_then(Ttlv::as_text).is_some_and(|t| t != "PublicKey") {
        return Err(malformed("not a public key"));
    }
    let spki = answer
        .find("KeyMaterial")
        .and_then(Ttlv::as_bytes)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| malformed("no KeyMaterial"))?;
    let attributes = answer.find("Attributes");
    let private_id = attributes
        .into_iter()
        .flat_map(|a| a.children_tagged("Link"))
        .find(|l| l.child("LinkType").and_then(Ttlv::as_text) == Some("PrivateKeyLink"))
        .and_then(|l| l.child("LinkedObjectIdentifier"))
        .and_then(Ttlv::as_text)
        .map(str::to_owned)
        .or_else(|| public_id.strip_suffix("_pk").map(str::to_owned))
        .ok_or_else(|| malformed("no link to its private key"))?;
    let name = attributes
        .into_iter()
        .flat_map(|a| a.children_tagged("Name"))
        .find_map(|n| n.child("NameValue").and_then(Ttlv::as_text))
        .map(str::to_owned);
    let tags = attributes
        .into_iter()
        .flat_map(|a| a.children_tagged("VendorAttribute").chain(a.children_tagged("Attribute")))
        .filter(|v| {
            v.child("VendorIdentification").and_then(Ttlv::as_text) == Some(vendor_id)
                && v.child("AttributeName").and_then(Ttlv::as_text) == Some("tag")
        })
        .find_map(|v| v.child("AttributeValue"))
        .and_then(|v| match &v.value {
            Value::TextString(s) => serde_json::from_str::<Vec<String>>(s).ok(),
            Value::ByteString(b) => serde_json::from_slice::<Vec<String>>(b).ok(),
            _ => None,
        })
        .unwrap_or_default();
    Ok(RemoteKey { public_id: public_id.to_owned(), private_id, spki, name, tags })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_requests_follow_the_measured_recipes() {
        let r = SignRequest::rsa_pkcs1(Hash::Sha512, vec![1, 2]);
        assert_eq!(
            r.to_ttlv("k").to_json(),
            concat!(
                r#"{"tag":"Sign","value":[{"tag":"UniqueIdentifier","type":"TextString","value":"k"},"#,
                r#"{"tag":"CryptographicParameters","value":["#,
                r#"{"tag":"PaddingMethod","type":"Enumeration","value":"PKCS1v15"},"#,
                r#"{"tag":"HashingAlgorithm","type":"Enumeration","value":"SHA512"},"#,
                r#"{"tag":"DigitalSignatureAlgorithm","type":"Enumeration","value":"SHA512WithRSAEncryption"},"#,
                r#"{"tag":"CryptographicAlgorithm","type":"Enumeration","value":"RSA"}]},"#,
                r#"{"tag":"DigestedData","type":"ByteString","value":"0102"}]}"#
            )
        );
        let e = SignRequest::eddsa(vec![0xFF]).to_ttlv("k");
        assert_eq!(e.children().len(), 2);
        assert_eq!(e.child("Data").and_then(Ttlv::as_bytes), Some(&[0xFF][..]));
    }

    #[test]
    fn locate_paging_stops_when_a_full_page_brings_nothing_new() {
        let page = |from: usize, n: usize| (from..from + n).map(|i| format!("k{i}")).collect::<Vec<_>>();
        let mut ids = Vec::new();
        assert!(!add_locate_page(&mut ids, page(0, 3)), "a short page is the last one");
        assert_eq!(ids, page(0, 3));
        // A server that pages: full pages, then a short one.
        let mut ids = Vec::new();
        assert!(add_locate_page(&mut ids, page(0, 1000)));
        assert!(!add_locate_page(&mut ids, page(1000, 1)));
        assert_eq!(ids, page(0, 1001));
        // KMS 5.28 ignores OffsetItems: the same full page again ends the listing, no repeats.
        let mut ids = Vec::new();
        assert!(add_locate_page(&mut ids, page(0, 1000)));
        assert!(!add_locate_page(&mut ids, page(0, 1000)));
        assert_eq!(ids, page(0, 1000));
    }

    #[test]
    fn tag_attribute_is_a_json_array_in_a_text_string() {
        let a = tag_attribute("cosmian", &["ssh-auth"]);
        assert_eq!(a.child("AttributeValue").and_then(Ttlv::as_text), Some(r#"["ssh-auth"]"#));
    }
}
