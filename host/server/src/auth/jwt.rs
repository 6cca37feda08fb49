//! Access tokens: HS256 JWTs with `exp`, `iss` and `aud`, all checked; no other algorithm is
//! accepted, whatever a token's header says.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::verified::{LEEWAY_SECONDS, VerifiedTokens};

/// Verified tokens kept at most ([`VerifiedTokens`]): a few megabytes.
const KEPT_TOKENS: usize = 16_384;

/// The claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The user's roles when the token was issued.
    pub roles: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at, seconds.
    pub iat: u64,
    /// Expiry, seconds.
    pub exp: u64,
}

/// Signs and verifies access tokens.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_seconds: u64,
    verified: VerifiedTokens,
}

impl JwtKeys {
    /// Keys from the shared secret.
    pub fn new(secret: &[u8], issuer: &str, audience: &str, ttl_seconds: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.into(),
            audience: audience.into(),
            ttl_seconds,
            verified: VerifiedTokens::new(KEPT_TOKENS),
        }
    }

    /// Token lifetime, seconds.
    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    /// Issues a token for a user.
    pub fn issue(&self, user: Uuid, roles: &[String]) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: user,
            roles: roles.to_vec(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.ttl_seconds,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    /// Verifies a token; `None` for anything not valid right now. A token verified before is
    /// answered from [`VerifiedTokens`] until it expires.
    pub fn verify(&self, token: &str) -> Option<Arc<Claims>> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(claims) = self.verified.get(token, now) {
            return Some(claims);
        }
        let claims = Arc::new(jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?.claims);
        self.verified.keep(token, &claims);
        Some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_keys_audiences_and_algorithms() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", "iss", "aud", 60);
        let user = Uuid::now_v7();
        let token = keys.issue(user, &["user".into()]).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, user);
        assert!(JwtKeys::new(b"another secret, also long enough!", "iss", "aud", 60).verify(&token).is_none());
        assert!(JwtKeys::new(b"0123456789abcdef0123456789abcdef", "iss", "other", 60).verify(&token).is_none());
        // An unsigned token ("alg": "none") is refused.
        let parts: Vec<&str> = token.split('.').collect();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        assert!(keys.verify(&format!("{none_header}.{}.", parts[1])).is_none());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", "iss", "aud", 0);
        let mut claims =
            Claims { sub: Uuid::now_v7(), roles: vec![], iss: "iss".into(), aud: "aud".into(), iat: 0, exp: 1 };
        claims.exp = 1;
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(keys.verify(&token).is_none());
        assert!(keys.verified.is_empty(), "a token that failed is not kept");
    }

    #[test]
    fn a_token_verified_once_is_answered_again_and_only_for_itself() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", "iss", "aud", 60);
        let user = Uuid::now_v7();
        let token = keys.issue(user, &["user".into()]).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, user);
        assert_eq!(keys.verified.len(), 1);
        assert_eq!(keys.verify(&token).unwrap().sub, user, "from the kept claims");
        let mut tampered = token.clone();
        tampered.pop();
        assert!(keys.verify(&tampered).is_none(), "a different string is verified on its own");
        assert_eq!(keys.verified.len(), 1);
    }
}
