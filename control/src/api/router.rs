//! What [`ROUTES`] drives: finding a request's route, checking who may call it (before its
//! body is read), calling its handler and writing the audit log; and the `OpenAPI` document of the table.

use serde_json::{Value, json};
use sluice_store::Role;
use warp::http::{Method, StatusCode};

use super::{
    Access, Api, Problem, ROUTES, RouteSpec, SESSION_COOKIE,
    http::{Call, Reply, Request},
    session::Caller,
};

/// The route of `ROUTES` a request names, with its parameters.
pub(super) fn find_route(
    method: &Method,
    path: &str,
) -> Result<(&'static RouteSpec, Vec<String>), Problem> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let mut path_known = false;
    for spec in ROUTES {
        let pat: Vec<&str> = spec.path.split('/').skip(1).collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let fits = pat.iter().zip(&segs).all(|(p, s)| {
            if p.starts_with('{') {
                params.push((*s).to_owned());
                !s.is_empty()
            } else {
                p == s
            }
        });
        if !fits {
            continue;
        }
        path_known = true;
        if spec.method == method.as_str() {
            return Ok((spec, params));
        }
    }
    Err(if path_known {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method", format!("{method} {path}"))
    } else {
        Problem::not_found("not-found", format!("no route {path}"))
    })
}

/// A request let in: its route, the route's parameters, and the caller (none on a public
/// route).
pub(super) struct Admitted {
    pub spec: &'static RouteSpec,
    params: Vec<String>,
    pub caller: Option<Caller>,
}

impl Api {
    /// Lets a request in, or not, before its body is read: finds its route, authenticates the
    /// caller where the route is not public, and checks its role.
    pub(super) fn admit(&self, r: &Request) -> Result<Admitted, Problem> {
        let (spec, params) = find_route(&r.method, &r.path)?;
        let caller = match spec.access {
            Access::Public => None,
            access => {
                let c = self.caller(r).inspect_err(|p| self.count_refused(spec, p.status))?;
                if access == Access::Admin && c.role != Role::Admin {
                    let p = Problem::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!("{} {} needs an administrator", spec.method, spec.path),
                    );
                    // A change a known caller may not make is worth keeping.
                    if spec.method != "GET" {
                        let action = format!("{} /api/v1{}", spec.method, r.path);
                        self.audit(&c.who, &r.from, action, Err(&p));
                    }
                    return Err(p);
                }
                Some(c)
            }
        };
        Ok(Admitted { spec, params, caller })
    }

    /// Calls the handler of a request let in (its body read), and audits every attempt at a
    /// change by a known caller; anonymous requests refused are counted.
    pub(super) fn dispatch(&self, a: &Admitted, r: &Request) -> Reply {
        let call = Call::new(r, &a.params, a.caller.as_ref());
        let outcome = (a.spec.handler)(self, &call);
        if let (None, Err(p)) = (&a.caller, &outcome) {
            self.count_refused(a.spec, p.status);
        } else if a.spec.method != "GET" && a.spec.path != "/login" {
            // A login audits itself, naming the user it was for.
            let who = a.caller.as_ref().map_or("anonymous", |c| c.who.as_str());
            let action = format!("{} /api/v1{}", a.spec.method, r.path);
            self.audit(who, &r.from, action, outcome.as_ref().map(drop));
        }
        outcome
    }

    /// Answers one request whose body is read: [`Self::admit`], then [`Self::dispatch`].
    #[cfg(test)]
    pub(super) fn handle(&self, r: &Request) -> Reply {
        let admitted = self.admit(r)?;
        self.dispatch(&admitted, r)
    }
}

/// The `OpenAPI` 3.1 document of [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for spec in ROUTES {
        let path = format!("/api/v1{}", spec.path);
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        let params: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let security = match spec.access {
            Access::Public => json!([]),
            Access::Viewer | Access::Admin => json!([{"session": []}, {"token": []}]),
        };
        let role = match spec.access {
            Access::Public => "anyone",
            Access::Viewer => "viewer",
            Access::Admin => "admin",
        };
        entry[spec.method.to_lowercase()] = json!({
            "summary": spec.summary,
            "x-sluice-role": role,
            "parameters": params,
            "security": security,
            "responses": {
                "200": {"description": "OK"},
                "default": {"description": "A problem", "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}}
            }
        });
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Sluice", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "token": {"type": "http", "scheme": "bearer"}
            },
            "schemas": {"Problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}}}}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_with_their_parameters_and_wrong_methods_named() {
        let (spec, params) = find_route(&Method::DELETE, "/users/alice").unwrap();
        assert_eq!((spec.path, params), ("/users/{name}", vec!["alice".to_owned()]));
        let (spec, _) = find_route(&Method::GET, "/config/revisions/").unwrap();
        assert_eq!(spec.path, "/config/revisions");
        assert_eq!(find_route(&Method::PUT, "/health").unwrap_err().status, 405);
        assert_eq!(find_route(&Method::GET, "/nothing").unwrap_err().status, 404);
        assert_eq!(find_route(&Method::DELETE, "/users/").unwrap_err().status, 405);
    }

    #[test]
    fn the_openapi_document_lists_every_route_once() {
        let doc = openapi();
        let listed: usize =
            doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(listed, ROUTES.len());
        assert_eq!(doc["paths"]["/api/v1/users/{name}"]["delete"]["parameters"][0]["name"], "name");
        assert_eq!(doc["paths"]["/api/v1/health"]["get"]["security"], json!([]));
    }
}
