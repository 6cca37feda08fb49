//! `leaky policy check FILE.wasm`: what a component is, and whether the host would load it.

use anyhow::{Context, Result};
use leaky_engine::Policy;
use std::path::Path;

/// Loads the component and prints its facts; fails with the engine's reason when refused.
pub fn run(file: &Path) -> Result<()> {
    let bytes = super::read_component(file)?;
    let policy = super::engine()?.load(&bytes).with_context(|| format!("{} was refused", file.display()))?;
    let info = policy.info();
    println!("file:         {}", file.display());
    println!("world:        {}", info.kind.world());
    if let Policy::RateLimiter(limiter) = &policy {
        println!("strategy:     {}", limiter.strategy());
    }
    println!("size:         {} bytes", info.size);
    println!("sha256:       {}", info.sha256);
    println!("compile time: {:.1} ms", info.compile_time.as_secs_f64() * 1000.0);
    println!("imports:      {}", list(&info.imports));
    println!("exports:      {}", list(&info.exports));
    Ok(())
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "(none)".into() } else { names.join(", ") }
}
