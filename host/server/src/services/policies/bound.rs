//! A loaded component configured with its parameters: what a decision runs.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use leaky_engine::{PolicyEngine, QuotaRule, QuotaRuleConfig, RateLimiter, RateLimiterConfig, Request, Words};

use crate::settings::BucketSettings;

/// Parameters of a module, in the order given.
pub type Params = Vec<(String, String)>;

/// A rate limiter with its validated parameters.
pub struct BoundPolicy {
    /// The module's name.
    pub module: String,
    /// The module's version (0 for a component read straight from a file).
    pub version: i64,
    /// The strategy it reports; it names the layout of its state, so state is carried over a
    /// swap between versions that report the same strategy.
    pub strategy: Arc<str>,
    /// The component's sha256.
    pub sha256: String,
    /// The loaded component.
    pub limiter: RateLimiter,
    /// Its configuration.
    pub config: RateLimiterConfig,
    /// The parameters as given.
    pub params: Params,
}

impl BoundPolicy {
    /// Configures `limiter` (version `version` of module `module`) with `params`.
    pub fn bind(module: &str, version: i64, limiter: RateLimiter, params: Params) -> anyhow::Result<Self> {
        let config = limiter.configure(&params).with_context(|| format!("module `{module}` v{version}"))?;
        Ok(Self {
            module: module.to_string(),
            version,
            strategy: limiter.strategy().into(),
            sha256: limiter.info().sha256.clone(),
            limiter,
            config,
            params,
        })
    }

    /// Whether a limiter in `state` has all of its capacity back at `now_ms`, so that dropping
    /// the state (and starting afresh later) changes no decision: a probe of zero tokens finds
    /// nothing spent. A state the component cannot read counts as not full.
    pub fn is_full_again(&self, state: Option<Words>, now_ms: u64) -> bool {
        let probe = Request { tokens: 0, now_ms };
        self.limiter
            .decide(&self.config, state, probe)
            .is_ok_and(|decision| decision.verdict.remaining >= decision.verdict.limit)
    }
}

/// A quota rule with its validated parameters.
pub struct BoundQuotaRule {
    /// The module's name.
    pub module: String,
    /// The module's version.
    pub version: i64,
    /// The component's sha256.
    pub sha256: String,
    /// The loaded component.
    pub rule: QuotaRule,
    /// Its configuration.
    pub config: QuotaRuleConfig,
}

impl BoundQuotaRule {
    /// Configures `rule` (version `version` of module `module`) with `params`.
    pub fn bind(module: &str, version: i64, rule: QuotaRule, params: &Params) -> anyhow::Result<Self> {
        let config = rule.configure(params).with_context(|| format!("module `{module}` v{version}"))?;
        Ok(Self { module: module.to_string(), version, sha256: rule.info().sha256.clone(), rule, config })
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

/// The module parameters of the seed's `token.bucket.*` settings for its strategy.
pub fn default_params(bucket: &BucketSettings) -> anyhow::Result<Params> {
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
