//! Request authentication for the SLB API: SignatureVersion 1.0 (spec §1.3), ACS3-HMAC-SHA256 as the
//! official SDKs send it (spec §1.3a), replay protection, and the access-key file both are checked against.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// Largest accepted distance between a request's timestamp and the server clock.
const SKEW_SECS: u64 = 15 * 60;
/// A timestamp is accepted for 2 × SKEW_SECS, so a nonce must be remembered at least that long
/// for a replay to be caught anywhere inside the window.
const NONCE_RETENTION_SECS: i64 = 30 * 60;
/// Bounds the replay cache (about 60 MB when full). Only requests with a valid signature are
/// recorded, so reaching it takes ~550 authenticated requests per second.
const NONCE_CAP: usize = 1_000_000;
const V3_ALGORITHM: &str = "ACS3-HMAC-SHA256";
/// Client-supplied text copied into errors is cut to this many characters so that a hostile
/// request cannot blow up log lines or error bodies.
const ERROR_TEXT_MAX: usize = 128;

/// Why a request's signature was not accepted. `Display` is for server logs; clients get
/// [`SignError::code`], [`SignError::http_status`] and [`SignError::message`].
#[derive(thiserror::Error, Debug)]
pub enum SignError {
    #[error("required parameter {name} is missing or empty")]
    MissingParameter { name: String },
    #[error("unknown AccessKeyId {access_key_id:?}")]
    UnknownAccessKey { access_key_id: String },
    #[error("signature rejected: {reason}")]
    BadSignature { reason: String },
    #[error("unsupported signature type {value:?}")]
    UnsupportedSignatureType { value: String },
    #[error("timestamp {value:?} rejected: {reason}")]
    BadTimestamp { value: String, reason: &'static str },
    #[error("malformed signature data: {reason}")]
    Malformed { reason: String },
    #[error("nonce {nonce:?} of AccessKeyId {access_key_id:?} was already used")]
    Replay {
        access_key_id: String,
        nonce: String,
    },
}

impl SignError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingParameter { .. } => "MissingParameter",
            Self::Replay { .. } => "ProcessingSameRequest",
            Self::UnknownAccessKey { .. }
            | Self::BadSignature { .. }
            | Self::UnsupportedSignatureType { .. }
            | Self::BadTimestamp { .. }
            | Self::Malformed { .. } => "InternalError",
        }
    }

    /// Every signature error is 400 in the documented catalogue (§14), including `InternalError`.
    pub fn http_status(&self) -> u16 {
        400
    }

    pub fn message(&self) -> String {
        match self {
            Self::MissingParameter { name } => format!(
                "The input parameter {name} that is mandatory for processing this request is not supplied."
            ),
            Self::UnknownAccessKey { .. } => "Illegal user".to_string(),
            Self::BadSignature { .. } => "Illegal sign".to_string(),
            Self::UnsupportedSignatureType { .. } => "Illegal sign type".to_string(),
            Self::BadTimestamp { .. } => "Illegal timestamp".to_string(),
            Self::Malformed { .. } => "Illegal format".to_string(),
            Self::Replay { .. } => {
                "The same request is being processed. Please try later.".to_string()
            }
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum KeyFileError {
    #[error("cannot read key file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {} has mode {mode:04o}; it must not be accessible by group or others (chmod 600)",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "key file {} is owned by uid {uid}, not by the user this process runs as",
        path.display()
    )]
    Owner { path: PathBuf, uid: u32 },
    #[error("key file {} is invalid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("key file {} lists AccessKeyId {id:?} more than once", path.display())]
    Duplicate { path: PathBuf, id: String },
}

/// AccessKeyId -> AccessKeySecret. Deliberately not `Debug`, so secrets cannot end up in logs.
pub struct AccessKeys {
    secrets: HashMap<String, String>,
    /// The first key in file order: the one `slb call` signs with.
    first: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(rename = "AccessKeys")]
    access_keys: Vec<KeyFileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    #[serde(rename = "AccessKeyId")]
    id: String,
    #[serde(rename = "AccessKeySecret")]
    secret: String,
}

impl AccessKeys {
    /// File format (TOML):
    /// ```toml
    /// [[AccessKeys]]
    /// AccessKeyId = "..."
    /// AccessKeySecret = "..."
    /// ```
    /// Refuses a file that group or others may access in any way, or that is not owned by the
    /// effective uid; every error names the path and the problem.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        // Checked on the open handle, so the file cannot be swapped between the check and the read.
        let meta = file.metadata().map_err(io)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(KeyFileError::Owner {
                path: path.to_path_buf(),
                uid: meta.uid(),
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let parsed: KeyFile = toml::from_str(&text).map_err(|e| KeyFileError::Parse {
            path: path.to_path_buf(),
            message: toml_error_message(&text, &e),
        })?;
        let mut secrets = HashMap::new();
        let first = parsed.access_keys.first().map(|e| e.id.clone());
        for (index, entry) in parsed.access_keys.into_iter().enumerate() {
            if entry.id.is_empty() || entry.secret.is_empty() {
                return Err(KeyFileError::Parse {
                    path: path.to_path_buf(),
                    message: format!(
                        "AccessKeys entry {} has an empty AccessKeyId or AccessKeySecret",
                        index + 1
                    ),
                });
            }
            if secrets.contains_key(&entry.id) {
                return Err(KeyFileError::Duplicate {
                    path: path.to_path_buf(),
                    id: entry.id,
                });
            }
            secrets.insert(entry.id, entry.secret);
        }
        Ok(Self { secrets, first })
    }

    /// Later pairs replace earlier ones with the same id.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let pairs: Vec<(String, String)> = pairs.into_iter().collect();
        Self {
            first: pairs.first().map(|(id, _)| id.clone()),
            secrets: pairs.into_iter().collect(),
        }
    }

    /// The first key of the file, as (AccessKeyId, AccessKeySecret).
    pub fn first(&self) -> Option<(&str, &str)> {
        let id = self.first.as_deref()?;
        Some((id, self.secret(id)?))
    }

    pub fn secret(&self, id: &str) -> Option<&str> {
        self.secrets.get(id).map(String::as_str)
    }
}

/// toml's own `Display` quotes the offending source line, which may be a secret; report only the
/// line number and the parser's message.
fn toml_error_message(text: &str, err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |s| s.matches('\n').count())
                + 1;
            format!("line {line}: {}", err.message())
        }
        None => err.message().to_string(),
    }
}

/// One HTTP request as far as authentication is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// "GET" / "POST" as received.
    pub method: &'a str,
    /// Raw request path, normally "/".
    pub path: &'a str,
    /// Percent-decoded query pairs in arrival order.
    pub query: &'a [(String, String)],
    /// Decoded x-www-form-urlencoded body pairs (else empty).
    pub form: &'a [(String, String)],
    /// Header names lower-case, values as received.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    V1,
    V3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub scheme: Scheme,
}

/// Checks signatures and remembers nonces; one instance is shared by all connections.
pub struct Verifier {
    keys: AccessKeys,
    nonces: Mutex<NonceStore>,
}

impl Verifier {
    /// Timestamps are accepted within ±15 minutes; nonces are remembered for 30 minutes.
    pub fn new(keys: AccessKeys) -> Self {
        Self {
            keys,
            nonces: Mutex::new(NonceStore::new(NONCE_RETENTION_SECS, NONCE_CAP)),
        }
    }

    pub fn verify(&self, req: &Request<'_>, now: SystemTime) -> Result<Verified, SignError> {
        let now = unix_seconds(now);
        let is_v3 = req
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.starts_with("ACS3-"));
        let (scheme, checked) = if is_v3 {
            (Scheme::V3, self.verify_v3(req, now)?)
        } else {
            (Scheme::V1, self.verify_v1(req, now)?)
        };
        // Only reached with a proven signature, so unauthenticated traffic cannot fill the cache
        // or burn a legitimate client's nonces.
        let fresh = self
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(nonce_key(checked.access_key_id, checked.nonce), now);
        if !fresh {
            return Err(SignError::Replay {
                access_key_id: clip(checked.access_key_id),
                nonce: clip(checked.nonce),
            });
        }
        Ok(Verified {
            access_key_id: checked.access_key_id.to_string(),
            scheme,
        })
    }

    fn verify_v1<'r>(&self, req: &Request<'r>, now: i64) -> Result<Checked<'r>, SignError> {
        let params: Vec<&'r (String, String)> = req.query.iter().chain(req.form).collect();
        // The first name labels errors; S4's first example spells `Timestamp` as `TimeStamp`, and
        // looking both up together makes sending both an ambiguity error.
        let param = |names: &[&str]| -> Result<&'r str, SignError> {
            let label = names.first().copied().unwrap_or_default();
            required(single(&params, |k| names.contains(&k), label)?, label)
        };
        let access_key_id = param(&["AccessKeyId"])?;
        let signature = param(&["Signature"])?;
        let method = param(&["SignatureMethod"])?;
        let version = param(&["SignatureVersion"])?;
        let nonce = param(&["SignatureNonce"])?;
        let timestamp = param(&["Timestamp", "TimeStamp"])?;

        // S4's example writes `Hmac-SHA1`.
        if !method.eq_ignore_ascii_case("HMAC-SHA1") {
            return Err(SignError::UnsupportedSignatureType {
                value: clip(method),
            });
        }
        if version != "1.0" {
            return Err(SignError::UnsupportedSignatureType {
                value: clip(version),
            });
        }
        check_timestamp(timestamp, now)?;
        let secret = self.secret(access_key_id)?;
        let provided = BASE64
            .decode(signature)
            .map_err(|_| SignError::BadSignature {
                reason: "Signature is not valid base64".to_string(),
            })?;
        let string_to_sign = v1_string_to_sign(req.method, params.iter().copied());
        v1_mac(secret, &string_to_sign)
            .verify_slice(&provided)
            .map_err(|_| SignError::BadSignature {
                reason: "Signature does not match".to_string(),
            })?;
        Ok(Checked {
            access_key_id,
            nonce,
        })
    }

    fn verify_v3<'r>(&self, req: &Request<'r>, now: i64) -> Result<Checked<'r>, SignError> {
        let headers: Vec<&'r (String, String)> = req.headers.iter().collect();
        let header = |name: &str| -> Result<&'r str, SignError> {
            required(
                single(&headers, |k| k.eq_ignore_ascii_case(name), name)?.map(str::trim),
                name,
            )
        };
        let auth = parse_authorization(header("authorization")?)?;
        let date = header("x-acs-date")?;
        let nonce = header("x-acs-signature-nonce")?;
        let payload_hash = header("x-acs-content-sha256")?;

        // The SDK signs every x-acs-* header; one left unsigned (date, nonce, the action…) could be
        // altered or replayed without touching the signature.
        if let Some((name, _)) = req.headers.iter().find(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.starts_with("x-acs-") && !auth.signed_headers.contains(&k.as_str())
        }) {
            return Err(SignError::BadSignature {
                reason: format!("header {} is not in SignedHeaders", clip(name)),
            });
        }
        check_timestamp(date, now)?;
        let secret = self.secret(auth.credential)?;
        if !payload_hash.eq_ignore_ascii_case(&hex::encode(Sha256::digest(req.body))) {
            return Err(SignError::BadSignature {
                reason: "x-acs-content-sha256 does not match the body".to_string(),
            });
        }
        let canonical_headers = v3_canonical_headers(req.headers, &auth.signed_headers)?;
        let canonical_request = v3_canonical_request(
            req.method,
            req.path,
            req.query,
            &canonical_headers,
            &auth.signed_headers.join(";"),
            payload_hash,
        );
        v3_mac(secret, &v3_string_to_sign(&canonical_request))
            .verify_slice(&auth.signature)
            .map_err(|_| SignError::BadSignature {
                reason: "Signature does not match".to_string(),
            })?;
        Ok(Checked {
            access_key_id: auth.credential,
            nonce,
        })
    }

    fn secret(&self, access_key_id: &str) -> Result<&str, SignError> {
        self.keys
            .secret(access_key_id)
            .ok_or_else(|| SignError::UnknownAccessKey {
                access_key_id: clip(access_key_id),
            })
    }
}

/// What a scheme hands back once the signature is proven, for the replay check.
struct Checked<'r> {
    access_key_id: &'r str,
    nonce: &'r str,
}

/// The value of a name that must appear at most once: two copies of a signature parameter would
/// leave it open which one the signer meant.
fn single<'r>(
    pairs: &[&'r (String, String)],
    is_name: impl Fn(&str) -> bool,
    label: &str,
) -> Result<Option<&'r str>, SignError> {
    let mut values = pairs
        .iter()
        .filter(|(k, _)| is_name(k))
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(SignError::Malformed {
            reason: format!("{} given more than once", clip(label)),
        });
    }
    Ok(first)
}

/// Empty counts as absent: an empty nonce or key id can never be meaningful.
fn required<'r>(value: Option<&'r str>, name: &str) -> Result<&'r str, SignError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SignError::MissingParameter { name: clip(name) })
}

struct Authorization<'r> {
    credential: &'r str,
    signed_headers: Vec<&'r str>,
    signature: Vec<u8>,
}

/// `ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<a;b>,Signature=<hex>`
fn parse_authorization(value: &str) -> Result<Authorization<'_>, SignError> {
    let malformed = |reason: &str| SignError::Malformed {
        reason: format!("Authorization: {reason}"),
    };
    let (algorithm, fields) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != V3_ALGORITHM {
        return Err(SignError::UnsupportedSignatureType {
            value: clip(algorithm),
        });
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for field in fields.split(',') {
        let (name, field_value) = field
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed("field without '='"))?;
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(malformed("unknown field")),
        };
        if field_value.is_empty() {
            return Err(malformed("empty field"));
        }
        if slot.replace(field_value).is_some() {
            return Err(malformed("repeated field"));
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| malformed("no SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("no Signature"))?;

    let signed_headers: Vec<&str> = signed_headers.split(';').collect();
    let mut seen = HashSet::new();
    for name in &signed_headers {
        // Names are lower-case tokens as the SDK writes them; anything else cannot have been
        // canonicalised the way we would.
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !token || !seen.insert(*name) {
            return Err(malformed("bad SignedHeaders"));
        }
    }
    let signature = hex::decode(signature).map_err(|_| malformed("Signature is not hex"))?;
    Ok(Authorization {
        credential,
        signed_headers,
        signature,
    })
}

/// RFC 3986 percent-encoding as spec §1.3 step 2: unreserved bytes stay, every other byte of the
/// UTF-8 form becomes `%XY` with upper-case hex.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Pairs encoded, then sorted by encoded name and value bytewise, joined as `n=v&n=v`.
fn canonical_query<'p>(pairs: impl Iterator<Item = &'p (String, String)>) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    encoded.sort();
    let joined: Vec<String> = encoded.iter().map(|(k, v)| format!("{k}={v}")).collect();
    joined.join("&")
}

fn v1_string_to_sign<'p>(
    method: &str,
    params: impl Iterator<Item = &'p (String, String)>,
) -> String {
    let canonical = canonical_query(params.filter(|(k, _)| k != "Signature"));
    format!("{method}&%2F&{}", percent_encode(&canonical))
}

fn v1_mac(secret: &str, string_to_sign: &str) -> HmacSha1 {
    let mut mac = HmacSha1::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    mac
}

/// Signed headers' values, trimmed; repeated headers joined by `,` in sorted order as the SDK does.
fn header_value(headers: &[(String, String)], name: &str) -> Option<String> {
    let mut values: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values.join(","))
}

/// `name:value\n` for each signed header, in the order given.
fn v3_canonical_headers(headers: &[(String, String)], names: &[&str]) -> Result<String, SignError> {
    let mut out = String::new();
    for name in names {
        let value = header_value(headers, name)
            .ok_or_else(|| SignError::MissingParameter { name: clip(name) })?;
        out.push_str(&format!("{name}:{value}\n"));
    }
    Ok(out)
}

fn v3_canonical_request(
    method: &str,
    path: &str,
    query: &[(String, String)],
    canonical_headers: &str,
    signed_headers: &str,
    payload_hash: &str,
) -> String {
    let path = if path.is_empty() { "/" } else { path };
    format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        canonical_query(query.iter())
    )
}

fn v3_string_to_sign(canonical_request: &str) -> String {
    format!(
        "{V3_ALGORITHM}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

fn v3_mac(secret: &str, string_to_sign: &str) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    mac
}

/// Adds AccessKeyId, SignatureMethod=HMAC-SHA1, SignatureVersion=1.0, SignatureNonce, Timestamp
/// (format YYYY-MM-DDThh:mm:ssZ) and finally Signature to `params`. Any of these already present
/// are replaced, since a duplicate would make the server reject the request.
pub fn sign_v1(
    method: &str,
    params: &mut Vec<(String, String)>,
    key_id: &str,
    secret: &str,
    nonce: &str,
    timestamp: &str,
) {
    const ADDED: [&str; 7] = [
        "AccessKeyId",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
        "TimeStamp",
        "Signature",
    ];
    params.retain(|(k, _)| !ADDED.contains(&k.as_str()));
    for (k, v) in [
        ("AccessKeyId", key_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Timestamp", timestamp),
    ] {
        params.push((k.to_string(), v.to_string()));
    }
    let string_to_sign = v1_string_to_sign(method, params.iter());
    let signature = BASE64.encode(v1_mac(secret, &string_to_sign).finalize().into_bytes());
    params.push(("Signature".to_string(), signature));
}

/// Adds x-acs-action, x-acs-version, x-acs-date, x-acs-signature-nonce, x-acs-content-sha256 and
/// authorization headers as spec §1.3a describes (replacing any already present), signing over
/// every header whose name is `host`, `content-type` or starts with `x-acs-` (the SDK's rule).
#[allow(clippy::too_many_arguments)] // the signature is fixed by the callers' contract
pub fn sign_v3(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    action: &str,
    version: &str,
    key_id: &str,
    secret: &str,
    nonce: &str,
    date: &str,
) {
    const ADDED: [&str; 6] = [
        "x-acs-action",
        "x-acs-version",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
        "authorization",
    ];
    headers.retain(|(k, _)| !ADDED.iter().any(|a| k.eq_ignore_ascii_case(a)));
    let payload_hash = hex::encode(Sha256::digest(body));
    for (k, v) in [
        ("x-acs-action", action),
        ("x-acs-version", version),
        ("x-acs-date", date),
        ("x-acs-signature-nonce", nonce),
        ("x-acs-content-sha256", &payload_hash),
    ] {
        headers.push((k.to_string(), v.to_string()));
    }
    let mut names: Vec<String> = headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .filter(|k| k == "host" || k == "content-type" || k.starts_with("x-acs-"))
        .collect();
    names.sort();
    names.dedup();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let signed_headers = names.join(";");
    // Every name was taken from `headers`, so no lookup can miss.
    let canonical_headers = v3_canonical_headers(headers, &names).unwrap_or_default();
    let canonical_request = v3_canonical_request(
        method,
        path,
        query,
        &canonical_headers,
        &signed_headers,
        &payload_hash,
    );
    let signature = hex::encode(
        v3_mac(secret, &v3_string_to_sign(&canonical_request))
            .finalize()
            .into_bytes(),
    );
    headers.push((
        "authorization".to_string(),
        format!("{V3_ALGORITHM} Credential={key_id},SignedHeaders={signed_headers},Signature={signature}"),
    ));
}

/// YYYY-MM-DDThh:mm:ssZ in UTC.
pub fn format_timestamp(t: SystemTime) -> String {
    super::utc::iso8601(unix_seconds(t))
}

/// Seconds since the epoch, negative before it, saturating far outside any real clock.
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Strict `YYYY-MM-DDThh:mm:ssZ`, as every SDK sends it; anything else is refused rather than guessed.
fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        b.get(from..to)?.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    Some(
        super::utc::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second,
    )
}

fn check_timestamp(value: &str, now: i64) -> Result<(), SignError> {
    let t = parse_timestamp(value).ok_or_else(|| SignError::BadTimestamp {
        value: clip(value),
        reason: "not YYYY-MM-DDThh:mm:ssZ",
    })?;
    if t.abs_diff(now) > SKEW_SECS {
        return Err(SignError::BadTimestamp {
            value: clip(value),
            reason: "more than 15 minutes away from the server clock",
        });
    }
    Ok(())
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Hash of (AccessKeyId, nonce): fixed-size entries keep the cache's memory independent of how
/// long the nonces are, and the length prefix keeps ("ab","c") apart from ("a","bc").
fn nonce_key(access_key_id: &str, nonce: &str) -> [u8; 16] {
    let mut hasher = Sha256::new();
    hasher.update((access_key_id.len() as u64).to_le_bytes());
    hasher.update(access_key_id.as_bytes());
    hasher.update(nonce.as_bytes());
    let digest = hasher.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Nonces seen within the retention period, oldest first in `order`.
struct NonceStore {
    seen: HashSet<[u8; 16]>,
    order: VecDeque<([u8; 16], i64)>,
    retention: i64,
    cap: usize,
}

impl NonceStore {
    fn new(retention: i64, cap: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            retention,
            cap,
        }
    }

    /// Records `key` and returns true, or returns false if it is already recorded.
    fn insert(&mut self, key: [u8; 16], now: i64) -> bool {
        while let Some(&(old, at)) = self.order.front() {
            if now.saturating_sub(at) <= self.retention {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if self.seen.contains(&key) {
            return false;
        }
        // Past the cap the oldest entry goes first: a replay of it would have to arrive late in
        // its window, and only after this many fresh signed requests.
        if self.seen.len() >= self.cap {
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key);
        self.order.push_back((key, now));
        true
    }
}

fn clip(s: &str) -> String {
    s.chars().take(ERROR_TEXT_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn at(timestamp: &str) -> SystemTime {
        let secs = parse_timestamp(timestamp).expect("valid test timestamp");
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"))
    }

    fn verifier() -> Verifier {
        Verifier::new(AccessKeys::from_pairs([
            ("testid".to_string(), "testsecret".to_string()),
            ("other".to_string(), "othersecret".to_string()),
        ]))
    }

    fn get<'a>(query: &'a [(String, String)]) -> Request<'a> {
        Request {
            method: "GET",
            path: "/",
            query,
            form: &[],
            headers: &[],
            body: b"",
        }
    }

    fn message_of(result: Result<Verified, SignError>) -> String {
        match result {
            Ok(v) => panic!("unexpectedly verified: {v:?}"),
            Err(e) => e.message(),
        }
    }

    const NOW: &str = "2026-11-23T18:00:00Z";

    // ---- spec §1.3 test vector ----

    fn vector_params() -> Vec<(String, String)> {
        pairs(&[
            ("Format", "JSON"),
            ("RegionId", "cn-hangzhou"),
            ("Version", "2014-05-15"),
            ("LoadBalancerId", "lb-bp1of5kr4md52rbv9q7jd"),
            ("Action", "DescribeLoadBalancerAttribute"),
        ])
    }

    #[test]
    fn v1_spec_test_vector() {
        let mut params = vector_params();
        sign_v1(
            "GET",
            &mut params,
            "testid",
            "testsecret",
            "527030809",
            "2017-08-22T10:06:13Z",
        );
        assert_eq!(
            v1_string_to_sign("GET", params.iter()),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeLoadBalancerAttribute%26Format%3DJSON%26LoadBalancerId%3Dlb-bp1of5kr4md52rbv9q7jd%26RegionId%3Dcn-hangzhou%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D527030809%26SignatureVersion%3D1.0%26Timestamp%3D2017-08-22T10%253A06%253A13Z%26Version%3D2014-05-15"
        );
        assert_eq!(
            params.last(),
            Some(&(
                "Signature".to_string(),
                "gXVOzkP+OBER4pHGKpCkBxg8gIk=".to_string()
            ))
        );
        assert_eq!(
            percent_encode("gXVOzkP+OBER4pHGKpCkBxg8gIk="),
            "gXVOzkP%2BOBER4pHGKpCkBxg8gIk%3D"
        );
        let verified = verifier()
            .verify(&get(&params), at("2017-08-22T10:06:13Z"))
            .expect("spec vector verifies");
        assert_eq!(
            verified,
            Verified {
                access_key_id: "testid".to_string(),
                scheme: Scheme::V1
            }
        );
    }

    #[test]
    fn v1_accepts_documented_spelling_variants() {
        // S4's first example: `Hmac-SHA1` and the `TimeStamp` key.
        let mut params = vector_params();
        params.extend(pairs(&[
            ("AccessKeyId", "testid"),
            ("SignatureMethod", "Hmac-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", "variant-1"),
            ("TimeStamp", NOW),
        ]));
        let signature = BASE64.encode(
            v1_mac("testsecret", &v1_string_to_sign("GET", params.iter()))
                .finalize()
                .into_bytes(),
        );
        params.push(("Signature".to_string(), signature));
        assert!(verifier().verify(&get(&params), at(NOW)).is_ok());
    }

    #[test]
    fn percent_encoding_follows_rfc3986() {
        assert_eq!(percent_encode("aZ09-_.~"), "aZ09-_.~");
        assert_eq!(percent_encode("a b*+/=&%"), "a%20b%2A%2B%2F%3D%26%25");
        assert_eq!(percent_encode("é负"), "%C3%A9%E8%B4%9F");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn timestamps_format_and_parse() {
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(
            format_timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(parse_timestamp("2017-08-22T10:06:13Z"), Some(1_503_396_373));
        // Every day over several centuries, including the 1900/2000/2100 leap rules.
        let mut day = -25_000i64;
        while day < 60_000 {
            let secs = day * 86_400 + 45_296;
            let t = if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            };
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(secs));
            day += 1;
        }
        for bad in [
            "",
            "2017-08-22T10:06:13",
            "2017-08-22 10:06:13Z",
            "2017-08-22t10:06:13Z",
            "2017-02-29T00:00:00Z",
            "2017-13-01T00:00:00Z",
            "2017-00-01T00:00:00Z",
            "2017-08-00T00:00:00Z",
            "2017-08-22T24:00:00Z",
            "2017-08-22T10:60:00Z",
            "2017-08-22T10:06:60Z",
            "+017-08-22T10:06:13Z",
            "2017-08-22T10:06:13.000Z",
            "2017-08-2２T10:06:1Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Some(951_782_400));
    }

    // ---- V3 vector from v3_vector.py ----

    const PY_CANONICAL_REQUEST: &str = "POST\n/\nBackendServers=%5B%7B%22ServerId%22%3A%2210.0.0.1%22%2C%22Weight%22%3A%22100%22%7D%5D&Description=a%20b~c%2Ad%2Fe&LoadBalancerId=lb-bp1of5kr4md52rbv9q7jd&LoadBalancerName=%E8%B4%9F%E8%BD%BD%E5%9D%87%E8%A1%A1-1&RegionId=cn-hangzhou&Tags=\ncontent-type:application/x-www-form-urlencoded\nhost:slb.example.internal\nx-acs-action:AddBackendServers\nx-acs-content-sha256:c0b51b57ea1ea969048cc8f8c2ccc35b05b1d1edab8ef760de8293565eeb476a\nx-acs-date:2026-11-23T18:00:00Z\nx-acs-signature-nonce:3f2c9a7e1b5d4c6a8e0f2a4b6c8d0e1f\nx-acs-version:2014-05-15\n\ncontent-type;host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\nc0b51b57ea1ea969048cc8f8c2ccc35b05b1d1edab8ef760de8293565eeb476a";
    const PY_STRING_TO_SIGN: &str =
        "ACS3-HMAC-SHA256\n4e184d1ab50b2ac8849693a1f6dffe5b65e30d654e6fc02eedead2278c84d023";
    const PY_AUTHORIZATION: &str = "ACS3-HMAC-SHA256 Credential=v3-test-id,SignedHeaders=content-type;host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=07ce1a9f708308a99e9b38c2fb0bccd20cfca7d3a6199807a0e17cc436398be5";
    const PY_BODY: &[u8] = b"Comment=hello+world";

    fn py_query() -> Vec<(String, String)> {
        pairs(&[
            ("RegionId", "cn-hangzhou"),
            ("LoadBalancerId", "lb-bp1of5kr4md52rbv9q7jd"),
            (
                "BackendServers",
                r#"[{"ServerId":"10.0.0.1","Weight":"100"}]"#,
            ),
            ("Description", "a b~c*d/e"),
            ("LoadBalancerName", "负载均衡-1"),
            ("Tags", ""),
        ])
    }

    fn py_base_headers() -> Vec<(String, String)> {
        pairs(&[
            ("host", "slb.example.internal"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
            ("user-agent", "AlibabaCloud (test) TeaDSL/1"),
        ])
    }

    fn py_signed(headers: &mut Vec<(String, String)>) {
        sign_v3(
            "POST",
            "/",
            &py_query(),
            headers,
            PY_BODY,
            "AddBackendServers",
            "2014-05-15",
            "v3-test-id",
            "v3-test-secret",
            "3f2c9a7e1b5d4c6a8e0f2a4b6c8d0e1f",
            NOW,
        );
    }

    fn v3_verifier() -> Verifier {
        Verifier::new(AccessKeys::from_pairs([(
            "v3-test-id".to_string(),
            "v3-test-secret".to_string(),
        )]))
    }

    #[test]
    fn v3_matches_independent_python_vector() {
        let mut headers = py_base_headers();
        py_signed(&mut headers);
        let names = [
            "content-type",
            "host",
            "x-acs-action",
            "x-acs-content-sha256",
            "x-acs-date",
            "x-acs-signature-nonce",
            "x-acs-version",
        ];
        let canonical = v3_canonical_request(
            "POST",
            "/",
            &py_query(),
            &v3_canonical_headers(&headers, &names).expect("all present"),
            &names.join(";"),
            &hex::encode(Sha256::digest(PY_BODY)),
        );
        assert_eq!(canonical, PY_CANONICAL_REQUEST);
        assert_eq!(v3_string_to_sign(&canonical), PY_STRING_TO_SIGN);
        assert_eq!(
            header_value(&headers, "authorization").as_deref(),
            Some(PY_AUTHORIZATION)
        );

        // The Python-built header set, verified without going through sign_v3.
        let mut from_python = py_base_headers();
        from_python.extend(pairs(&[
            ("x-acs-action", "AddBackendServers"),
            ("x-acs-version", "2014-05-15"),
            ("x-acs-date", NOW),
            ("x-acs-signature-nonce", "3f2c9a7e1b5d4c6a8e0f2a4b6c8d0e1f"),
            (
                "x-acs-content-sha256",
                "c0b51b57ea1ea969048cc8f8c2ccc35b05b1d1edab8ef760de8293565eeb476a",
            ),
            ("authorization", PY_AUTHORIZATION),
        ]));
        let query = py_query();
        let form = pairs(&[("Comment", "hello world")]);
        let req = Request {
            method: "POST",
            path: "/",
            query: &query,
            form: &form,
            headers: &from_python,
            body: PY_BODY,
        };
        let verified = v3_verifier().verify(&req, at(NOW)).expect("python vector");
        assert_eq!(verified.scheme, Scheme::V3);
        assert_eq!(verified.access_key_id, "v3-test-id");
    }

    // ---- round trips ----

    fn v1_request(method: &str, nonce: &str, timestamp: &str) -> Vec<(String, String)> {
        let mut params = pairs(&[
            ("Action", "DescribeLoadBalancers"),
            ("Version", "2014-05-15"),
            ("Format", "JSON"),
            ("LoadBalancerName", "a b*~/&=负载"),
        ]);
        sign_v1(
            method,
            &mut params,
            "testid",
            "testsecret",
            nonce,
            timestamp,
        );
        params
    }

    #[test]
    fn v1_round_trip_get_and_post_form() {
        let v = verifier();
        let params = v1_request("GET", "n-get", NOW);
        assert_eq!(
            v.verify(&get(&params), at(NOW)).expect("GET").scheme,
            Scheme::V1
        );

        // POST: the SDK's v2 mode sends everything in the body; split some into the query too.
        let params = v1_request("POST", "n-post", NOW);
        let (query, form) = params.split_at(2);
        let req = Request {
            method: "POST",
            path: "/",
            query,
            form,
            headers: &pairs(&[("content-type", "application/x-www-form-urlencoded")]),
            body: b"ignored by V1",
        };
        assert!(v.verify(&req, at(NOW)).is_ok());
        // The method is part of what is signed.
        let params = v1_request("POST", "n-post-2", NOW);
        assert_eq!(message_of(v.verify(&get(&params), at(NOW))), "Illegal sign");
    }

    fn v3_request(
        method: &str,
        query: &[(String, String)],
        body: &[u8],
        nonce: &str,
        date: &str,
    ) -> Vec<(String, String)> {
        let mut headers = pairs(&[("host", "localhost:8080"), ("accept", "application/json")]);
        if !body.is_empty() {
            headers.push((
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ));
        }
        sign_v3(
            method,
            "/",
            query,
            &mut headers,
            body,
            "DescribeLoadBalancers",
            "2014-05-15",
            "testid",
            "testsecret",
            nonce,
            date,
        );
        headers
    }

    fn v3_req<'a>(
        method: &'a str,
        query: &'a [(String, String)],
        headers: &'a [(String, String)],
        body: &'a [u8],
    ) -> Request<'a> {
        Request {
            method,
            path: "/",
            query,
            form: &[],
            headers,
            body,
        }
    }

    #[test]
    fn v3_round_trip_get_and_post() {
        let v = verifier();
        let query = pairs(&[("RegionId", "cn-hangzhou"), ("PageSize", "50")]);
        let headers = v3_request("GET", &query, b"", "v3-get", NOW);
        let verified = v
            .verify(&v3_req("GET", &query, &headers, b""), at(NOW))
            .expect("GET");
        assert_eq!(
            verified,
            Verified {
                access_key_id: "testid".to_string(),
                scheme: Scheme::V3
            }
        );

        let body = b"LoadBalancerName=x&RegionId=cn-hangzhou";
        let headers = v3_request("POST", &query, body, "v3-post", NOW);
        assert!(v
            .verify(&v3_req("POST", &query, &headers, body), at(NOW))
            .is_ok());

        // Headers may arrive in any order and sign_v3 replaces stale x-acs-* values.
        let mut headers = v3_request("POST", &query, b"", "stale", NOW);
        headers.reverse();
        sign_v3(
            "POST",
            "/",
            &query,
            &mut headers,
            b"",
            "DescribeLoadBalancers",
            "2014-05-15",
            "testid",
            "testsecret",
            "v3-resigned",
            NOW,
        );
        assert!(v
            .verify(&v3_req("POST", &query, &headers, b""), at(NOW))
            .is_ok());
    }

    // ---- error classes ----

    #[test]
    fn wrong_secret_unknown_key_and_tampering_are_rejected() {
        let v = verifier();
        let mut params = vector_params();
        sign_v1("GET", &mut params, "testid", "not-the-secret", "n1", NOW);
        assert_eq!(message_of(v.verify(&get(&params), at(NOW))), "Illegal sign");

        let mut params = vector_params();
        sign_v1("GET", &mut params, "nobody", "testsecret", "n2", NOW);
        let err = v.verify(&get(&params), at(NOW)).unwrap_err();
        assert_eq!(
            (err.code(), err.http_status(), err.message().as_str()),
            ("InternalError", 400, "Illegal user")
        );

        let mut params = v1_request("GET", "n3", NOW);
        params[0].1 = "DeleteLoadBalancer".to_string();
        assert_eq!(message_of(v.verify(&get(&params), at(NOW))), "Illegal sign");

        let query = pairs(&[("LoadBalancerId", "lb-1")]);
        let headers = v3_request("POST", &query, b"", "n4", NOW);
        let tampered = pairs(&[("LoadBalancerId", "lb-2")]);
        assert_eq!(
            message_of(v.verify(&v3_req("POST", &tampered, &headers, b""), at(NOW))),
            "Illegal sign"
        );

        let mut headers = v3_request("POST", &query, b"", "n5", NOW);
        for (k, value) in headers.iter_mut() {
            if k == "x-acs-action" {
                *value = "DeleteLoadBalancer".to_string();
            }
        }
        assert_eq!(
            message_of(v.verify(&v3_req("POST", &query, &headers, b""), at(NOW))),
            "Illegal sign"
        );

        let mut headers = v3_request("POST", &query, b"", "n6", NOW);
        for (k, value) in headers.iter_mut() {
            if k == "authorization" {
                *value = value.replace("Credential=testid", "Credential=ghost");
            }
        }
        assert_eq!(
            message_of(v.verify(&v3_req("POST", &query, &headers, b""), at(NOW))),
            "Illegal user"
        );
    }

    /// Signs over exactly `names` (which need not follow the SDK's rule).
    fn v3_authorization(headers: &[(String, String)], names: &[&str], body: &[u8]) -> String {
        let canonical = v3_canonical_request(
            "POST",
            "/",
            &[],
            &v3_canonical_headers(headers, names).expect("present"),
            &names.join(";"),
            &hex::encode(Sha256::digest(body)),
        );
        let signature = hex::encode(
            v3_mac("testsecret", &v3_string_to_sign(&canonical))
                .finalize()
                .into_bytes(),
        );
        format!(
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders={},Signature={signature}",
            names.join(";")
        )
    }

    #[test]
    fn v3_required_headers_must_be_present_and_signed() {
        let v = verifier();
        let mut headers = pairs(&[
            ("x-acs-date", NOW),
            ("x-acs-signature-nonce", "unsigned-date"),
            ("x-acs-content-sha256", &hex::encode(Sha256::digest(b""))),
        ]);
        let names = ["x-acs-content-sha256", "x-acs-signature-nonce"];
        headers.push((
            "authorization".to_string(),
            v3_authorization(&headers, &names, b""),
        ));
        let err = v
            .verify(&v3_req("POST", &[], &headers, b""), at(NOW))
            .unwrap_err();
        assert_eq!(err.message(), "Illegal sign");
        assert!(err.to_string().contains("x-acs-date"), "{err}");

        // Once the date is signed the same request passes: the date was the only problem.
        let names = [
            "x-acs-content-sha256",
            "x-acs-date",
            "x-acs-signature-nonce",
        ];
        headers.pop();
        headers.push((
            "authorization".to_string(),
            v3_authorization(&headers, &names, b""),
        ));
        assert!(v
            .verify(&v3_req("POST", &[], &headers, b""), at(NOW))
            .is_ok());

        for missing in [
            "x-acs-date",
            "x-acs-signature-nonce",
            "x-acs-content-sha256",
        ] {
            let mut headers = v3_request("POST", &[], b"", "missing", NOW);
            headers.retain(|(k, _)| k != missing);
            let err = v
                .verify(&v3_req("POST", &[], &headers, b""), at(NOW))
                .unwrap_err();
            assert_eq!(err.code(), "MissingParameter");
            assert_eq!(
                err.message(),
                format!("The input parameter {missing} that is mandatory for processing this request is not supplied.")
            );
        }

        // A header listed in SignedHeaders but absent from the request.
        let mut headers = v3_request("POST", &[], b"", "listed-absent", NOW);
        headers.retain(|(k, _)| k != "host");
        assert_eq!(
            message_of(v.verify(&v3_req("POST", &[], &headers, b""), at(NOW))),
            "The input parameter host that is mandatory for processing this request is not supplied."
        );
    }

    #[test]
    fn v1_missing_and_unsupported_parameters() {
        let v = verifier();
        for name in [
            "AccessKeyId",
            "Signature",
            "SignatureMethod",
            "SignatureVersion",
            "SignatureNonce",
            "Timestamp",
        ] {
            let mut params = v1_request("GET", "m", NOW);
            params.retain(|(k, _)| k != name);
            let err = v.verify(&get(&params), at(NOW)).unwrap_err();
            assert_eq!((err.code(), err.http_status()), ("MissingParameter", 400));
            assert_eq!(
                err.message(),
                format!("The input parameter {name} that is mandatory for processing this request is not supplied.")
            );
            // Present but empty counts as missing.
            let mut params = v1_request("GET", "m", NOW);
            for (k, value) in params.iter_mut() {
                if k == name {
                    value.clear();
                }
            }
            assert_eq!(
                v.verify(&get(&params), at(NOW)).unwrap_err().code(),
                "MissingParameter"
            );
        }
        assert_eq!(
            message_of(v.verify(&get(&[]), at(NOW))),
            "The input parameter AccessKeyId that is mandatory for processing this request is not supplied."
        );

        for (name, value) in [
            ("SignatureMethod", "HMAC-SHA256"),
            ("SignatureVersion", "2.0"),
        ] {
            let mut params = v1_request("GET", "t", NOW);
            for (k, val) in params.iter_mut() {
                if k == name {
                    *val = value.to_string();
                }
            }
            assert_eq!(
                message_of(v.verify(&get(&params), at(NOW))),
                "Illegal sign type"
            );
        }

        let mut params = v1_request("GET", "b64", NOW);
        params.last_mut().expect("signature").1 = "not base64!".to_string();
        assert_eq!(message_of(v.verify(&get(&params), at(NOW))), "Illegal sign");
    }

    #[test]
    fn timestamps_outside_fifteen_minutes_are_rejected() {
        let v = verifier();
        let now = at(NOW);
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let cases = [
            (now + minutes(14), true),
            (now - minutes(14), true),
            (now + minutes(15), true),
            (now + minutes(16), false),
            (now - minutes(16), false),
        ];
        for (i, (ts, ok)) in cases.into_iter().enumerate() {
            let timestamp = format_timestamp(ts);
            let params = v1_request("GET", &format!("skew-v1-{i}"), &timestamp);
            let result = v.verify(&get(&params), now);
            assert_eq!(result.is_ok(), ok, "V1 {timestamp}");
            if !ok {
                assert_eq!(message_of(result), "Illegal timestamp");
            }
            let headers = v3_request("GET", &[], b"", &format!("skew-v3-{i}"), &timestamp);
            let result = v.verify(&v3_req("GET", &[], &headers, b""), now);
            assert_eq!(result.is_ok(), ok, "V3 {timestamp}");
            if !ok {
                assert_eq!(message_of(result), "Illegal timestamp");
            }
        }
        for bad in [
            "yesterday",
            "2026-11-23T18:00:00",
            "2026-11-23T18:00:00+08:00",
        ] {
            let params = v1_request("GET", bad, bad);
            assert_eq!(
                message_of(v.verify(&get(&params), now)),
                "Illegal timestamp"
            );
        }
    }

    #[test]
    fn replayed_nonce_is_rejected_and_new_nonce_passes() {
        let v = verifier();
        let params = v1_request("GET", "once", NOW);
        assert!(v.verify(&get(&params), at(NOW)).is_ok());
        let err = v.verify(&get(&params), at(NOW)).unwrap_err();
        assert_eq!(
            (err.code(), err.http_status(), err.message().as_str()),
            (
                "ProcessingSameRequest",
                400,
                "The same request is being processed. Please try later."
            )
        );
        // The nonce is shared across schemes for the same key…
        let headers = v3_request("GET", &[], b"", "once", NOW);
        assert_eq!(
            v.verify(&v3_req("GET", &[], &headers, b""), at(NOW))
                .unwrap_err()
                .code(),
            "ProcessingSameRequest"
        );
        // …but not across keys.
        let mut other = vector_params();
        sign_v1("GET", &mut other, "other", "othersecret", "once", NOW);
        assert!(v.verify(&get(&other), at(NOW)).is_ok());
        let params = v1_request("GET", "twice", NOW);
        assert!(v.verify(&get(&params), at(NOW)).is_ok());
    }

    #[test]
    fn nonce_is_not_recorded_when_the_signature_fails() {
        let v = verifier();
        let mut forged = vector_params();
        sign_v1("GET", &mut forged, "testid", "guess", "precious", NOW);
        for _ in 0..3 {
            assert_eq!(message_of(v.verify(&get(&forged), at(NOW))), "Illegal sign");
        }
        let mut stale = vector_params();
        sign_v1(
            "GET",
            &mut stale,
            "testid",
            "testsecret",
            "precious",
            "2020-01-01T00:00:00Z",
        );
        assert!(v.verify(&get(&stale), at(NOW)).is_err());
        let genuine = v1_request("GET", "precious", NOW);
        assert!(v.verify(&get(&genuine), at(NOW)).is_ok());
    }

    #[test]
    fn body_hash_mismatch_is_rejected() {
        let v = verifier();
        let headers = v3_request("POST", &[], b"Name=a", "body-1", NOW);
        assert_eq!(
            message_of(v.verify(&v3_req("POST", &[], &headers, b"Name=b"), at(NOW))),
            "Illegal sign"
        );
        // A client that re-hashes the new body still fails, because the hash is signed.
        let mut headers = v3_request("POST", &[], b"Name=a", "body-2", NOW);
        for (k, value) in headers.iter_mut() {
            if k == "x-acs-content-sha256" {
                *value = hex::encode(Sha256::digest(b"Name=b"));
            }
        }
        assert_eq!(
            message_of(v.verify(&v3_req("POST", &[], &headers, b"Name=b"), at(NOW))),
            "Illegal sign"
        );
    }

    #[test]
    fn malformed_authorization_headers() {
        let v = verifier();
        let base = v3_request("GET", &[], b"", "fmt", NOW);
        let good = header_value(&base, "authorization").expect("signed");
        let with_auth = |auth: &str| -> Vec<(String, String)> {
            let mut h: Vec<(String, String)> = base
                .iter()
                .filter(|(k, _)| k != "authorization")
                .cloned()
                .collect();
            h.push(("authorization".to_string(), auth.to_string()));
            h
        };
        let sig = "Signature=".to_string() + &"ab".repeat(32);
        let format_errors = [
            "ACS3-HMAC-SHA256".to_string(),
            "ACS3-HMAC-SHA256 ".to_string(),
            "ACS3-HMAC-SHA256 Credential".to_string(),
            "ACS3-HMAC-SHA256 Credential=testid".to_string(),
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=x-acs-date".to_string(),
            format!("ACS3-HMAC-SHA256 Credential=,SignedHeaders=x-acs-date,{sig}"),
            format!("ACS3-HMAC-SHA256 Credential=testid,Credential=testid,SignedHeaders=x-acs-date,{sig}"),
            format!("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=x-acs-date,{sig},Extra=1"),
            format!("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;;x-acs-date,{sig}"),
            format!("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=Host;x-acs-date,{sig}"),
            format!("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;host,{sig}"),
            format!("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host:x,{sig}"),
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host,Signature=xyz".to_string(),
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host,Signature=abc".to_string(),
            "ACS3-HMAC-SHA256 ,,,".to_string(),
            "ACS3-HMAC-SHA256 ===".to_string(),
        ];
        for auth in &format_errors {
            let headers = with_auth(auth);
            assert_eq!(
                message_of(v.verify(&v3_req("GET", &[], &headers, b""), at(NOW))),
                "Illegal format",
                "{auth:?}"
            );
        }
        for algorithm in [
            "ACS3-HMAC-SM3",
            "ACS3-RSA-SHA256",
            "ACS3-",
            "ACS3-HMAC-SHA256X",
        ] {
            let auth = good.replacen("ACS3-HMAC-SHA256", algorithm, 1);
            let headers = with_auth(&auth);
            assert_eq!(
                message_of(v.verify(&v3_req("GET", &[], &headers, b""), at(NOW))),
                "Illegal sign type",
                "{auth:?}"
            );
        }
        // Two Authorization headers: ambiguous.
        let mut headers = base.clone();
        headers.push(("authorization".to_string(), good.clone()));
        assert_eq!(
            message_of(v.verify(&v3_req("GET", &[], &headers, b""), at(NOW))),
            "Illegal format"
        );
        // A signature of the wrong length is simply wrong.
        let headers = with_auth(&format!(
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host,Signature={}",
            "ab".repeat(31)
        ));
        assert_eq!(
            message_of(v.verify(&v3_req("GET", &[], &headers, b""), at(NOW))),
            "Illegal sign"
        );
        // The unmodified header still works: the verifier was not disturbed.
        assert!(v
            .verify(&v3_req("GET", &[], &with_auth(&good), b""), at(NOW))
            .is_ok());
    }

    #[test]
    fn duplicated_names_do_not_panic() {
        let v = verifier();
        for name in [
            "AccessKeyId",
            "Signature",
            "SignatureNonce",
            "SignatureMethod",
        ] {
            let mut params = v1_request("GET", "dup", NOW);
            let copy = params
                .iter()
                .find(|(k, _)| k == name)
                .cloned()
                .expect("present");
            params.push(copy);
            assert_eq!(
                message_of(v.verify(&get(&params), at(NOW))),
                "Illegal format"
            );
        }
        let mut params = v1_request("GET", "dup-ts", NOW);
        params.push(("TimeStamp".to_string(), NOW.to_string()));
        assert_eq!(
            message_of(v.verify(&get(&params), at(NOW))),
            "Illegal format"
        );
        // Repeated action parameters are signed like any other pair (sorted by value).
        let mut params = pairs(&[("LoadBalancerId", "lb-2"), ("LoadBalancerId", "lb-1")]);
        sign_v1("GET", &mut params, "testid", "testsecret", "dup-ok", NOW);
        assert!(v.verify(&get(&params), at(NOW)).is_ok());
        let query = pairs(&[("Tag", "b"), ("Tag", "a"), ("Tag", "")]);
        let headers = v3_request("GET", &query, b"", "dup-v3", NOW);
        assert!(v
            .verify(&v3_req("GET", &query, &headers, b""), at(NOW))
            .is_ok());
        let mut headers = v3_request("GET", &[], b"", "dup-date", NOW);
        headers.push(("x-acs-date".to_string(), NOW.to_string()));
        assert_eq!(
            message_of(v.verify(&v3_req("GET", &[], &headers, b""), at(NOW))),
            "Illegal format"
        );
    }

    #[test]
    fn error_codes_statuses_and_messages() {
        let cases = [
            (
                SignError::MissingParameter {
                    name: "X".to_string(),
                },
                "MissingParameter",
                "The input parameter X that is mandatory for processing this request is not supplied.",
            ),
            (
                SignError::UnknownAccessKey {
                    access_key_id: "k".to_string(),
                },
                "InternalError",
                "Illegal user",
            ),
            (
                SignError::BadSignature {
                    reason: String::new(),
                },
                "InternalError",
                "Illegal sign",
            ),
            (
                SignError::UnsupportedSignatureType {
                    value: String::new(),
                },
                "InternalError",
                "Illegal sign type",
            ),
            (
                SignError::BadTimestamp {
                    value: String::new(),
                    reason: "",
                },
                "InternalError",
                "Illegal timestamp",
            ),
            (
                SignError::Malformed {
                    reason: String::new(),
                },
                "InternalError",
                "Illegal format",
            ),
            (
                SignError::Replay {
                    access_key_id: String::new(),
                    nonce: String::new(),
                },
                "ProcessingSameRequest",
                "The same request is being processed. Please try later.",
            ),
        ];
        for (err, code, message) in cases {
            assert_eq!(
                (err.code(), err.http_status(), err.message()),
                (code, 400, message.to_string())
            );
        }
    }

    #[test]
    fn nonce_store_expires_and_caps() {
        let mut store = NonceStore::new(100, 3);
        assert!(store.insert([1; 16], 0));
        assert!(!store.insert([1; 16], 100));
        assert!(store.insert([1; 16], 101));
        assert!(store.insert([2; 16], 101));
        assert!(store.insert([3; 16], 101));
        assert!(store.insert([4; 16], 101));
        assert_eq!(store.seen.len(), 3);
        // [1] was the oldest and went when [4] arrived.
        assert!(store.insert([1; 16], 101));
        assert!(!store.insert([4; 16], 101));
        // A clock that jumps back keeps entries rather than losing them.
        assert!(!store.insert([4; 16], -1_000));
        assert_eq!(store.seen.len(), store.order.len());
    }

    #[test]
    fn verifier_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
    }

    // ---- key file ----

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str, mode: u32) -> Self {
            use std::os::unix::fs::PermissionsExt;
            let path = std::env::temp_dir()
                .join(format!("slb-sign-test-{}-{name}.toml", std::process::id()));
            std::fs::write(&path, contents).expect("write temp file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("chmod temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const KEYS: &str = "[[AccessKeys]]\nAccessKeyId = \"id1\"\nAccessKeySecret = \"s1\"\n\n[[AccessKeys]]\nAccessKeyId = \"id2\"\nAccessKeySecret = \"s2\"\n";

    #[test]
    fn key_file_with_mode_0600_loads() {
        let file = TempFile::new("ok", KEYS, 0o600);
        let keys = AccessKeys::load(&file.0).expect("loads");
        assert_eq!(keys.secret("id1"), Some("s1"));
        assert_eq!(keys.secret("id2"), Some("s2"));
        assert_eq!(keys.secret("id3"), None);
        let file = TempFile::new("ro", KEYS, 0o400);
        assert!(AccessKeys::load(&file.0).is_ok());
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        for mode in [0o640, 0o604, 0o660, 0o602] {
            let file = TempFile::new(&format!("mode{mode:o}"), KEYS, mode);
            let err = AccessKeys::load(&file.0).err().expect("refused");
            assert!(
                matches!(err, KeyFileError::Permissions { mode: m, .. } if m == mode),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(&file.0.display().to_string()), "{text}");
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
        }
    }

    #[test]
    fn key_file_parse_errors_are_named_without_leaking_secrets() {
        let file = TempFile::new(
            "syntax",
            "[[AccessKeys]]\nAccessKeyId = \"id1\"\nAccessKeySecret = \"topsecret\n",
            0o600,
        );
        let err = AccessKeys::load(&file.0).err().expect("refused");
        assert!(matches!(err, KeyFileError::Parse { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&file.0.display().to_string()), "{text}");
        assert!(text.contains("line 3"), "{text}");
        assert!(!text.contains("topsecret"), "{text}");

        for (name, contents) in [
            (
                "typo",
                "[[AccessKeys]]\nAccessKeyId = \"a\"\nAccessKeySecert = \"b\"\n",
            ),
            (
                "empty",
                "[[AccessKeys]]\nAccessKeyId = \"\"\nAccessKeySecret = \"b\"\n",
            ),
            ("nothing", ""),
        ] {
            let file = TempFile::new(name, contents, 0o600);
            let err = AccessKeys::load(&file.0).err().expect("refused");
            assert!(matches!(err, KeyFileError::Parse { .. }), "{name}: {err:?}");
            assert!(err.to_string().contains(&file.0.display().to_string()));
        }
    }

    #[test]
    fn key_file_duplicate_id_is_refused() {
        let contents =
            format!("{KEYS}\n[[AccessKeys]]\nAccessKeyId = \"id1\"\nAccessKeySecret = \"s3\"\n");
        let file = TempFile::new("dup", &contents, 0o600);
        let err = AccessKeys::load(&file.0).err().expect("refused");
        assert!(
            matches!(&err, KeyFileError::Duplicate { id, .. } if id == "id1"),
            "{err:?}"
        );
        assert!(err.to_string().contains(&file.0.display().to_string()));
    }

    #[test]
    fn key_file_missing_is_an_io_error_naming_the_path() {
        let path = std::env::temp_dir().join("slb-sign-test-does-not-exist.toml");
        let err = AccessKeys::load(&path).err().expect("refused");
        assert!(matches!(err, KeyFileError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    // ---- garbage in, error out ----

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
        fn text(&mut self) -> String {
            const TOKENS: &[&str] = &[
                "",
                "a",
                "=",
                ",",
                ";",
                " ",
                "ACS3-",
                "ACS3-HMAC-SHA256 ",
                "Credential=",
                "SignedHeaders=",
                "Signature=",
                "x-acs-date",
                "host",
                "testid",
                "%",
                "%2",
                "\0",
                "é",
                "😀",
                NOW,
                "1.0",
                "HMAC-SHA1",
                "\n",
                "/",
                "&",
                "ab",
                "==",
                "+",
            ];
            (0..self.below(12)).map(|_| self.pick(TOKENS)).collect()
        }
        /// Usually one of `choices`, sometimes garbage.
        fn value(&mut self, choices: &[&str]) -> String {
            if self.below(4) == 0 {
                self.text()
            } else {
                self.pick(choices).to_string()
            }
        }
        /// Each named field usually present with a plausible value, plus a few random extras,
        /// so that requests get past the presence checks into the deeper ones.
        fn fields(&mut self, plausible: &[(&str, &[&str])]) -> Vec<(String, String)> {
            let mut out = Vec::new();
            for (name, choices) in plausible {
                for _ in 0..[1, 1, 1, 1, 1, 1, 0, 2][self.below(8)] {
                    let value = self.value(choices);
                    out.push((name.to_string(), value));
                }
            }
            for _ in 0..self.below(4) {
                let name = self.text();
                let value = self.text();
                out.push((name, value));
            }
            out
        }
    }

    #[test]
    fn random_and_garbled_requests_never_verify_or_panic() {
        let v = verifier();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let stamps: &[&str] = &[NOW, "2026-11-23T18:20:00Z", "2026-11-23T17:59:59Z"];
        let v1_fields: &[(&str, &[&str])] = &[
            ("AccessKeyId", &["testid", "other", "ghost"]),
            ("Signature", &["gXVOzkP+OBER4pHGKpCkBxg8gIk=", "AAAA", "@@"]),
            (
                "SignatureMethod",
                &["HMAC-SHA1", "hmac-sha1", "HMAC-SHA256"],
            ),
            ("SignatureVersion", &["1.0", "2.0"]),
            ("SignatureNonce", &["n1", "n2"]),
            ("Timestamp", stamps),
            ("Action", &["DescribeRegions"]),
        ];
        let hex_sig = "ab".repeat(32);
        let authorizations = [
            format!("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce,Signature={hex_sig}"),
            format!("ACS3-HMAC-SHA256 Credential=ghost,SignedHeaders=x-acs-content-sha256;x-acs-date;x-acs-signature-nonce,Signature={hex_sig}"),
            format!("ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=x-acs-date,Signature={hex_sig}"),
            "ACS3-HMAC-SM3 Credential=testid,SignedHeaders=host,Signature=00".to_string(),
            "ACS3-HMAC-SHA256 Credential=testid".to_string(),
        ];
        let authorizations: Vec<&str> = authorizations.iter().map(String::as_str).collect();
        let empty_hash = hex::encode(Sha256::digest(b""));
        let v3_fields: &[(&str, &[&str])] = &[
            ("authorization", &authorizations),
            ("host", &["localhost"]),
            ("x-acs-date", stamps),
            ("x-acs-signature-nonce", &["n1", "n2"]),
            ("x-acs-content-sha256", &[&empty_hash, "00"]),
        ];
        let mut reached = HashSet::new();
        for _ in 0..3000 {
            let params = rng.fields(v1_fields);
            let (query, form) = params.split_at(rng.below(params.len() + 1));
            let headers = if rng.below(2) == 0 {
                rng.fields(v3_fields)
            } else {
                Vec::new()
            };
            let body: Vec<u8> = (0..rng.below(3)).map(|_| rng.next() as u8).collect();
            let method = rng.value(&["GET", "POST"]);
            let path = rng.value(&["/"]);
            let req = Request {
                method: &method,
                path: &path,
                query,
                form,
                headers: &headers,
                body: &body,
            };
            match v.verify(&req, at(NOW)) {
                Ok(_) => panic!("verified garbage: {req:?}"),
                // MissingParameter messages vary by name; the code is enough.
                Err(SignError::MissingParameter { .. }) => {
                    reached.insert("MissingParameter".into())
                }
                Err(e) => reached.insert(e.message()),
            };
        }
        // Every check must have been reached, or the loop proves little.
        for expected in [
            "MissingParameter",
            "Illegal format",
            "Illegal sign type",
            "Illegal timestamp",
            "Illegal user",
            "Illegal sign",
        ] {
            assert!(
                reached.contains(expected),
                "{expected} not reached: {reached:?}"
            );
        }

        // One appended non-blank character anywhere in a signed part must break a valid request.
        let suffixes = ["x", "%", "é", "0", "=", ";", ","];
        for round in 0..1000 {
            let fresh = format!("mutant-{round}");
            let suffix = rng.pick(&suffixes);
            let mut params = v1_request("GET", &fresh, NOW);
            let i = rng.below(params.len());
            if rng.below(2) == 0 {
                params[i].0.push_str(suffix);
            } else {
                params[i].1.push_str(suffix);
            }
            assert!(v.verify(&get(&params), at(NOW)).is_err(), "{params:?}");

            let mut query = pairs(&[("RegionId", "cn-hangzhou"), ("Name", "a b")]);
            let mut body = b"k=v".to_vec();
            let mut headers = v3_request("POST", &query, &body, &fresh, NOW);
            let mut method = "POST".to_string();
            let mut path = "/".to_string();
            match rng.below(6) {
                0 => method.push_str(suffix),
                1 => path.push_str(suffix),
                2 => body.extend_from_slice(suffix.as_bytes()),
                3 => {
                    let i = rng.below(query.len());
                    query[i].1.push_str(suffix);
                }
                4 => {
                    let i = rng.below(query.len());
                    query[i].0.push_str(suffix);
                }
                _ => {
                    let signed: Vec<usize> = (0..headers.len())
                        .filter(|&i| !matches!(headers[i].0.as_str(), "accept"))
                        .collect();
                    let i = signed[rng.below(signed.len())];
                    headers[i].1.push_str(suffix);
                }
            }
            let req = Request {
                method: &method,
                path: &path,
                query: &query,
                form: &[],
                headers: &headers,
                body: &body,
            };
            assert!(v.verify(&req, at(NOW)).is_err(), "{req:?}");
        }
        // None of the above may have consumed these nonces or broken the verifier.
        let params = v1_request("GET", "mutant-0", NOW);
        assert!(v.verify(&get(&params), at(NOW)).is_ok());
    }
}
