//! Certificates issued on the fly for unit tests: the API's certificate checks and the TLS of
//! HTTPS listeners build their PKIs with the same [`issue`].
use openssl::{
    asn1::Asn1Time,
    bn::{BigNum, MsbOption},
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    x509::{
        extension::{BasicConstraints, SubjectAlternativeName},
        X509Builder, X509NameBuilder, X509,
    },
};

/// What [`issue`] puts in a certificate; `Default` is a leaf for www.example.com, self-signed,
/// valid from 2017 for a year from now.
pub struct CertSpec<'a> {
    pub cn: Option<&'a str>,
    pub sans: &'a [&'a str],
    pub ip_sans: &'a [&'a str],
    pub not_after: Option<i64>,
    pub ca: bool,
    pub issuer: Option<(&'a X509, &'a PKey<Private>)>,
    pub digest: MessageDigest,
}

impl Default for CertSpec<'_> {
    fn default() -> Self {
        CertSpec {
            cn: Some("www.example.com"),
            sans: &[],
            ip_sans: &[],
            not_after: None,
            ca: false,
            issuer: None,
            digest: MessageDigest::sha256(),
        }
    }
}

/// A certificate for `key`, signed by the issuer's key or, without one, by `key` itself.
pub fn issue(key: &PKey<Private>, spec: CertSpec) -> X509 {
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    if let Some(cn) = spec.cn {
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    }
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "slb test")
        .unwrap();
    let name = name.build();
    b.set_subject_name(&name).unwrap();
    match spec.issuer {
        Some((cert, _)) => b.set_issuer_name(cert.subject_name()).unwrap(),
        None => b.set_issuer_name(&name).unwrap(),
    }
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(1_500_000_000).unwrap())
        .unwrap();
    let not_after = match spec.not_after {
        Some(t) => Asn1Time::from_unix(t).unwrap(),
        None => Asn1Time::days_from_now(365).unwrap(),
    };
    b.set_not_after(&not_after).unwrap();
    let mut bc = BasicConstraints::new();
    if spec.ca {
        bc.critical().ca();
    }
    b.append_extension(bc.build().unwrap()).unwrap();
    if !spec.sans.is_empty() || !spec.ip_sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for dns in spec.sans {
            san.dns(dns);
        }
        for ip in spec.ip_sans {
            san.ip(ip);
        }
        let ext = san
            .build(&b.x509v3_context(spec.issuer.map(|(c, _)| &**c), None))
            .unwrap();
        b.append_extension(ext).unwrap();
    }
    let signer = spec.issuer.map_or(key, |(_, k)| k);
    b.sign(signer, spec.digest).unwrap();
    b.build()
}
