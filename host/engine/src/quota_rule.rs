//! A loaded quota rule, and the host's checks on every charge it returns.

use std::sync::Arc;

use crate::bindings::{Charge, Usage, quota_api};
use crate::error::GuestError;
use crate::inspect::ComponentInfo;
use crate::pool::InstancePool;

/// Longest refusal text passed on to a caller.
const MAX_DENY_BYTES: usize = 512;

/// A quota-rule component, ready to price requests. Cheap to clone.
#[derive(Clone)]
pub struct QuotaRule {
    inner: Arc<Inner>,
}

struct Inner {
    info: ComponentInfo,
    pool: InstancePool<quota_api::Guest>,
}

/// Parameters validated by a quota rule's `configure`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaRuleConfig {
    blob: Arc<[u8]>,
}

impl QuotaRule {
    pub(crate) fn new(info: ComponentInfo, pool: InstancePool<quota_api::Guest>) -> Self {
        Self { inner: Arc::new(Inner { info, pool }) }
    }

    /// Facts about the component.
    pub fn info(&self) -> &ComponentInfo {
        &self.inner.info
    }

    /// Validates parameters; [`GuestError::BadParams`] names the offending one.
    pub fn configure(&self, params: &[(String, String)]) -> Result<QuotaRuleConfig, GuestError> {
        let answer = self.inner.pool.call(|store, guest| guest.call_configure(store, &params.to_vec()))?;
        let blob = answer.map_err(GuestError::BadParams)?;
        Ok(QuotaRuleConfig { blob: blob.into() })
    }

    /// What one request costs, or why it may not run. The answer is checked.
    pub fn price(&self, config: &QuotaRuleConfig, usage: &Usage) -> Result<Charge, GuestError> {
        let charge = self.inner.pool.call(|store, guest| guest.call_price(store, &config.blob, usage))?;
        if let Charge::Deny(reason) = &charge
            && (reason.is_empty() || reason.len() > MAX_DENY_BYTES)
        {
            return Err(GuestError::InvalidAnswer(format!(
                "a refusal needs a reason of 1-{MAX_DENY_BYTES} bytes, got {}",
                reason.len()
            )));
        }
        Ok(charge)
    }
}
