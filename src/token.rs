//! `switchboard token`: mints a JWT for development, so the endpoints that
//! need one (alerts, the statistics stream, admin routes) can be tried
//! without writing code.
//!
//! It reads the same key settings as the server (`SWITCHBOARD_JWT_SECRET`
//! and the other `--jwt-*` options), adds `iss` and `aud` when the server
//! checks them, and checks the token the way the edge will before printing
//! it, so a token it prints is one the edge with these settings accepts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use switchboard_edge::auth::{AuthSettings, Authenticator};

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user (the `sub` claim). All digits: written as a JSON number, as
    /// backends with numeric user ids issue them.
    #[arg(long)]
    pub sub: String,
    /// Makes the token an admin's (`roles: ["admin"]`).
    #[arg(long)]
    pub admin: bool,
    /// How long the token is valid: `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// An extra claim, `key=value` (repeatable); the value is read as JSON
    /// when it is JSON (`n=1`, `roles=["a","b"]`), else as a string.
    #[arg(long = "claim", value_parser = parse_claim)]
    pub claims: Vec<(String, Value)>,
    /// PEM private key that signs RS256, ES256 or EdDSA tokens (the server
    /// verifies them with the public half, `--jwt-public-key-file`).
    #[arg(long, env = "SWITCHBOARD_JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthSettings,
}

fn parse_claim(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .ok_or_else(|| format!("expected key=value, got {text:?}"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// The key and algorithm the settings sign with.
fn signing_key(args: &TokenArgs) -> anyhow::Result<(Algorithm, EncodingKey)> {
    let wanted: Vec<Algorithm> = args
        .auth
        .jwt_algorithms
        .iter()
        .map(|name| {
            name.trim()
                .parse()
                .with_context(|| format!("unknown JWT algorithm {name:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let secret = args
        .auth
        .jwt_secret
        .as_ref()
        .filter(|secret| !secret.is_empty())
        .map(|secret| {
            (
                Algorithm::HS256,
                EncodingKey::from_secret(secret.as_bytes()),
            )
        });
    let private = match &args.jwt_private_key_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the private key {}", path.display()))?;
            let key = EncodingKey::from_rsa_pem(&pem)
                .map(|key| (Algorithm::RS256, key))
                .or_else(|_| EncodingKey::from_ec_pem(&pem).map(|key| (Algorithm::ES256, key)))
                .or_else(|_| EncodingKey::from_ed_pem(&pem).map(|key| (Algorithm::EdDSA, key)))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{} holds no RSA, EC or Ed25519 private key in PEM form",
                        path.display()
                    )
                })?;
            Some(key)
        }
        None => None,
    };
    let candidates = [secret, private].into_iter().flatten();
    for (family_algorithm, key) in candidates {
        let chosen = if wanted.is_empty() {
            Some(family_algorithm)
        } else {
            wanted
                .iter()
                .copied()
                .find(|algorithm| algorithm.family() == family_algorithm.family())
        };
        if let Some(algorithm) = chosen {
            return Ok((algorithm, key));
        }
    }
    bail!(
        "no signing key: set SWITCHBOARD_JWT_SECRET (HS256) or --jwt-private-key-file (RS256, ES256, EdDSA), as for the server"
    )
}

/// The token's claims.
fn claims(args: &TokenArgs, now: u64) -> Map<String, Value> {
    let sub = if !args.sub.is_empty() && args.sub.bytes().all(|byte| byte.is_ascii_digit()) {
        args.sub
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(args.sub.clone()))
    } else {
        Value::String(args.sub.clone())
    };
    let mut claims = Map::new();
    claims.insert("sub".into(), sub);
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + args.ttl.as_secs().max(1)));
    if args.admin {
        claims.insert("roles".into(), json!(["admin"]));
    }
    if let Some(issuer) = &args.auth.jwt_issuer {
        claims.insert("iss".into(), json!(issuer));
    }
    if let Some(audience) = &args.auth.jwt_audience {
        claims.insert("aud".into(), json!(audience));
    }
    for (key, value) in &args.claims {
        claims.insert(key.clone(), value.clone());
    }
    claims
}

/// Mints the token the arguments describe.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    if args.sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let (algorithm, key) = signing_key(args)?;
    let claims = claims(args, jsonwebtoken::get_current_timestamp());
    let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key)
        .context("cannot sign the token")?;
    // The edge with these settings must accept it (when they let it verify:
    // with a private key alone there is nothing to verify with).
    if let Some(authenticator) = Authenticator::from_settings(&args.auth)? {
        authenticator
            .verify(&token)
            .context("the server with these settings would refuse this token")?;
    }
    Ok(token)
}

/// Prints a token on stdout, nothing else.
pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    println!("{}", mint(args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        token: TokenArgs,
    }

    fn args(words: &[&str]) -> TokenArgs {
        Command::parse_from(std::iter::once("token").chain(words.iter().copied())).token
    }

    const SECRET: &str = "a-development-secret-of-32-bytes!";

    #[test]
    fn a_minted_token_is_accepted_with_its_claims() {
        let args = args(&[
            "--sub",
            "alice",
            "--admin",
            "--ttl",
            "2h",
            "--claim",
            "username=Alice",
            "--jwt-secret",
            SECRET,
        ]);
        let token = mint(&args).unwrap();
        let authenticator = Authenticator::from_settings(&args.auth).unwrap().unwrap();
        let identity = authenticator.verify(&token).unwrap();
        assert_eq!(identity.user_id, "alice");
        assert_eq!(identity.username, "Alice");
        assert!(identity.admin);
    }

    #[test]
    fn claims_read_json_values_and_numeric_subs() {
        let args = args(&[
            "--sub",
            "42",
            "--claim",
            "n=1",
            "--claim",
            "roles=[\"a\"]",
            "--claim",
            "note=hi there",
        ]);
        let claims = claims(&args, 1000);
        assert_eq!(claims["sub"], json!(42));
        assert_eq!(claims["n"], json!(1));
        assert_eq!(claims["roles"], json!(["a"]));
        assert_eq!(claims["note"], json!("hi there"));
        assert_eq!(claims["exp"], json!(1000 + 3600));
        assert!(parse_claim("novalue").is_err());
    }

    #[test]
    fn without_a_key_it_says_what_to_set() {
        let error = mint(&args(&["--sub", "alice"])).unwrap_err().to_string();
        assert!(error.contains("SWITCHBOARD_JWT_SECRET"), "{error}");
    }
}
