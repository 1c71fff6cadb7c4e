//! Who is calling: the one place a request's token becomes a typed caller.
//!
//! A token comes from the `token` query parameter (what a browser can send
//! on a WebSocket) or an `Authorization: Bearer` header. [`Credentials`]
//! extracts it from any request; an endpoint then says what it requires:
//! [`anyone`](Credentials::anyone) (a token is optional, a bad one is
//! refused), [`user`](Credentials::user), [`user_named`](Credentials::user_named)
//! (this path's user, or an admin) or [`admin`](Credentials::admin). The
//! answer is a `Result` because each transport refuses its own way:
//! WebSockets after the upgrade with close 1008 (a browser cannot read an
//! HTTP status there), HTTP routes with 401 or 403 — as the [`Admin`] and
//! [`AdminWhenConfigured`] extractors do.
//!
//! Refusals are logged with their reason, never with the token.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};
use serde::Deserialize;

use crate::auth::{AuthError, Authenticator, Identity};
use crate::error::ClientError;

/// The configured token verifier, shared by every feature: cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Identities {
    /// `None` when no JWT key is configured: then every token is refused.
    authenticator: Option<Arc<Authenticator>>,
}

impl Identities {
    pub fn new(authenticator: Option<Authenticator>) -> Self {
        Self {
            authenticator: authenticator.map(Arc::new),
        }
    }

    /// Whether a JWT key is configured (the broadcast routes are then for
    /// admins only).
    pub fn configured(&self) -> bool {
        self.authenticator.is_some()
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        match &self.authenticator {
            Some(authenticator) => authenticator.verify(token),
            None => Err(AuthError::NotConfigured),
        }
    }
}

/// Who a connection or request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No token: seed 000's and 001's endpoints are open.
    Anonymous,
    User(Identity),
}

impl Caller {
    /// The user id counts and records go under (`anonymous` without a
    /// token).
    pub fn user_id(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::User(identity) => &identity.user_id,
        }
    }

    /// Proven by a token: only then may a stream raise alerts for the user.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Caller::User(_))
    }
}

/// A request's token and the verifier, before any requirement is checked.
#[derive(Debug, Clone)]
pub struct Credentials {
    token: Option<String>,
    identities: Identities,
}

/// The token of a request: the `token` query parameter, else an
/// `Authorization: Bearer` header.
fn token_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    let from_query = Query::<TokenQuery>::try_from_uri(uri)
        .ok()
        .and_then(|Query(query)| query.token)
        .filter(|token| !token.is_empty());
    from_query.or_else(|| {
        headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(|token| token.trim().to_owned())
            .filter(|token| !token.is_empty())
    })
}

impl Credentials {
    /// Credentials for a token found elsewhere (Socket.IO's handshake).
    pub fn new(token: Option<String>, identities: Identities) -> Self {
        Self { token, identities }
    }

    /// Anyone: no token is anonymous; a token must be valid.
    pub fn anyone(&self) -> Result<Caller, AuthError> {
        match &self.token {
            None => Ok(Caller::Anonymous),
            Some(token) => self.identities.verify(token).map(Caller::User),
        }
    }

    /// A user, proven by a valid token.
    pub fn user(&self) -> Result<Identity, AuthError> {
        let token = self.token.as_deref().ok_or(AuthError::Missing)?;
        self.identities.verify(token)
    }

    /// `user_id` itself, or an admin.
    pub fn user_named(&self, user_id: &str) -> Result<Identity, AuthError> {
        let identity = self.user()?;
        if identity.user_id == user_id || identity.admin {
            Ok(identity)
        } else {
            Err(AuthError::WrongUser)
        }
    }

    /// An admin.
    pub fn admin(&self) -> Result<Identity, AuthError> {
        let identity = self.user()?;
        if identity.admin {
            Ok(identity)
        } else {
            Err(AuthError::NotAdmin)
        }
    }
}

impl<S> FromRequestParts<S> for Credentials
where
    S: Send + Sync,
    Identities: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            token: token_of(&parts.uri, &parts.headers),
            identities: Identities::from_ref(state),
        })
    }
}

/// What an HTTP route refuses with: 401 for no or a bad token, 403 for a
/// valid one without the right.
pub fn refusal(error: AuthError) -> ClientError {
    tracing::info!(reason = %error, "request refused");
    match error {
        AuthError::WrongUser | AuthError::NotAdmin => ClientError::Forbidden(error),
        error => ClientError::Unauthorized(error),
    }
}

/// An admin, proven by the request's token: the extractor of admin routes.
#[derive(Debug, Clone)]
pub struct Admin(pub Identity);

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Identities: FromRef<S>,
{
    type Rejection = ClientError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(credentials) = Credentials::from_request_parts(parts, state).await;
        credentials.admin().map(Admin).map_err(refusal)
    }
}

/// An admin once a JWT key is configured; anyone before (seed 003's
/// broadcast routes are open, as the seed has them, until keys exist).
#[derive(Debug, Clone)]
pub struct AdminWhenConfigured;

impl<S> FromRequestParts<S> for AdminWhenConfigured
where
    S: Send + Sync,
    Identities: FromRef<S>,
{
    type Rejection = ClientError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(credentials) = Credentials::from_request_parts(parts, state).await;
        if !credentials.identities.configured() {
            return Ok(Self);
        }
        credentials.admin().map(|_| Self).map_err(refusal)
    }
}

/// A user, proven by the request's token (any user).
#[derive(Debug, Clone)]
pub struct User(pub Identity);

impl<S> FromRequestParts<S> for User
where
    S: Send + Sync,
    Identities: FromRef<S>,
{
    type Rejection = ClientError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(credentials) = Credentials::from_request_parts(parts, state).await;
        credentials.user().map(User).map_err(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_query_or_a_bearer_header() {
        let uri = |text: &str| text.parse::<Uri>().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(token_of(&uri("/ws"), &headers), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(token_of(&uri("/ws"), &headers).as_deref(), Some("abc"));
        assert_eq!(
            token_of(&uri("/ws?token=xyz&a=1"), &headers).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            token_of(&uri("/ws?token="), &headers).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn requirements_say_why_they_refuse() {
        let none = Credentials::new(None, Identities::default());
        assert_eq!(none.anyone(), Ok(Caller::Anonymous));
        assert_eq!(none.user(), Err(AuthError::Missing));
        let unverifiable = Credentials::new(Some("t".into()), Identities::default());
        assert_eq!(unverifiable.anyone(), Err(AuthError::NotConfigured));
    }
}
