//! Which web pages may call the edge: the cross-origin policy.
//!
//! The seeds' front ends are served from their own origin (a dev server on
//! `localhost:3000`, a dashboard on another host), so a browser asks the
//! edge, by CORS, whether a page may read what it answers. Two policies:
//!
//! - **Any origin** (the default, as seed 001 runs with `CORS: *`): every
//!   response carries `Access-Control-Allow-Origin: *` and preflights are
//!   answered. No credentials (cookies) are allowed cross-origin, and none
//!   are needed: tokens travel in `?token=` or `Authorization`. WebSocket
//!   upgrades are accepted from any page.
//! - **An allow-list** (`SWITCHBOARD_ALLOWED_ORIGINS`): listed origins get
//!   their origin mirrored, with credentials allowed; any request whose
//!   `Origin` is neither listed nor the edge's own — REST, preflight,
//!   WebSocket upgrade (which CORS does not cover) or Socket.IO polling —
//!   is refused with `403` and logged with the origin. Requests without an
//!   `Origin` (curl, phones, servers) are not browsers' and pass.
//!
//! The CORS headers themselves are tower-http's [`CorsLayer`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// An allowed origin that is not `scheme://host[:port]`.
#[derive(Debug, thiserror::Error)]
#[error(
    "allowed origin {0:?} is not of the form scheme://host[:port] (e.g. http://localhost:3000)"
)]
pub struct InvalidOrigin(String);

/// Which origins may call the edge from a browser.
#[derive(Debug, Clone)]
pub enum OriginPolicy {
    Any,
    /// Only these (exact, as browsers send them: `http://localhost:3000`).
    Only(Arc<[HeaderValue]>),
}

impl OriginPolicy {
    /// The policy the `--allowed-origins` list describes (empty: any).
    pub fn from_list(origins: &[String]) -> Result<Self, InvalidOrigin> {
        let origins: Vec<HeaderValue> = origins
            .iter()
            .map(|origin| origin.trim().trim_end_matches('/'))
            .filter(|origin| !origin.is_empty())
            .map(|origin| {
                let valid = origin.split_once("://").is_some_and(|(scheme, authority)| {
                    !scheme.is_empty() && !authority.is_empty() && !authority.contains('/')
                });
                valid
                    .then(|| HeaderValue::from_str(origin).ok())
                    .flatten()
                    .ok_or_else(|| InvalidOrigin(origin.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(if origins.is_empty() {
            OriginPolicy::Any
        } else {
            OriginPolicy::Only(origins.into())
        })
    }

    /// Says once, at start, what the policy is.
    pub fn log(&self) {
        match self {
            OriginPolicy::Any => tracing::info!(
                "cross-origin: any origin may call this edge (CORS *); set SWITCHBOARD_ALLOWED_ORIGINS to narrow it"
            ),
            OriginPolicy::Only(origins) => {
                let origins: Vec<&str> = origins
                    .iter()
                    .filter_map(|origin| origin.to_str().ok())
                    .collect();
                tracing::info!(
                    ?origins,
                    "cross-origin: only these origins may call this edge"
                );
            }
        }
    }

    /// The CORS headers for this policy.
    pub fn cors(&self) -> CorsLayer {
        let cors = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers(AllowHeaders::mirror_request())
            .max_age(PREFLIGHT_MAX_AGE);
        match self {
            OriginPolicy::Any => cors.allow_origin(AllowOrigin::any()),
            OriginPolicy::Only(origins) => cors
                .allow_origin(AllowOrigin::list(origins.iter().cloned()))
                .allow_credentials(true),
        }
    }

    /// Whether a request with these headers may proceed.
    fn admits(&self, origin: Option<&HeaderValue>, host: Option<&HeaderValue>) -> bool {
        let (OriginPolicy::Only(allowed), Some(origin)) = (self, origin) else {
            return true;
        };
        allowed.contains(origin) || is_same_origin(origin, host)
    }
}

/// A page served by the edge itself calls it from its own origin.
fn is_same_origin(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(HeaderValue::to_str)) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// Refuses, with `403`, a browser request from an origin the policy does
/// not admit, before anything else runs.
pub async fn refuse_foreign(
    State(policy): State<OriginPolicy>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if policy.admits(headers.get(ORIGIN), headers.get(HOST)) {
        return next.run(request).await;
    }
    let origin = headers
        .get(ORIGIN)
        .map(|origin| String::from_utf8_lossy(origin.as_bytes()).into_owned())
        .unwrap_or_default();
    tracing::info!(origin = ?origin, path = ?request.uri().path(), "request from a foreign origin refused");
    let body = serde_json::json!({
        "detail": format!("origin {origin} is not allowed to call this server"),
        "code": "forbidden_origin",
    });
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn an_empty_list_admits_any_origin() {
        let policy = OriginPolicy::from_list(&[]).unwrap();
        assert!(matches!(policy, OriginPolicy::Any));
        assert!(policy.admits(Some(&value("http://evil.example")), None));
    }

    #[test]
    fn a_list_admits_its_origins_the_edges_own_and_non_browsers() {
        let policy = OriginPolicy::from_list(&["http://localhost:3000/".into()]).unwrap();
        let host = value("edge.example:8000");
        assert!(policy.admits(Some(&value("http://localhost:3000")), Some(&host)));
        assert!(policy.admits(Some(&value("https://edge.example:8000")), Some(&host)));
        assert!(policy.admits(None, Some(&host)));
        assert!(!policy.admits(Some(&value("http://localhost:3001")), Some(&host)));
        assert!(!policy.admits(Some(&value("null")), Some(&host)));
    }

    #[test]
    fn origins_must_be_scheme_and_authority() {
        for bad in ["localhost:3000", "http://", "http://host/path", "://host"] {
            assert!(OriginPolicy::from_list(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
