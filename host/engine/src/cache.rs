//! On-disk cache of precompiled components.
//!
//! Compiling a component takes tens to hundreds of milliseconds; loading a precompiled one
//! well under one. Artifacts are keyed by the component's sha256 and the engine's
//! compatibility hash (wasmtime version and every setting that affects code), so an upgrade or
//! a settings change simply misses. Each artifact carries the sha256 of its own bytes, checked
//! before they are handed to wasmtime: a torn or tampered file is recompiled, never loaded.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Length of the checksum trailer.
const DIGEST_LEN: usize = 32;

/// The artifact cache in one directory.
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    pub(crate) fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self { dir: dir.to_path_buf(), engine_key: format!("{:016x}", hasher.finish()) })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of the component with this sha256, if present and intact.
    pub(crate) fn get(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        let bytes = fs::read(&path).ok()?;
        let split = bytes.len().checked_sub(DIGEST_LEN)?;
        let (artifact, digest) = bytes.split_at(split);
        if Sha256::digest(artifact).as_slice() != digest {
            tracing::warn!(path = %path.display(), "corrupt precompiled artifact; recompiling");
            let _ = fs::remove_file(&path);
            return None;
        }
        // SAFETY: wasmtime requires that deserialized bytes come from `Component::serialize` of a
        // compatible engine. The file was written by `put` below in a directory the host owns,
        // under a name that includes this engine's compatibility hash, and its checksum was just
        // verified, so these are exactly the bytes `serialize` produced.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, artifact) };
        match component {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "unusable precompiled artifact; recompiling");
                None
            }
        }
    }

    /// Stores a compilation. Failures only cost a recompile later, so they are logged, not raised.
    pub(crate) fn put(&self, sha256: &str, component: &Component) {
        if let Err(err) = self.try_put(sha256, component) {
            tracing::warn!(error = %err, "could not cache a precompiled artifact");
        }
    }

    fn try_put(&self, sha256: &str, component: &Component) -> Result<(), Box<dyn std::error::Error>> {
        let artifact = component.serialize().map_err(|e| e.to_string())?;
        let digest = Sha256::digest(&artifact);
        // Write to a temporary file and rename, so readers never see a partial artifact.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&artifact)?;
        tmp.write_all(&digest)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(sha256))?;
        Ok(())
    }
}
