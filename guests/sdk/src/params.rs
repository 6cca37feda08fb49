//! Reading and validating the `(name, value)` parameters an operator gave a policy.
//!
//! Every error names the parameter, so an operator sees exactly what to fix.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// The parameters of one binding.
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Wraps the pairs handed to `configure`.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// The raw value of `name`, if given. The last occurrence wins.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.trim())
    }

    /// All pairs whose name starts with `prefix`, with the prefix removed from the name.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.pairs.iter().filter_map(move |(k, v)| k.strip_prefix(prefix).map(|rest| (rest, v.trim())))
    }

    /// Refuses any parameter that is neither in `known` nor starts with one of `prefixes`:
    /// a misspelt name is an error, never a silently ignored setting.
    pub fn reject_unknown(&self, known: &[&str], prefixes: &[&str]) -> Result<(), String> {
        for (name, _) in &self.pairs {
            let expected = known.contains(&name.as_str()) || prefixes.iter().any(|p| name.starts_with(p));
            if !expected {
                return Err(format!("unknown parameter `{name}` (expected one of: {})", known.join(", ")));
            }
        }
        Ok(())
    }

    /// A whole number of at least 1 and at most `max`.
    pub fn positive_u64(&self, name: &str, max: u64) -> Result<u64, String> {
        let raw = self.get(name).ok_or_else(|| missing(name))?;
        let value = parse_number(name, raw)?;
        if value != (value as u64) as f64 {
            return Err(format!("parameter `{name}` must be a whole number, got `{raw}`"));
        }
        if value < 1.0 || value > max as f64 {
            return Err(format!("parameter `{name}` must be between 1 and {max}, got `{raw}`"));
        }
        Ok(value as u64)
    }

    /// A finite number greater than zero and at most `max`.
    pub fn positive_f64(&self, name: &str, max: f64) -> Result<f64, String> {
        let raw = self.get(name).ok_or_else(|| missing(name))?;
        let value = parse_number(name, raw)?;
        if value <= 0.0 || value > max {
            return Err(format!("parameter `{name}` must be greater than 0 and at most {max}, got `{raw}`"));
        }
        Ok(value)
    }

    /// A finite number of at least zero and at most `max`, or `default` when absent.
    pub fn non_negative_f64_or(&self, name: &str, default: f64, max: f64) -> Result<f64, String> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => non_negative(name, raw, max),
        }
    }

    /// `true` or `false`, or `default` when absent.
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.get(name) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(raw) => Err(format!("parameter `{name}` must be `true` or `false`, got `{raw}`")),
        }
    }

    /// A comma-separated list; empty items are dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|raw| raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(ToString::to_string).collect())
            .unwrap_or_default()
    }
}

/// The longest window a window strategy accepts: one year.
pub const MAX_WINDOW_SECONDS: u64 = 366 * 24 * 3600;

/// The parameters of a window strategy (`capacity`, `window_seconds`) as the words
/// `(capacity, window_ms, 0, 0)`. `capacity * window_ms` must stay below 3 * 10^18, so that the
/// strategies' scaled arithmetic fits in 64 bits.
pub fn window_config(pairs: Vec<(String, String)>) -> Result<(u64, u64, u64, u64), String> {
    let params = Params::new(pairs);
    params.reject_unknown(&["capacity", "window_seconds"], &[])?;
    let capacity = params.positive_u64("capacity", crate::units::MAX_CAPACITY)?;
    let window_ms = params.positive_u64("window_seconds", MAX_WINDOW_SECONDS)? * 1000;
    if capacity.checked_mul(window_ms).is_none_or(|product| product > MAX_CAPACITY_TIMES_WINDOW) {
        return Err(format!(
            "parameters `capacity` and `window_seconds` are too large together: capacity x window in ms must stay below {MAX_CAPACITY_TIMES_WINDOW}"
        ));
    }
    Ok((capacity, window_ms, 0, 0))
}

/// The largest `capacity * window_ms` a window strategy accepts.
pub const MAX_CAPACITY_TIMES_WINDOW: u64 = 3_000_000_000_000_000_000;

/// Checks words produced by [`window_config`]: `Some((capacity, window_ms))`.
pub fn decode_window_config(config: (u64, u64, u64, u64)) -> Option<(u64, u64)> {
    let (capacity, window_ms, ..) = config;
    let valid = capacity > 0
        && window_ms > 0
        && capacity.checked_mul(window_ms).is_some_and(|p| p <= MAX_CAPACITY_TIMES_WINDOW);
    valid.then_some((capacity, window_ms))
}

/// Parses a number that must be finite and at least zero, naming `name` in the error.
pub fn non_negative(name: &str, raw: &str, max: f64) -> Result<f64, String> {
    let value = parse_number(name, raw)?;
    if value < 0.0 || value > max {
        return Err(format!("parameter `{name}` must be between 0 and {max}, got `{raw}`"));
    }
    Ok(value)
}

fn parse_number(name: &str, raw: &str) -> Result<f64, String> {
    let value: f64 = raw.parse().map_err(|_| format!("parameter `{name}` must be a number, got `{raw}`"))?;
    if !value.is_finite() {
        return Err(format!("parameter `{name}` must be a finite number, got `{raw}`"));
    }
    Ok(value)
}

fn missing(name: &str) -> String {
    format!("missing parameter `{name}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn errors_name_the_parameter() {
        let p = params(&[("rate", "NaN"), ("cap", "-3"), ("w", "1.5")]);
        assert!(p.positive_f64("rate", 1e9).unwrap_err().contains("`rate`"));
        assert!(p.positive_u64("cap", 10).unwrap_err().contains("`cap`"));
        assert!(p.positive_u64("w", 10).unwrap_err().contains("whole number"));
        assert!(p.positive_u64("absent", 10).unwrap_err().contains("missing parameter `absent`"));
        assert!(params(&[("rate", "0")]).positive_f64("rate", 1e9).is_err());
        assert!(params(&[("rate", "inf")]).positive_f64("rate", 1e9).is_err());
    }

    #[test]
    fn unknown_names_are_refused() {
        let p = params(&[("capacity", "1"), ("capactiy", "2"), ("model.gpt", "2")]);
        let err = p.reject_unknown(&["capacity"], &["model."]).unwrap_err();
        assert!(err.contains("`capactiy`"), "{err}");
        assert!(params(&[("model.x", "1")]).reject_unknown(&[], &["model."]).is_ok());
    }
}
