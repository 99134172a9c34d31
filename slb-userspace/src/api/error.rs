//! API errors as the client sees them: `Code`, `Message` and HTTP status (slb-api.md §1.5, §14).

use crate::config::Issue;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} ({status}): {message}")]
pub struct ApiError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status,
            message: message.into(),
        }
    }

    pub fn missing(name: &str) -> Self {
        Self::new(
            "MissingParameter",
            400,
            format!("The input parameter {name} that is mandatory for processing this request is not supplied."),
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidParameter", 400, message)
    }

    pub fn unsupported_action() -> Self {
        Self::new(
            "UnsupportedOperation",
            400,
            "The specified action is not supported.",
        )
    }

    pub fn lb_not_found() -> Self {
        Self::new(
            "InvalidLoadBalancerId.NotFound",
            404,
            "LoadBalancerId does not exist.",
        )
    }

    pub fn listener_not_found() -> Self {
        Self::new(
            "ListenerNotFound",
            404,
            "No Listener to the specified port of the Load Balancer.",
        )
    }

    pub fn rs_pool_not_found() -> Self {
        Self::new("InvalidParameter", 404, "RS Pool doesn't exist.")
    }

    pub fn listener_processing() -> Self {
        Self::new(
            "ListenerProcessing",
            400,
            "A previous configuration of the listener is pending,please try again later.",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("InternalError", 500, message)
    }

    /// The first validation issue, with the HTTP status the catalogue gives its code.
    pub fn from_issues(issues: &[Issue]) -> Self {
        let Some(issue) = issues.first() else {
            return Self::invalid("Specified parameter is not valid.");
        };
        Self::new(
            issue.code.as_str(),
            issue.code.http_status(),
            issue.message.clone(),
        )
    }
}
