//! What a component is: its world, imports, exports, size and digest.

use sha2::{Digest, Sha256};
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::bindings::{QUOTA_INTERFACE, RATE_LIMITER_INTERFACE};
use crate::error::LoadError;

/// Which policy world a component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// The `rate-limit-policy` world.
    RateLimiter,
    /// The `quota-rule` world.
    QuotaRule,
}

impl PolicyKind {
    /// The WIT world's name.
    pub fn world(self) -> &'static str {
        match self {
            Self::RateLimiter => "leaky:policy/rate-limit-policy@0.1.0",
            Self::QuotaRule => "leaky:policy/quota-rule@0.1.0",
        }
    }

    /// A short name for APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimiter => "rate-limiter",
            Self::QuotaRule => "quota-rule",
        }
    }
}

/// Facts about a loaded component.
#[derive(Clone, Debug)]
pub struct ComponentInfo {
    /// The world it implements.
    pub kind: PolicyKind,
    /// Hex sha256 of the component's bytes: its identity.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// Names of its imports (only type-only interfaces for a component that loaded).
    pub imports: Vec<String>,
    /// Names of its exports.
    pub exports: Vec<String>,
    /// Time spent compiling, or loading the cached compilation.
    pub compile_time: Duration,
    /// Whether the compilation came from the artifact cache.
    pub cached: bool,
}

/// Hex sha256 of a component: the key of its compiled artifact and of its stored versions.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fails when `bytes` is a core module: `\0asm` with layer 0 and version 1.
pub(crate) fn refuse_core_module(bytes: &[u8]) -> Result<(), LoadError> {
    match bytes {
        [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ..] => Err(LoadError::CoreModule),
        _ => Ok(()),
    }
}

/// The imports and exports of a compiled component.
pub(crate) struct Interfaces {
    /// Imported instances that carry only type definitions (such as `leaky:policy/types`):
    /// they grant nothing, and the host satisfies them with empty instances.
    pub(crate) type_only: Vec<String>,
    /// Every other import: each would be a capability, and the host grants none.
    pub(crate) capabilities: Vec<String>,
    /// Export names.
    pub(crate) exports: Vec<String>,
}

impl Interfaces {
    pub(crate) fn of(engine: &Engine, component: &Component) -> Self {
        let ty = component.component_type();
        let (mut type_only, mut capabilities) = (Vec::new(), Vec::new());
        for (name, item) in ty.imports(engine) {
            let only_types = match &item.ty {
                ComponentItem::ComponentInstance(instance) => {
                    instance.exports(engine).all(|(_, export)| matches!(export.ty, ComponentItem::Type(_)))
                }
                ComponentItem::Type(_) => true,
                _ => false,
            };
            if only_types { &mut type_only } else { &mut capabilities }.push(name.to_string());
        }
        let exports = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
        Self { type_only, capabilities, exports }
    }

    /// Every import name, type-only ones first.
    pub(crate) fn all_imports(&self) -> Vec<String> {
        self.type_only.iter().chain(&self.capabilities).cloned().collect()
    }
}

/// Refuses any capability import, naming the first; then finds the world from the exports.
pub(crate) fn classify(interfaces: &Interfaces) -> Result<PolicyKind, LoadError> {
    if let Some(first) = interfaces.capabilities.first() {
        return Err(LoadError::ForbiddenImport { name: first.clone(), all: interfaces.all_imports() });
    }
    let exports = &interfaces.exports;
    let has = |name: &str| exports.iter().any(|e| e == name);
    match (has(RATE_LIMITER_INTERFACE), has(QUOTA_INTERFACE)) {
        (true, false) => Ok(PolicyKind::RateLimiter),
        (false, true) => Ok(PolicyKind::QuotaRule),
        (true, true) => {
            Err(LoadError::UnknownWorld { expected: "exactly one of them".into(), found: exports.join(", ") })
        }
        (false, false) => Err(LoadError::UnknownWorld {
            expected: format!("{RATE_LIMITER_INTERFACE}, {QUOTA_INTERFACE}"),
            found: if exports.is_empty() { "nothing".into() } else { exports.join(", ") },
        }),
    }
}
