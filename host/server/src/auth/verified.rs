//! Tokens already verified. Checking an HS256 token (two base64 decodes, an HMAC-SHA256, the
//! claims' JSON) costs a consume more than its decision, and a gateway sends the same token on
//! request after request. A token that passed every check is kept with its claims; a hit checks
//! the expiry again, with the same leeway, so a kept token stops working exactly when a
//! verified one would. Only tokens that verified are kept, and the key is the whole token, so
//! no other string can match an entry.

use std::sync::Arc;

use dashmap::DashMap;

use super::jwt::Claims;

/// Seconds a token is still accepted after its `exp` (clock skew between issuers).
pub const LEEWAY_SECONDS: u64 = 5;

/// Verified tokens, at most `capacity` of them.
pub struct VerifiedTokens {
    tokens: DashMap<Box<str>, Arc<Claims>>,
    capacity: usize,
}

impl VerifiedTokens {
    /// Room for `capacity` tokens; when it is full, everything kept is forgotten at once (each
    /// token is then verified again on its next use).
    pub fn new(capacity: usize) -> Self {
        Self { tokens: DashMap::new(), capacity }
    }

    /// The claims of `token` if it was verified and has not expired at `now` (seconds).
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<Claims>> {
        let claims = self.tokens.get(token)?;
        if claims.exp.saturating_add(LEEWAY_SECONDS) >= now {
            return Some(Arc::clone(&claims));
        }
        drop(claims);
        self.tokens.remove(token);
        None
    }

    /// Keeps a token that verified.
    pub fn keep(&self, token: &str, claims: &Arc<Claims>) {
        if self.tokens.len() >= self.capacity {
            self.tokens.clear();
        }
        self.tokens.insert(token.into(), Arc::clone(claims));
    }

    /// How many tokens are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether none is.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn claims(exp: u64) -> Arc<Claims> {
        Arc::new(Claims {
            sub: Uuid::now_v7(),
            roles: vec!["user".into()],
            iss: "i".into(),
            aud: "a".into(),
            iat: 0,
            exp,
        })
    }

    #[test]
    fn a_kept_token_answers_until_it_expires() {
        let kept = VerifiedTokens::new(10);
        kept.keep("t", &claims(100));
        assert_eq!(kept.get("t", 100).map(|c| c.exp), Some(100));
        assert!(kept.get("t", 100 + LEEWAY_SECONDS).is_some(), "inside the leeway");
        assert!(kept.get("t", 101 + LEEWAY_SECONDS).is_none(), "expired");
        assert!(kept.is_empty(), "an expired token is forgotten");
        assert!(kept.get("other", 0).is_none());
    }

    #[test]
    fn a_full_cache_starts_again() {
        let kept = VerifiedTokens::new(2);
        kept.keep("a", &claims(100));
        kept.keep("b", &claims(100));
        kept.keep("c", &claims(100));
        assert_eq!(kept.len(), 1);
        assert!(kept.get("c", 0).is_some());
    }
}
