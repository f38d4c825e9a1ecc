//! kitsnap-registry's error type. Registry answers keep the distribution spec's error
//! envelope typed; transport errors keep their sources.

use serde::Deserialize;

pub use kitsnap_core::Error as CoreError;

/// One entry of the distribution spec's error envelope (`{"errors": [...]}`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ErrorInfo {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

/// The body of an error answer, as the distribution spec defines it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ErrorEnvelope {
    #[serde(default)]
    pub errors: Vec<ErrorInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Formats, the local store, digest checks.
    #[error(transparent)]
    Core(#[from] CoreError),

    /// The registry answered with an error status.
    #[error("{method} {url}: HTTP {status}{}", summary(.errors, .body))]
    Status {
        method: String,
        url: String,
        status: u16,
        /// The spec's error envelope, when the body was one.
        errors: Vec<ErrorInfo>,
        /// The start of the body otherwise.
        body: String,
    },

    /// The request did not get an answer (connection, TLS, timeout, broken body).
    #[error("{url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// TLS was tried on a port where the registry speaks plain HTTP.
    #[error("{0}: the registry speaks plain HTTP: use --plain-http")]
    PlainHttp(String),

    /// The registry answered, but not as the protocol says it must.
    #[error("{url}: {msg}")]
    Protocol { url: String, msg: String },

    #[error("{0}: authentication required (run `kitsnap login {0}` or check the credentials)")]
    Unauthorized(String),

    /// The registry refused a chunked (PATCH) upload: the caller falls back to one PUT.
    #[error("{url}: the registry refuses chunked uploads (PATCH answered HTTP {status})")]
    ChunkedRefused { url: String, status: u16 },

    /// A streamed upload broke mid-way; it cannot be resumed (its bytes are gone), so the
    /// caller produces the blob again into a new upload.
    #[error("{url}: the streamed upload broke at byte {offset} ({why})")]
    UploadBroken {
        url: String,
        offset: u64,
        why: String,
    },

    /// The registry answered a ranged GET with the whole blob (HTTP 200): it ignores
    /// `Range`, so the caller streams the blob instead of reading it from byte 0 per range.
    #[error("{url}: the registry ignores Range (a ranged GET answered with the whole blob)")]
    RangeIgnored { url: String },

    /// An upload the registry stopped taking bytes of, or did not answer once it had them
    /// all: broken off so that it can be resumed.
    #[error("{url}: {why}")]
    Stalled { url: String, why: String },

    /// A transfer stopped for good (its consumer failed or cannot start over).
    #[error("{0}")]
    Aborted(String),

    /// The consumer of a download ([`crate::client::BlobSink`]) failed; it ends the fetch.
    #[error(transparent)]
    Sink(Box<dyn std::error::Error + Send + Sync>),

    /// A Docker credential helper could not be run or failed.
    #[error("credential helper docker-credential-{helper} {verb}: {msg}")]
    CredentialHelper {
        helper: String,
        verb: String,
        msg: String,
        #[source]
        source: Option<std::io::Error>,
    },

    /// A proxy URL or client certificate the HTTP client refuses.
    #[error("{what}")]
    ClientSetup {
        what: String,
        #[source]
        source: reqwest::Error,
    },

    /// Configuration (hosts.toml, Docker config, CA files) that cannot be used.
    #[error("{what}: {msg}")]
    Config { what: String, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn summary(errors: &[ErrorInfo], body: &str) -> String {
    let text = if errors.is_empty() {
        body.trim().to_string()
    } else {
        errors
            .iter()
            .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if text.is_empty() {
        text
    } else {
        format!(": {text}")
    }
}

impl Error {
    /// True for failures another attempt may not see (5xx, 429, 408, broken connections).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Status { status, .. } => crate::retry::retryable_status(*status),
            Error::Http { source, .. } => crate::retry::retryable_transport(source),
            Error::Stalled { .. } => true,
            _ => false,
        }
    }

    /// The distribution error codes of a `Status` answer (`BLOB_UNKNOWN`, ...).
    pub fn codes(&self) -> Vec<&str> {
        match self {
            Error::Status { errors, .. } => errors.iter().map(|e| e.code.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Core(CoreError::Io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_in_message() {
        let env: ErrorEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v9"}}]}"#,
        )
        .unwrap();
        let e = Error::Status {
            method: "GET".into(),
            url: "http://r/v2/a/manifests/v9".into(),
            status: 404,
            errors: env.errors,
            body: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "GET http://r/v2/a/manifests/v9: HTTP 404: MANIFEST_UNKNOWN manifest unknown"
        );
        assert_eq!(e.codes(), vec!["MANIFEST_UNKNOWN"]);
        assert!(!e.is_transient());
    }
}
