//! The compile cache: a second load comes from disk, and a damaged artifact is recompiled.

mod support;

use leaky_engine::{EngineConfig, PolicyEngine};
use support::policy;

fn cached_engine(dir: &std::path::Path) -> PolicyEngine {
    PolicyEngine::new(EngineConfig { cache_dir: Some(dir.to_path_buf()), ..EngineConfig::default() }).expect("engine")
}

#[test]
fn second_load_comes_from_the_cache_and_corruption_is_recompiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = policy("fixed-window");

    let first = cached_engine(dir.path()).load(&bytes).expect("compiles");
    assert!(!first.info().cached);
    let second = cached_engine(dir.path()).load(&bytes).expect("loads");
    assert!(second.info().cached, "a new engine with the same settings reuses the artifact");
    assert_eq!(first.info().sha256, second.info().sha256);

    // Flip a byte of every artifact: the checksum catches it and the component is recompiled.
    for entry in std::fs::read_dir(dir.path()).expect("cache dir") {
        let path = entry.expect("entry").path();
        let mut artifact = std::fs::read(&path).expect("artifact");
        let middle = artifact.len() / 2;
        artifact[middle] ^= 0xff;
        std::fs::write(&path, artifact).expect("write");
    }
    let third = cached_engine(dir.path()).load(&bytes).expect("recompiles");
    assert!(!third.info().cached);
    let fourth = cached_engine(dir.path()).load(&bytes).expect("loads");
    assert!(fourth.info().cached, "the recompiled artifact was cached again");
}
