//! Input rules shared by the routes (API.md's constraints).

use crate::error::ApiError;

/// Most tokens one request may name.
pub const MAX_TOKENS: u64 = 10_000_000;

/// `provider`: 1-64 of `[a-z0-9._-]`.
pub fn provider(p: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&p.len())
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(ApiError::InvalidRequest("provider must be 1-64 of [a-z0-9._-]".into())) }
}

/// `tokens`: a positive integer up to 10,000,000.
pub fn tokens(n: u64) -> Result<(), ApiError> {
    if (1..=MAX_TOKENS).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!("tokens must be between 1 and {MAX_TOKENS}")))
    }
}

/// `username`: 3-64 of `[A-Za-z0-9_.-]`.
pub fn username(u: &str) -> Result<(), ApiError> {
    let ok = (3..=64).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { Err(ApiError::InvalidRequest("username must be 3-64 of [A-Za-z0-9_.-]".into())) }
}

/// A plausible email: one `@`, something before it, a dot after it, no spaces, at most 254.
pub fn email(e: &str) -> Result<(), ApiError> {
    let ok = e.len() <= 254
        && !e.contains(char::is_whitespace)
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok { Ok(()) } else { Err(ApiError::InvalidRequest("email is not a valid address".into())) }
}

/// `password`: at least 8 characters (and at most 1024, so hashing stays bounded).
pub fn password(p: &str) -> Result<(), ApiError> {
    if (8..=1024).contains(&p.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest("password must be 8-1024 characters".into()))
    }
}

/// A label (an org's or an API key's name): 1-100 characters once trimmed. Returns it trimmed.
pub fn label(text: &str) -> Result<&str, ApiError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 100 {
        return Err(ApiError::InvalidRequest("name must be 1-100 characters".into()));
    }
    Ok(trimmed)
}

/// RFC 3339 UTC text of a millisecond time.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Milliseconds of an RFC 3339 time.
pub fn parse_rfc3339(field: &str, text: &str) -> Result<i64, ApiError> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::InvalidRequest(format!("{field} must be an RFC 3339 time")))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| ApiError::InvalidRequest(format!("{field} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_rules() {
        assert!(provider("openai").is_ok() && provider("azure.gpt-4_o").is_ok());
        assert!(provider("").is_err() && provider("OpenAI").is_err() && provider(&"a".repeat(65)).is_err());
        assert!(
            tokens(1).is_ok() && tokens(MAX_TOKENS).is_ok() && tokens(0).is_err() && tokens(MAX_TOKENS + 1).is_err()
        );
        assert!(username("bob").is_ok() && username("bo").is_err() && username("bob smith").is_err());
        assert!(
            email("a@b.co").is_ok() && email("nope").is_err() && email("a@b").is_err() && email("a @b.co").is_err()
        );
        assert!(password("12345678").is_ok() && password("1234567").is_err());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("from", "1970-01-01T00:00:01Z").unwrap(), 1000);
    }
}
