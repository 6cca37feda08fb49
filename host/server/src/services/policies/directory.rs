//! The policy directory: components (`<module>.wasm`) and manifests (`*.toml`) an operator
//! edits in place, imported at start and, while running, whenever they change.
//!
//! ```toml
//! [[binding]]
//! provider = "openai"
//! module = "token-bucket"
//! params = { capacity = 5000, refill_rate_per_second = 50 }
//! shadow = { module = "sliding-window", params = { capacity = 5000, window_seconds = 60 } }
//! ```
//!
//! A component whose bytes are new becomes a new version of its module (named by the file
//! stem) and is activated; a manifest whose text is new replaces the bindings it declared
//! before (and overrides API-made bindings for the same provider). What was imported is
//! recorded by content hash, so a restart re-imports nothing and does not undo changes made
//! over the API since. A change is applied whole or not at all: if any file is invalid, the
//! change is refused, logged and counted, and the set in force stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use leaky_engine::sha256_hex;
use leaky_store::policies::{self, Binding, NewVersion, VersionInfo};
use serde::Deserialize;

use crate::services::policies::bound::Params;
use crate::services::policies::registry::{PolicyError, PolicyRegistry, set_active, validate_name};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    binding: Vec<ManifestBinding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestBinding {
    provider: String,
    module: String,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    shadow: Option<ManifestShadow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestShadow {
    module: String,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
}

/// Parameters as the strings modules take: TOML strings as they are, numbers and booleans in
/// their TOML spelling.
pub fn params_text(params: BTreeMap<String, toml::Value>) -> Params {
    params
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect()
}

/// The policy files of `dir`, sorted, as `(file name, path)`.
fn files(dir: &Path, extension: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == extension))
        .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p)))
        .collect();
    found.sort();
    found
}

fn read(path: &Path) -> Result<Vec<u8>, PolicyError> {
    std::fs::read(path).map_err(|e| PolicyError::InvalidModule(format!("cannot read {}: {e}", file_label(path))))
}

fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Imports what changed in `dir` since the last import. Returns whether anything changed.
pub async fn import(registry: &PolicyRegistry, dir: &Path) -> Result<bool, PolicyError> {
    let _guard = registry.lock_changes().await;
    let pool = registry.db().pool();
    let recorded: BTreeMap<String, String> = policies::sources(pool).await?.into_iter().collect();

    let mut components: Vec<(VersionInfo, String)> = Vec::new();
    for (file, path) in files(dir, "wasm") {
        let bytes = read(&path)?;
        let sha256 = sha256_hex(&bytes);
        if recorded.get(&file) == Some(&sha256) {
            continue;
        }
        let name = file.trim_end_matches(".wasm");
        validate_name(name).map_err(|e| PolicyError::InvalidModule(format!("{file}: {e}")))?;
        let policy =
            registry.load(bytes.clone()).await.map_err(|e| PolicyError::InvalidModule(format!("{file}: {e}")))?;
        let kind = policy.info().kind.as_str();
        let new = NewVersion { name, kind, sha256: &sha256, component: &bytes, source: &file };
        let (info, _) = policies::add_version(pool, new).await?;
        components.push((info, file));
    }

    let mut state = policies::state(pool).await?;
    for (info, _) in &components {
        set_active(&mut state, info.clone());
    }
    let mut manifests: Vec<(String, String, Vec<Binding>)> = Vec::new();
    let present = files(dir, "toml");
    for (file, path) in &present {
        let text = read(path)?;
        let sha256 = sha256_hex(&text);
        if recorded.get(file) == Some(&sha256) {
            continue;
        }
        let text = String::from_utf8(text).map_err(|_| PolicyError::InvalidBinding(format!("{file} is not UTF-8")))?;
        let parsed: Manifest =
            toml::from_str(&text).map_err(|e| PolicyError::InvalidBinding(format!("{file}: {}", e.message())))?;
        let mut bindings = Vec::new();
        for b in parsed.binding {
            crate::routes::validate::provider(&b.provider)
                .map_err(|e| PolicyError::InvalidBinding(format!("{file}: {e}")))?;
            let kind = state.active.iter().find(|v| v.name == b.module).map(|v| v.kind.clone()).ok_or_else(|| {
                PolicyError::InvalidBinding(format!("{file}: module `{}` has no active version", b.module))
            })?;
            bindings.push(Binding {
                provider: b.provider,
                kind,
                module: b.module,
                params: params_text(b.params),
                shadow: b.shadow.map(|s| (s.module, params_text(s.params))),
                source: file.clone(),
            });
        }
        manifests.push((file.clone(), sha256, bindings));
    }
    // A manifest that was removed takes its bindings with it.
    for (file, sha256) in &recorded {
        if file.ends_with(".toml") && sha256 != REMOVED && !present.iter().any(|(f, _)| f == file) {
            manifests.push((file.clone(), REMOVED.into(), Vec::new()));
        }
    }
    if components.is_empty() && manifests.is_empty() {
        return Ok(false);
    }
    for (source, _, bindings) in &manifests {
        state
            .bindings
            .retain(|b| b.source != *source && !bindings.iter().any(|n| n.provider == b.provider && n.kind == b.kind));
        state.bindings.extend(bindings.iter().cloned());
    }
    registry.build(&state).await?;

    for (info, file) in &components {
        policies::activate(pool, &info.name, info.version).await?;
        policies::set_source(pool, file, &info.sha256).await?;
        tracing::info!(module = %info.name, version = info.version, file = %file, "policy component imported and activated");
    }
    for (source, sha256, bindings) in &manifests {
        policies::import_manifest(pool, source, sha256, bindings).await?;
        tracing::info!(manifest = %source, bindings = bindings.len(), "policy manifest imported");
    }
    registry.reload_locked().await?;
    Ok(true)
}

/// The recorded hash of a manifest that was removed.
const REMOVED: &str = "removed";

/// What identifies the directory's content cheaply: every policy file's name, size and mtime.
fn fingerprint(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut all: Vec<_> = ["wasm", "toml"]
        .iter()
        .flat_map(|ext| files(dir, ext))
        .map(|(name, path)| {
            let meta = std::fs::metadata(&path).ok();
            (name, meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok()))
        })
        .collect();
    all.sort();
    all
}

/// Watches `dir` every `interval`: a change that has been stable for one scan (so a file
/// being copied is not read half-written) is imported. Stops when the registry is dropped.
pub fn spawn_watcher(registry: Weak<PolicyRegistry>, dir: PathBuf, interval: Duration) {
    tokio::spawn(async move {
        let mut applied = fingerprint(&dir);
        let mut seen = applied.clone();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(registry) = registry.upgrade() else { return };
            let now = fingerprint(&dir);
            if now != seen {
                seen = now;
                continue;
            }
            if now == applied {
                continue;
            }
            applied = now;
            apply(&registry, &dir).await;
        }
    });
}

async fn apply(registry: &Arc<PolicyRegistry>, dir: &Path) {
    match import(registry, dir).await {
        Ok(true) => {
            metrics::counter!("leaky_policy_reloads_total", "outcome" => "applied").increment(1);
        }
        Ok(false) => {}
        Err(err) => {
            metrics::counter!("leaky_policy_reloads_total", "outcome" => "refused").increment(1);
            tracing::error!(error = %err, "a change in the policy directory was refused; the policies in force stay");
        }
    }
}
