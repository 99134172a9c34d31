//! Session persistence of layer-7 listeners (B6.2–B6.8): a cookie records the backend that
//! served a client, and the client's next requests go back to it.
//!
//! Per request the caller asks [`requested`] which backend token the client carries, serves
//! the request from the usable member whose [`token`] equals it, or schedules as usual when
//! none does (B6.8: a removed, unhealthy or weight-0 backend's token is ignored), and passes
//! both tokens to [`respond`], which issues a new cookie when they differ.
use std::net::SocketAddr;

use hyper::{
    header::{HeaderName, HeaderValue, COOKIE, SET_COOKIE},
    HeaderMap, StatusCode,
};
use sha2::{Digest as _, Sha256};

use crate::config::StickySession;

/// The cookie the LB inserts (B6.3).
const INSERTED: &str = "SERVERID";

/// Separates the backend's own cookie value from the token the LB appends (B6.4).
const MARKER: &str = "~slb~";

/// Length of a token: hex digits.
const TOKEN_LEN: usize = 16;

/// The opaque value that names the backend at `addr` in cookies (B6.3 DECISION: not its
/// address). Derived from the address alone, so cookies stay valid across agent restarts.
pub fn token(addr: SocketAddr) -> String {
    let digest = Sha256::digest(addr.to_string().as_bytes());
    hex::encode(&digest[..TOKEN_LEN / 2])
}

/// The backend token the request carries, if any. `insert`: the `SERVERID` cookie, and the
/// request goes to the backend unchanged (B6.3). `server`: the token the LB appended to the
/// named cookie; that cookie gets back the value the backend set (B6.4). Malformed cookies are
/// ignored.
pub fn requested(sticky: &StickySession, headers: &mut HeaderMap) -> Option<String> {
    match sticky {
        StickySession::Off => None,
        StickySession::Insert { .. } => headers.get_all(COOKIE).iter().find_map(|h| {
            pairs(h.as_bytes())
                .find(|p| p.name == INSERTED.as_bytes() && !p.value.is_empty())
                .and_then(|p| String::from_utf8(p.value.to_vec()).ok())
        }),
        StickySession::Server { cookie } => restore(cookie.as_bytes(), headers),
    }
}

/// Adds or rewrites the response's persistence cookie for the backend at `chosen`, by its
/// [`token`]; `requested` is what [`requested`] returned for the request. `insert`: `SERVERID`
/// is set unless the client already carries that token or the status is 4xx (B6.6). `server`:
/// every `Set-Cookie` of the named cookie gets the token appended to its value, its attributes
/// kept. `off`: nothing, and no token is computed.
pub fn respond(
    sticky: &StickySession,
    status: StatusCode,
    requested: Option<&str>,
    chosen: SocketAddr,
    headers: &mut HeaderMap,
) {
    match sticky {
        StickySession::Off => {}
        StickySession::Insert { cookie_timeout } => {
            let chosen = token(chosen);
            if status.is_client_error() || requested == Some(chosen.as_str()) {
                return;
            }
            let cookie = format!("{INSERTED}={chosen}; Path=/; Max-Age={cookie_timeout}");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                headers.append(SET_COOKIE, v);
            }
        }
        StickySession::Server { cookie } => {
            rewrite_set_cookies(cookie.as_bytes(), &token(chosen), headers);
        }
    }
}

/// One `name=value` of a header; `value_at` is where the value starts in the header.
struct Pair<'a> {
    name: &'a [u8],
    value: &'a [u8],
    value_at: usize,
}

/// The `name=value` pieces of a Cookie header (`a=b; c=d`); pieces without `=` are skipped.
fn pairs(header: &[u8]) -> impl Iterator<Item = Pair<'_>> {
    let mut start = 0;
    header.split(|&b| b == b';').filter_map(move |piece| {
        let at = start;
        start += piece.len() + 1;
        let eq = piece.iter().position(|&b| b == b'=')?;
        let value = &piece[eq + 1..];
        let lead = value.len() - value.trim_ascii_start().len();
        Some(Pair {
            name: piece[..eq].trim_ascii(),
            value: value.trim_ascii(),
            value_at: at + eq + 1 + lead,
        })
    })
}

/// Where `MARKER` + token starts in a cookie value (quoted or not), and the token.
fn appended_token(value: &[u8]) -> Option<(usize, &str)> {
    let inner = match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    };
    let at = inner.len().checked_sub(MARKER.len() + TOKEN_LEN)?;
    let (original, tail) = inner.split_at(at);
    let token = tail.strip_prefix(MARKER.as_bytes())?;
    if !token.iter().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let token = std::str::from_utf8(token).ok()?;
    let offset = usize::from(inner.len() != value.len());
    Some((offset + original.len(), token))
}

/// Removes the appended token from every `cookie` in the Cookie headers; returns the first
/// token found.
fn restore(cookie: &[u8], headers: &mut HeaderMap) -> Option<String> {
    let mut found = None;
    edit_all(headers, COOKIE, |bytes| {
        let mut cuts = Vec::new();
        for p in pairs(bytes).filter(|p| p.name == cookie) {
            if let Some((at, token)) = appended_token(p.value) {
                found.get_or_insert_with(|| token.to_string());
                cuts.push(p.value_at + at);
            }
        }
        if cuts.is_empty() {
            return None;
        }
        let mut kept = Vec::with_capacity(bytes.len());
        let mut from = 0;
        for cut in cuts {
            kept.extend_from_slice(&bytes[from..cut]);
            from = cut + MARKER.len() + TOKEN_LEN;
        }
        kept.extend_from_slice(&bytes[from..]);
        Some(kept)
    });
    found
}

/// Appends `MARKER` + `token` to the value of every `Set-Cookie: <cookie>=…` (inside the
/// quotes of a quoted value).
fn rewrite_set_cookies(cookie: &[u8], token: &str, headers: &mut HeaderMap) {
    edit_all(headers, SET_COOKIE, |bytes| {
        // The cookie is the first piece; the rest are its attributes.
        let first = bytes.split(|&b| b == b';').next()?;
        let p = pairs(first).next().filter(|p| p.name == cookie)?;
        let quoted = p.value.len() >= 2 && p.value.starts_with(b"\"") && p.value.ends_with(b"\"");
        let end = p.value_at + p.value.len() - usize::from(quoted);
        let mut v = Vec::with_capacity(bytes.len() + MARKER.len() + token.len());
        v.extend_from_slice(&bytes[..end]);
        v.extend_from_slice(MARKER.as_bytes());
        v.extend_from_slice(token.as_bytes());
        v.extend_from_slice(&bytes[end..]);
        Some(v)
    });
}

/// Replaces, in place and order, each `name` header for which `edit` returns new bytes; an
/// edit that would not be a valid header value is dropped.
fn edit_all(
    headers: &mut HeaderMap,
    name: HeaderName,
    mut edit: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) {
    let mut changed = false;
    let values: Vec<HeaderValue> = headers
        .get_all(&name)
        .iter()
        .map(
            |h| match edit(h.as_bytes()).and_then(|b| HeaderValue::from_bytes(&b).ok()) {
                Some(v) => {
                    changed = true;
                    v
                }
                None => h.clone(),
            },
        )
        .collect();
    if changed {
        headers.remove(&name);
        for v in values {
            headers.append(&name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSERT: StickySession = StickySession::Insert {
        cookie_timeout: 600,
    };

    fn server(cookie: &str) -> StickySession {
        StickySession::Server {
            cookie: cookie.to_string(),
        }
    }

    fn headers(name: hyper::header::HeaderName, values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&name, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn all(h: &HeaderMap, name: hyper::header::HeaderName) -> Vec<&[u8]> {
        h.get_all(name).iter().map(|v| v.as_bytes()).collect()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 10], port))
    }

    fn backend(port: u16) -> String {
        token(addr(port))
    }

    /// B6.3 DECISION: the token is 16 hex digits that do not show the address, differ per
    /// backend (port included), and are derived from the address alone: this pinned value
    /// changing would invalidate every client's cookie on upgrade.
    #[test]
    fn token_is_opaque_per_backend_and_stable() {
        let t = backend(80);
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!t.contains("192"));
        assert_ne!(t, backend(81));
        assert_ne!(t, token("[2001:db8::10]:80".parse().unwrap()));
        assert_eq!(t, "c13fb5d8bcbd3e42");
    }

    /// B6.3, B6.6: insert mode adds `SERVERID` to 2xx, 3xx and 5xx responses, after the
    /// backend's own cookies, and never to a 4xx.
    #[test]
    fn insert_cookie_on_2xx_3xx_5xx_but_not_4xx() {
        let t = backend(80);
        let expected = format!("SERVERID={t}; Path=/; Max-Age=600");
        for status in [200, 204, 302, 304, 500, 503] {
            let status = StatusCode::from_u16(status).unwrap();
            let mut h = headers(SET_COOKIE, &[b"app=1"]);
            respond(&INSERT, status, None, addr(80), &mut h);
            assert_eq!(
                all(&h, SET_COOKIE),
                [b"app=1".as_slice(), expected.as_bytes()],
                "{status}"
            );
        }
        for status in [400, 403, 404, 429] {
            let status = StatusCode::from_u16(status).unwrap();
            let mut h = HeaderMap::new();
            respond(&INSERT, status, None, addr(80), &mut h);
            assert!(h.is_empty(), "{status}");
        }
    }

    /// B6.3: the token of a response's cookie comes back as the request's token, the request
    /// itself unchanged; a client that already carries the chosen backend gets no new cookie.
    #[test]
    fn insert_token_round_trip() {
        let t = backend(80);
        let mut resp = HeaderMap::new();
        respond(&INSERT, StatusCode::OK, None, addr(80), &mut resp);
        let set = resp.get(SET_COOKIE).unwrap().to_str().unwrap();
        let cookie = set.split(';').next().unwrap();
        let second = format!("a=b; {cookie}; c=d");
        let sent: [&[u8]; 2] = [b"lang=en", second.as_bytes()];
        let mut req = headers(COOKIE, &sent);
        assert_eq!(requested(&INSERT, &mut req), Some(t.clone()));
        assert_eq!(all(&req, COOKIE), sent);
        let mut resp = HeaderMap::new();
        respond(&INSERT, StatusCode::OK, Some(&t), addr(80), &mut resp);
        assert!(resp.is_empty());
    }

    /// B6.8: a token of no usable backend is what the client asked for, not what served it,
    /// so the response carries a new cookie for the backend chosen instead.
    #[test]
    fn stale_token_gets_a_new_cookie() {
        let gone = backend(8080);
        let mut req = headers(COOKIE, &[format!("SERVERID={gone}").as_bytes()]);
        let asked = requested(&INSERT, &mut req);
        assert_eq!(asked.as_deref(), Some(gone.as_str()));
        let chosen = backend(80);
        let mut resp = HeaderMap::new();
        respond(
            &INSERT,
            StatusCode::OK,
            asked.as_deref(),
            addr(80),
            &mut resp,
        );
        assert_eq!(
            resp.get(SET_COOKIE).unwrap(),
            format!("SERVERID={chosen}; Path=/; Max-Age=600").as_str()
        );
    }

    /// B6.4: every Set-Cookie of the named cookie carries the token after its value, quoted
    /// values inside their quotes, attributes untouched; other cookies stay as they were.
    /// The next request's cookies, spread over several Cookie headers as HTTP/2 sends them,
    /// give the token back and reach the backend with its own values.
    #[test]
    fn server_cookie_rewritten_and_restored() {
        let sticky = server("sid");
        let t = backend(80);
        let mut resp = headers(
            SET_COOKIE,
            &[
                b"sid=abc; Path=/; HttpOnly",
                b"other=1; Max-Age=60",
                b"sid=\"q v\"; Domain=example.com",
                b"sidx=2",
            ],
        );
        respond(&sticky, StatusCode::OK, None, addr(80), &mut resp);
        let rewritten = [
            format!("sid=abc~slb~{t}; Path=/; HttpOnly"),
            "other=1; Max-Age=60".to_string(),
            format!("sid=\"q v~slb~{t}\"; Domain=example.com"),
            "sidx=2".to_string(),
        ];
        assert_eq!(
            all(&resp, SET_COOKIE),
            rewritten.iter().map(|s| s.as_bytes()).collect::<Vec<_>>()
        );

        let sent = [
            format!("other=1; sid=abc~slb~{t}"),
            "sidx=2".to_string(),
            format!("sid=\"q v~slb~{t}\";lang=en"),
        ];
        let sent: Vec<&[u8]> = sent.iter().map(|s| s.as_bytes()).collect();
        let mut req = headers(COOKIE, &sent);
        assert_eq!(requested(&sticky, &mut req), Some(t));
        assert_eq!(
            all(&req, COOKIE),
            [
                b"other=1; sid=abc".as_slice(),
                b"sidx=2",
                b"sid=\"q v\";lang=en"
            ]
        );
    }

    /// B6.4: a request whose cookie the LB did not rewrite (first visit, or a value that only
    /// looks similar) asks for no backend and reaches the backend untouched.
    #[test]
    fn server_cookie_without_token_is_left_alone() {
        let sticky = server("sid");
        let sent: [&[u8]; 3] = [
            b"sid=abc",
            b"sid=abc~slb~0123",
            b"sid=abc~slb~0123456789abcdeg",
        ];
        let mut req = headers(COOKIE, &sent);
        assert_eq!(requested(&sticky, &mut req), None);
        assert_eq!(all(&req, COOKIE), sent);
    }

    /// B6.3, B6.4: malformed Cookie and Set-Cookie headers are ignored, never a panic; bytes
    /// beyond ASCII around a token do not hide it.
    #[test]
    fn malformed_cookies_are_ignored() {
        let t = backend(80);
        let junk: [&[u8]; 9] = [
            b"",
            b";;;",
            b"=",
            b"=x",
            b"SERVERID",
            b"SERVERID=",
            b"sid",
            b"HttpOnly; sid=1",
            b"\"\xff",
        ];
        for sticky in [INSERT, server("sid")] {
            let mut req = headers(COOKIE, &junk);
            assert_eq!(requested(&sticky, &mut req), None);
            assert_eq!(all(&req, COOKIE), junk);
            let mut resp = headers(SET_COOKIE, &junk);
            respond(&sticky, StatusCode::NOT_FOUND, None, addr(80), &mut resp);
            assert_eq!(all(&resp, SET_COOKIE), junk);
        }
        let mut odd = b"x=\"; sid=\xff".to_vec();
        odd.extend_from_slice(format!("~slb~{t}").as_bytes());
        let mut req = headers(COOKIE, &[odd.as_slice()]);
        assert_eq!(requested(&server("sid"), &mut req), Some(t));
        assert_eq!(all(&req, COOKIE), [b"x=\"; sid=\xff".as_slice()]);
    }

    /// B6.2: with StickySession=off nothing is read or written.
    #[test]
    fn off_does_nothing() {
        let t = backend(80);
        let sent = format!("SERVERID={t}; sid=a~slb~{t}");
        let mut req = headers(COOKIE, &[sent.as_bytes()]);
        assert_eq!(requested(&StickySession::Off, &mut req), None);
        assert_eq!(all(&req, COOKIE), [sent.as_bytes()]);
        let mut resp = headers(SET_COOKIE, &[b"sid=a"]);
        respond(
            &StickySession::Off,
            StatusCode::OK,
            None,
            addr(80),
            &mut resp,
        );
        assert_eq!(all(&resp, SET_COOKIE), [b"sid=a".as_slice()]);
    }

    proptest::proptest! {
        /// B6.4: whatever value the backend sets, the client's copy leads back to the backend
        /// and the backend gets its own value again.
        #[test]
        fn server_round_trip_keeps_any_value(value in "[!#-+\\--:<-\\[\\]-~]{0,40}", port: u16) {
            let sticky = server("sid");
            let t = backend(port);
            let mut resp = headers(SET_COOKIE, &[format!("sid={value}; Path=/").as_bytes()]);
            respond(&sticky, StatusCode::OK, None, addr(port), &mut resp);
            let set = resp.get(SET_COOKIE).unwrap().to_str().unwrap();
            let cookie = set.split("; Path").next().unwrap();
            let mut req = headers(COOKIE, &[format!("a=1; {cookie}").as_bytes()]);
            proptest::prop_assert_eq!(requested(&sticky, &mut req), Some(t));
            let restored = format!("a=1; sid={value}");
            proptest::prop_assert_eq!(req.get(COOKIE).unwrap().as_bytes(), restored.as_bytes());
        }
    }
}
