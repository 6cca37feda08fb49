//! The policy set in force: which bound rate limiter (and shadow) and which quota rule apply to
//! each provider. A set is immutable; a change builds a new one and swaps it in whole.

use std::collections::HashMap;
use std::sync::Arc;

use leaky_engine::{Policy, PolicyKind};
use leaky_store::policies::{Binding, PolicyState, VersionInfo};

use crate::services::policies::bound::{BoundPolicy, BoundQuotaRule, Params};

/// The rate limiter of a provider, and the shadow evaluated beside it.
pub struct RateBinding {
    /// Enforced.
    pub policy: Arc<BoundPolicy>,
    /// Computed and counted, never enforced.
    pub shadow: Option<Arc<BoundPolicy>>,
}

/// Every binding in force, and the default rate limiter.
pub struct PolicySet {
    /// The stored generation this set was built from.
    pub generation: i64,
    default: Arc<RateBinding>,
    rate: HashMap<String, Arc<RateBinding>>,
    quota: HashMap<String, Arc<BoundQuotaRule>>,
}

/// One row of [`PolicySet::describe`].
pub struct InForce {
    /// The provider, `*` for the default.
    pub provider: String,
    /// `rate-limiter` or `quota-rule`.
    pub kind: &'static str,
    /// The module.
    pub module: String,
    /// Its version.
    pub version: i64,
    /// The component's sha256.
    pub sha256: String,
    /// The shadow module and version, if any.
    pub shadow: Option<(String, i64)>,
}

/// Why a set cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A binding names a module that has no active version.
    #[error("module `{0}` has no active version")]
    NotActive(String),
    /// A binding names a module of the other kind.
    #[error("module `{module}` is a {found}, not a {wanted}")]
    WrongKind {
        /// The module.
        module: String,
        /// Its kind.
        found: String,
        /// The kind the binding needs.
        wanted: &'static str,
    },
    /// A module refused its parameters.
    #[error("{0:#}")]
    Params(anyhow::Error),
}

/// What a build reads: the stored state and the loaded component of every active version.
pub struct Inputs<'a> {
    /// Active versions and bindings.
    pub state: &'a PolicyState,
    /// Loaded components by sha256.
    pub loaded: &'a HashMap<String, Policy>,
    /// The default rate limiter: module and parameters.
    pub default: (&'a str, Params),
}

impl Inputs<'_> {
    fn active(&self, module: &str) -> Result<(&VersionInfo, &Policy), BuildError> {
        let info = self.state.active.iter().find(|v| v.name == module).ok_or(BuildError::NotActive(module.into()))?;
        let policy = self.loaded.get(&info.sha256).ok_or(BuildError::NotActive(module.into()))?;
        Ok((info, policy))
    }

    fn rate(&self, module: &str, params: &Params) -> Result<Arc<BoundPolicy>, BuildError> {
        let (info, policy) = self.active(module)?;
        let Policy::RateLimiter(limiter) = policy else {
            return Err(wrong_kind(info, PolicyKind::RateLimiter));
        };
        BoundPolicy::bind(module, info.version, limiter.clone(), params.clone())
            .map(Arc::new)
            .map_err(BuildError::Params)
    }

    fn quota(&self, module: &str, params: &Params) -> Result<Arc<BoundQuotaRule>, BuildError> {
        let (info, policy) = self.active(module)?;
        let Policy::QuotaRule(rule) = policy else {
            return Err(wrong_kind(info, PolicyKind::QuotaRule));
        };
        BoundQuotaRule::bind(module, info.version, rule.clone(), params).map(Arc::new).map_err(BuildError::Params)
    }

    fn rate_binding(&self, b: &Binding) -> Result<RateBinding, BuildError> {
        let shadow = match &b.shadow {
            Some((module, params)) => Some(self.rate(module, params)?),
            None => None,
        };
        Ok(RateBinding { policy: self.rate(&b.module, &b.params)?, shadow })
    }
}

fn wrong_kind(info: &VersionInfo, wanted: PolicyKind) -> BuildError {
    BuildError::WrongKind { module: info.name.clone(), found: info.kind.clone(), wanted: wanted.as_str() }
}

impl PolicySet {
    /// Binds every module of `inputs`; the first binding that fails fails the build, naming
    /// the provider.
    pub fn build(inputs: &Inputs<'_>) -> Result<Self, (String, BuildError)> {
        let (module, params) = &inputs.default;
        let default = inputs
            .rate(module, params)
            .map(|policy| Arc::new(RateBinding { policy, shadow: None }))
            .map_err(|e| ("the default (token.bucket.*)".to_string(), e))?;
        let mut rate = HashMap::new();
        let mut quota = HashMap::new();
        for b in &inputs.state.bindings {
            let named = |e| (format!("provider `{}`", b.provider), e);
            if b.kind == PolicyKind::QuotaRule.as_str() {
                quota.insert(b.provider.clone(), inputs.quota(&b.module, &b.params).map_err(named)?);
            } else {
                rate.insert(b.provider.clone(), Arc::new(inputs.rate_binding(b).map_err(named)?));
            }
        }
        Ok(Self { generation: inputs.state.generation, default, rate, quota })
    }

    /// The rate limiter of a provider.
    pub fn rate_for(&self, provider: &str) -> &Arc<RateBinding> {
        self.rate.get(provider).unwrap_or(&self.default)
    }

    /// The quota rule of a provider, if one is bound.
    pub fn quota_for(&self, provider: &str) -> Option<&Arc<BoundQuotaRule>> {
        self.quota.get(provider)
    }

    /// The sha256 of every component in force.
    pub fn shas(&self) -> impl Iterator<Item = String> + '_ {
        let rate = std::iter::once(&self.default).chain(self.rate.values());
        let rate = rate.flat_map(|b| std::iter::once(&b.policy).chain(b.shadow.as_ref())).map(|p| p.sha256.clone());
        rate.chain(self.quota.values().map(|q| q.sha256.clone()))
    }

    /// Every binding in force, by provider; the default last.
    pub fn describe(&self) -> Vec<InForce> {
        let rate = self.rate.iter().map(|(provider, b)| InForce {
            provider: provider.clone(),
            kind: PolicyKind::RateLimiter.as_str(),
            module: b.policy.module.clone(),
            version: b.policy.version,
            sha256: b.policy.sha256.clone(),
            shadow: b.shadow.as_ref().map(|s| (s.module.clone(), s.version)),
        });
        let quota = self.quota.iter().map(|(provider, q)| InForce {
            provider: provider.clone(),
            kind: PolicyKind::QuotaRule.as_str(),
            module: q.module.clone(),
            version: q.version,
            sha256: q.sha256.clone(),
            shadow: None,
        });
        let mut all: Vec<_> = rate.chain(quota).collect();
        all.sort_by(|a, b| (&a.provider, a.kind).cmp(&(&b.provider, b.kind)));
        let d = &self.default.policy;
        all.push(InForce {
            provider: "*".into(),
            kind: PolicyKind::RateLimiter.as_str(),
            module: d.module.clone(),
            version: d.version,
            sha256: d.sha256.clone(),
            shadow: None,
        });
        all
    }
}
