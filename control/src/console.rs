//! The web console (`web-ui/`): a single page over the REST API, its files embedded in the
//! binary and served by the daemon's HTTPS listener at `/` (no internet, no CDN).

use warp::{
    Filter as _, Reply as _,
    http::{HeaderValue, header},
};

/// The console's files: path, content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../web-ui/app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../web-ui/style.css")),
];

const INDEX: &str = include_str!("../../web-ui/index.html");

/// What every console response carries: nothing but the router itself may be loaded, framed
/// or connected to.
fn harden(mut r: warp::reply::Response) -> warp::reply::Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    r
}

/// `/` (the page) and `/assets/NAME`.
pub fn filter()
-> impl warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let index = warp::get().and(warp::path::end()).map(|| {
        harden(
            warp::reply::with_header(INDEX, header::CONTENT_TYPE, "text/html; charset=utf-8")
                .into_response(),
        )
    });
    let asset = warp::get()
        .and(warp::path("assets"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and_then(|name: String| async move {
            match ASSETS.iter().find(|(n, _, _)| *n == name) {
                Some((_, ct, body)) => Ok(harden(
                    warp::reply::with_header(*body, header::CONTENT_TYPE, *ct).into_response(),
                )),
                None => Err(warp::reject::not_found()),
            }
        });
    index.or(asset).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_small_and_loads_only_its_own_files() {
        let total: usize = INDEX.len() + ASSETS.iter().map(|(_, _, b)| b.len()).sum::<usize>();
        assert!(total < 300 << 10, "the first load is {total} bytes");
        for (name, _, _) in ASSETS {
            assert!(INDEX.contains(&format!("/assets/{name}")), "{name} is linked");
        }
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"), "no CDN");
    }
}
