//! Typed errors: why a component was refused at load, and how a guest misbehaved at call time.

use std::time::Duration;

/// Why a component was refused when loaded. Nothing is kept of a refused component.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Larger than `max_module_bytes`.
    #[error("component is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The component's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A core WebAssembly module rather than a component.
    #[error(
        "this is a core WebAssembly module, not a component: build the policy for wasm32-wasip2 with the policy SDK"
    )]
    CoreModule,
    /// Not valid WebAssembly, or it failed to compile.
    #[error("not a valid component: {0}")]
    Invalid(String),
    /// It imports something; policies may import nothing.
    #[error(
        "component imports `{name}`, which the host does not provide: policies may import nothing \
         (no environment, files, network or clock); build on the policy SDK without `std`"
    )]
    ForbiddenImport {
        /// The first import refused.
        name: String,
        /// Every import the component declares.
        all: Vec<String>,
    },
    /// It exports no policy interface this host knows.
    #[error("component exports none of the known policy interfaces ({expected}); it exports: {found}")]
    UnknownWorld {
        /// What the host looked for.
        expected: String,
        /// What the component exports.
        found: String,
    },
    /// It exports a policy interface with the wrong functions or types.
    #[error("component exports `{interface}` with the wrong shape: {reason}")]
    WrongShape {
        /// The interface concerned.
        interface: &'static str,
        /// What does not match.
        reason: String,
    },
    /// The engine could not be set up.
    #[error("the engine could not start: {0}")]
    Engine(String),
}

/// How a call into a guest failed. The instance involved is discarded; the next call uses a
/// fresh one, so one misbehaving request does not poison the policy.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The call used up its fuel (an endless loop, or far too much work).
    #[error("policy used up its budget of {fuel} fuel (an endless loop, or far too much work)")]
    OutOfFuel {
        /// The budget of one call.
        fuel: u64,
    },
    /// The call ran past its wall-clock deadline without using up its fuel (it stalled).
    #[error("policy ran past its {0:?} deadline")]
    Timeout(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("policy exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The guest recursed past its stack.
    #[error("policy overflowed its stack")]
    StackOverflow,
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access, ...).
    #[error("policy trapped: {0}")]
    Trap(String),
    /// The guest answered something impossible; the host refuses to act on it.
    #[error("policy returned an invalid answer: {0}")]
    InvalidAnswer(String),
    /// The guest could not be instantiated.
    #[error("policy could not be instantiated: {0}")]
    Instantiate(String),
    /// `configure` refused the parameters; the text names the offending parameter.
    #[error("invalid parameters: {0}")]
    BadParams(String),
}
