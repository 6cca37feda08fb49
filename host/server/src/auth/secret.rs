//! The JWT secret on embedded starts: generated once, kept in the data directory.

use std::path::Path;

use argon2::password_hash::rand_core::{OsRng, RngCore};

use crate::settings::Secret;

/// The configured secret, or the one kept in `data_dir/jwt_secret` (generated and saved, with
/// a warning, the first time).
pub fn load_or_generate_jwt_secret(configured: Option<&Secret>, data_dir: &Path) -> anyhow::Result<Secret> {
    if let Some(secret) = configured.filter(|s| !s.expose().is_empty()) {
        if secret.expose().len() < 32 {
            anyhow::bail!("auth.jwt_secret must be at least 32 characters");
        }
        return Ok(secret.clone());
    }
    let path = data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(Secret::new(existing.trim()));
    }
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    std::fs::create_dir_all(data_dir)?;
    write_private(&path, &secret)?;
    tracing::warn!(
        path = %path.display(),
        "no auth.jwt_secret configured: generated one and kept it in the data directory; \
         set auth.jwt_secret (LEAKY_AUTH__JWT_SECRET) in production, the same on every replica"
    );
    Ok(Secret::new(secret))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
