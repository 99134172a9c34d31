//! Validation of uploaded server and CA certificates (slb-api.md §4, slb-behaviour.md §10.1).
//!
//! PEM is tokenised here rather than by OpenSSL's PEM reader: OpenSSL's readers fall back to a
//! terminal passphrase prompt for encrypted keys, which would hang a server thread. Every block is
//! base64-decoded locally and only DER is handed to OpenSSL, so no password callback can ever run.

use std::fmt;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::ec::EcKey;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509Ref, X509};

/// Per-field upload cap. A full chain is a few KiB; the cap keeps a hostile upload from reaching
/// the parser at all.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// The request parameter an error refers to; its `Display` is the API parameter name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertParam {
    ServerCertificate,
    PrivateKey,
    CACertificate,
}

impl fmt::Display for CertParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertParam::ServerCertificate => "ServerCertificate",
            CertParam::PrivateKey => "PrivateKey",
            CertParam::CACertificate => "CACertificate",
        })
    }
}

/// Why an upload was refused. `Display` carries detail for logs; the API-facing triple comes from
/// [`CertError::code`], [`CertError::http_status`] and [`CertError::message`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    #[error("{param} is empty")]
    Empty { param: CertParam },
    #[error("{param} is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        param: CertParam,
        len: usize,
        limit: usize,
    },
    #[error("{param} contains DH PARAMETERS")]
    DhParameters { param: CertParam },
    #[error("{param} is malformed: {reason}")]
    Malformed { param: CertParam, reason: String },
    #[error("PrivateKey is encrypted")]
    KeyEncrypted,
    #[error("{param} has an unsupported public key: {found}")]
    UnsupportedKey { param: CertParam, found: String },
    #[error("{param} is a ShangMi (SM2/SM3) certificate")]
    ShangMiCertificate { param: CertParam },
    #[error("the certificate does not match the private key")]
    KeyMismatch,
}

impl CertError {
    pub fn code(&self) -> &'static str {
        match self {
            CertError::Empty {
                param: CertParam::CACertificate,
            } => "MissingParameter",
            CertError::Empty { .. }
            | CertError::TooLarge { .. }
            | CertError::DhParameters { .. }
            | CertError::Malformed { .. } => "InvalidParameter",
            CertError::KeyEncrypted => "PrivateKeyEncryption",
            CertError::UnsupportedKey { .. } => "KeyFormatError",
            CertError::ShangMiCertificate { .. } => "CnCertificateNotSupport",
            CertError::KeyMismatch => "CertificateNotMatchPrivateKey",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            CertError::Empty {
                param: CertParam::CACertificate,
            } => 400,
            // §14 documents these InvalidParameter messages with status 404 (sic).
            CertError::Empty { .. }
            | CertError::TooLarge { .. }
            | CertError::DhParameters { .. }
            | CertError::Malformed { .. } => 404,
            CertError::KeyEncrypted
            | CertError::UnsupportedKey { .. }
            | CertError::ShangMiCertificate { .. }
            | CertError::KeyMismatch => 400,
        }
    }

    pub fn message(&self) -> String {
        match self {
            CertError::Empty {
                param: CertParam::CACertificate,
            } => "The input parameter CACertificate that is mandatory for processing this request \
                  is not supplied."
                .to_string(),
            CertError::Empty { .. } => {
                "The specified parameter ServerCertificate or Key is empty.".to_string()
            }
            CertError::TooLarge { param, .. }
            | CertError::DhParameters { param }
            | CertError::Malformed { param, .. }
            | CertError::UnsupportedKey { param, .. } => format_error_message(*param),
            CertError::KeyEncrypted => "Key has Encrypted .".to_string(),
            CertError::ShangMiCertificate { .. } => {
                "The cn certificate is not support.".to_string()
            }
            CertError::KeyMismatch => "Certificate and key does not match.".to_string(),
        }
    }
}

/// §4/§14 spell the key variant with a lower-case "key"; the certificate variants name the
/// parameter, so the CA wording is the same template with `CACertificate`.
fn format_error_message(param: CertParam) -> String {
    match param {
        CertParam::PrivateKey => "The specified parameter key format is error.".to_string(),
        other => format!("The specified parameter {other} format is error."),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcCurve {
    P256,
    P384,
    P521,
}

impl EcCurve {
    /// NIST name, as the console and B10.2 spell it.
    pub fn name(self) -> &'static str {
        match self {
            EcCurve::P256 => "P-256",
            EcCurve::P384 => "P-384",
            EcCurve::P521 => "P-521",
        }
    }
}

/// The leaf's public-key algorithm; only the B10.2 set is representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa { bits: u32 },
    Ec { curve: EcCurve },
}

/// What the API records and returns about an uploaded certificate (never key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-1 of the DER certificate, upper-case hex pairs joined by `:` (§4).
    pub fingerprint: String,
    /// First subject CN; empty when the subject has none.
    pub common_name: String,
    /// DNS entries of subjectAltName, in certificate order.
    pub subject_alternative_names: Vec<String>,
    /// notAfter in UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub expire_time: String,
    /// notAfter as Unix milliseconds.
    pub expire_timestamp_ms: i64,
    pub key_type: KeyType,
}

/// A validated server certificate upload, normalised for storage.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCert {
    pub info: CertInfo,
    /// Leaf first, then the uploaded chain in upload order, re-encoded from DER.
    pub chain_pem: String,
    /// Unencrypted PKCS#8 (`BEGIN PRIVATE KEY`), whatever form was uploaded.
    pub key_pem: String,
}

// Hand-written so that logging a ServerCert can never leak the key (B10.5).
impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("info", &self.info)
            .field("chain_pem", &self.chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The DNS names a certificate serves: its subjectAltNames, or its CN when it has none.
pub fn served_names<'a>(common_name: &'a str, sans: &'a [String]) -> impl Iterator<Item = &'a str> {
    let cn = sans.is_empty().then_some(common_name);
    sans.iter().map(String::as_str).chain(cn)
}

/// B10.17: `domain` (exact or `*.` wildcard) is one the certificate serves: the same name, or an
/// exact name one label below a wildcard name of the certificate.
pub fn covers<'a>(mut names: impl Iterator<Item = &'a str>, domain: &str) -> bool {
    let domain = domain.to_ascii_lowercase();
    names.any(|name| {
        let name = name.to_ascii_lowercase();
        if name == domain {
            return true;
        }
        match (name.strip_prefix("*."), domain.split_once('.')) {
            (Some(suffix), Some((label, rest))) => label != "*" && rest == suffix,
            _ => false,
        }
    })
}

/// Validates a server certificate upload: `ServerCertificate` PEM (leaf first, optional chain after
/// it) and `PrivateKey` PEM. Returns the info plus the normalised PEMs to store.
pub fn validate_server_certificate(cert_pem: &str, key_pem: &str) -> Result<ServerCert, CertError> {
    // B10.1: a server certificate needs both halves; §4 has one message for either missing.
    if cert_pem.trim().is_empty() {
        return Err(CertError::Empty {
            param: CertParam::ServerCertificate,
        });
    }
    if key_pem.trim().is_empty() {
        return Err(CertError::Empty {
            param: CertParam::PrivateKey,
        });
    }
    check_size(cert_pem, CertParam::ServerCertificate)?;
    check_size(key_pem, CertParam::PrivateKey)?;
    // B10.3, checked on the raw text so it holds even where the rest would parse.
    reject_dh_parameters(cert_pem, CertParam::ServerCertificate)?;
    reject_dh_parameters(key_pem, CertParam::PrivateKey)?;

    let certs = parse_certificates(cert_pem, CertParam::ServerCertificate)?;
    let Some((leaf, chain)) = certs.split_first() else {
        return Err(malformed(
            CertParam::ServerCertificate,
            "no CERTIFICATE block",
        ));
    };
    // B10.2 applies to every certificate in the upload, not just the leaf.
    let key_type = certificate_key_type(leaf, CertParam::ServerCertificate)?;
    for cert in chain {
        certificate_key_type(cert, CertParam::ServerCertificate)?;
    }

    let key = parse_private_key(key_pem)?;
    // B10.4: the key must be the leaf's; a reversed chain fails here too, since the leaf must
    // come first.
    let leaf_public = leaf
        .public_key()
        .map_err(openssl_error(CertParam::ServerCertificate))?;
    if !leaf_public.public_eq(&key) {
        return Err(CertError::KeyMismatch);
    }

    let info = cert_info(leaf, key_type, CertParam::ServerCertificate)?;
    let mut chain_pem = String::new();
    for cert in &certs {
        chain_pem.push_str(&pem_string(cert.to_pem(), CertParam::ServerCertificate)?);
    }
    let key_pem = pem_string(key.private_key_to_pem_pkcs8(), CertParam::PrivateKey)?;
    Ok(ServerCert {
        info,
        chain_pem,
        key_pem,
    })
}

/// Validates a CA certificate upload (one or more CA certs in PEM; no key). The info describes
/// the first certificate.
pub fn validate_ca_certificate(cert_pem: &str) -> Result<CertInfo, CertError> {
    let param = CertParam::CACertificate;
    if cert_pem.trim().is_empty() {
        return Err(CertError::Empty { param });
    }
    check_size(cert_pem, param)?;
    reject_dh_parameters(cert_pem, param)?; // B10.3
    let certs = parse_certificates(cert_pem, param)?;
    let Some((first, rest)) = certs.split_first() else {
        return Err(malformed(param, "no CERTIFICATE block"));
    };
    // B10.2, for every certificate in the bundle.
    let key_type = certificate_key_type(first, param)?;
    for cert in rest {
        certificate_key_type(cert, param)?;
    }
    cert_info(first, key_type, param)
}

fn check_size(text: &str, param: CertParam) -> Result<(), CertError> {
    if text.len() > MAX_PEM_BYTES {
        return Err(CertError::TooLarge {
            param,
            len: text.len(),
            limit: MAX_PEM_BYTES,
        });
    }
    Ok(())
}

/// B10.3. Matching the boundary suffix also catches `X9.42 DH PARAMETERS`.
fn reject_dh_parameters(text: &str, param: CertParam) -> Result<(), CertError> {
    if text.contains("DH PARAMETERS-----") {
        return Err(CertError::DhParameters { param });
    }
    Ok(())
}

fn malformed(param: CertParam, reason: impl Into<String>) -> CertError {
    CertError::Malformed {
        param,
        reason: reason.into(),
    }
}

fn openssl_error(param: CertParam) -> impl FnOnce(ErrorStack) -> CertError {
    move |e| malformed(param, e.to_string())
}

fn pem_string(pem: Result<Vec<u8>, ErrorStack>, param: CertParam) -> Result<String, CertError> {
    let bytes = pem.map_err(openssl_error(param))?;
    String::from_utf8(bytes).map_err(|e| malformed(param, e.to_string()))
}

struct PemBlock {
    label: String,
    /// RFC 1421 `Proc-Type: 4,ENCRYPTED` / `DEK-Info` headers (legacy OpenSSL key encryption).
    legacy_encrypted: bool,
    der: Vec<u8>,
}

/// Splits `text` into PEM blocks. Text between blocks is ignored, as OpenSSL does, so pasted
/// `openssl pkcs12` output ("Bag Attributes", "subject=") still works; anything malformed inside
/// a block, or no block at all, is an error.
fn parse_pem(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with("-----END ") {
            return Err(format!("'{line}' without a BEGIN line"));
        }
        let Some(label) = boundary_label(line, "-----BEGIN ") else {
            continue;
        };
        if label.is_empty() {
            return Err("BEGIN line without a label".to_string());
        }
        let mut headers = Vec::new();
        let mut body = String::new();
        let mut ended = false;
        for line in lines.by_ref() {
            let line = line.trim();
            if let Some(end) = boundary_label(line, "-----END ") {
                if end != label {
                    return Err(format!("BEGIN {label} closed by END {end}"));
                }
                ended = true;
                break;
            }
            if line.starts_with("-----") {
                return Err(format!("unexpected '{line}' inside {label}"));
            }
            // Base64 never contains ':', so a colon line before the body is a header.
            if body.is_empty() && line.contains(':') {
                headers.push(line);
            } else {
                body.push_str(line);
            }
        }
        if !ended {
            return Err(format!("{label} block has no END line (truncated?)"));
        }
        let legacy_encrypted = headers.iter().any(|h| {
            (h.starts_with("Proc-Type:") && h.contains("ENCRYPTED")) || h.starts_with("DEK-Info:")
        });
        if !legacy_encrypted {
            if let Some(h) = headers.first() {
                return Err(format!("unexpected PEM header '{h}' in {label}"));
            }
        }
        if body.is_empty() {
            return Err(format!("{label} block is empty"));
        }
        let der = openssl::base64::decode_block(&body)
            .map_err(|_| format!("{label} block is not valid base64"))?;
        blocks.push(PemBlock {
            label: label.to_string(),
            legacy_encrypted,
            der,
        });
    }
    if blocks.is_empty() {
        return Err("no PEM block found".to_string());
    }
    Ok(blocks)
}

fn boundary_label<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?.strip_suffix("-----")
}

/// B10.1: only `CERTIFICATE` blocks are allowed, so a key pasted into the certificate field is
/// refused instead of being stored as certificate content.
fn parse_certificates(text: &str, param: CertParam) -> Result<Vec<X509>, CertError> {
    let blocks = parse_pem(text).map_err(|r| malformed(param, r))?;
    let mut certs = Vec::with_capacity(blocks.len());
    for block in blocks {
        if block.label != "CERTIFICATE" {
            return Err(malformed(
                param,
                format!("{} block where a CERTIFICATE was expected", block.label),
            ));
        }
        if block.legacy_encrypted {
            return Err(malformed(param, "encrypted CERTIFICATE block"));
        }
        let cert = X509::from_der(&block.der).map_err(openssl_error(param))?;
        // d2i stops at the end of the first object; trailing bytes mean a damaged upload.
        let reencoded = cert.to_der().map_err(openssl_error(param))?;
        if reencoded.len() != block.der.len() {
            return Err(malformed(param, "trailing data after the certificate"));
        }
        certs.push(cert);
    }
    Ok(certs)
}

fn parse_private_key(text: &str) -> Result<PKey<Private>, CertError> {
    let param = CertParam::PrivateKey;
    let blocks = parse_pem(text).map_err(|r| malformed(param, r))?;
    // B10.4: once the PEM framing is sound, encryption wins over every other complaint about the
    // key. It is decided from the label/headers alone, so no passphrase is ever requested.
    if blocks
        .iter()
        .any(|b| b.legacy_encrypted || b.label == "ENCRYPTED PRIVATE KEY")
    {
        return Err(CertError::KeyEncrypted);
    }
    let mut key = None;
    for block in &blocks {
        let parsed = match block.label.as_str() {
            "PRIVATE KEY" => PKey::private_key_from_pkcs8(&block.der),
            "RSA PRIVATE KEY" => Rsa::private_key_from_der(&block.der).and_then(PKey::from_rsa),
            "EC PRIVATE KEY" => EcKey::private_key_from_der(&block.der).and_then(PKey::from_ec_key),
            // `openssl ecparam -genkey` writes the curve ahead of the key; the key repeats it.
            "EC PARAMETERS" => continue,
            other => return Err(malformed(param, format!("unexpected {other} block"))),
        }
        .map_err(openssl_error(param))?;
        if key.replace(parsed).is_some() {
            return Err(malformed(param, "more than one private key"));
        }
    }
    let key = key.ok_or_else(|| malformed(param, "no private key block"))?;
    check_key_consistency(&key)?;
    Ok(key)
}

/// A key whose public half matches but whose private half is damaged would pass the match check
/// and then fail every handshake, so the internal consistency is verified at upload time.
fn check_key_consistency(key: &PKeyRef<Private>) -> Result<(), CertError> {
    let param = CertParam::PrivateKey;
    match key.id() {
        Id::RSA => {
            let rsa = key.rsa().map_err(openssl_error(param))?;
            match rsa.check_key() {
                Ok(true) => Ok(()),
                _ => Err(malformed(param, "RSA key fails its consistency check")),
            }
        }
        Id::EC => key
            .ec_key()
            .map_err(openssl_error(param))?
            .check_key()
            .map_err(openssl_error(param)),
        // Other algorithms cannot match an accepted certificate; the match check reports them.
        _ => Ok(()),
    }
}

/// B10.2: RSA 1024/2048/4096 and ECDSA P-256/P-384/P-521 only; SM2 gets its own code.
fn certificate_key_type(cert: &X509Ref, param: CertParam) -> Result<KeyType, CertError> {
    let signed_with_sm2 = cert
        .signature_algorithm()
        .object()
        .nid()
        .short_name()
        .is_ok_and(|name| name == "SM2-SM3");
    if signed_with_sm2 {
        return Err(CertError::ShangMiCertificate { param });
    }
    let key = cert.public_key().map_err(openssl_error(param))?;
    public_key_type(&key, param)
}

fn public_key_type<T: HasPublic>(key: &PKeyRef<T>, param: CertParam) -> Result<KeyType, CertError> {
    let unsupported = |found: String| CertError::UnsupportedKey { param, found };
    match key.id() {
        Id::RSA => match key.bits() {
            bits @ (1024 | 2048 | 4096) => Ok(KeyType::Rsa { bits }),
            bits => Err(unsupported(format!("RSA {bits}"))),
        },
        Id::EC => {
            let ec = key.ec_key().map_err(openssl_error(param))?;
            match ec.group().curve_name() {
                Some(Nid::X9_62_PRIME256V1) => Ok(KeyType::Ec {
                    curve: EcCurve::P256,
                }),
                Some(Nid::SECP384R1) => Ok(KeyType::Ec {
                    curve: EcCurve::P384,
                }),
                Some(Nid::SECP521R1) => Ok(KeyType::Ec {
                    curve: EcCurve::P521,
                }),
                Some(Nid::SM2) => Err(CertError::ShangMiCertificate { param }),
                Some(nid) => Err(unsupported(format!(
                    "EC {}",
                    nid.short_name().unwrap_or("unnamed curve")
                ))),
                None => Err(unsupported("EC with explicit curve parameters".to_string())),
            }
        }
        Id::SM2 => Err(CertError::ShangMiCertificate { param }),
        _ if is_sm2_public_key(key) => Err(CertError::ShangMiCertificate { param }),
        // EVP_PKEY ids are NIDs, which gives a readable name for the log.
        other => Err(unsupported(
            Nid::from_raw(other.as_raw())
                .short_name()
                .unwrap_or("unknown algorithm")
                .to_string(),
        )),
    }
}

/// DER encoding of OID 1.2.156.10197.1.301, the SM2 curve.
const SM2_CURVE_OID: [u8; 10] = [0x06, 0x08, 0x2A, 0x81, 0x1C, 0xCF, 0x55, 0x01, 0x82, 0x2D];

/// OpenSSL 3 decodes an SM2 certificate key into a provider-only key: no numeric id (-1) and no
/// EC_KEY view. The curve is therefore read from the SubjectPublicKeyInfo's AlgorithmIdentifier.
fn is_sm2_public_key<T: HasPublic>(key: &PKeyRef<T>) -> bool {
    let Ok(der) = key.public_key_to_der() else {
        return false;
    };
    der_sequence(&der)
        .and_then(der_sequence)
        .is_some_and(|algorithm| {
            algorithm
                .windows(SM2_CURVE_OID.len())
                .any(|w| w == SM2_CURVE_OID)
        })
}

/// Contents of the DER SEQUENCE at the start of `der`; just enough DER to reach the
/// AlgorithmIdentifier, which rust-openssl does not expose.
fn der_sequence(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > std::mem::size_of::<usize>() || rest.len() < n {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(n);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    rest.get(..len)
}

fn cert_info(cert: &X509Ref, key_type: KeyType, param: CertParam) -> Result<CertInfo, CertError> {
    let digest = cert
        .digest(MessageDigest::sha1())
        .map_err(openssl_error(param))?;
    let fingerprint = digest
        .iter()
        .map(|b| hex::encode_upper([*b]))
        .collect::<Vec<_>>()
        .join(":");

    let common_name = match cert.subject_name().entries_by_nid(Nid::COMMONNAME).next() {
        Some(entry) => entry.data().to_string().map_err(openssl_error(param))?,
        None => String::new(),
    };

    let subject_alternative_names = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();

    let expire_secs = unix_seconds(cert.not_after()).map_err(openssl_error(param))?;
    Ok(CertInfo {
        fingerprint,
        common_name,
        subject_alternative_names,
        expire_time: super::utc::iso8601(expire_secs),
        expire_timestamp_ms: expire_secs.saturating_mul(1000),
        key_type,
    })
}

fn unix_seconds(time: &Asn1TimeRef) -> Result<i64, ErrorStack> {
    let diff = Asn1Time::from_unix(0)?.diff(time)?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::bn::BigNum;
    use openssl::dh::Dh;
    use openssl::ec::EcGroup;
    use openssl::symm::Cipher;

    use crate::test_certs::{issue, CertSpec};
    use std::sync::OnceLock;

    // Key generation dominates the run time, so the common keys are generated once.
    fn rsa_key(bits: u32) -> PKey<Private> {
        static K1024: OnceLock<PKey<Private>> = OnceLock::new();
        static K2048: OnceLock<PKey<Private>> = OnceLock::new();
        static K4096: OnceLock<PKey<Private>> = OnceLock::new();
        let generate = || PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap();
        match bits {
            1024 => K1024.get_or_init(generate).clone(),
            2048 => K2048.get_or_init(generate).clone(),
            4096 => K4096.get_or_init(generate).clone(),
            _ => generate(),
        }
    }

    fn ec_key(curve: Nid) -> PKey<Private> {
        let group = EcGroup::from_curve_name(curve).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    fn self_signed(key: &PKey<Private>) -> X509 {
        issue(key, CertSpec::default())
    }

    fn pem(cert: &X509) -> String {
        String::from_utf8(cert.to_pem().unwrap()).unwrap()
    }

    fn pkcs8(key: &PKey<Private>) -> String {
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap()
    }

    /// PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
    fn traditional(key: &PKey<Private>) -> String {
        let pem = match key.id() {
            Id::RSA => key.rsa().unwrap().private_key_to_pem().unwrap(),
            _ => key.ec_key().unwrap().private_key_to_pem().unwrap(),
        };
        String::from_utf8(pem).unwrap()
    }

    fn dh_params_pem() -> String {
        let p = BigNum::get_rfc3526_prime_2048().unwrap();
        let dh = Dh::from_pqg(p, None, BigNum::from_u32(2).unwrap()).unwrap();
        String::from_utf8(dh.params_to_pem().unwrap()).unwrap()
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        let b64 = openssl::base64::encode_block(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn server_err(cert: &str, key: &str) -> CertError {
        validate_server_certificate(cert, key).unwrap_err()
    }

    fn assert_api(err: &CertError, code: &str, status: u16, message: &str) {
        assert_eq!(err.code(), code, "{err}");
        assert_eq!(err.http_status(), status, "{err}");
        assert_eq!(err.message(), message, "{err}");
    }

    const CERT_FORMAT: &str = "The specified parameter ServerCertificate format is error.";
    const KEY_FORMAT: &str = "The specified parameter key format is error.";
    const CA_FORMAT: &str = "The specified parameter CACertificate format is error.";
    const EMPTY: &str = "The specified parameter ServerCertificate or Key is empty.";

    fn assert_cert_format(err: &CertError) {
        assert_api(err, "InvalidParameter", 404, CERT_FORMAT);
    }

    fn assert_key_format(err: &CertError) {
        assert_api(err, "InvalidParameter", 404, KEY_FORMAT);
    }

    fn assert_fingerprint_shape(fp: &str) {
        let groups: Vec<&str> = fp.split(':').collect();
        assert_eq!(groups.len(), 20, "{fp}");
        for g in groups {
            assert_eq!(g.len(), 2, "{fp}");
            assert!(
                g.chars()
                    .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)),
                "{fp}"
            );
        }
    }

    #[test]
    fn rsa_2048_upload_reports_documented_info() {
        let key = rsa_key(2048);
        let cert = issue(
            &key,
            CertSpec {
                sans: &["www.example.com", "example.com", "*.example.com"],
                ip_sans: &["10.0.0.1"],
                ..CertSpec::default()
            },
        );
        let sc = validate_server_certificate(&pem(&cert), &pkcs8(&key)).unwrap();
        assert_fingerprint_shape(&sc.info.fingerprint);
        let expected = hex::encode_upper(cert.digest(MessageDigest::sha1()).unwrap());
        assert_eq!(sc.info.fingerprint.replace(':', ""), expected);
        assert_eq!(sc.info.common_name, "www.example.com");
        assert_eq!(
            sc.info.subject_alternative_names,
            ["www.example.com", "example.com", "*.example.com"]
        );
        assert_eq!(sc.info.key_type, KeyType::Rsa { bits: 2048 });
        let expire_secs = unix_seconds(cert.not_after()).unwrap();
        assert_eq!(sc.info.expire_timestamp_ms, expire_secs * 1000);
        assert_eq!(sc.info.expire_time, super::super::utc::iso8601(expire_secs));
        assert_eq!(sc.chain_pem, pem(&cert));
        assert!(sc.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let stored = PKey::private_key_from_pem(sc.key_pem.as_bytes()).unwrap();
        assert!(stored.public_eq(&key));
    }

    #[test]
    fn expire_time_is_utc_iso8601_and_expired_certificates_are_accepted() {
        let key = ec_key(Nid::X9_62_PRIME256V1);
        // 2023-11-14 is already past: expiry is reported, not enforced.
        for (not_after, text) in [
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (2_600_000_000, "2052-05-22T14:13:20Z"),
        ] {
            let cert = issue(
                &key,
                CertSpec {
                    not_after: Some(not_after),
                    ..CertSpec::default()
                },
            );
            let sc = validate_server_certificate(&pem(&cert), &pkcs8(&key)).unwrap();
            assert_eq!(sc.info.expire_time, text);
            assert_eq!(sc.info.expire_timestamp_ms, not_after * 1000);
            assert_eq!(validate_ca_certificate(&pem(&cert)).unwrap(), sc.info);
        }
    }

    #[test]
    fn accepted_rsa_sizes_in_both_key_encodings() {
        for bits in [1024, 2048, 4096] {
            let key = rsa_key(bits);
            let cert = pem(&self_signed(&key));
            for key_pem in [pkcs8(&key), traditional(&key)] {
                let sc = validate_server_certificate(&cert, &key_pem).unwrap();
                assert_eq!(sc.info.key_type, KeyType::Rsa { bits });
                assert!(sc.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            }
        }
    }

    #[test]
    fn rejected_rsa_sizes() {
        for bits in [512, 3072] {
            let key = rsa_key(bits);
            let cert = pem(&self_signed(&key));
            let err = server_err(&cert, &pkcs8(&key));
            assert_api(&err, "KeyFormatError", 400, CERT_FORMAT);
            assert_eq!(
                err,
                CertError::UnsupportedKey {
                    param: CertParam::ServerCertificate,
                    found: format!("RSA {bits}"),
                }
            );
        }
    }

    #[test]
    fn accepted_ec_curves_in_both_key_encodings() {
        for (nid, curve) in [
            (Nid::X9_62_PRIME256V1, EcCurve::P256),
            (Nid::SECP384R1, EcCurve::P384),
            (Nid::SECP521R1, EcCurve::P521),
        ] {
            let key = ec_key(nid);
            let cert = pem(&self_signed(&key));
            for key_pem in [pkcs8(&key), traditional(&key)] {
                let sc = validate_server_certificate(&cert, &key_pem).unwrap();
                assert_eq!(sc.info.key_type, KeyType::Ec { curve });
            }
        }
        assert_eq!(EcCurve::P384.name(), "P-384");
    }

    #[test]
    fn ec_parameters_block_before_the_key_is_ignored() {
        let key = ec_key(Nid::X9_62_PRIME256V1);
        let cert = pem(&self_signed(&key));
        // What `openssl ecparam -name prime256v1 -genkey` writes ahead of the key.
        let params =
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
        let sc =
            validate_server_certificate(&cert, &(params.to_string() + &traditional(&key))).unwrap();
        assert!(!sc.key_pem.contains("EC PARAMETERS"));
    }

    #[test]
    fn other_key_algorithms_are_rejected() {
        let k1 = ec_key(Nid::SECP256K1);
        let err = server_err(&pem(&self_signed(&k1)), &pkcs8(&k1));
        assert_api(&err, "KeyFormatError", 400, CERT_FORMAT);

        let ed = PKey::generate_ed25519().unwrap();
        let cert = issue(
            &ed,
            CertSpec {
                digest: MessageDigest::null(),
                ..CertSpec::default()
            },
        );
        let err = server_err(&pem(&cert), &pkcs8(&ed));
        assert_api(&err, "KeyFormatError", 400, CERT_FORMAT);
        assert_api(
            &validate_ca_certificate(&pem(&cert)).unwrap_err(),
            "KeyFormatError",
            400,
            CA_FORMAT,
        );
    }

    #[test]
    fn shangmi_certificates_are_rejected() {
        let sm2 = ec_key(Nid::SM2);
        let ca_key = rsa_key(2048);
        let ca = issue(
            &ca_key,
            CertSpec {
                ca: true,
                ..CertSpec::default()
            },
        );
        let sm2_key_cert = issue(
            &sm2,
            CertSpec {
                issuer: Some((&ca, &ca_key)),
                ..CertSpec::default()
            },
        );
        let sm2_signed = issue(
            &rsa_key(2048),
            CertSpec {
                issuer: Some((&sm2_key_cert, &sm2)),
                digest: MessageDigest::sm3(),
                ..CertSpec::default()
            },
        );
        let msg = "The cn certificate is not support.";
        let err = server_err(&pem(&sm2_key_cert), &pkcs8(&sm2));
        assert_api(&err, "CnCertificateNotSupport", 400, msg);
        let err = server_err(&pem(&sm2_signed), &pkcs8(&rsa_key(2048)));
        assert_api(&err, "CnCertificateNotSupport", 400, msg);
        let err = validate_ca_certificate(&pem(&sm2_key_cert)).unwrap_err();
        assert_api(&err, "CnCertificateNotSupport", 400, msg);
    }

    #[test]
    fn certificate_and_key_mismatch() {
        let msg = "Certificate and key does not match.";
        let a = rsa_key(2048);
        let b = rsa_key(1024);
        let cert = pem(&self_signed(&a));
        let err = server_err(&cert, &pkcs8(&b));
        assert_api(&err, "CertificateNotMatchPrivateKey", 400, msg);
        // Same algorithm and size, different key.
        let p1 = ec_key(Nid::X9_62_PRIME256V1);
        let p2 = ec_key(Nid::X9_62_PRIME256V1);
        let err = server_err(&pem(&self_signed(&p1)), &pkcs8(&p2));
        assert_eq!(err, CertError::KeyMismatch);
        // A key of an algorithm B10.2 does not list cannot match an accepted certificate.
        let err = server_err(&cert, &pkcs8(&PKey::generate_ed25519().unwrap()));
        assert_eq!(err, CertError::KeyMismatch);
    }

    #[test]
    fn encrypted_keys_are_rejected_without_a_passphrase_prompt() {
        let msg = "Key has Encrypted .";
        let rsa = rsa_key(2048);
        let ec = ec_key(Nid::SECP384R1);
        let rsa_cert = pem(&self_signed(&rsa));
        let ec_cert = pem(&self_signed(&ec));
        let cipher = Cipher::aes_256_cbc();
        let cases = [
            (
                &rsa_cert,
                rsa.private_key_to_pem_pkcs8_passphrase(cipher, b"secret")
                    .unwrap(),
            ),
            // An empty passphrase must not let the key through either.
            (
                &rsa_cert,
                rsa.private_key_to_pem_pkcs8_passphrase(cipher, b"")
                    .unwrap(),
            ),
            (
                &rsa_cert,
                rsa.rsa()
                    .unwrap()
                    .private_key_to_pem_passphrase(cipher, b"secret")
                    .unwrap(),
            ),
            (
                &ec_cert,
                ec.ec_key()
                    .unwrap()
                    .private_key_to_pem_passphrase(cipher, b"secret")
                    .unwrap(),
            ),
        ];
        for (cert, key) in cases {
            let key = String::from_utf8(key).unwrap();
            assert!(key.contains("ENCRYPTED"));
            let err = server_err(cert, &key);
            assert_api(&err, "PrivateKeyEncryption", 400, msg);
        }
    }

    #[test]
    fn disguised_encrypted_keys_are_format_errors() {
        let rsa = rsa_key(2048);
        let cert = pem(&self_signed(&rsa));
        let p8 = rsa
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_128_cbc(), b"pw")
            .unwrap();
        let relabelled = String::from_utf8(p8)
            .unwrap()
            .replace("ENCRYPTED PRIVATE KEY", "PRIVATE KEY");
        assert_key_format(&server_err(&cert, &relabelled));

        let legacy = rsa
            .rsa()
            .unwrap()
            .private_key_to_pem_passphrase(Cipher::aes_128_cbc(), b"pw")
            .unwrap();
        let headerless: String = String::from_utf8(legacy)
            .unwrap()
            .lines()
            .filter(|l| !l.contains(':'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_key_format(&server_err(&cert, &headerless));
    }

    #[test]
    fn dh_parameters_anywhere_are_rejected() {
        let key = rsa_key(2048);
        let cert = pem(&self_signed(&key));
        let dh = dh_params_pem();
        assert!(dh.contains("-----BEGIN DH PARAMETERS-----"));
        let err = server_err(&(cert.clone() + &dh), &pkcs8(&key));
        assert_eq!(
            err,
            CertError::DhParameters {
                param: CertParam::ServerCertificate
            }
        );
        assert_cert_format(&err);
        let err = server_err(&(dh.clone() + &cert), &pkcs8(&key));
        assert_cert_format(&err);
        let err = server_err(&cert, &(pkcs8(&key) + &dh));
        assert_key_format(&err);
        let x942 = dh.replace("DH PARAMETERS", "X9.42 DH PARAMETERS");
        assert_cert_format(&server_err(&(cert.clone() + &x942), &pkcs8(&key)));
        let err = validate_ca_certificate(&(cert + &dh)).unwrap_err();
        assert_api(&err, "InvalidParameter", 404, CA_FORMAT);
    }

    #[test]
    fn chain_is_kept_in_order_and_info_describes_the_leaf() {
        let root_key = rsa_key(4096);
        let root = issue(
            &root_key,
            CertSpec {
                cn: Some("Test Root"),
                ca: true,
                ..CertSpec::default()
            },
        );
        let inter_key = ec_key(Nid::SECP384R1);
        let inter = issue(
            &inter_key,
            CertSpec {
                cn: Some("Test Intermediate"),
                ca: true,
                issuer: Some((&root, &root_key)),
                ..CertSpec::default()
            },
        );
        let leaf_key = ec_key(Nid::X9_62_PRIME256V1);
        let leaf = issue(
            &leaf_key,
            CertSpec {
                cn: Some("shop.example.com"),
                sans: &["shop.example.com"],
                issuer: Some((&inter, &inter_key)),
                ..CertSpec::default()
            },
        );
        let upload = pem(&leaf) + &pem(&inter);
        let sc = validate_server_certificate(&upload, &pkcs8(&leaf_key)).unwrap();
        assert_eq!(sc.chain_pem, upload);
        assert_eq!(sc.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(sc.info.common_name, "shop.example.com");
        assert_eq!(
            sc.info.key_type,
            KeyType::Ec {
                curve: EcCurve::P256
            }
        );

        let reversed = pem(&inter) + &pem(&leaf);
        assert_eq!(
            server_err(&reversed, &pkcs8(&leaf_key)),
            CertError::KeyMismatch
        );

        // B10.2 covers chain certificates too.
        let k1_key = ec_key(Nid::SECP256K1);
        let k1_inter = issue(
            &k1_key,
            CertSpec {
                ca: true,
                issuer: Some((&root, &root_key)),
                ..CertSpec::default()
            },
        );
        let err = server_err(&(pem(&leaf) + &pem(&k1_inter)), &pkcs8(&leaf_key));
        assert_api(&err, "KeyFormatError", 400, CERT_FORMAT);
    }

    #[test]
    fn ca_certificates() {
        let root_key = rsa_key(4096);
        let root = issue(
            &root_key,
            CertSpec {
                cn: Some("Client CA"),
                ca: true,
                ..CertSpec::default()
            },
        );
        let info = validate_ca_certificate(&pem(&root)).unwrap();
        assert_eq!(info.common_name, "Client CA");
        assert_eq!(info.key_type, KeyType::Rsa { bits: 4096 });
        assert!(info.subject_alternative_names.is_empty());
        assert_fingerprint_shape(&info.fingerprint);

        let other_key = ec_key(Nid::SECP521R1);
        let other = issue(
            &other_key,
            CertSpec {
                cn: Some("Second CA"),
                ca: true,
                ..CertSpec::default()
            },
        );
        let bundle = validate_ca_certificate(&(pem(&root) + &pem(&other))).unwrap();
        assert_eq!(bundle, info);

        // A CA upload never carries key material.
        let err = validate_ca_certificate(&(pem(&root) + &pkcs8(&root_key))).unwrap_err();
        assert_api(&err, "InvalidParameter", 404, CA_FORMAT);

        for garbage in ["not a certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n"] {
            let err = validate_ca_certificate(garbage).unwrap_err();
            assert_api(&err, "InvalidParameter", 404, CA_FORMAT);
        }

        let too_big = pem(&root) + &"\n".repeat(MAX_PEM_BYTES);
        let err = validate_ca_certificate(&too_big).unwrap_err();
        assert_api(&err, "InvalidParameter", 404, CA_FORMAT);

        let k1 = ec_key(Nid::SECP256K1);
        let err = validate_ca_certificate(&pem(&self_signed(&k1))).unwrap_err();
        assert_api(&err, "KeyFormatError", 400, CA_FORMAT);
    }

    #[test]
    fn empty_inputs() {
        let key = rsa_key(2048);
        let cert = pem(&self_signed(&key));
        for (c, k) in [
            ("", pkcs8(&key)),
            (" \r\n\t", pkcs8(&key)),
            (cert.as_str(), String::new()),
            (cert.as_str(), "\n\n".to_string()),
            ("", String::new()),
        ] {
            assert_api(&server_err(c, &k), "InvalidParameter", 404, EMPTY);
        }
        for empty in ["", "  \n"] {
            let err = validate_ca_certificate(empty).unwrap_err();
            assert_api(
                &err,
                "MissingParameter",
                400,
                "The input parameter CACertificate that is mandatory for processing this \
                 request is not supplied.",
            );
        }
    }

    #[test]
    fn garbage_truncated_and_non_certificate_pem() {
        let key = rsa_key(2048);
        let cert_x509 = self_signed(&key);
        let cert = pem(&cert_x509);
        let key_pem = pkcs8(&key);

        let bad_certs = [
            "hello world".to_string(),
            "\u{0}\u{1}\u{2}binary".to_string(),
            cert[..cert.len() / 2].to_string(),
            // Body lines removed but the END line kept.
            cert.lines()
                .enumerate()
                .filter(|(i, _)| !(3..6).contains(i))
                .map(|(_, l)| format!("{l}\n"))
                .collect(),
            cert.replace("END CERTIFICATE", "END PRIVATE KEY"),
            cert.replacen('M', "!", 1),
            cert.replace("-----BEGIN CERTIFICATE-----", ""),
            cert.replace(
                "-----BEGIN CERTIFICATE-----\n",
                "-----BEGIN CERTIFICATE-----\nComment: hi\n",
            ),
            cert.replace(
                "-----BEGIN CERTIFICATE-----\n",
                "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n",
            ),
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_string(),
            String::from_utf8(key.public_key_to_pem().unwrap()).unwrap(),
            key_pem.clone(),
            cert.clone() + &key_pem,
            pem_block(
                "CERTIFICATE",
                &[cert_x509.to_der().unwrap(), vec![0; 4]].concat(),
            ),
        ];
        for bad in &bad_certs {
            let err = server_err(bad, &key_pem);
            assert_cert_format(&err);
            assert!(
                matches!(
                    err,
                    CertError::Malformed {
                        param: CertParam::ServerCertificate,
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }

        let bad_keys = [
            "hello world".to_string(),
            key_pem[..key_pem.len() / 2].to_string(),
            key_pem.replacen('M', "!", 1),
            cert.clone(),
            key_pem.clone() + &traditional(&key),
            pem_block("PRIVATE KEY", b"not a key"),
            pem_block("DSA PRIVATE KEY", b"whatever"),
        ];
        for bad in &bad_keys {
            let err = server_err(&cert, bad);
            assert_key_format(&err);
        }
    }

    #[test]
    fn damaged_private_half_is_a_key_format_error() {
        let rsa = rsa_key(1024).rsa().unwrap();
        let one = BigNum::from_u32(1).unwrap();
        let mut wrong_d = BigNum::new().unwrap();
        wrong_d.checked_add(rsa.d(), &one).unwrap();
        let broken = Rsa::from_private_components(
            rsa.n().to_owned().unwrap(),
            rsa.e().to_owned().unwrap(),
            wrong_d,
            rsa.p().unwrap().to_owned().unwrap(),
            rsa.q().unwrap().to_owned().unwrap(),
            rsa.dmp1().unwrap().to_owned().unwrap(),
            rsa.dmq1().unwrap().to_owned().unwrap(),
            rsa.iqmp().unwrap().to_owned().unwrap(),
        )
        .unwrap();
        let broken_pem = String::from_utf8(broken.private_key_to_pem().unwrap()).unwrap();
        let cert = pem(&self_signed(&rsa_key(1024)));
        assert_key_format(&server_err(&cert, &broken_pem));
    }

    #[test]
    fn oversize_inputs_are_rejected_before_parsing() {
        let key = rsa_key(2048);
        let cert = pem(&self_signed(&key));
        let padding = " ".repeat(MAX_PEM_BYTES);
        let err = server_err(&(cert.clone() + &padding), &pkcs8(&key));
        assert!(matches!(err, CertError::TooLarge { .. }));
        assert_cert_format(&err);
        assert_key_format(&server_err(&cert, &(pkcs8(&key) + &padding)));
        // Exactly at the cap is still accepted.
        let at_cap = cert.clone() + &" ".repeat(MAX_PEM_BYTES - cert.len());
        assert!(validate_server_certificate(&at_cap, &pkcs8(&key)).is_ok());
    }

    #[test]
    fn tolerant_of_crlf_and_text_between_blocks() {
        let key = rsa_key(2048);
        let cert = self_signed(&key);
        let plain = validate_server_certificate(&pem(&cert), &pkcs8(&key)).unwrap();
        let crlf = validate_server_certificate(
            &pem(&cert).replace('\n', "\r\n"),
            &pkcs8(&key).replace('\n', "\r\n"),
        )
        .unwrap();
        assert_eq!(crlf, plain);
        let annotated = format!(
            "Bag Attributes\n    localKeyID: 01 02\nsubject=CN = www.example.com\n{}",
            pem(&cert)
        );
        let sc = validate_server_certificate(&annotated, &pkcs8(&key)).unwrap();
        assert_eq!(sc.chain_pem, pem(&cert));
    }

    #[test]
    fn missing_or_unicode_common_name() {
        let key = ec_key(Nid::X9_62_PRIME256V1);
        let no_cn = issue(
            &key,
            CertSpec {
                cn: None,
                ..CertSpec::default()
            },
        );
        let info = validate_ca_certificate(&pem(&no_cn)).unwrap();
        assert_eq!(info.common_name, "");
        assert!(info.subject_alternative_names.is_empty());
        let unicode = issue(
            &key,
            CertSpec {
                cn: Some("例子.测试"),
                ..CertSpec::default()
            },
        );
        let info = validate_ca_certificate(&pem(&unicode)).unwrap();
        assert_eq!(info.common_name, "例子.测试");
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let key = rsa_key(1024);
        let sc = validate_server_certificate(&pem(&self_signed(&key)), &pkcs8(&key)).unwrap();
        let debug = format!("{sc:?}");
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn error_table() {
        let s = CertParam::ServerCertificate;
        let cases = [
            (
                CertError::Empty { param: s },
                "InvalidParameter",
                404,
                EMPTY,
            ),
            (
                CertError::Empty {
                    param: CertParam::PrivateKey,
                },
                "InvalidParameter",
                404,
                EMPTY,
            ),
            (
                CertError::TooLarge {
                    param: CertParam::PrivateKey,
                    len: 1,
                    limit: 0,
                },
                "InvalidParameter",
                404,
                KEY_FORMAT,
            ),
            (
                CertError::DhParameters { param: s },
                "InvalidParameter",
                404,
                CERT_FORMAT,
            ),
            (
                CertError::Malformed {
                    param: CertParam::CACertificate,
                    reason: String::new(),
                },
                "InvalidParameter",
                404,
                CA_FORMAT,
            ),
            (
                CertError::KeyEncrypted,
                "PrivateKeyEncryption",
                400,
                "Key has Encrypted .",
            ),
            (
                CertError::UnsupportedKey {
                    param: s,
                    found: String::new(),
                },
                "KeyFormatError",
                400,
                CERT_FORMAT,
            ),
            (
                CertError::ShangMiCertificate { param: s },
                "CnCertificateNotSupport",
                400,
                "The cn certificate is not support.",
            ),
            (
                CertError::KeyMismatch,
                "CertificateNotMatchPrivateKey",
                400,
                "Certificate and key does not match.",
            ),
        ];
        for (err, code, status, message) in cases {
            assert_api(&err, code, status, message);
        }
    }
}
