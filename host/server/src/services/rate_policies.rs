//! Which rate policy applies to which provider.
//!
//! Components come from the policy directory (`<module>.wasm`); bindings from its `*.toml`
//! manifests:
//!
//! ```toml
//! [[binding]]
//! provider = "openai"
//! module = "token-bucket"
//! params = { capacity = 5000, refill_rate_per_second = 50 }
//! ```
//!
//! Providers without a binding get the default policy, built from the seed's settings
//! `token.bucket.{strategy, capacity, leak_rate_per_second, window_seconds}`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use leaky_engine::{PolicyEngine, RateLimiter, RateLimiterConfig};
use serde::Deserialize;

use crate::settings::BucketSettings;

/// A limiter with its validated parameters.
pub struct BoundPolicy {
    /// The module's name (its file stem).
    pub module: String,
    /// The strategy it reports.
    pub strategy: String,
    /// The component's sha256.
    pub sha256: String,
    /// The loaded component.
    pub limiter: RateLimiter,
    /// Its configuration.
    pub config: RateLimiterConfig,
    /// The parameters as given.
    pub params: Vec<(String, String)>,
}

impl BoundPolicy {
    /// Configures `limiter` (the component `module`) with `params`.
    pub fn bind(module: &str, limiter: RateLimiter, params: Vec<(String, String)>) -> anyhow::Result<Self> {
        let config = limiter.configure(&params).with_context(|| format!("module `{module}`"))?;
        Ok(Self {
            module: module.to_string(),
            strategy: limiter.strategy().to_string(),
            sha256: limiter.info().sha256.clone(),
            limiter,
            config,
            params,
        })
    }
}

/// Reads `<dir>/<module>.wasm` and loads it as a rate limiter.
pub fn load_module(engine: &PolicyEngine, dir: &Path, module: &str) -> anyhow::Result<RateLimiter> {
    let path = dir.join(format!("{module}.wasm"));
    let bytes = std::fs::read(&path).with_context(|| {
        format!("cannot read policy module {} (build the components with `cargo xtask guests`)", path.display())
    })?;
    engine.load_rate_limiter(&bytes).with_context(|| format!("{} was refused", path.display()))
}

/// Every binding, and the default.
pub struct RatePolicies {
    default: Arc<BoundPolicy>,
    by_provider: HashMap<String, Arc<BoundPolicy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    binding: Vec<Binding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Binding {
    provider: String,
    module: String,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
}

/// The module parameters of the seed's `token.bucket.*` settings for its strategy.
pub fn default_params(bucket: &BucketSettings) -> anyhow::Result<Vec<(String, String)>> {
    let capacity = ("capacity".to_string(), bucket.capacity.to_string());
    let rate = bucket.leak_rate_per_second.to_string();
    Ok(match bucket.strategy.as_str() {
        "leaky-bucket" => vec![capacity, ("leak_rate_per_second".into(), rate)],
        "token-bucket" => vec![capacity, ("refill_rate_per_second".into(), rate)],
        "fixed-window" | "sliding-window" => {
            vec![capacity, ("window_seconds".into(), bucket.window_seconds.to_string())]
        }
        other => bail!(
            "token.bucket.strategy `{other}` is not one of leaky-bucket, token-bucket, fixed-window, sliding-window"
        ),
    })
}

impl RatePolicies {
    /// Loads the default policy and every binding of the policy directory.
    pub fn load(engine: &PolicyEngine, dir: &Path, bucket: &BucketSettings) -> anyhow::Result<Self> {
        let mut modules: HashMap<String, RateLimiter> = HashMap::new();
        let mut bind = |module: &str, params: Vec<(String, String)>| -> anyhow::Result<Arc<BoundPolicy>> {
            let limiter = match modules.get(module) {
                Some(limiter) => limiter.clone(),
                None => {
                    let limiter = load_module(engine, dir, module)?;
                    modules.insert(module.to_string(), limiter.clone());
                    limiter
                }
            };
            BoundPolicy::bind(module, limiter, params).map(Arc::new)
        };
        let default =
            bind(&bucket.strategy, default_params(bucket)?).context("the default rate policy (token.bucket.*)")?;
        let mut by_provider = HashMap::new();
        for manifest in manifests(dir)? {
            let text = std::fs::read_to_string(&manifest)?;
            let parsed: Manifest = toml::from_str(&text).with_context(|| format!("{}", manifest.display()))?;
            for b in parsed.binding {
                let params = b.params.into_iter().map(|(k, v)| (k, value_text(v))).collect();
                let bound = bind(&b.module, params)
                    .with_context(|| format!("{}: provider `{}`", manifest.display(), b.provider))?;
                by_provider.insert(b.provider, bound);
            }
        }
        Ok(Self { default, by_provider })
    }

    /// The policy of a provider.
    pub fn for_provider(&self, provider: &str) -> &Arc<BoundPolicy> {
        self.by_provider.get(provider).unwrap_or(&self.default)
    }

    /// `(provider, policy)` for every binding, `*` for the default.
    pub fn all(&self) -> Vec<(String, Arc<BoundPolicy>)> {
        let mut all: Vec<_> = self.by_provider.iter().map(|(p, b)| (p.clone(), Arc::clone(b))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.push(("*".into(), Arc::clone(&self.default)));
        all
    }
}

fn value_text(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn manifests(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut found: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    found.sort();
    Ok(found)
}
