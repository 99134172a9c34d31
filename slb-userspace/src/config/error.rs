//! Validation issues and configuration errors.
//!
//! An [`Issue`] is what the checks produce: a parameter path, the API error code the HTTP API must
//! answer with, the behaviour rule that motivates the check and a human message. The TOML front end
//! turns issues into [`Located`] errors by resolving the path to a line of the file.

use std::fmt;
use std::path::PathBuf;

/// API error codes (slb-api.md §14 and §5.4) that configuration checks can produce.
///
/// Kept as an enum so callers branch on the code, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiCode {
    InvalidParameter,
    MissingParameter,
    UnsupportedParameter,
    ListenerAlreadyExists,
    VipTooManyListeners,
    InvalidWeightMalformed,
    InvalidServerIdNotFound,
    AclNotExist,
    IpVersionConflict,
    InvalidParameterVServerGroupId,
    InvalidParameterIdleTimeout,
    InvalidParameterRequestTimeout,
    InvalidParameterHealthCheckHttpVersion,
    MissingParamHealthCheckDomain,
    ListenerForwardNotSupport,
    IpNotAvailable,
    DuplicatedAclEntry,
    /// `InvalidParameter` "RS Pool doesn't exist.", the 404 flavour (§14).
    RsPoolNotFound,
}

impl ApiCode {
    /// The code exactly as the API spells it in the `Code` field of an error response.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiCode::InvalidParameter => "InvalidParameter",
            ApiCode::MissingParameter => "MissingParameter",
            ApiCode::UnsupportedParameter => "UnsupportedParameter",
            ApiCode::ListenerAlreadyExists => "ListenerAlreadyExists",
            ApiCode::VipTooManyListeners => "VipTooManyListeners",
            ApiCode::InvalidWeightMalformed => "InvalidWeight.Malformed",
            ApiCode::InvalidServerIdNotFound => "InvalidServerId.NotFound",
            ApiCode::AclNotExist => "AclNotExist",
            ApiCode::IpVersionConflict => "IpVersionConflict",
            ApiCode::InvalidParameterVServerGroupId => "InvalidParameter.VServerGroupId",
            ApiCode::InvalidParameterIdleTimeout => "InvalidParameter.IdleTimeout",
            ApiCode::InvalidParameterRequestTimeout => "InvalidParameter.RequestTimeout",
            ApiCode::InvalidParameterHealthCheckHttpVersion => {
                "InvalidParameter.HealthCheckHttpVersion"
            }
            ApiCode::MissingParamHealthCheckDomain => "MissingParam.HealthCheckDomain",
            ApiCode::ListenerForwardNotSupport => "ListenerForwardNotSupport",
            ApiCode::IpNotAvailable => "IpNotAvailable",
            ApiCode::DuplicatedAclEntry => "Duplicated.AclEntry",
            ApiCode::RsPoolNotFound => "InvalidParameter",
        }
    }
}

impl ApiCode {
    /// HTTP status of an error response with this code (§14).
    pub fn http_status(self) -> u16 {
        match self {
            ApiCode::RsPoolNotFound => 404,
            _ => 400,
        }
    }
}

impl fmt::Display for ApiCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed check, independent of where the parameters came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Parameter path, e.g. `Scheduler` or, once prefixed, `LoadBalancers[0].Listeners[2].Scheduler`.
    pub path: String,
    pub code: ApiCode,
    /// Behaviour rule (slb-behaviour.md) or spec section the check implements; `None` for plain
    /// format errors (wrong TOML type, unknown key).
    pub rule: Option<&'static str>,
    pub message: String,
}

impl Issue {
    pub fn new(
        path: impl Into<String>,
        code: ApiCode,
        rule: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Issue {
            path: path.into(),
            code,
            rule,
            message: message.into(),
        }
    }

    /// Re-roots a relative issue under `prefix` (e.g. `Listeners[2]`).
    pub(crate) fn under(mut self, prefix: &str) -> Self {
        self.path = join(prefix, &self.path);
        self
    }
}

/// Joins a parent path and a child path segment with `.` (indices are already part of segments).
pub(crate) fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.code)?;
        if let Some(rule) = self.rule {
            write!(f, " ({rule})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// An issue placed in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub issue: Issue,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.issue
        )
    }
}

/// Everything `load`/`parse` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML at all.
    #[error("{file}:{line}:{column}: TOML syntax error: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The text is TOML but violates the format or the rules; every problem found is listed.
    #[error("{}", render(errors))]
    Invalid { errors: Vec<Located> },
}

fn render(errors: &[Located]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// 1-based line and character column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}
