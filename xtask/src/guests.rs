//! Builds the policy components for `wasm32-wasip2` with the size-optimised `guest` profile.
//!
//! Worlds are built in separate cargo invocations: the SDK's `rate-limiter`, `quota-rule` and
//! `std` features decide which world's type information a component embeds, and cargo would
//! unify them across packages built together.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, run};

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "guest";

/// One group of packages that can share a cargo invocation, and where their components go.
struct Group {
    packages: &'static [&'static str],
    dest: &'static str,
}

const GROUPS: &[Group] = &[
    Group { packages: &["leaky-bucket", "token-bucket", "fixed-window", "sliding-window"], dest: "policies" },
    Group { packages: &["model-pricing"], dest: "policies" },
    Group {
        packages: &[
            "fixture-infinite-loop",
            "fixture-memory-bomb",
            "fixture-deep-recursion",
            "fixture-trap",
            "fixture-nonsense-verdict",
        ],
        dest: "guests/fixtures/wasm",
    },
    Group { packages: &["fixture-forbidden-import"], dest: "guests/fixtures/wasm" },
];

/// Adds the wasm target when missing, builds every group and copies the components in place.
pub fn build(root: &Path) -> Result<()> {
    ensure_target()?;
    let target_dir = target_dir(root)?;
    for group in GROUPS {
        let mut cmd = cargo(root);
        cmd.args(["build", "--quiet", "--target", TARGET, "--profile", PROFILE]);
        for package in group.packages {
            cmd.args(["--package", package]);
        }
        run(&mut cmd)?;
        let dest = root.join(group.dest);
        fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
        for package in group.packages {
            let built = target_dir.join(TARGET).join(PROFILE).join(format!("{}.wasm", package.replace('-', "_")));
            let name = package.strip_prefix("fixture-").unwrap_or(package);
            let out = dest.join(format!("{name}.wasm"));
            fs::copy(&built, &out).with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
            let size = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!("{:>8} bytes  {}", size, out.strip_prefix(root).unwrap_or(&out).display());
        }
    }
    Ok(())
}

/// Installs the wasm target through rustup when the active toolchain lacks it.
fn ensure_target() -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET) => Ok(()),
        Ok(_) => run(Command::new("rustup").args(["target", "add", TARGET])),
        Err(_) => {
            // No rustup: the toolchain must already carry the target; cargo says so if not.
            Ok(())
        }
    }
}

/// Where cargo puts build output (honours `CARGO_TARGET_DIR` and cargo config).
pub fn target_dir(root: &Path) -> Result<PathBuf> {
    let out = cargo(root).args(["metadata", "--format-version", "1", "--no-deps"]).output()?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    meta["target_directory"].as_str().map(PathBuf::from).context("cargo metadata has no target_directory")
}
