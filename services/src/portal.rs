//! The web portal: the single-page app in `portal/` (React, built by Vite into `portal/dist`),
//! embedded in the binary at build time and served at `/` on the API's own port. The page calls
//! the same API over gRPC-Web from the same origin, so it needs no proxy, no CORS and nothing
//! else installed: the README's run command shows it.
//!
//! [`PortalLayer`] answers GET and HEAD (every gRPC call is a POST) before they reach gRPC-Web's
//! layer, which refuses other HTTP/1.1 requests. Hashed asset files are cached for
//! good; `index.html` is revalidated so a new server version's page is picked up at once. The
//! headers keep the page to its own origin (CSP), since it holds a bearer token.

use std::task::{Context, Poll};

use futures::future::Either;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tower::{Layer, Service};

/// `(url path, bytes)` of every file of `portal/dist`, written by `build.rs`.
static ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/portal_assets.rs"));

/// Shown at `/` when the binary was built without the portal's files.
const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>platformd</title>\
<p>This platformd was built without its web portal. Build the page with \
<code>scripts/build-portal</code> (needs Node.js) and then platformd again; the API itself is \
served on this port over gRPC and gRPC-Web.</p>\n";

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Serves the portal's GET and HEAD requests; passes everything else on.
#[derive(Debug, Clone, Copy, Default)]
pub struct PortalLayer;

impl<S> Layer<S> for PortalLayer {
    type Service = Portal<S>;
    fn layer(&self, inner: S) -> Portal<S> {
        Portal { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Portal<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Portal<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = request.method();
        if method == Method::GET || method == Method::HEAD {
            Either::Left(std::future::ready(Ok(respond(
                method,
                request.uri().path(),
            ))))
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}

/// Whether the portal's files are in this binary.
pub fn embedded() -> bool {
    !ASSETS.is_empty()
}

/// The embedded file for a request path.
fn asset(path: &str) -> Option<&'static [u8]> {
    ASSETS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| *bytes)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// Answers a GET or HEAD for the portal.
pub fn respond(method: &Method, path: &str) -> Response<tonic::body::Body> {
    let path = if path == "/" { "/index.html" } else { path };
    let found = match asset(path) {
        Some(bytes) => Some((bytes, path)),
        None if path == "/index.html" && !embedded() => Some((NOT_BUILT.as_bytes(), path)),
        None => None,
    };
    let Some((bytes, path)) = found else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let cache = if path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let body = if method == Method::HEAD {
        tonic::body::Body::empty()
    } else {
        tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from_static(bytes)))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    security_headers(headers);
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(http_body_util::Full::new(
        bytes::Bytes::from_static(text.as_bytes()),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    security_headers(response.headers_mut());
    response
}

fn security_headers(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_is_served_at_the_root_and_unknown_paths_are_not_found() {
        let root = respond(&Method::GET, "/");
        assert_eq!(root.status(), StatusCode::OK);
        assert_eq!(
            root.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(root.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(
            root.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|csp| csp.contains("connect-src 'self'"))
        );
        assert_eq!(
            respond(&Method::GET, "/../../etc/passwd").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::GET, "/assets/nope.js").status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn every_embedded_file_is_served_with_its_type() {
        for (path, bytes) in ASSETS {
            let response = respond(&Method::GET, path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                response.headers()[header::CONTENT_LENGTH],
                bytes.len().to_string(),
                "{path}"
            );
            if path.starts_with("/assets/") {
                assert!(
                    response.headers()[header::CACHE_CONTROL]
                        .to_str()
                        .is_ok_and(|c| c.contains("immutable"))
                );
            }
        }
    }
}
