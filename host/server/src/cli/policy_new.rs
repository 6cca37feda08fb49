//! `leaky policy new NAME --strategy KIND`: a guest crate on the SDK that builds as it is.
//!
//! The crate starts as a copy of the built-in policy of that kind (so it decides correctly from
//! the first build), renamed: a rate limiter reports `NAME` as its strategy, because a strategy
//! name stands for the layout of its state, and a new policy may change that layout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The kinds a crate can start from, and the built-in policy each copies.
const TEMPLATES: &[(&str, &str, &str)] = &[
    ("leaky-bucket", "rate-limiter", include_str!("../../../../guests/leaky-bucket/src/lib.rs")),
    ("token-bucket", "rate-limiter", include_str!("../../../../guests/token-bucket/src/lib.rs")),
    ("fixed-window", "rate-limiter", include_str!("../../../../guests/fixed-window/src/lib.rs")),
    ("sliding-window", "rate-limiter", include_str!("../../../../guests/sliding-window/src/lib.rs")),
    ("quota-rule", "quota-rule", include_str!("../../../../guests/model-pricing/src/lib.rs")),
];

/// The kinds `--strategy` accepts.
pub fn kinds() -> Vec<&'static str> {
    TEMPLATES.iter().map(|(kind, ..)| *kind).collect()
}

/// The files of a new crate: `(path inside the crate, contents)`.
pub fn files(name: &str, kind: &str, sdk: &Path) -> Result<Vec<(&'static str, String)>> {
    let Some((_, feature, source)) = TEMPLATES.iter().find(|(k, ..)| *k == kind) else {
        bail!("--strategy must be one of {}", kinds().join(", "));
    };
    let source = if *feature == "rate-limiter" {
        let built_in = format!("\"{kind}\".into()");
        if !source.contains(&built_in) {
            bail!("the {kind} template does not name its strategy as expected");
        }
        source.replacen(&built_in, &format!("\"{name}\".into()"), 1)
    } else {
        source.to_string()
    };
    let sdk = sdk.display().to_string().replace('\\', "/");
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A standalone crate, not a member of any enclosing workspace.
[workspace]

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
leaky-policy-sdk = {{ path = "{sdk}", features = ["{feature}"] }}

# Small components: no unwinding (the SDK's panic handler traps), size-optimised, stripped.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true
debug = false
"#
    );
    let readme = format!(
        "# {name}\n\nA Leaky Tokens policy ({feature}), started from the built-in `{kind}`.\n\n\
         ```sh\n\
         cargo build --release --target wasm32-wasip2\n\
         leaky policy check target/wasm32-wasip2/release/{crate_file}.wasm\n\
         leaky policy upload {name} target/wasm32-wasip2/release/{crate_file}.wasm --param capacity=100 ...\n\
         leaky policy activate {name} 1\n\
         ```\n\n\
         The guide \"Write your own policy\" in the Leaky Tokens docs walks through every step.\n",
        crate_file = name.replace('-', "_"),
    );
    Ok(vec![("Cargo.toml", manifest), ("src/lib.rs", source), ("README.md", readme)])
}

/// Finds the SDK: `guests/sdk` in the current directory or one of its ancestors.
fn find_sdk() -> Result<PathBuf> {
    let here = std::env::current_dir()?;
    here.ancestors()
        .map(|dir| dir.join("guests/sdk"))
        .find(|sdk| sdk.join("Cargo.toml").is_file())
        .context("cannot find the policy SDK (guests/sdk) here or above; pass --sdk PATH")
}

/// Writes the crate `name` under `parent` (default: the current directory).
pub fn run(name: &str, kind: &str, parent: Option<&Path>, sdk: Option<&Path>) -> Result<()> {
    crate::services::policies::registry::validate_name(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sdk = match sdk {
        Some(sdk) => sdk.to_path_buf(),
        None => find_sdk()?,
    };
    let sdk = sdk.canonicalize().with_context(|| format!("cannot find the SDK at {}", sdk.display()))?;
    let dir = parent.map_or_else(|| PathBuf::from(name), |p| p.join(name));
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    for (path, contents) in files(name, kind, &sdk)? {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // The SDK workspace's lock file pins the versions the SDK is tested with.
    if let Some(lock) = sdk.parent().and_then(Path::parent).map(|root| root.join("Cargo.lock"))
        && lock.is_file()
    {
        std::fs::copy(&lock, dir.join("Cargo.lock")).with_context(|| format!("cannot copy {}", lock.display()))?;
    }
    println!("created {} ({kind}); build it with:", dir.display());
    println!("  cd {} && cargo build --release --target wasm32-wasip2", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_template_that_is_renamed() {
        for kind in kinds() {
            let files = files("my-policy", kind, Path::new("/sdk")).unwrap();
            let lib = &files.iter().find(|(p, _)| *p == "src/lib.rs").unwrap().1;
            if kind != "quota-rule" {
                assert!(lib.contains("\"my-policy\".into()"), "{kind} reports the new strategy name");
                assert!(!lib.contains(&format!("\"{kind}\".into()")), "{kind}");
            }
            let manifest = &files[0].1;
            assert!(manifest.contains("path = \"/sdk\""), "{manifest}");
            manifest.parse::<toml::Table>().expect("a valid Cargo.toml");
        }
        assert!(files("x", "no-such-kind", Path::new("/sdk")).is_err());
    }
}
