//! Model pricing semantics, natively (the engine's tests run the component too).

use leaky_policy_sdk::quota::{Charge, Guest, Usage};
use model_pricing::ModelPricing;

fn rule(pairs: &[(&str, &str)]) -> Vec<u8> {
    let params = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ModelPricing::configure(params).expect("valid parameters")
}

fn price(config: &[u8], model: Option<&str>, tokens: u64) -> Charge {
    let usage =
        Usage { subject: "u".into(), provider: "openai".into(), model: model.map(Into::into), tokens, now_ms: 0 };
    ModelPricing::price(config.to_vec(), usage)
}

#[test]
fn the_most_specific_price_wins_and_costs_round_up() {
    let config = rule(&[("default_multiplier", "1"), ("model.gpt-4*", "2"), ("model.gpt-4o-mini", "0.15")]);
    assert_eq!(price(&config, Some("gpt-4o"), 100), Charge::Cost(200));
    assert_eq!(price(&config, Some("gpt-4o-mini"), 100), Charge::Cost(15));
    assert_eq!(price(&config, Some("gpt-4o-mini"), 1), Charge::Cost(1), "0.15 rounds up to 1");
    assert_eq!(price(&config, Some("claude"), 100), Charge::Cost(100));
    assert_eq!(price(&config, None, 7), Charge::Cost(7));
}

#[test]
fn deny_then_allow_lists_and_required_models() {
    let config = rule(&[("allow", "gpt-4*, o1"), ("deny", "gpt-4-32k"), ("require_model", "true")]);
    assert_eq!(price(&config, Some("o1"), 10), Charge::Cost(10));
    assert!(matches!(price(&config, Some("gpt-4-32k"), 10), Charge::Deny(r) if r.contains("denied")));
    assert!(matches!(price(&config, Some("llama"), 10), Charge::Deny(r) if r.contains("allow list")));
    assert!(matches!(price(&config, None, 10), Charge::Deny(r) if r.contains("requires a model")));
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    for (pairs, name) in [
        (vec![("model.gpt-4o", "-1")], "model.gpt-4o"),
        (vec![("default_multiplier", "NaN")], "default_multiplier"),
        (vec![("require_model", "yes")], "require_model"),
        (vec![("modle.gpt", "1")], "modle.gpt"),
    ] {
        let params = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let err = ModelPricing::configure(params).expect_err("must refuse");
        assert!(err.contains(&format!("`{name}`")), "{pairs:?}: {err}");
    }
}

#[test]
fn a_corrupt_configuration_denies_instead_of_guessing() {
    assert!(matches!(price(&[1, 2, 3], Some("x"), 1), Charge::Deny(_)));
}
