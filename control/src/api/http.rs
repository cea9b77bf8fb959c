//! The API as one warp filter: a request is let in (route, caller, role, the body's type and
//! declared length) before its body is read, the body read (bounded in size and time), the
//! request handed to its handler on a blocking thread, and its answer or problem written back; `/metrics` beside it, and the
//! console's pages under everything else.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt as _;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sluice_store::FieldError;
use warp::{
    Filter as _, Reply as _,
    http::{HeaderMap, Method, StatusCode, header},
    hyper::body::Bytes,
};

use super::{
    Api, Problem, SESSION_COOKIE,
    session::{Caller, Credential, session_cookie},
};

/// Largest request body.
pub const BODY_LIMIT: usize = 64 << 10;
/// Largest body of `POST /plugins` (a component, in base64).
pub const PLUGIN_BODY_LIMIT: usize = 32 << 20;
/// Largest configuration staged or imported (10,000 static routes take about 1 MiB).
pub const CONFIG_BODY_LIMIT: usize = 16 << 20;

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
                return Err(too_large(limit));
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
        .and(warp::header::headers_cloned())
        .and(warp::cookie::optional::<String>(SESSION_COOKIE))
        // The accept loop puts the client's address in the request's extensions:
        // `warp::service` does not give it to `warp::addr::remote()`.
        .and(warp::addr::remote().and(warp::ext::optional::<crate::listener::Peer>()).map(
            |direct: Option<SocketAddr>, peer: Option<crate::listener::Peer>| {
                direct.or(peer.map(|p| p.0))
            },
        ))
        .and(warp::body::stream())
        .and(with_api.clone())
        .then(
            |tail: warp::path::Tail,
             method: Method,
             query,
             headers: HeaderMap,
             cookie,
             from: Option<SocketAddr>,
             stream,
             api: Arc<Api>| async move {
                api.requests.fetch_add(1, Ordering::Relaxed);
                let req = Request {
                    method,
                    path: format!("/{}", tail.as_str()),
                    query,
                    bearer: bearer(&headers),
                    cookie,
                    csrf: headers
                        .get("x-csrf-token")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    from: from.map_or_else(|| "unknown".into(), |a| a.ip().to_string()),
                    body: Bytes::new(),
                };
                let mut response = answer(api, req, &headers, Box::pin(stream)).await;
                // Nothing the API answers is to be kept by a cache: credentials, state.
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
                response
            },
        );
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::header::headers_cloned())
        .and(with_api)
        .then(|headers: HeaderMap, api: Arc<Api>| async move {
            let known = match bearer(&headers) {
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

/// Bodies over [`BODY_LIMIT`] read at once, at most; more wait for none: 503.
pub const LARGE_BODIES: usize = 2;

/// Answers one request of `/api/v1`: lets it in or not before reading its body (route,
/// caller, role; the body's type and declared length), reads the body within a deadline,
/// then calls its handler.
async fn answer(
    api: Arc<Api>,
    req: Request,
    headers: &HeaderMap,
    stream: impl futures::Stream<Item = Result<impl warp::Buf, warp::Error>> + Unpin,
) -> warp::reply::Response {
    let declared = match content_length(headers) {
        Ok(l) => l,
        Err(p) => return p.response(),
    };
    let mut stream = stream;
    let admitting = Arc::clone(&api);
    let (admitted, mut req) =
        match tokio::task::spawn_blocking(move || (admitting.admit(&req), req)).await {
            Ok((Ok(a), req)) => (a, req),
            Ok((Err(p), _)) => return refuse(&p, declared, &mut stream).await,
            Err(e) => return Problem::internal(&e).response(),
        };
    let has_body = declared.map_or(headers.contains_key(header::TRANSFER_ENCODING), |l| l > 0);
    if has_body && !is_json(headers) {
        let p = Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "media-type",
            "the body must be JSON (Content-Type: application/json)",
        );
        return refuse(&p, declared, &mut stream).await;
    }
    let limit = admitted.spec.body_limit;
    if declared.is_some_and(|l| l > limit as u64) {
        return refuse(&too_large(limit), declared, &mut stream).await;
    }
    let _large = if has_body && limit > BODY_LIMIT {
        match LargeBody::take(&api) {
            Some(slot) => Some(slot),
            None => {
                return Problem::busy("other large uploads are being received: try again")
                    .response();
            }
        }
    } else {
        None
    };
    if has_body {
        // Time enough for the body at a slow management link's pace, not forever.
        let expected = declared.unwrap_or(limit as u64);
        let deadline = BODY_MIN_TIME + Duration::from_secs(expected / BODY_MIN_RATE);
        req.body = match tokio::time::timeout(deadline, read_body(stream, limit)).await {
            Ok(Ok(b)) => b,
            Ok(Err(p)) => return p.response(),
            Err(_) => {
                let detail = format!("the body did not arrive within {} s", deadline.as_secs());
                return Problem::new(StatusCode::REQUEST_TIMEOUT, "body-timeout", detail)
                    .response();
            }
        };
    }
    let credential = admitted.caller.as_ref().map(Caller::credential);
    let handling = Arc::clone(&api);
    let outcome = tokio::task::spawn_blocking(move || handling.dispatch(&admitted, &req))
        .await
        .unwrap_or_else(|e| Err(Problem::internal(&e)));
    respond(outcome, api, credential)
}

/// Bodies up to this size are drained when refused unread.
const DRAIN_LIMIT: u64 = 1 << 20;

/// A refusal decided before the body was read. A body of at most [`DRAIN_LIMIT`] is then read
/// and dropped as it comes (for a second at most, nothing kept), as a lingering close does: a
/// connection closed with unread data is reset, and the reset can destroy the answer before the
/// client reads it. A larger one is not read: its sender sees the connection close.
async fn refuse(
    p: &Problem,
    declared: Option<u64>,
    stream: &mut (impl futures::Stream<Item = Result<impl warp::Buf, warp::Error>> + Unpin),
) -> warp::reply::Response {
    if declared.is_some_and(|l| l > 0 && l <= DRAIN_LIMIT) {
        let drain = async { while let Some(Ok(_chunk)) = stream.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
    p.response()
}

/// Shortest time a body is given to arrive.
const BODY_MIN_TIME: Duration = Duration::from_secs(10);
/// Slowest pace a body may arrive at beyond that, bytes per second.
const BODY_MIN_RATE: u64 = 256 << 10;

/// A place among the [`LARGE_BODIES`] read at once, given back on drop.
struct LargeBody(Arc<Api>);

impl LargeBody {
    fn take(api: &Arc<Api>) -> Option<Self> {
        let n = api.large_bodies.fetch_add(1, Ordering::AcqRel);
        if n >= LARGE_BODIES {
            api.large_bodies.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(Arc::clone(api)))
    }
}

impl Drop for LargeBody {
    fn drop(&mut self) {
        self.0.large_bodies.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The secret of `Authorization: Bearer SECRET` (the scheme in any case, RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim().to_owned())
}

/// Whether the body is declared JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The declared `Content-Length`, if any.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or_else(|| {
                Problem::new(StatusCode::BAD_REQUEST, "body", "Content-Length is not a number")
            })
        })
        .transpose()
}

/// A 413 naming the limit.
fn too_large(limit: usize) -> Problem {
    Problem::fields(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over {limit} bytes"),
        vec![FieldError { field: "body".into(), message: "too large".into() }],
    )
}

fn respond(answer: Reply, api: Arc<Api>, credential: Option<Credential>) -> warp::reply::Response {
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
            // The stream ends within a tick of its credential ending (logout, a password or
            // role change, revocation, expiry).
            let events = super::metrics::counter_events(api.pin.clone()).take_while(move |_| {
                std::future::ready(credential.as_ref().is_none_or(|c| api.still_valid(c)))
            });
            warp::sse::reply(warp::sse::keep_alive().stream(events)).into_response()
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
