//! The agent's switch of OpenSSL's allocator to mimalloc. A test binary of its own: the switch
//! takes only before OpenSSL's first allocation in the process.
use std::{
    ffi::{c_char, c_int, c_void},
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    thread,
};

use openssl::{
    asn1::Asn1Time,
    hash::MessageDigest,
    pkey::PKey,
    rsa::Rsa,
    ssl::{SslAcceptor, SslConnector, SslMethod, SslVerifyMode},
    x509::{X509Builder, X509NameBuilder},
};

unsafe extern "C" {
    fn CRYPTO_malloc(n: usize, file: *const c_char, line: c_int) -> *mut c_void;
    fn CRYPTO_free(p: *mut c_void, file: *const c_char, line: c_int);
}

#[test]
fn openssl_allocates_from_mimalloc() -> anyhow::Result<()> {
    assert!(slb::proxy::tls::allocate_with_mimalloc());
    // SAFETY: a block from OpenSSL's allocator, given back to it.
    unsafe {
        let p = CRYPTO_malloc(100, c"test".as_ptr(), 0);
        assert!(!p.is_null());
        assert!(libmimalloc_sys::mi_is_in_heap_region(p));
        CRYPTO_free(p, c"test".as_ptr(), 0);
    }

    // A handshake and a record each way on the switched allocator.
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "mimalloc.test")?;
    let name = name.build();
    let mut cert = X509Builder::new()?;
    cert.set_subject_name(&name)?;
    cert.set_issuer_name(&name)?;
    cert.set_pubkey(&key)?;
    cert.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    cert.set_not_after(&*Asn1Time::days_from_now(1)?)?;
    cert.sign(&key, MessageDigest::sha256())?;
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    acceptor.set_private_key(&key)?;
    acceptor.set_certificate(&cert.build())?;
    let acceptor = acceptor.build();
    let mut connector = SslConnector::builder(SslMethod::tls_client())?;
    connector.set_verify(SslVerifyMode::NONE);
    let connector = connector.build();

    let (server, client) = UnixStream::pair()?;
    let served = thread::spawn(move || -> anyhow::Result<()> {
        let mut tls = acceptor.accept(server)?;
        let mut b = [0; 4];
        tls.read_exact(&mut b)?;
        tls.write_all(&b)?;
        Ok(())
    });
    let mut tls = connector.connect("mimalloc.test", client)?;
    tls.write_all(b"ping")?;
    let mut b = [0; 4];
    tls.read_exact(&mut b)?;
    assert_eq!(&b, b"ping");
    served.join().expect("server thread")?;
    Ok(())
}
