//! Model pricing, a quota rule: what a request costs against the quota, and whether it may run.
//!
//! Parameters (all optional):
//! - `default_multiplier`: cost per token for models without their own price (default 1).
//! - `model.<pattern>`: cost per token for matching models, e.g. `model.gpt-4o = 2.5`.
//! - `allow`: comma-separated patterns; when given, only matching models may run.
//! - `deny`: comma-separated patterns that may never run (checked before `allow`).
//! - `require_model`: `true` refuses requests that name no model (default `false`).
//!
//! A pattern is a model name, or a prefix ending in `*` (`gpt-4*`). The most specific price
//! wins: an exact name over any prefix, a longer prefix over a shorter one.
//! The cost is `ceil(tokens * multiplier)`, with multipliers honoured to a millionth.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use leaky_policy_sdk::MICRO;
use leaky_policy_sdk::codec::{Reader, Writer};
use leaky_policy_sdk::params::{Params, non_negative};
use leaky_policy_sdk::quota::{Charge, Guest, Usage};

/// The model-pricing rule.
pub struct ModelPricing;

/// The largest multiplier accepted.
const MAX_MULTIPLIER: f64 = 1_000_000.0;

/// Validated parameters.
#[derive(Default)]
struct Rules {
    /// Micro-units per token.
    default_price: u64,
    prices: Vec<(String, u64)>,
    allow: Vec<String>,
    deny: Vec<String>,
    require_model: bool,
}

/// How specifically `pattern` matches `model`: `None` for no match, larger is more specific.
fn specificity(pattern: &str, model: &str) -> Option<usize> {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix).then_some(prefix.len()),
        None => (pattern == model).then_some(usize::MAX),
    }
}

fn matches_any(patterns: &[String], model: &str) -> bool {
    patterns.iter().any(|p| specificity(p, model).is_some())
}

fn to_micro(value: f64) -> u64 {
    leaky_policy_sdk::units::round(value * MICRO as f64)
}

impl Rules {
    fn from_params(params: &Params) -> Result<Self, String> {
        params.reject_unknown(&["default_multiplier", "allow", "deny", "require_model"], &["model."])?;
        let default = params.non_negative_f64_or("default_multiplier", 1.0, MAX_MULTIPLIER)?;
        let mut prices = Vec::new();
        for (pattern, raw) in params.with_prefix("model.") {
            if pattern.is_empty() {
                return Err("parameter `model.` needs a model name after the dot".into());
            }
            let value = non_negative(&format!("model.{pattern}"), raw, MAX_MULTIPLIER)?;
            prices.push((pattern.into(), to_micro(value)));
        }
        Ok(Self {
            default_price: to_micro(default),
            prices,
            allow: params.list("allow"),
            deny: params.list("deny"),
            require_model: params.bool_or("require_model", false)?,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let list = |w: Writer, items: &[String]| items.iter().fold(w.u64(items.len() as u64), |w, s| w.str(s));
        let mut w = Writer::new().u64(self.default_price).u64(u64::from(self.require_model));
        w = self.prices.iter().fold(w.u64(self.prices.len() as u64), |w, (p, v)| w.str(p).u64(*v));
        w = list(w, &self.allow);
        list(w, &self.deny).finish()
    }

    fn decode(blob: &[u8]) -> Option<Self> {
        let mut r = Reader::new(blob);
        let default_price = r.u64()?;
        let require_model = r.u64()? == 1;
        let prices = (0..r.u64()?).map(|_| Some((r.str()?, r.u64()?))).collect::<Option<Vec<_>>>()?;
        let allow = (0..r.u64()?).map(|_| r.str()).collect::<Option<Vec<_>>>()?;
        let deny = (0..r.u64()?).map(|_| r.str()).collect::<Option<Vec<_>>>()?;
        r.is_empty().then_some(Self { default_price, prices, allow, deny, require_model })
    }

    fn price_of(&self, model: Option<&str>) -> u64 {
        let Some(model) = model else {
            return self.default_price;
        };
        self.prices
            .iter()
            .filter_map(|(pattern, price)| specificity(pattern, model).map(|s| (s, *price)))
            .max_by_key(|(s, _)| *s)
            .map_or(self.default_price, |(_, price)| price)
    }

    fn charge(&self, usage: &Usage) -> Charge {
        let model = usage.model.as_deref();
        match model {
            None if self.require_model => {
                return Charge::Deny("this provider requires a model name".into());
            }
            Some(m) if matches_any(&self.deny, m) => {
                return Charge::Deny(format!("model `{m}` is denied"));
            }
            Some(m) if !self.allow.is_empty() && !matches_any(&self.allow, m) => {
                return Charge::Deny(format!("model `{m}` is not in the allow list"));
            }
            _ => {}
        }
        let micro = u128::from(usage.tokens) * u128::from(self.price_of(model));
        Charge::Cost(u64::try_from(micro.div_ceil(u128::from(MICRO))).unwrap_or(u64::MAX))
    }
}

impl Guest for ModelPricing {
    fn configure(params: Vec<(String, String)>) -> Result<Vec<u8>, String> {
        Rules::from_params(&Params::new(params)).map(|rules| rules.encode())
    }

    fn price(config: Vec<u8>, usage: Usage) -> Charge {
        match Rules::decode(&config) {
            Some(rules) => rules.charge(&usage),
            None => Charge::Deny("the rule's configuration is corrupt; reconfigure the binding".into()),
        }
    }
}

leaky_policy_sdk::export_quota_rule!(ModelPricing);
