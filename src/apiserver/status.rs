//! API errors and their wire form, `meta.k8s.io/v1 Status`, which kubectl prints verbatim.
//!
//! Every failure a handler can produce is one [`ApiError`] variant; the HTTP code and the
//! Status `reason` come from one match, so they can never disagree.

use serde_json::{Value, json};

use super::protobuf;
use crate::datastore;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    #[error(
        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { resource: String, name: String },
    /// 409 with its own message (a pod already bound, being deleted).
    #[error("{0}")]
    ConflictWith(String),
    /// 409: a server-side apply would change fields other managers own; one cause per field
    /// (`FieldManagerConflict`), which kubectl prints with its `--force-conflicts` advice.
    #[error("{message}")]
    ApplyConflict {
        message: String,
        /// (field, "conflict with \"manager\" using apps/v1")
        causes: Vec<(String, String)>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{kind} \"{name}\" is invalid: {}", .causes.join(", "))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<String>,
    },
    /// 422 for a well-formed request whose result would break a bound (too deep, too many
    /// operations).
    #[error("{0}")]
    Unprocessable(String),
    /// 408: the client did not send its request in time.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// 403: a create in a namespace that is being deleted; the `NamespaceTerminating` cause
    /// lets clients tell it from a refusal of their rights, as in Kubernetes.
    #[error(
        "{resource} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated"
    )]
    NamespaceTerminating {
        resource: String,
        name: String,
        namespace: String,
    },
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the server could not find the requested resource")]
    UnknownPath,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("too old resource version: {requested} ({compacted})")]
    Gone { requested: i64, compacted: i64 },
    /// 503 for a reason of this server's own (a full tunnel pool, shutting down); the datastore
    /// may be fine.
    #[error("{0}")]
    Unavailable(String),
    /// 503 because the datastore cannot be reached: closes the fast-fail gate until the change
    /// feed reaches it again.
    #[error("the datastore is unavailable: {0}")]
    DatastoreUnreachable(String),
    /// 429: an eviction would break a PodDisruptionBudget (`cause` names it).
    #[error("{message}")]
    DisruptionBudget { message: String, cause: Value },
    /// 429: this client (a node, a source address) is over its own share.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

// === impl ApiError ===

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownPath => 404,
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ConflictWith(_)
            | ApiError::ApplyConflict { .. } => 409,
            ApiError::BadRequest(_) => 400,
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => 422,
            ApiError::Unauthorized => 401,
            ApiError::RequestTimeout(_) => 408,
            ApiError::Forbidden(_) | ApiError::NamespaceTerminating { .. } => 403,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::TooLarge(_) => 413,
            ApiError::Gone { .. } => 410,
            ApiError::Unavailable(_) | ApiError::DatastoreUnreachable(_) => 503,
            ApiError::TooManyRequests(_) | ApiError::DisruptionBudget { .. } => 429,
            ApiError::Internal(_) => 500,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownPath => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. }
            | ApiError::ConflictWith(_)
            | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => "Invalid",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::RequestTimeout(_) => "Timeout",
            ApiError::Forbidden(_) | ApiError::NamespaceTerminating { .. } => "Forbidden",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::Gone { .. } => "Expired",
            ApiError::Unavailable(_) | ApiError::DatastoreUnreachable(_) => "ServiceUnavailable",
            ApiError::TooManyRequests(_) | ApiError::DisruptionBudget { .. } => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// Seconds a client should wait before retrying, for errors that say so: one figure for
    /// the `Retry-After` header and the Status's `details.retryAfterSeconds`, so the two never
    /// disagree (client-go honours the header, other clients read the body).
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            ApiError::Unavailable(_)
            | ApiError::DatastoreUnreachable(_)
            | ApiError::TooManyRequests(_) => Some(1),
            _ => None,
        }
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name } => {
                Some(json!({"name": name, "kind": resource}))
            }
            ApiError::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(|c| cause(c)).collect::<Vec<_>>(),
            })),
            ApiError::Unavailable(_)
            | ApiError::DatastoreUnreachable(_)
            | ApiError::TooManyRequests(_) => {
                Some(json!({"retryAfterSeconds": self.retry_after_seconds()}))
            }
            ApiError::NamespaceTerminating {
                resource,
                name,
                namespace,
            } => Some(json!({
                "name": name,
                "kind": resource,
                "causes": [{
                    "reason": "NamespaceTerminating",
                    "message": format!("namespace {namespace} is being terminated"),
                    "field": "metadata.namespace",
                }],
            })),
            ApiError::DisruptionBudget { cause, .. } => Some(json!({"causes": [cause]})),
            ApiError::ApplyConflict { causes, .. } => Some(json!({
                "causes": causes
                    .iter()
                    .map(|(field, message)| json!({
                        "reason": "FieldManagerConflict",
                        "message": message,
                        "field": field,
                    }))
                    .collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }

    /// Maps a datastore error for the object `resource`/`name`.
    pub fn from_store(e: datastore::Error, resource: &str, name: &str) -> ApiError {
        let obj = || (resource.to_owned(), name.to_owned());
        match e {
            datastore::Error::NotFound(_) => {
                let (resource, name) = obj();
                ApiError::NotFound { resource, name }
            }
            datastore::Error::AlreadyExists(_) => {
                let (resource, name) = obj();
                ApiError::AlreadyExists { resource, name }
            }
            datastore::Error::Conflict { .. } => {
                let (resource, name) = obj();
                ApiError::Conflict { resource, name }
            }
            datastore::Error::Compacted {
                requested,
                compacted,
            } => ApiError::Gone {
                requested,
                compacted,
            },
            other if other.is_connection() => ApiError::DatastoreUnreachable(other.public_reason()),
            // The database refused this statement: the cause is in what it carried or in our
            // SQL, not in the database's health. Its text (SQL, values) stays in the log.
            other => {
                tracing::error!(error = %other, resource, name, "the datastore refused a statement");
                ApiError::Internal(format!(
                    "the datastore refused the request: {}",
                    other.public_reason()
                ))
            }
        }
    }
}

/// A `StatusCause` from `field: Kind of problem: detail`: kubectl prints an Invalid error
/// from its causes (`* spec.containers: Required value`), not from its message.
fn cause(text: &str) -> Value {
    let (field, message) = text.split_once(": ").unwrap_or(("", text));
    let reason = [
        ("Required value", "FieldValueRequired"),
        ("Invalid value", "FieldValueInvalid"),
        ("Forbidden", "FieldValueForbidden"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
    ]
    .iter()
    .find(|(prefix, _)| message.starts_with(prefix))
    .map_or("FieldValueInvalid", |(_, reason)| reason);
    json!({"reason": reason, "message": message, "field": field})
}

impl From<datastore::Error> for ApiError {
    fn from(e: datastore::Error) -> Self {
        ApiError::from_store(e, "", "")
    }
}

impl From<crate::bootstrap::join::JoinError> for ApiError {
    fn from(e: crate::bootstrap::join::JoinError) -> Self {
        use crate::bootstrap::join::JoinError as J;
        match e {
            J::Unauthorized => ApiError::Unauthorized,
            J::Forbidden(m) => ApiError::Forbidden(m),
            J::BadRequest(m) => ApiError::BadRequest(m),
            J::TooManyRequests(m) => ApiError::TooManyRequests(m),
            J::Internal(m) => ApiError::Internal(m),
            J::Datastore(e) => ApiError::from(e),
        }
    }
}

impl From<protobuf::Error> for ApiError {
    fn from(e: protobuf::Error) -> Self {
        use protobuf::Error as E;
        let message = e.to_string();
        match e {
            E::NoMagic | E::Unsupported { .. } | E::ContentEncoding(_) => {
                ApiError::UnsupportedMediaType(message)
            }
            E::Envelope(_) | E::Object { .. } => ApiError::BadRequest(message),
            E::Schema(_) => ApiError::Internal(message),
        }
    }
}
