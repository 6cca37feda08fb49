//! The policy set in force: which bound rate limiter (and shadow) and which quota rule apply to
//! each provider. A set is immutable; a change builds a new one and swaps it in whole.

use std::collections::HashMap;
use std::sync::Arc;

use leaky_engine::{Policy, PolicyKind};
use leaky_store::policies::{PolicyState, VersionInfo};

use crate::services::policies::bound::{BoundPolicy, BoundQuotaRule, Params};

/// The rate limiter of a provider, and the shadow evaluated beside it.
pub struct RateBinding {
    /// Enforced.
    pub policy: Arc<BoundPolicy>,
    /// Computed and counted, never enforced.
    pub shadow: Option<Arc<BoundPolicy>>,
    /// The same module with `capacity` and every `*_per_second` rate divided by the number of
    /// replicas: what a replica enforces alone when the shared rate state is unavailable and
    /// it fails open. `None` when there is one replica (then `policy` itself).
    pub local_share: Option<Arc<BoundPolicy>>,
}

impl RateBinding {
    /// The policy to enforce locally while the shared rate state is unavailable.
    pub fn local(&self) -> &Arc<BoundPolicy> {
        self.local_share.as_ref().unwrap_or(&self.policy)
    }
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
    /// How many replicas share each limit (for [`RateBinding::local_share`]).
    pub replicas: u32,
}

/// `params` with `capacity` and every `*_per_second` rate divided by `replicas`.
pub fn share_of(params: &Params, replicas: u32) -> Params {
    let n = f64::from(replicas.max(1));
    params
        .iter()
        .map(|(name, value)| {
            let shared = match value.parse::<f64>() {
                Ok(v) if name == "capacity" => ((v / n).floor().max(1.0) as u64).to_string(),
                Ok(v) if name.ends_with("_per_second") => (v / n).to_string(),
                _ => value.clone(),
            };
            (name.clone(), shared)
        })
        .collect()
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

    fn rate_binding(
        &self,
        module: &str,
        params: &Params,
        shadow: Option<&(String, Params)>,
    ) -> Result<RateBinding, BuildError> {
        let shadow = match shadow {
            Some((module, params)) => Some(self.rate(module, params)?),
            None => None,
        };
        let policy = self.rate(module, params)?;
        let local_share = if self.replicas > 1 {
            match self.rate(module, &share_of(params, self.replicas)) {
                Ok(local) => Some(local),
                Err(err) => {
                    tracing::warn!(module, error = %err, "cannot divide the limit among replicas; a replica failing open enforces all of it");
                    None
                }
            }
        } else {
            None
        };
        Ok(RateBinding { policy, shadow, local_share })
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
            .rate_binding(module, params, None)
            .map(Arc::new)
            .map_err(|e| ("the default (token.bucket.*)".to_string(), e))?;
        let mut rate = HashMap::new();
        let mut quota = HashMap::new();
        for b in &inputs.state.bindings {
            let named = |e| (format!("provider `{}`", b.provider), e);
            if b.kind == PolicyKind::QuotaRule.as_str() {
                quota.insert(b.provider.clone(), inputs.quota(&b.module, &b.params).map_err(named)?);
            } else {
                let bound = inputs.rate_binding(&b.module, &b.params, b.shadow.as_ref()).map_err(named)?;
                rate.insert(b.provider.clone(), Arc::new(bound));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_share_divides_capacity_and_rates_only() {
        let params = vec![
            ("capacity".to_string(), "1000".to_string()),
            ("leak_rate_per_second".to_string(), "10".to_string()),
            ("window_seconds".to_string(), "60".to_string()),
        ];
        let share = share_of(&params, 4);
        assert_eq!(share[0].1, "250");
        assert_eq!(share[1].1, "2.5");
        assert_eq!(share[2].1, "60", "windows are not divided");
        assert_eq!(share_of(&[("capacity".into(), "3".into())].to_vec(), 8)[0].1, "1", "at least one token");
    }
}
