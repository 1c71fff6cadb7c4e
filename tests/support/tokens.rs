//! Tokens for the tests' users, made the two ways a user gets one: signed
//! with the deployment's HS256 secret, as an identity provider would
//! ([`sign_hs256`], [`user_token`], [`admin_token`]), or minted with
//! `switchboard token`, as a developer would ([`minted`]).

use serde_json::{Value, json};

/// `claims` signed with HS256 and `secret`.
pub fn sign_hs256(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("claims sign")
}

/// The `exp` claim of a token valid for `seconds` more.
pub fn expiring_in(seconds: u64) -> u64 {
    jsonwebtoken::get_current_timestamp() + seconds
}

/// A plain user's token for `sub`, valid for ten minutes.
pub fn user_token(secret: &str, sub: &str) -> String {
    sign_hs256(
        json!({"sub": sub, "exp": expiring_in(600)}),
        secret.as_bytes(),
    )
}

/// An admin's token (`sub` "ops", role `admin`), valid for ten minutes.
pub fn admin_token(secret: &str) -> String {
    sign_hs256(
        json!({"sub": "ops", "roles": ["admin"], "exp": expiring_in(600)}),
        secret.as_bytes(),
    )
}

/// A token for `sub` (an admin's with `admin`), valid for ten minutes,
/// from `switchboard token` with `secret` in its environment.
pub fn minted(secret: &str, sub: &str, admin: bool) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(["token", "--sub", sub, "--ttl", "10m"])
        .env_clear()
        .env("SWITCHBOARD_JWT_SECRET", secret);
    if admin {
        command.arg("--admin");
    }
    let output = command.output().expect("switchboard token");
    assert!(
        output.status.success(),
        "switchboard token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}
