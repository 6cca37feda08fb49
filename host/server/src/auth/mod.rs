//! Authentication and authorisation: passwords (argon2id), JWTs (HS256, pinned; a verified
//! token kept until it expires), API keys (stored as hashes), roles, and the [`Caller`]
//! extractor every protected route takes.

mod api_key;
mod caller;
mod jwt;
mod password;
mod secret;
mod verified;

pub use api_key::{ApiKeySecret, hash_secret, parse_key};
pub use caller::{Caller, Role};
pub use jwt::{Claims, JwtKeys};
pub use password::{hash_password, verify_password};
pub use secret::load_or_generate_jwt_secret;
