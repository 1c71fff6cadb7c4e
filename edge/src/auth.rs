//! Authentication: JSON Web Tokens, verified at the edge.
//!
//! The accepted algorithms are pinned by configuration, each with its own
//! key: HS256 with a shared secret, RS256 or ES256 (or another of their
//! families) with a public key file. A token's own `alg` header only picks
//! among those; `alg: none`, an algorithm not configured, or a token signed
//! for one family but presented for another (the HS/RS confusion) is
//! refused. `exp` is required, `nbf` checked when present, both with a small
//! leeway for clock skew; `sub` is the user. A user is an admin when the
//! token's `roles` contains `"admin"` (or `role` is `"admin"`).
//!
//! Where a request's token comes from, and what an endpoint requires of it,
//! is [`crate::caller`]'s.

use std::collections::HashSet;
use std::path::PathBuf;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

/// How tokens are verified.
#[derive(Clone, Default, clap::Args)]
pub struct AuthSettings {
    /// Shared secret for HMAC tokens (HS256). Never logged.
    #[arg(
        long = "jwt-secret",
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA, EC or Ed25519) for RS256 / ES256 / EdDSA tokens.
    #[arg(long = "jwt-public-key-file", env = "SWITCHBOARD_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Accepted algorithms, comma-separated (e.g. `HS256,RS256`). By
    /// default: HS256 with a secret, and RS256, ES256 or EdDSA for the
    /// public key's type.
    #[arg(
        long = "jwt-algorithms",
        env = "SWITCHBOARD_JWT_ALGORITHMS",
        value_delimiter = ','
    )]
    pub jwt_algorithms: Vec<String>,

    /// Seconds of clock skew allowed on `exp` and `nbf`.
    #[arg(
        long = "jwt-leeway-secs",
        env = "SWITCHBOARD_JWT_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub jwt_leeway_secs: u64,

    /// Required `iss` claim, when set.
    #[arg(long = "jwt-issuer", env = "SWITCHBOARD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long = "jwt-audience", env = "SWITCHBOARD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AuthSettings")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_algorithms", &self.jwt_algorithms)
            .field("jwt_leeway_secs", &self.jwt_leeway_secs)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

/// Shortest HS256 secret that does not draw a warning: RFC 7518 section
/// 3.2 asks for a key at least as long as the hash (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// Settings that cannot work; the edge refuses to start with them.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read the JWT public key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no RSA, EC or Ed25519 public key in PEM form")]
    KeyFormat(PathBuf),
    #[error("unknown JWT algorithm {0:?}")]
    UnknownAlgorithm(String),
    #[error("JWT algorithm {0:?} has no key configured for it")]
    NoKeyFor(String),
    #[error("the JWT secret must not be empty")]
    EmptySecret,
}

/// Why a token was refused; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication is not configured on this server")]
    NotConfigured,
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm is not accepted")]
    AlgorithmNotAccepted,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid token signature")]
    BadSignature,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token is not for this user")]
    WrongUser,
    #[error("admin role required")]
    NotAdmin,
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim as text: the user everywhere in the system.
    pub user_id: String,
    /// The `sub` claim as the token has it: a number stays a number (seed
    /// 004 shows `{"id": 1, ...}`).
    pub subject: serde_json::Value,
    /// The first of the `username`, `preferred_username` and `name` claims,
    /// else the `sub`: never empty.
    pub username: String,
    pub admin: bool,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// A string, or a number (as backends with numeric user ids issue).
    #[serde(default)]
    sub: Option<serde_json::Value>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    role: Option<String>,
}

/// One accepted algorithm and the key that verifies it.
struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies tokens with the configured algorithms and keys.
pub struct Authenticator {
    verifiers: Vec<Verifier>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<Algorithm> = self.verifiers.iter().map(|v| v.algorithm).collect();
        formatter
            .debug_struct("Authenticator")
            .field("algorithms", &algorithms)
            .finish()
    }
}

fn public_key(path: &PathBuf) -> Result<(DecodingKey, Algorithm), AuthConfigError> {
    let pem = std::fs::read(path).map_err(|source| AuthConfigError::KeyFile {
        path: path.clone(),
        source,
    })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    Err(AuthConfigError::KeyFormat(path.clone()))
}

impl Authenticator {
    /// The authenticator the settings describe, or `None` when no key is
    /// configured (endpoints that need a token then refuse every one).
    pub fn from_settings(settings: &AuthSettings) -> Result<Option<Self>, AuthConfigError> {
        let secret = match &settings.jwt_secret {
            Some(secret) if secret.is_empty() => return Err(AuthConfigError::EmptySecret),
            Some(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    tracing::warn!(
                        bytes = secret.len(),
                        "the JWT secret is shorter than {MIN_SECRET_BYTES} bytes: HS256 tokens signed with it can be brute-forced; use a random secret of at least {MIN_SECRET_BYTES} bytes"
                    );
                }
                Some(DecodingKey::from_secret(secret.as_bytes()))
            }
            None => None,
        };
        let public = settings
            .jwt_public_key_file
            .as_ref()
            .map(public_key)
            .transpose()?;
        let algorithms: Vec<Algorithm> = if settings.jwt_algorithms.is_empty() {
            secret
                .as_ref()
                .map(|_| Algorithm::HS256)
                .into_iter()
                .chain(public.as_ref().map(|(_, algorithm)| *algorithm))
                .collect()
        } else {
            settings
                .jwt_algorithms
                .iter()
                .map(|name| {
                    name.trim()
                        .parse::<Algorithm>()
                        .map_err(|_| AuthConfigError::UnknownAlgorithm(name.clone()))
                })
                .collect::<Result<_, _>>()?
        };
        if algorithms.is_empty() {
            return Ok(None);
        }
        let mut verifiers = Vec::new();
        for algorithm in algorithms {
            let key = match algorithm.family() {
                AlgorithmFamily::Hmac => secret.clone(),
                family => public
                    .as_ref()
                    .filter(|(_, key_algorithm)| key_algorithm.family() == family)
                    .map(|(key, _)| key.clone()),
            }
            .ok_or_else(|| AuthConfigError::NoKeyFor(format!("{algorithm:?}")))?;
            let mut validation = Validation::new(algorithm);
            validation.leeway = settings.jwt_leeway_secs;
            validation.validate_nbf = true;
            // `sub` is required too, but checked below: jsonwebtoken's own
            // check takes only a string, and numeric ids are common.
            validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
            match &settings.jwt_audience {
                Some(audience) => validation.set_audience(&[audience]),
                None => validation.validate_aud = false,
            }
            if let Some(issuer) = &settings.jwt_issuer {
                validation.set_issuer(&[issuer]);
            }
            verifiers.push(Verifier {
                algorithm,
                key,
                validation,
            });
        }
        Ok(Some(Self { verifiers }))
    }

    /// Checks `token` and says whose it is.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let verifier = self
            .verifiers
            .iter()
            .find(|verifier| verifier.algorithm == header.alg)
            .ok_or(AuthError::AlgorithmNotAccepted)?;
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::AlgorithmNotAccepted
                }
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    AuthError::Malformed
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::Invalid(format!("missing claim {claim}"))
                }
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::Json(_) => AuthError::Invalid("unexpected claims".into()),
                _ => AuthError::Invalid("cannot be verified".into()),
            })?;
        let claims = data.claims;
        let (user_id, subject) = match claims.sub {
            Some(serde_json::Value::String(sub)) if !sub.is_empty() => {
                (sub.clone(), serde_json::Value::String(sub))
            }
            Some(serde_json::Value::Number(number)) => {
                (number.to_string(), serde_json::Value::Number(number))
            }
            _ => return Err(AuthError::Invalid("missing claim sub".into())),
        };
        let admin = claims.roles.iter().any(|role| role == "admin")
            || claims.role.as_deref() == Some("admin");
        let username = [claims.username, claims.preferred_username, claims.name]
            .into_iter()
            .flatten()
            .find(|name| !name.is_empty())
            .unwrap_or_else(|| user_id.clone());
        Ok(Identity {
            user_id,
            subject,
            username,
            admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-secret-with-enough-length-32b";

    fn hs256() -> Authenticator {
        Authenticator::from_settings(&AuthSettings {
            jwt_secret: Some(SECRET.into()),
            jwt_leeway_secs: 5,
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_token_names_its_user_and_roles() {
        let token = sign(
            json!({"sub": "ada", "exp": now() + 60, "roles": ["admin"], "username": "Ada"}),
            SECRET,
        );
        assert_eq!(
            hs256().verify(&token).unwrap(),
            Identity {
                user_id: "ada".into(),
                subject: json!("ada"),
                username: "Ada".into(),
                admin: true
            }
        );
        let token = sign(json!({"sub": "bob", "exp": now() + 60}), SECRET);
        let bob = hs256().verify(&token).unwrap();
        assert!(!bob.admin);
        assert_eq!(bob.username, "bob", "the username falls back to the sub");
    }

    #[test]
    fn a_numeric_sub_stays_a_number_and_usernames_come_from_the_usual_claims() {
        let token = sign(
            json!({"sub": 1, "exp": now() + 60, "preferred_username": "admin"}),
            SECRET,
        );
        let identity = hs256().verify(&token).unwrap();
        assert_eq!(identity.user_id, "1");
        assert_eq!(identity.subject, json!(1));
        assert_eq!(identity.username, "admin");
        let token = sign(
            json!({"sub": "u7", "exp": now() + 60, "name": "Grace"}),
            SECRET,
        );
        assert_eq!(hs256().verify(&token).unwrap().username, "Grace");
        let token = sign(json!({"sub": ["u7"], "exp": now() + 60}), SECRET);
        assert!(hs256().verify(&token).is_err());
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let auth = hs256();
        let cases = [
            ("garbage", AuthError::Malformed),
            (
                &sign(json!({"sub": "a", "exp": now() - 60}), SECRET)[..],
                AuthError::Expired,
            ),
            (
                &sign(
                    json!({"sub": "a", "exp": now() + 60, "nbf": now() + 60}),
                    SECRET,
                )[..],
                AuthError::NotYetValid,
            ),
            (
                &sign(
                    json!({"sub": "a", "exp": now() + 60}),
                    "another-secret-another-secret-32b",
                )[..],
                AuthError::BadSignature,
            ),
            (
                &sign(json!({"sub": "a"}), SECRET)[..],
                AuthError::Invalid("missing claim exp".into()),
            ),
            (
                &sign(json!({"exp": now() + 60}), SECRET)[..],
                AuthError::Invalid("missing claim sub".into()),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(auth.verify(token), Err(expected), "{token}");
        }
        // alg none: a header that names no signature at all.
        let unsigned = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", "eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ"
        );
        assert_eq!(auth.verify(&unsigned), Err(AuthError::Malformed));
    }

    #[test]
    fn leeway_forgives_small_clock_skew() {
        let token = sign(json!({"sub": "a", "exp": now() - 2}), SECRET);
        assert!(hs256().verify(&token).is_ok());
    }

    #[test]
    fn settings_never_print_the_secret() {
        let settings = AuthSettings {
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        };
        assert!(!format!("{settings:?}").contains(SECRET));
    }

    #[test]
    fn an_algorithm_without_a_key_is_a_configuration_error() {
        let settings = AuthSettings {
            jwt_secret: Some(SECRET.into()),
            jwt_algorithms: vec!["RS256".into()],
            ..Default::default()
        };
        assert!(matches!(
            Authenticator::from_settings(&settings),
            Err(AuthConfigError::NoKeyFor(_))
        ));
        let none = AuthSettings::default();
        assert!(Authenticator::from_settings(&none).unwrap().is_none());
    }
}
