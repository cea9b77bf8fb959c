//! RFC 9457 problem details (`application/problem+json`): what the API answers instead of a
//! result, naming the fields at fault. Errors of the layers below (store, users and tokens,
//! dataplane, request bodies) become HTTP statuses here and nowhere else.

use serde::{Deserialize, Serialize};
use sluice_store::{FieldError, StoreError};
use warp::{
    Reply as _,
    http::{StatusCode, header},
};

use crate::auth::{AuthError, LoginError};

/// An RFC 9457 problem: what the API answers instead of a result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Problem {
    /// Kind (`urn:sluice:problem:SLUG`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short title: the status's reason.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// The fields at fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds to wait (429, 503).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl warp::reject::Reject for Problem {}

impl Problem {
    /// A problem with a status, a slug and a detail.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:sluice:problem:{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A 4xx naming fields.
    pub fn fields(status: StatusCode, detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self { errors, ..Self::new(status, "invalid-input", detail) }
    }

    /// A 422 naming one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::fields(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {message}"),
            vec![FieldError { field: field.to_owned(), message }],
        )
    }

    /// A 404.
    pub fn not_found(slug: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, slug, detail)
    }

    /// A 409: the request conflicts with the state.
    pub fn conflict(slug: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, slug, detail)
    }

    /// A 503: a part of the router the request needs does not answer.
    pub fn unavailable(slug: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, slug, detail)
    }

    /// A 503 to retry in a second: the router is doing as much of this as it will at once.
    pub fn busy(detail: impl Into<String>) -> Self {
        Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", detail) }
    }

    /// A 500: a handler that panicked or could not be run.
    pub fn internal(e: &dyn std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }

    /// A 401.
    pub fn unauthenticated(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    /// A request body that did not parse as `T`: 400 for what is not JSON, 422 naming the field
    /// at fault.
    pub fn of_body(e: &serde_path_to_error::Error<serde_json::Error>) -> Self {
        let detail = format!("the body: {}", e.inner());
        if e.inner().is_syntax() || e.inner().is_eof() {
            return Self::fields(
                StatusCode::BAD_REQUEST,
                detail,
                vec![FieldError { field: "body".into(), message: "malformed JSON".into() }],
            );
        }
        // The path of the value that failed (an unknown field's own); a missing field is
        // named only in serde's message.
        let msg = e.inner().to_string();
        let path = e.path().to_string();
        let field = if path == "." {
            msg.split('`').nth(1).filter(|_| msg.contains("field")).unwrap_or("body").to_owned()
        } else {
            path
        };
        Self::fields(
            StatusCode::UNPROCESSABLE_ENTITY,
            detail,
            vec![FieldError { field, message: msg }],
        )
    }

    /// A store's refusal of a configuration changed in one item (a route, an interface): the
    /// fields are named within the item, not the configuration's list.
    pub fn of_item(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(errors) => Self::fields(
                StatusCode::UNPROCESSABLE_ENTITY,
                errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>().join("; "),
                errors
                    .into_iter()
                    .map(|e| FieldError {
                        field: e.field.rsplit('.').next().unwrap_or(&e.field).to_owned(),
                        message: e.message,
                    })
                    .collect(),
            ),
            e => e.into(),
        }
    }

    /// The HTTP response: this problem as `application/problem+json`, with `Retry-After` when
    /// throttled.
    pub fn response(&self) -> warp::reply::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = warp::reply::with_status(warp::reply::json(self), status).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after
            && let Ok(v) = header::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        let detail = e.to_string();
        match e {
            StoreError::Invalid(errors) => {
                Self::fields(StatusCode::UNPROCESSABLE_ENTITY, detail, errors)
            }
            StoreError::Parse(m) => Self::field("body", m),
            StoreError::NoRevision(id) => {
                Self::not_found("no-revision", format!("no revision {id}"))
            }
            StoreError::PendingConfirm(_) => Self::conflict("pending-confirm", detail),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store", detail),
        }
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        let detail = e.to_string();
        match e {
            AuthError::InvalidUser(errors) => {
                Self::fields(StatusCode::UNPROCESSABLE_ENTITY, detail, errors)
            }
            AuthError::Invalid { field, message } => Self::field(field, message),
            AuthError::UserExists(_) => Self::conflict("exists", detail),
            AuthError::NoUser(_) => Self::not_found("no-user", detail),
            AuthError::DeleteSelf => Self::conflict("self", detail),
            AuthError::LastAdmin(_) => Self::conflict("last-admin", detail),
            AuthError::TokenRefused(_) => Self::new(StatusCode::FORBIDDEN, "token-scope", detail),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<LoginError> for Problem {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::Busy => Self::busy(e.to_string()),
            LoginError::Store(e) => e.into(),
        }
    }
}

impl From<sluice_dataplane::DataplaneError> for Problem {
    fn from(e: sluice_dataplane::DataplaneError) -> Self {
        Self::unavailable("dataplane", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn problems_are_problem_json_with_retry_after_when_throttled() {
        let mut p = Problem::field("prefix", "host bits set");
        assert_eq!((p.status, p.kind.as_str()), (422, "urn:sluice:problem:invalid-input"));
        p.retry_after = Some(8);
        let r = p.response();
        assert_eq!(r.status(), 422);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(r.headers()[header::RETRY_AFTER], "8");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["errors"], json!([{"field": "prefix", "message": "host bits set"}]));
        assert_eq!(v["title"], "Unprocessable Entity");
        assert!(v.get("retry_after").is_none());
        let plain = serde_json::to_value(Problem::new(StatusCode::CONFLICT, "x", "y")).unwrap();
        assert!(plain.get("errors").is_none(), "no empty errors: {plain}");
        let back: Problem = serde_json::from_value(plain).unwrap();
        assert_eq!((back.status, back.detail.as_str()), (409, "y"));
    }

    #[test]
    fn an_items_fields_are_named_within_it() {
        let e = StoreError::Invalid(vec![FieldError {
            field: "routes[3].prefix".into(),
            message: "host bits set".into(),
        }]);
        let p = Problem::of_item(e);
        assert_eq!((p.status, p.detail.as_str()), (422, "host bits set"));
        assert_eq!(p.errors[0].field, "prefix");
    }
}
