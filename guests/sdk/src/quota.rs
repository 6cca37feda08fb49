//! Bindings of the `quota-rule` world.

/// The generated bindings; use the re-exports below.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "quota-rule",
        pub_export_macro: true,
        export_macro_name: "__export_quota_rule",
        default_bindings_module: "::leaky_policy_sdk::quota::bindings",
        runtime_path: "::leaky_policy_sdk::__wit_bindgen::rt",
        additional_derives: [PartialEq],
    });
}

pub use bindings::exports::leaky::policy::quota::{Charge, Guest};
pub use bindings::leaky::policy::types::Usage;

/// Exports a type implementing [`Guest`] as this component's quota rule.
/// Natively (for tests) it expands to nothing.
#[macro_export]
macro_rules! export_quota_rule {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::quota::bindings::__export_quota_rule!($ty);
    };
}
