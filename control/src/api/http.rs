//! The API as one warp filter: a request is read (its body bounded), handed to the router on a
//! blocking thread, and its answer or problem written back; `/metrics` beside it, and the
//! console's pages under everything else.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use futures::StreamExt as _;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sluice_dataplane::PinDir;
use sluice_store::FieldError;
use warp::{
    Filter as _, Reply as _,
    http::{Method, StatusCode, header},
    hyper::body::Bytes,
};

use super::{
    Api, Problem, SESSION_COOKIE,
    session::{Caller, session_cookie},
};

/// Largest request body.
pub const BODY_LIMIT: usize = 64 << 10;
/// Largest body of `POST /plugins` (a component, in base64).
pub const PLUGIN_BODY_LIMIT: usize = 32 << 20;

/// A request as the router sees it.
pub(super) struct Request {
    pub method: Method,
    /// The path under `/api/v1`.
    pub path: String,
    pub query: HashMap<String, String>,
    /// The secret of `Authorization: Bearer`.
    pub bearer: Option<String>,
    /// The session cookie.
    pub cookie: Option<String>,
    /// `X-CSRF-Token`.
    pub csrf: Option<String>,
    /// The remote address.
    pub from: String,
    pub body: Bytes,
}

/// What a handler answers.
pub(super) enum Answer {
    /// A JSON body with a status.
    Json(StatusCode, Value),
    /// A body of a content type.
    Text(&'static str, String),
    /// A JSON body, setting the session cookie (an empty id ends it).
    Session(Value, String),
    /// The counters, every second (server-sent events).
    Stream,
}

/// A handler's answer, or the problem it reports.
pub(super) type Reply = Result<Answer, Problem>;

/// A JSON answer, `200 OK`.
#[expect(clippy::unnecessary_wraps, reason = "handlers answer through it with `?` beside")]
pub(super) fn ok(v: impl Serialize) -> Reply {
    Ok(Answer::Json(StatusCode::OK, serde_json::to_value(v).unwrap_or(Value::Null)))
}

/// A JSON answer, `201 Created`.
#[expect(clippy::unnecessary_wraps, reason = "as `ok`")]
pub(super) fn created(v: impl Serialize) -> Reply {
    Ok(Answer::Json(StatusCode::CREATED, serde_json::to_value(v).unwrap_or(Value::Null)))
}

/// A JSON answer setting the session cookie to `id` (empty: ending the session).
#[expect(clippy::unnecessary_wraps, reason = "as `ok`")]
pub(super) fn with_session(v: impl Serialize, id: String) -> Reply {
    Ok(Answer::Session(serde_json::to_value(v).unwrap_or(Value::Null), id))
}

/// A request on its way to its handler, with its path parameters and its caller.
pub(super) struct Call<'a> {
    pub request: &'a Request,
    params: &'a [String],
    caller: Option<&'a Caller>,
}

impl<'a> Call<'a> {
    pub(super) const fn new(
        request: &'a Request,
        params: &'a [String],
        caller: Option<&'a Caller>,
    ) -> Self {
        Self { request, params, caller }
    }

    /// The path's parameter (`{name}`, `{id}`: a route has one at most).
    pub fn param(&self) -> &'a str {
        self.params.first().map_or("", String::as_str)
    }

    /// Who calls (a route that is not public has one).
    pub fn caller(&self) -> &'a Caller {
        self.caller.expect("an authenticated route")
    }

    /// The body as `T`: 400 for what is not JSON, 422 naming the field at fault.
    pub fn body<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        body(&self.request.body)
    }

    /// A parameter of the query string.
    pub fn query(&self, key: &str) -> Option<&'a str> {
        self.request.query.get(key).map(String::as_str)
    }
}

/// A body as `T`.
pub(super) fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(b);
    serde_path_to_error::deserialize(de).map_err(|e| Problem::of_body(&e))
}

/// The whole request body, refused past `limit`.
async fn read_body(
    mut stream: impl futures::Stream<Item = Result<impl warp::Buf, warp::Error>> + Unpin,
    limit: usize,
) -> Result<Bytes, Problem> {
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "body", format!("the body: {e}")))?;
        while warp::Buf::has_remaining(&chunk) {
            let part = warp::Buf::chunk(&chunk);
            if body.len() + part.len() > limit {
                return Err(Problem::fields(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {limit} bytes"),
                    vec![FieldError { field: "body".into(), message: "too large".into() }],
                ));
            }
            body.extend_from_slice(part);
            let n = part.len();
            warp::Buf::advance(&mut chunk, n);
        }
    }
    Ok(Bytes::from(body))
}

/// Every route of the API and `/metrics`, as one warp filter.
pub fn filter(
    api: &Arc<Api>,
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
+ Clone
+ use<> {
    let with_api = {
        let api = Arc::clone(api);
        warp::any().map(move || Arc::clone(&api))
    };
    let v1 = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::cookie::optional::<String>(SESSION_COOKIE))
        .and(warp::header::optional::<String>("x-csrf-token"))
        .and(warp::addr::remote())
        .and(warp::body::stream())
        .and(with_api.clone())
        .then(
            |tail: warp::path::Tail,
             method: Method,
             query,
             auth: Option<String>,
             cookie,
             csrf,
             from: Option<SocketAddr>,
             stream,
             api: Arc<Api>| async move {
                api.requests.fetch_add(1, Ordering::Relaxed);
                let limit = if method == Method::POST && tail.as_str() == "plugins" {
                    PLUGIN_BODY_LIMIT
                } else {
                    BODY_LIMIT
                };
                let body = match read_body(Box::pin(stream), limit).await {
                    Ok(b) => b,
                    Err(p) => return p.response(),
                };
                let req = Request {
                    method,
                    path: format!("/{}", tail.as_str()),
                    query,
                    bearer: auth.and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned)),
                    cookie,
                    csrf,
                    from: from.map_or_else(|| "unknown".into(), |a| a.ip().to_string()),
                    body,
                };
                let pin = api.pin.clone();
                let answer = tokio::task::spawn_blocking(move || api.handle(&req))
                    .await
                    .unwrap_or_else(|e| {
                        Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "panic", e.to_string()))
                    });
                respond(answer, pin)
            },
        );
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_api)
        .then(|auth: Option<String>, api: Arc<Api>| async move {
            let secret = auth.and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned));
            let known = match secret {
                Some(s) => tokio::task::spawn_blocking({
                    let api = Arc::clone(&api);
                    move || api.knows_token(&s)
                })
                .await
                .unwrap_or(false),
                None => false,
            };
            if !known {
                return Problem::unauthenticated(
                    "/metrics needs an API token (Authorization: Bearer)",
                )
                .response();
            }
            let text = tokio::task::spawn_blocking(move || api.metrics()).await.unwrap_or_default();
            warp::reply::with_header(text, header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .into_response()
        });
    let not_found = warp::any().map(|| {
        Problem::not_found("not-found", "no such page: the API is under /api/v1").response()
    });
    v1.or(metrics).unify().or(crate::console::filter()).unify().or(not_found).unify()
}

fn respond(answer: Reply, pin: PinDir) -> warp::reply::Response {
    match answer {
        Ok(Answer::Json(status, v)) => {
            warp::reply::with_status(warp::reply::json(&v), status).into_response()
        }
        Ok(Answer::Text(ct, text)) => {
            warp::reply::with_header(text, header::CONTENT_TYPE, ct).into_response()
        }
        Ok(Answer::Session(v, id)) => {
            warp::reply::with_header(warp::reply::json(&v), header::SET_COOKIE, session_cookie(&id))
                .into_response()
        }
        Ok(Answer::Stream) => {
            warp::sse::reply(warp::sse::keep_alive().stream(super::metrics::counter_events(pin)))
                .into_response()
        }
        Err(p) => p.response(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[test]
    fn problems_name_the_field_serde_reports() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "only parsed")]
        struct T {
            a: u32,
        }
        let p = body::<T>(&Bytes::from_static(b"{\"a\": 1, \"b\": 2}")).unwrap_err();
        assert_eq!((p.status, p.errors[0].field.as_str()), (422, "b"));
        let p = body::<T>(&Bytes::from_static(b"{\"a\": ")).unwrap_err();
        assert_eq!((p.status, p.errors[0].field.as_str()), (400, "body"));
        let p = body::<T>(&Bytes::from_static(b"{}")).unwrap_err();
        assert_eq!(p.errors[0].field, "a");
    }
}
