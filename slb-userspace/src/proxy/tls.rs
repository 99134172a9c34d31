//! The server side of HTTPS listeners (§10): one [`SslAcceptor`] per listener configuration.
//! A changed listener or certificate gets a new acceptor for new connections while existing
//! connections keep theirs, so certificates are replaced without dropping connections (B10.7).
//!
//! Policies decide versions and suites exactly (B10.10, B10.11 DECISION), so the cipher string
//! carries `@SECLEVEL=0`: Debian's OpenSSL 3 defaults to level 2, which would refuse TLS 1.0 and
//! 1.1 and RSA 1024 certificates (B10.2) whatever the policy says.
//!
//! `DES-CBC3-SHA` (in `tls_cipher_policy_1_0`, `_1_1` and `_1_2`) is not built into every
//! OpenSSL 3 — Debian's has none. Where it is missing those policies offer their other 18
//! suites and a warning says so once; a client that offers only 3DES is refused.

use std::sync::OnceLock;

use libc::{c_char, c_int, c_long, c_void};
use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::ssl::{
    select_next_proto, AlpnError, NameType, SniError, SslAcceptor, SslAcceptorBuilder, SslAlert,
    SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::X509;

use super::domain;
use crate::config::{Certificates, ServerCertificate, TlsCipherPolicy, TlsSettings};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server certificate {id} does not exist")]
    UnknownServerCertificate { id: String },
    #[error("CA certificate {id} does not exist")]
    UnknownCaCertificate { id: String },
    #[error("certificate {id} holds no PEM certificate")]
    NoCertificate { id: String },
    #[error("server certificate {id}: {source}")]
    ServerCertificate { id: String, source: ErrorStack },
    #[error("CA certificate {id}: {source}")]
    CaCertificate { id: String, source: ErrorStack },
    #[error("TLS settings: {source}")]
    Setup { source: ErrorStack },
}

/// ECDHE with RSA certificates: everything `tls_cipher_policy_1_2_strict` allows for them.
const ECDHE_RSA: [&str; 6] = [
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
];
/// RSA key exchange, without forward secrecy: after the ECDHE suites in preference.
const RSA_KEY_EXCHANGE: [&str; 7] = [
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "AES128-SHA",
    "AES256-SHA",
    TRIPLE_DES,
];
const TRIPLE_DES: &str = "DES-CBC3-SHA";
const ECDHE_ECDSA: [&str; 6] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
];
/// The two CCM suites are off in OpenSSL's default and need naming.
const TLS13: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:\
                     TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256";

/// B10.21: both the session cache and the tickets forget a session after this long.
const SESSION_LIFETIME: c_long = 300;

// libssl and libcrypto export these functions, but neither openssl nor openssl-sys binds them.
extern "C" {
    fn SSL_CTX_set_timeout(ctx: *mut c_void, seconds: c_long) -> c_long;
    fn CRYPTO_set_mem_functions(
        m: unsafe extern "C" fn(usize, *const c_char, c_int) -> *mut c_void,
        r: unsafe extern "C" fn(*mut c_void, usize, *const c_char, c_int) -> *mut c_void,
        f: unsafe extern "C" fn(*mut c_void, *const c_char, c_int),
    ) -> c_int;
}

/// Hands OpenSSL's allocations to mimalloc, as the agent's own are. OpenSSL allocates and frees
/// tens of blocks per handshake and, with its buffers released while idle, a record buffer per
/// request of a keep-alive connection: through glibc's malloc that was about a tenth of the
/// agent's CPU time on new HTTPS connections. OpenSSL refuses (false) once it has allocated
/// with malloc, so the agent calls this first thing.
pub fn allocate_with_mimalloc() -> bool {
    unsafe extern "C" fn alloc(n: usize, _: *const c_char, _: c_int) -> *mut c_void {
        // SAFETY: mimalloc's malloc, valid for any size.
        unsafe { libmimalloc_sys::mi_malloc(n) }
    }
    unsafe extern "C" fn realloc(
        p: *mut c_void,
        n: usize,
        _: *const c_char,
        _: c_int,
    ) -> *mut c_void {
        // SAFETY: OpenSSL hands back only blocks that `alloc` or `realloc` gave it.
        unsafe { libmimalloc_sys::mi_realloc(p, n) }
    }
    unsafe extern "C" fn free(p: *mut c_void, _: *const c_char, _: c_int) {
        // SAFETY: as for `realloc`.
        unsafe { libmimalloc_sys::mi_free(p) }
    }
    // SAFETY: OpenSSL takes the three functions only while it has allocated nothing, so no
    // block from one allocator can reach the other's free.
    unsafe { CRYPTO_set_mem_functions(alloc, realloc, free) == 1 }
}

/// The acceptor of an HTTPS listener: its policy, its certificate and, by SNI, its domain
/// extensions' certificates (B10.14), mutual TLS when it names a CA (B10.9), HTTP/2 by ALPN
/// (B9.17).
pub fn acceptor(tls: &TlsSettings, certs: &Certificates) -> Result<SslAcceptor, TlsError> {
    let ca = match &tls.ca_certificate_id {
        Some(id) => Some(ca_certificates(certs, id)?),
        None => None,
    };
    let mut extensions: Vec<(String, SslContext)> = Vec::new();
    for e in &tls.domain_extensions {
        let ctx = context(tls, ca.as_deref(), certs, &e.server_certificate_id)?;
        extensions.push((e.domain.clone(), ctx.build().into_context()));
    }
    let mut b = context(tls, ca.as_deref(), certs, &tls.server_certificate_id)?;
    if !extensions.is_empty() {
        b.set_servername_callback(move |ssl, alert| {
            let Some(name) = ssl.servername(NameType::HOST_NAME) else {
                return Ok(());
            };
            let Some((_, ctx)) = domain::best(&extensions, |(d, _)| d.as_str(), name) else {
                return Ok(());
            };
            ssl.set_ssl_context(ctx).map_err(|e| {
                log::warn!("switching to the certificate for SNI name: {e}");
                *alert = SslAlert::INTERNAL_ERROR;
                SniError::ALERT_FATAL
            })
        });
    }
    Ok(b.build())
}

/// A context with the listener's settings and the certificate `id`. Domain extensions get the
/// same settings as the listener: OpenSSL takes the client CA list, the verify store and the
/// ALPN callback from whichever context the connection ends up with.
fn context(
    tls: &TlsSettings,
    ca: Option<&[X509]>,
    certs: &Certificates,
    id: &str,
) -> Result<SslAcceptorBuilder, TlsError> {
    let cert = certs
        .server
        .get(id)
        .ok_or_else(|| TlsError::UnknownServerCertificate { id: id.into() })?;
    let mut b = settings(tls, ca).map_err(|source| TlsError::Setup { source })?;
    // After the settings: the security level they set decides which keys OpenSSL accepts.
    let chain = X509::stack_from_pem(cert.chain_pem.as_bytes()).map_err(|source| {
        TlsError::ServerCertificate {
            id: id.into(),
            source,
        }
    })?;
    let mut chain = chain.into_iter();
    let leaf = chain
        .next()
        .ok_or_else(|| TlsError::NoCertificate { id: id.into() })?;
    install(&mut b, leaf, chain, cert).map_err(|source| TlsError::ServerCertificate {
        id: id.into(),
        source,
    })?;
    Ok(b)
}

fn install(
    b: &mut SslContextBuilder,
    leaf: X509,
    intermediates: impl Iterator<Item = X509>,
    cert: &ServerCertificate,
) -> Result<(), ErrorStack> {
    b.set_certificate(&leaf)?;
    for c in intermediates {
        b.add_extra_chain_cert(c)?;
    }
    let key = PKey::private_key_from_pem(cert.key_pem.as_bytes())?;
    b.set_private_key(&key)?;
    b.check_private_key()
}

fn settings(tls: &TlsSettings, ca: Option<&[X509]>) -> Result<SslAcceptorBuilder, ErrorStack> {
    // The preset contributes OpenSSL's usual options and modes; every TLS parameter it sets
    // is replaced below.
    let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
    let (min, max, suites, tls13) = policy(tls.tls_cipher_policy);
    b.set_min_proto_version(Some(min))?;
    b.set_max_proto_version(Some(max))?;
    b.set_cipher_list(&format!("{}:@SECLEVEL=0", suites.join(":")))?;
    b.set_ciphersuites(tls13)?;
    // Renegotiation is only a way for a client to make the server do handshakes.
    b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_RENEGOTIATION);
    // An idle connection gives its record buffers back (tens of KB each), as nginx's do.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    // A record is read with one call rather than its 5-byte header first and then its body:
    // one system call fewer per request.
    b.set_read_ahead(true);
    b.set_groups_list("X25519:P-256:P-384")?;

    let protocols: &'static [u8] = if tls.enable_http2 {
        b"\x02h2\x08http/1.1"
    } else {
        b"\x08http/1.1"
    };
    b.set_alpn_select_callback(move |_, client| {
        select_next_proto(protocols, client).ok_or(AlpnError::NOACK)
    });

    match ca {
        Some(ca) => {
            let mut store = X509StoreBuilder::new()?;
            // The CA is the trust anchor even when it is an intermediate (B10.9: the client
            // certificate verifies against that CA).
            store.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
            for c in ca {
                store.add_cert(c.clone())?;
                b.add_client_ca(c)?;
            }
            b.set_verify_cert_store(store.build())?;
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        None => b.set_verify(SslVerifyMode::NONE),
    }

    b.set_session_cache_mode(SslSessionCacheMode::SERVER);
    // Without it OpenSSL refuses to resume sessions whose client certificate was verified.
    b.set_session_id_context(b"slb")?;
    // SAFETY: the pointer is the live SSL_CTX `b` owns; the call only stores a number in it.
    unsafe { SSL_CTX_set_timeout(b.as_ptr().cast(), SESSION_LIFETIME) };
    Ok(b)
}

/// Versions (B10.10) and suites (B10.11 DECISION): TLS 1.2 and older by OpenSSL name in
/// preference order, TLS 1.3 by IANA name.
fn policy(p: TlsCipherPolicy) -> (SslVersion, SslVersion, Vec<&'static str>, &'static str) {
    let legacy = || -> Vec<&'static str> {
        let triple_des = triple_des_available();
        ECDHE_RSA
            .iter()
            .chain(&RSA_KEY_EXCHANGE)
            .chain(&ECDHE_ECDSA)
            .copied()
            .filter(|s| triple_des || *s != TRIPLE_DES)
            .collect()
    };
    let strict =
        || -> Vec<&'static str> { ECDHE_RSA.iter().chain(&ECDHE_ECDSA).copied().collect() };
    match p {
        TlsCipherPolicy::Tls10 => (SslVersion::TLS1, SslVersion::TLS1_2, legacy(), ""),
        TlsCipherPolicy::Tls11 => (SslVersion::TLS1_1, SslVersion::TLS1_2, legacy(), ""),
        TlsCipherPolicy::Tls12 => (SslVersion::TLS1_2, SslVersion::TLS1_2, legacy(), ""),
        TlsCipherPolicy::Tls12Strict => (SslVersion::TLS1_2, SslVersion::TLS1_2, strict(), ""),
        TlsCipherPolicy::Tls12StrictWith13 => {
            (SslVersion::TLS1_2, SslVersion::TLS1_3, strict(), TLS13)
        }
    }
}

/// Whether this OpenSSL has 3DES, asked once: OpenSSL refuses a cipher list naming only
/// suites it lacks.
fn triple_des_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let available = SslContextBuilder::new(SslMethod::tls_server())
            .and_then(|mut b| b.set_cipher_list(&format!("{TRIPLE_DES}:@SECLEVEL=0")))
            .is_ok();
        if !available {
            log::warn!(
                "this OpenSSL has no {TRIPLE_DES}: tls_cipher_policy_1_0, _1_1 and _1_2 offer \
                 their other 18 suites"
            );
        }
        available
    })
}

fn ca_certificates(certs: &Certificates, id: &str) -> Result<Vec<X509>, TlsError> {
    let pem = certs
        .ca
        .get(id)
        .ok_or_else(|| TlsError::UnknownCaCertificate { id: id.into() })?;
    let ca = X509::stack_from_pem(pem.as_bytes()).map_err(|source| TlsError::CaCertificate {
        id: id.into(),
        source,
    })?;
    if ca.is_empty() {
        return Err(TlsError::NoCertificate { id: id.into() });
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::OnceLock;
    use std::thread::{self, JoinHandle};

    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::Private;
    use openssl::rsa::Rsa;
    use openssl::ssl::{Ssl, SslConnector, SslSession};
    use openssl::x509::X509Ref;

    use crate::config::DomainExtension;
    use crate::test_certs::{issue, CertSpec};

    struct Leaf {
        cert: X509,
        key: PKey<Private>,
        /// Intermediates sent after the leaf.
        chain: Vec<X509>,
    }

    impl Leaf {
        fn server_certificate(&self) -> ServerCertificate {
            let mut chain_pem = pem(&self.cert);
            for c in &self.chain {
                chain_pem.push_str(&pem(c));
            }
            ServerCertificate {
                chain_pem,
                key_pem: String::from_utf8(self.key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            }
        }
    }

    /// Every certificate the tests use. Server certificates chain to `root`, which is what the
    /// test client trusts; client certificates come from CAs no server certificate names.
    struct Pki {
        root: X509,
        client_ca: X509,
        client_intermediate: X509,
        /// CN `listener-rsa`, issued by an intermediate of `root`.
        rsa: Leaf,
        /// CN `listener-ecdsa`, P-256.
        ecdsa: Leaf,
        exact: Leaf,
        narrow: Leaf,
        broad: Leaf,
        client: Leaf,
        client_of_intermediate: Leaf,
        client_of_foreign_ca: Leaf,
        /// CN `listener-rsa1024`.
        rsa1024: Leaf,
    }

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            let rsa = || PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            let ca_key = rsa();
            let leaf_key = rsa();
            let p256 = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            let ec_key = PKey::from_ec_key(EcKey::generate(&p256).unwrap()).unwrap();
            let small_key = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();

            let ca = |cn: &str, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>| {
                let spec = CertSpec {
                    cn: Some(cn),
                    ca: true,
                    issuer,
                    ..CertSpec::default()
                };
                issue(key, spec)
            };
            let root = ca("slb test root", &ca_key, None);
            let intermediate = ca("slb test intermediate", &ca_key, Some((&root, &ca_key)));
            let client_ca = ca("slb client CA", &ca_key, None);
            let client_intermediate = ca(
                "slb client intermediate",
                &ca_key,
                Some((&client_ca, &ca_key)),
            );
            // The trusted CA's name with another key: only the signature tells them apart.
            let foreign_ca = ca("slb client CA", &leaf_key, None);
            let leaf =
                |cn: &str, san: &str, key: &PKey<Private>, issuer: (&X509, &PKey<Private>)| {
                    let spec = CertSpec {
                        cn: Some(cn),
                        sans: &[san],
                        issuer: Some(issuer),
                        ..CertSpec::default()
                    };
                    Leaf {
                        cert: issue(key, spec),
                        key: key.clone(),
                        chain: Vec::new(),
                    }
                };
            let mut rsa_leaf = leaf(
                "listener-rsa",
                "listener.test",
                &leaf_key,
                (&intermediate, &ca_key),
            );
            rsa_leaf.chain.push(intermediate.clone());
            Pki {
                rsa: rsa_leaf,
                ecdsa: leaf("listener-ecdsa", "listener.test", &ec_key, (&root, &ca_key)),
                rsa1024: leaf(
                    "listener-rsa1024",
                    "listener.test",
                    &small_key,
                    (&root, &ca_key),
                ),
                exact: leaf("ext-exact", "www.example.com", &leaf_key, (&root, &ca_key)),
                narrow: leaf(
                    "ext-narrow",
                    "*.market.example.com",
                    &leaf_key,
                    (&root, &ca_key),
                ),
                broad: leaf("ext-broad", "*.example.com", &leaf_key, (&root, &ca_key)),
                client: leaf("client", "client.test", &leaf_key, (&client_ca, &ca_key)),
                client_of_intermediate: leaf(
                    "client-of-intermediate",
                    "client.test",
                    &leaf_key,
                    (&client_intermediate, &ca_key),
                ),
                client_of_foreign_ca: leaf(
                    "foreign-client",
                    "client.test",
                    &leaf_key,
                    (&foreign_ca, &leaf_key),
                ),
                root,
                client_ca,
                client_intermediate,
            }
        })
    }

    fn pem(cert: &X509Ref) -> String {
        String::from_utf8(cert.to_pem().unwrap()).unwrap()
    }

    fn cn(cert: &X509Ref) -> String {
        let entry = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .unwrap();
        entry.data().to_string().unwrap()
    }

    /// The store: server certificates by their CN, CAs by their CN.
    fn certificates() -> Certificates {
        let p = pki();
        let server = [&p.rsa, &p.ecdsa, &p.rsa1024, &p.exact, &p.narrow, &p.broad]
            .into_iter()
            .map(|l| (cn(&l.cert), l.server_certificate()))
            .collect();
        let ca = [&p.client_ca, &p.client_intermediate]
            .into_iter()
            .map(|c| (cn(c), pem(c)))
            .collect();
        Certificates { server, ca }
    }

    fn settings(policy: TlsCipherPolicy, cert: &str) -> TlsSettings {
        TlsSettings {
            server_certificate_id: cert.into(),
            ca_certificate_id: None,
            enable_http2: true,
            tls_cipher_policy: policy,
            domain_extensions: Vec::new(),
        }
    }

    fn build(tls: &TlsSettings) -> SslAcceptor {
        acceptor(tls, &certificates()).unwrap()
    }

    const POLICIES: [TlsCipherPolicy; 5] = [
        TlsCipherPolicy::Tls10,
        TlsCipherPolicy::Tls11,
        TlsCipherPolicy::Tls12,
        TlsCipherPolicy::Tls12Strict,
        TlsCipherPolicy::Tls12StrictWith13,
    ];

    /// What a test client offers; by default TLS 1.0 to 1.3 with every suite this OpenSSL has,
    /// no SNI, no client certificate.
    #[derive(Default)]
    struct Offer<'a> {
        version: Option<SslVersion>,
        /// Only these suites (an OpenSSL cipher list), or only this TLS 1.3 suite (IANA name).
        suite: Option<&'a str>,
        sni: Option<&'a str>,
        cert: Option<&'a Leaf>,
        alpn: Option<&'a [u8]>,
        resume: Option<&'a SslSession>,
        /// Resume from the server's session cache rather than a ticket.
        no_ticket: bool,
        /// Only these key exchange groups.
        groups: Option<&'a str>,
    }

    /// What both ends saw of a handshake that succeeded.
    struct Seen {
        version: &'static str,
        cipher: String,
        /// CN of the certificate the server presented.
        server_cn: String,
        /// Certificates the server sent.
        server_chain: usize,
        reused: bool,
        session: SslSession,
        /// The server's view.
        alpn: Option<Vec<u8>>,
        client_cn: Option<String>,
        session_timeout: Option<u64>,
    }

    struct Served {
        alpn: Option<Vec<u8>>,
        client_cn: Option<String>,
        session_timeout: Option<u64>,
    }

    /// The acceptor's side, as the proxy does it: a new `Ssl` from the acceptor's context per
    /// connection. A served connection gets one byte, so that the client also learns whether
    /// the server accepted it after its own side of the handshake ended (TLS 1.3).
    fn serve(acceptor: &SslAcceptor, stream: UnixStream) -> JoinHandle<Result<Served, String>> {
        let ctx = acceptor.context().to_owned();
        thread::spawn(move || {
            let ssl = Ssl::new(&ctx).map_err(|e| e.to_string())?;
            let mut s = ssl.accept(stream).map_err(|e| e.to_string())?;
            s.write_all(b"x").map_err(|e| e.to_string())?;
            // OpenSSL forgets the session of a connection closed without close_notify; the proxy
            // closes cleanly. The client may be gone already: close_notify is marked sent anyway.
            let _ = s.shutdown();
            let ssl = s.ssl();
            Ok(Served {
                alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
                client_cn: ssl.peer_certificate().map(|c| cn(&c)),
                session_timeout: ssl.session().map(|s| s.timeout() as u64),
            })
        })
    }

    /// A real handshake between `acceptor` and an OpenSSL client that offers `offer` and
    /// verifies the server against the test root.
    fn connect(acceptor: &SslAcceptor, offer: &Offer) -> Result<Seen, String> {
        let (server_end, client_end) = UnixStream::pair().unwrap();
        let server = serve(acceptor, server_end);
        let client = client(offer, client_end);
        let served = server.join().unwrap();
        match (client, served) {
            (Ok(seen), Ok(served)) => Ok(Seen {
                alpn: served.alpn,
                client_cn: served.client_cn,
                session_timeout: served.session_timeout,
                ..seen
            }),
            (client, served) => Err(format!(
                "client: {:?}; server: {:?}",
                client.err(),
                served.err()
            )),
        }
    }

    fn client(offer: &Offer, stream: UnixStream) -> Result<Seen, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        let tls13_suite = offer.suite.filter(|s| s.starts_with("TLS_"));
        let (min, max) = match (offer.version, offer.suite) {
            (Some(v), _) => (v, v),
            (None, Some(_)) if tls13_suite.is_some() => (SslVersion::TLS1_3, SslVersion::TLS1_3),
            (None, Some(_)) => (SslVersion::TLS1, SslVersion::TLS1_2),
            (None, None) => (SslVersion::TLS1, SslVersion::TLS1_3),
        };
        b.set_min_proto_version(Some(min)).unwrap();
        b.set_max_proto_version(Some(max)).unwrap();
        let legacy = match offer.suite {
            Some(s) if tls13_suite.is_none() => s,
            _ => "ALL",
        };
        b.set_cipher_list(&format!("{legacy}:@SECLEVEL=0")).unwrap();
        if let Some(s) = tls13_suite {
            b.set_ciphersuites(s).unwrap();
        }
        let trust = X509StoreBuilder::new().unwrap();
        b.set_cert_store(trust.build());
        b.cert_store_mut().add_cert(pki().root.clone()).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        if let Some(leaf) = offer.cert {
            b.set_certificate(&leaf.cert).unwrap();
            b.set_private_key(&leaf.key).unwrap();
        }
        if let Some(alpn) = offer.alpn {
            b.set_alpn_protos(alpn).unwrap();
        }
        if let Some(groups) = offer.groups {
            b.set_groups_list(groups).unwrap();
        }
        if offer.no_ticket {
            b.set_options(SslOptions::NO_TICKET);
        }
        let connector = b.build();
        let mut config = connector.configure().unwrap();
        config.set_verify_hostname(false);
        config.set_use_server_name_indication(offer.sni.is_some());
        let mut ssl = config.into_ssl(offer.sni.unwrap_or("")).unwrap();
        if let Some(session) = offer.resume {
            // SAFETY: the session comes from a connection of a connector with these settings.
            unsafe { ssl.set_session(session).unwrap() };
        }
        let mut s = ssl.connect(stream).map_err(|e| e.to_string())?;
        let mut byte = [0u8];
        s.read_exact(&mut byte).map_err(|e| e.to_string())?;
        // The session stays resumable only after a clean close.
        let _ = s.shutdown();
        let ssl = s.ssl();
        Ok(Seen {
            version: ssl.version_str(),
            cipher: ssl.current_cipher().unwrap().name().to_string(),
            server_cn: cn(ssl.peer_certificate().unwrap().as_ref()),
            server_chain: ssl.peer_cert_chain().map_or(0, |c| c.len()),
            reused: ssl.session_reused(),
            session: ssl.session().unwrap().to_owned(),
            alpn: None,
            client_cn: None,
            session_timeout: None,
        })
    }

    fn accepted(acceptor: &SslAcceptor, offer: &Offer) -> bool {
        connect(acceptor, offer).is_ok()
    }

    /// B10.10: each policy accepts exactly its versions.
    #[test]
    fn b10_10_policy_versions() {
        use TlsCipherPolicy::*;
        let versions = [
            ("TLSv1", SslVersion::TLS1),
            ("TLSv1.1", SslVersion::TLS1_1),
            ("TLSv1.2", SslVersion::TLS1_2),
            ("TLSv1.3", SslVersion::TLS1_3),
        ];
        let allowed: [(TlsCipherPolicy, &[&str]); 5] = [
            (Tls10, &["TLSv1", "TLSv1.1", "TLSv1.2"]),
            (Tls11, &["TLSv1.1", "TLSv1.2"]),
            (Tls12, &["TLSv1.2"]),
            (Tls12Strict, &["TLSv1.2"]),
            (Tls12StrictWith13, &["TLSv1.2", "TLSv1.3"]),
        ];
        for (policy, allowed) in allowed {
            let acceptor = build(&settings(policy, "listener-rsa"));
            for (name, version) in versions {
                let offer = Offer {
                    version: Some(version),
                    ..Offer::default()
                };
                match connect(&acceptor, &offer) {
                    Ok(seen) => {
                        assert!(allowed.contains(&name), "{policy:?} accepted {name}");
                        assert_eq!(seen.version, name);
                    }
                    Err(e) => assert!(!allowed.contains(&name), "{policy:?} refused {name}: {e}"),
                }
            }
        }
    }

    /// The suites of B10.11, written out from the spec rather than taken from the code.
    const SPEC_RSA_AND_PLAIN: [&str; 12] = [
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-RSA-AES256-SHA384",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA256",
        "AES256-SHA256",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA",
        "AES128-SHA",
        "AES256-SHA",
        // DES-CBC3-SHA: b10_12_triple_des_as_this_openssl_allows
    ];
    const SPEC_STRICT_RSA: [&str; 6] = [
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-RSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA",
    ];
    const SPEC_ECDSA: [&str; 6] = [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
    ];
    const SPEC_TLS13: [&str; 5] = [
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    ];
    /// In no policy: ChaCha20 and CCM for TLS 1.2, DHE (B10.3), Camellia.
    const OUTSIDE: [&str; 5] = [
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "AES128-CCM",
        "DHE-RSA-AES128-GCM-SHA256",
        "CAMELLIA128-SHA",
    ];

    /// B10.11 DECISION, B10.12: a client offering one suite gets it when its listener's policy
    /// has it and is refused otherwise; ECDSA suites are tried against an ECDSA certificate.
    #[test]
    fn b10_11_policy_suites() {
        use TlsCipherPolicy::*;
        for policy in POLICIES {
            let (legacy, tls13): (Vec<&str>, &[&str]) = match policy {
                Tls10 | Tls11 | Tls12 => (
                    SPEC_RSA_AND_PLAIN
                        .iter()
                        .chain(&SPEC_ECDSA)
                        .copied()
                        .collect(),
                    &[],
                ),
                Tls12Strict => (
                    SPEC_STRICT_RSA.iter().chain(&SPEC_ECDSA).copied().collect(),
                    &[],
                ),
                Tls12StrictWith13 => (
                    SPEC_STRICT_RSA.iter().chain(&SPEC_ECDSA).copied().collect(),
                    &SPEC_TLS13,
                ),
            };
            let rsa = build(&settings(policy, "listener-rsa"));
            let ecdsa = build(&settings(policy, "listener-ecdsa"));
            let candidates = SPEC_RSA_AND_PLAIN
                .iter()
                .chain(&SPEC_ECDSA)
                .chain(&SPEC_TLS13)
                .chain(&OUTSIDE);
            for suite in candidates {
                let acceptor = if suite.contains("ECDSA") {
                    &ecdsa
                } else {
                    &rsa
                };
                let offer = Offer {
                    suite: Some(suite),
                    ..Offer::default()
                };
                let expected = legacy.contains(suite) || tls13.contains(suite);
                match connect(acceptor, &offer) {
                    Ok(seen) => {
                        assert!(expected, "{policy:?} accepted {suite}");
                        assert_eq!(seen.cipher, *suite);
                    }
                    Err(e) => assert!(!expected, "{policy:?} refused {suite}: {e}"),
                }
            }
        }
    }

    /// B10.12: the spec's examples, at the versions it names.
    #[test]
    fn b10_12_examples() {
        use TlsCipherPolicy::*;
        let only = |version, suite| Offer {
            version: Some(version),
            suite: Some(suite),
            ..Offer::default()
        };
        let tls12 = build(&settings(Tls12, "listener-rsa"));
        assert!(!accepted(
            &tls12,
            &Offer {
                version: Some(SslVersion::TLS1_1),
                ..Offer::default()
            }
        ));
        let strict = build(&settings(Tls12Strict, "listener-rsa"));
        assert!(!accepted(&strict, &only(SslVersion::TLS1_2, "AES128-SHA")));
        let tls10 = build(&settings(Tls10, "listener-rsa"));
        let seen = connect(&tls10, &only(SslVersion::TLS1, "AES128-SHA")).unwrap();
        assert_eq!(
            (seen.version, seen.cipher.as_str()),
            ("TLSv1", "AES128-SHA")
        );
        let with13 = build(&settings(Tls12StrictWith13, "listener-rsa"));
        let seen = connect(&with13, &only(SslVersion::TLS1_3, "TLS_AES_128_CCM_SHA256")).unwrap();
        assert_eq!(seen.cipher, "TLS_AES_128_CCM_SHA256");
        for policy in POLICIES {
            let acceptor = build(&settings(policy, "listener-rsa"));
            assert!(!accepted(
                &acceptor,
                &only(SslVersion::TLS1_2, "ECDHE-RSA-CHACHA20-POLY1305")
            ));
        }
    }

    /// Sends a hand-made ClientHello offering one version and one suite, without extensions,
    /// and returns the handshake messages (type, body) of the server's first flight, or the
    /// alert it answered with. The OpenSSL client cannot offer a suite its library lacks.
    fn raw_hello(
        acceptor: &SslAcceptor,
        version: [u8; 2],
        suite: [u8; 2],
    ) -> Result<Vec<(u8, Vec<u8>)>, u8> {
        let (server_end, mut client_end) = UnixStream::pair().unwrap();
        let server = serve(acceptor, server_end);
        let mut hello = version.to_vec();
        hello.extend([0; 32]); // random
        hello.push(0); // no session id
        hello.extend([0, 2]);
        hello.extend(suite);
        hello.extend([1, 0]); // null compression
        let mut record = vec![22, 3, 1];
        record.extend((hello.len() as u16 + 4).to_be_bytes());
        record.push(1); // client_hello
        record.extend(&(hello.len() as u32).to_be_bytes()[1..]);
        record.extend(hello);
        client_end.write_all(&record).unwrap();

        let mut pending = Vec::new();
        let mut messages = Vec::new();
        let result = loop {
            let mut header = [0u8; 5];
            client_end.read_exact(&mut header).unwrap();
            let mut fragment = vec![0; u16::from_be_bytes([header[3], header[4]]).into()];
            client_end.read_exact(&mut fragment).unwrap();
            if header[0] == 21 {
                break Err(fragment[1]);
            }
            assert_eq!(header[0], 22, "a handshake record");
            pending.extend(fragment);
            while pending.len() >= 4 {
                let len = u32::from_be_bytes([0, pending[1], pending[2], pending[3]]) as usize;
                if pending.len() < 4 + len {
                    break;
                }
                let message: Vec<u8> = pending.drain(..4 + len).collect();
                messages.push((message[0], message[4..].to_vec()));
            }
            // server_hello_done ends the flight.
            if messages.last().is_some_and(|(t, _)| *t == 14) {
                break Ok(messages);
            }
        };
        drop(client_end);
        // The server fails either way: its client went away mid-handshake.
        assert!(server.join().unwrap().is_err());
        result
    }

    /// The suite in a ServerHello body.
    fn chosen_suite(server_hello: &[u8]) -> [u8; 2] {
        let at = 2 + 32 + 1 + usize::from(server_hello[34]);
        [server_hello[at], server_hello[at + 1]]
    }

    const HANDSHAKE_FAILURE: u8 = 40;

    /// B10.12 (`_1_0` + a DES-CBC3-SHA-only TLS 1.0 client ⇒ success) as far as this OpenSSL
    /// allows: accepted where the library has 3DES, refused with handshake_failure where it
    /// does not, while the same hand-made hello with AES128-SHA still succeeds.
    #[test]
    fn b10_12_triple_des_as_this_openssl_allows() {
        let tls10 = build(&settings(TlsCipherPolicy::Tls10, "listener-rsa"));
        let tls1_0 = [3, 1];
        let flight = raw_hello(&tls10, tls1_0, [0x00, 0x2f]).unwrap();
        assert_eq!(flight[0].0, 2, "server_hello");
        assert_eq!(chosen_suite(&flight[0].1), [0x00, 0x2f]);

        let has_3des = SslContextBuilder::new(SslMethod::tls_server())
            .unwrap()
            .set_cipher_list("DES-CBC3-SHA:@SECLEVEL=0")
            .is_ok();
        assert_eq!(triple_des_available(), has_3des);
        match raw_hello(&tls10, tls1_0, [0x00, 0x0a]) {
            Ok(flight) => {
                assert!(has_3des, "3DES accepted by an OpenSSL without it");
                assert_eq!(chosen_suite(&flight[0].1), [0x00, 0x0a]);
            }
            Err(alert) => {
                assert!(!has_3des, "3DES refused by an OpenSSL that has it");
                assert_eq!(alert, HANDSHAKE_FAILURE);
            }
        }
    }

    /// B10.14, B10.16: the certificate follows the SNI name — exact beats the narrow wildcard
    /// beats the broad one; no SNI or an unknown name gets the listener's own certificate.
    #[test]
    fn b10_14_sni_picks_the_certificate() {
        for policy in [TlsCipherPolicy::Tls10, TlsCipherPolicy::Tls12StrictWith13] {
            let mut tls = settings(policy, "listener-rsa");
            // Broad first: the order of the list must not decide.
            for (id, domain, cert) in [
                ("de-1", "*.example.com", "ext-broad"),
                ("de-2", "*.market.example.com", "ext-narrow"),
                ("de-3", "www.example.com", "ext-exact"),
            ] {
                tls.domain_extensions.push(DomainExtension {
                    domain_extension_id: id.into(),
                    domain: domain.into(),
                    server_certificate_id: cert.into(),
                });
            }
            let acceptor = build(&tls);
            for (sni, cn) in [
                (Some("www.example.com"), "ext-exact"),
                (Some("WWW.example.com"), "ext-exact"),
                (Some("info.market.example.com"), "ext-narrow"),
                (Some("market.example.com"), "ext-broad"),
                (Some("a.b.example.com"), "ext-broad"),
                (Some("example.com"), "listener-rsa"),
                (Some("unknown.test"), "listener-rsa"),
                (None, "listener-rsa"),
            ] {
                let offer = Offer {
                    sni,
                    ..Offer::default()
                };
                let seen = connect(&acceptor, &offer).unwrap();
                assert_eq!(seen.server_cn, cn, "{policy:?} SNI {sni:?}");
            }
        }
    }

    /// B10.1: the intermediates after the leaf in the chain reach the client, which trusts
    /// only the root.
    #[test]
    fn b10_1_chain_is_sent() {
        let acceptor = build(&settings(TlsCipherPolicy::Tls12, "listener-rsa"));
        let seen = connect(&acceptor, &Offer::default()).unwrap();
        assert_eq!(seen.server_chain, 2);
    }

    /// B10.2: an RSA 1024 certificate is served, under the strictest policy too: the
    /// distribution's security level does not get to refuse it.
    #[test]
    fn b10_2_rsa_1024_certificate_is_served() {
        for policy in POLICIES {
            let acceptor = build(&settings(policy, "listener-rsa1024"));
            let seen = connect(&acceptor, &Offer::default()).unwrap();
            assert_eq!(seen.server_cn, "listener-rsa1024", "{policy:?}");
        }
    }

    /// B10.11: the server's order decides, forward-secret suites first, whatever the client
    /// prefers.
    #[test]
    fn b10_11_server_prefers_its_order() {
        let acceptor = build(&settings(TlsCipherPolicy::Tls10, "listener-rsa"));
        let offer = Offer {
            suite: Some("AES128-SHA:AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA"),
            ..Offer::default()
        };
        assert_eq!(
            connect(&acceptor, &offer).unwrap().cipher,
            "ECDHE-RSA-AES128-SHA"
        );
    }

    /// B10.3: key exchange is ECDHE over X25519, P-256 or P-384, in TLS 1.2 and 1.3; a client
    /// with only other groups gets no ECDHE.
    #[test]
    fn b10_3_ecdhe_groups() {
        let acceptor = build(&settings(
            TlsCipherPolicy::Tls12StrictWith13,
            "listener-rsa",
        ));
        for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
            for (groups, ok) in [
                ("X25519", true),
                ("P-256", true),
                ("P-384", true),
                ("P-521", false),
                ("X448", false),
            ] {
                let offer = Offer {
                    version: Some(version),
                    groups: Some(groups),
                    ..Offer::default()
                };
                assert_eq!(accepted(&acceptor, &offer), ok, "{version:?} {groups}");
            }
        }
    }

    fn mutual(policy: TlsCipherPolicy, ca: &str) -> TlsSettings {
        TlsSettings {
            ca_certificate_id: Some(ca.into()),
            ..settings(policy, "listener-rsa")
        }
    }

    /// B10.9: with a CA, a client certificate issued by it is required; one from another CA
    /// or none is refused — in TLS 1.2 and in TLS 1.3, where the refusal comes after the
    /// client's side of the handshake.
    #[test]
    fn b10_9_mutual_tls() {
        let p = pki();
        for (policy, version) in [
            (TlsCipherPolicy::Tls10, SslVersion::TLS1),
            (TlsCipherPolicy::Tls12, SslVersion::TLS1_2),
            (TlsCipherPolicy::Tls12StrictWith13, SslVersion::TLS1_3),
        ] {
            let acceptor = build(&mutual(policy, "slb client CA"));
            let with = |cert| Offer {
                version: Some(version),
                cert,
                ..Offer::default()
            };
            let seen = connect(&acceptor, &with(Some(&p.client))).unwrap();
            assert_eq!(seen.client_cn.as_deref(), Some("client"));
            assert!(
                !accepted(&acceptor, &with(Some(&p.client_of_foreign_ca))),
                "{policy:?}"
            );
            assert!(!accepted(&acceptor, &with(None)), "{policy:?}");
        }
    }

    /// B10.9: an intermediate named as the CA is trusted on its own; a certificate from its
    /// parent is not one it issued.
    #[test]
    fn b10_9_intermediate_as_ca() {
        let p = pki();
        let acceptor = build(&mutual(TlsCipherPolicy::Tls12, "slb client intermediate"));
        let with = |cert| Offer {
            cert: Some(cert),
            ..Offer::default()
        };
        let seen = connect(&acceptor, &with(&p.client_of_intermediate)).unwrap();
        assert_eq!(seen.client_cn.as_deref(), Some("client-of-intermediate"));
        assert!(!accepted(&acceptor, &with(&p.client)));
    }

    /// The CA names of a TLS 1.2 CertificateRequest body.
    fn ca_names(request: &[u8]) -> Vec<Vec<u8>> {
        let types = usize::from(request[0]);
        let at = 1 + types;
        let algorithms = usize::from(u16::from_be_bytes([request[at], request[at + 1]]));
        let mut at = at + 2 + algorithms + 2;
        let mut names = Vec::new();
        while at < request.len() {
            let len = usize::from(u16::from_be_bytes([request[at], request[at + 1]]));
            names.push(request[at + 2..at + 2 + len].to_vec());
            at += 2 + len;
        }
        names
    }

    /// B10.8, B10.9: a mutual-TLS listener requests a certificate naming its CA, so clients
    /// with several know which to send; a one-way listener requests none.
    #[test]
    fn b10_8_certificate_request_names_the_ca() {
        let tls1_2 = [3, 3];
        let aes128_sha = [0x00, 0x2f];
        let acceptor = build(&mutual(TlsCipherPolicy::Tls12, "slb client CA"));
        let flight = raw_hello(&acceptor, tls1_2, aes128_sha).unwrap();
        let request = flight
            .iter()
            .find(|(t, _)| *t == 13)
            .expect("certificate_request");
        let ca = pki().client_ca.subject_name().to_der().unwrap();
        assert_eq!(ca_names(&request.1), vec![ca]);

        let one_way = build(&settings(TlsCipherPolicy::Tls12, "listener-rsa"));
        let flight = raw_hello(&one_way, tls1_2, aes128_sha).unwrap();
        assert!(flight.iter().all(|(t, _)| *t != 13));
    }

    /// B10.8: without a CA, a client that has a certificate is not asked for it.
    #[test]
    fn b10_8_one_way_tls_ignores_client_certificates() {
        let acceptor = build(&settings(
            TlsCipherPolicy::Tls12StrictWith13,
            "listener-rsa",
        ));
        let offer = Offer {
            cert: Some(&pki().client),
            ..Offer::default()
        };
        assert_eq!(connect(&acceptor, &offer).unwrap().client_cn, None);
    }

    /// B10.9, B10.14: a domain extension's certificate comes with the listener's client
    /// verification and ALPN.
    #[test]
    fn b10_14_extensions_keep_mutual_tls_and_alpn() {
        let p = pki();
        let mut tls = mutual(TlsCipherPolicy::Tls12StrictWith13, "slb client CA");
        tls.domain_extensions.push(DomainExtension {
            domain_extension_id: "de-1".into(),
            domain: "www.example.com".into(),
            server_certificate_id: "ext-exact".into(),
        });
        let acceptor = build(&tls);
        for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
            let offer = |cert| Offer {
                version: Some(version),
                sni: Some("www.example.com"),
                cert,
                alpn: Some(b"\x02h2\x08http/1.1"),
                ..Offer::default()
            };
            let seen = connect(&acceptor, &offer(Some(&p.client))).unwrap();
            assert_eq!(seen.server_cn, "ext-exact");
            assert_eq!(seen.client_cn.as_deref(), Some("client"));
            assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
            assert!(!accepted(&acceptor, &offer(Some(&p.client_of_foreign_ca))));
            assert!(!accepted(&acceptor, &offer(None)));
        }
    }

    /// B10.21: a second connection offering the first one's session resumes it — by ticket
    /// and from the server's cache, in TLS 1.0, 1.2 and 1.3, with and without client
    /// certificates — and the server gives sessions a 300 s lifetime. A new acceptor (a
    /// changed listener) starts with no sessions.
    #[test]
    fn b10_21_sessions_resume() {
        use TlsCipherPolicy::*;
        let p = pki();
        for (policy, version, no_ticket, mtls) in [
            (Tls10, SslVersion::TLS1, true, false),
            (Tls12, SslVersion::TLS1_2, false, false),
            (Tls12, SslVersion::TLS1_2, true, false),
            (Tls12, SslVersion::TLS1_2, false, true),
            (Tls12, SslVersion::TLS1_2, true, true),
            (Tls12StrictWith13, SslVersion::TLS1_3, false, false),
            (Tls12StrictWith13, SslVersion::TLS1_3, false, true),
        ] {
            let case = format!("{policy:?} {version:?} no_ticket={no_ticket} mtls={mtls}");
            let tls = if mtls {
                mutual(policy, "slb client CA")
            } else {
                settings(policy, "listener-rsa")
            };
            let acceptor = build(&tls);
            let first = connect(
                &acceptor,
                &Offer {
                    version: Some(version),
                    cert: Some(&p.client),
                    no_ticket,
                    ..Offer::default()
                },
            )
            .unwrap();
            assert!(!first.reused, "{case}");
            assert_eq!(first.session_timeout, Some(300), "{case}");
            let again = |acceptor| {
                connect(
                    acceptor,
                    &Offer {
                        version: Some(version),
                        cert: Some(&p.client),
                        resume: Some(&first.session),
                        no_ticket,
                        ..Offer::default()
                    },
                )
                .unwrap()
            };
            let second = again(&acceptor);
            assert!(second.reused, "{case}");
            if mtls {
                assert_eq!(second.client_cn.as_deref(), Some("client"), "{case}");
            }
            assert!(!again(&build(&tls)).reused, "{case}");
        }
    }

    /// B9.17: with EnableHttp2 `h2` is chosen when offered, `http/1.1` otherwise; without it
    /// never `h2`.
    #[test]
    fn b9_17_alpn() {
        for (http2, offered, chosen) in [
            (true, &b"\x08http/1.1\x02h2"[..], Some(&b"h2"[..])),
            (true, b"\x08http/1.1", Some(b"http/1.1")),
            (true, b"\x06spdy/3", None),
            (false, b"\x02h2\x08http/1.1", Some(b"http/1.1")),
            (false, b"\x02h2", None),
        ] {
            for policy in [TlsCipherPolicy::Tls12, TlsCipherPolicy::Tls12StrictWith13] {
                let tls = TlsSettings {
                    enable_http2: http2,
                    ..settings(policy, "listener-rsa")
                };
                let offer = Offer {
                    alpn: Some(offered),
                    ..Offer::default()
                };
                let seen = connect(&build(&tls), &offer).unwrap();
                assert_eq!(
                    seen.alpn.as_deref(),
                    chosen,
                    "{policy:?} http2={http2} {offered:?}"
                );
            }
        }
    }

    /// B10.6: a listener, CA or domain extension referring to a certificate the store lacks
    /// is an error naming the ID.
    #[test]
    fn b10_6_unknown_certificate_ids_are_named() {
        let certs = certificates();
        let err = |tls: &TlsSettings| acceptor(tls, &certs).err().unwrap();
        let tls = settings(TlsCipherPolicy::Tls10, "missing");
        assert!(matches!(err(&tls), TlsError::UnknownServerCertificate { id } if id == "missing"));
        let tls = mutual(TlsCipherPolicy::Tls10, "missing-ca");
        assert!(matches!(err(&tls), TlsError::UnknownCaCertificate { id } if id == "missing-ca"));
        let mut tls = settings(TlsCipherPolicy::Tls10, "listener-rsa");
        tls.domain_extensions.push(DomainExtension {
            domain_extension_id: "de-1".into(),
            domain: "www.example.com".into(),
            server_certificate_id: "missing-ext".into(),
        });
        assert!(
            matches!(err(&tls), TlsError::UnknownServerCertificate { id } if id == "missing-ext")
        );
    }

    /// B10.4: a key that is not the certificate's is refused, naming the certificate.
    #[test]
    fn b10_4_key_must_match() {
        let mut certs = certificates();
        let mut mismatched = pki().rsa.server_certificate();
        mismatched.key_pem = pki().ecdsa.server_certificate().key_pem;
        certs.server.insert("mismatched".into(), mismatched);
        let tls = settings(TlsCipherPolicy::Tls10, "mismatched");
        let err = acceptor(&tls, &certs).err().unwrap();
        assert!(matches!(err, TlsError::ServerCertificate { id, .. } if id == "mismatched"));
    }
}
