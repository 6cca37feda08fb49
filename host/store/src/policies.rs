//! Policy components, their versions and activations, and their bindings to providers.
//!
//! A module is a name; each upload of a different component under that name is a new,
//! immutable version (keyed by the component's sha256, so uploading the same bytes twice gives
//! back the same version). The active version of a module is its latest activation that was not
//! rolled back, so rollbacks walk back through the activation history. Every change that alters
//! what is enforced bumps one generation counter in the same transaction; replicas watch it.

use sqlx::Row;

use crate::{Pool, StoreError, now_ms};

/// A stored version of a module (without its bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// The module's name.
    pub name: String,
    /// 1, 2, ... per name.
    pub version: i64,
    /// `rate-limiter` or `quota-rule`.
    pub kind: String,
    /// sha256 of the component, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// `api` or the policy directory's file it came from.
    pub source: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// A component to store.
pub struct NewVersion<'a> {
    /// The module's name.
    pub name: &'a str,
    /// `rate-limiter` or `quota-rule`.
    pub kind: &'a str,
    /// sha256 of `component`, hex.
    pub sha256: &'a str,
    /// The component.
    pub component: &'a [u8],
    /// Where it came from.
    pub source: &'a str,
}

/// Parameters of a module, in the order given.
pub type Params = Vec<(String, String)>;

/// A module (with parameters) applied to a provider, optionally with a shadow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The provider.
    pub provider: String,
    /// `rate-limiter` or `quota-rule`: the kind of `module`.
    pub kind: String,
    /// The module enforced.
    pub module: String,
    /// Its parameters.
    pub params: Params,
    /// A module whose verdicts are computed and counted but never enforced, with parameters.
    pub shadow: Option<(String, Params)>,
    /// `api` or the manifest that declared it.
    pub source: String,
}

/// The generation, the active versions and the bindings, read together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyState {
    /// Bumped by every change.
    pub generation: i64,
    /// The active version of every module that has one.
    pub active: Vec<VersionInfo>,
    /// Every binding.
    pub bindings: Vec<Binding>,
}

const VERSION_COLUMNS: &str = "v.name, v.version, v.kind, v.sha256, v.size, v.source, v.created_at";

fn version_from(row: &sqlx::any::AnyRow) -> Result<VersionInfo, StoreError> {
    Ok(VersionInfo {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        kind: row.try_get("kind")?,
        sha256: row.try_get("sha256")?,
        size: row.try_get("size")?,
        source: row.try_get("source")?,
        created_at: row.try_get("created_at")?,
    })
}

fn params_json(params: &Params) -> String {
    let map: serde_json::Map<String, serde_json::Value> =
        params.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::Value::Object(map).to_string()
}

fn params_from(text: &str) -> Result<Params, StoreError> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("binding parameters: {e}")))?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            other => Err(StoreError::Corrupt(format!("binding parameter `{k}` is not a string: {other}"))),
        })
        .collect()
}

/// Every version of every module, by name then version.
pub async fn versions(pool: &Pool) -> Result<Vec<VersionInfo>, StoreError> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM policy_versions v ORDER BY v.name, v.version");
    sqlx::query(&sql).fetch_all(pool).await?.iter().map(version_from).collect()
}

/// One version.
pub async fn version(pool: &Pool, name: &str, version: i64) -> Result<Option<VersionInfo>, StoreError> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM policy_versions v WHERE v.name = $1 AND v.version = $2");
    sqlx::query(&sql).bind(name).bind(version).fetch_optional(pool).await?.as_ref().map(version_from).transpose()
}

/// The component bytes of a version.
pub async fn component(pool: &Pool, name: &str, version: i64) -> Result<Option<Vec<u8>>, StoreError> {
    let row = sqlx::query("SELECT component FROM policy_versions WHERE name = $1 AND version = $2")
        .bind(name)
        .bind(version)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| r.try_get("component")).transpose()?)
}

/// Stores a component as the next version of its module, or finds the version that already has
/// these bytes. Returns the version and whether it was new. Changes nothing that is enforced.
pub async fn add_version(pool: &Pool, new: NewVersion<'_>) -> Result<(VersionInfo, bool), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    serialize(&mut tx).await?;
    let sql = format!("SELECT {VERSION_COLUMNS} FROM policy_versions v WHERE v.name = $1 AND v.sha256 = $2");
    if let Some(row) = sqlx::query(&sql).bind(new.name).bind(new.sha256).fetch_optional(&mut *tx).await? {
        return Ok((version_from(&row)?, false));
    }
    let kinds: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kind FROM policy_versions WHERE name = $1")
        .bind(new.name)
        .fetch_all(&mut *tx)
        .await?;
    if kinds.iter().any(|k| k != new.kind) {
        return Err(StoreError::Conflict("a module name of the other kind"));
    }
    let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM policy_versions WHERE name = $1")
        .bind(new.name)
        .fetch_one(&mut *tx)
        .await?;
    let info = VersionInfo {
        name: new.name.into(),
        version: next,
        kind: new.kind.into(),
        sha256: new.sha256.into(),
        size: i64::try_from(new.component.len()).unwrap_or(i64::MAX),
        source: new.source.into(),
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO policy_versions (name, version, kind, sha256, size, component, source, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&info.name)
    .bind(info.version)
    .bind(&info.kind)
    .bind(&info.sha256)
    .bind(info.size)
    .bind(new.component)
    .bind(&info.source)
    .bind(info.created_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((info, true))
}

/// Takes the policy change lock (the generation row's), held to the end of the transaction:
/// changes made by several replicas at once (two starting on one policy directory, say) happen
/// one after the other, each seeing what the one before committed.
async fn serialize(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE policy_generation SET generation = generation WHERE id = 1").execute(conn).await?;
    Ok(())
}

async fn bump(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE policy_generation SET generation = generation + 1 WHERE id = 1").execute(conn).await?;
    Ok(())
}

async fn active_of(conn: &mut sqlx::AnyConnection, name: &str) -> Result<Option<(i64, i64)>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, version FROM policy_activations WHERE name = $1 AND rolled_back = 0 ORDER BY seq DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| Ok::<_, sqlx::Error>((r.try_get("seq")?, r.try_get("version")?))).transpose()?)
}

/// Makes `version` the active version of `name` (nothing happens when it already is).
/// Returns the version that was active before.
pub async fn activate(pool: &Pool, name: &str, version: i64) -> Result<Option<i64>, StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    serialize(&mut tx).await?;
    let before = active_of(&mut tx, name).await?.map(|(_, v)| v);
    if before != Some(version) {
        sqlx::query("INSERT INTO policy_activations (name, version, activated_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        bump(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(before)
}

/// `(active version, the version a rollback would make active)` of `name`, if it has both.
pub async fn rollback_target(pool: &Pool, name: &str) -> Result<Option<(i64, i64)>, StoreError> {
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM policy_activations WHERE name = $1 AND rolled_back = 0 ORDER BY seq DESC LIMIT 2",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    Ok(match versions[..] {
        [active, target] => Some((active, target)),
        _ => None,
    })
}

/// Undoes the latest activation of `name`: the version active before it is active again.
/// Returns that version, or `None` (and changes nothing) when there is no earlier one.
pub async fn rollback(pool: &Pool, name: &str) -> Result<Option<i64>, StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    serialize(&mut tx).await?;
    let Some((seq, _)) = active_of(&mut tx, name).await? else { return Ok(None) };
    sqlx::query("UPDATE policy_activations SET rolled_back = 1 WHERE seq = $1").bind(seq).execute(&mut *tx).await?;
    let Some((_, version)) = active_of(&mut tx, name).await? else { return Ok(None) };
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(Some(version))
}

/// The current generation.
pub async fn generation(pool: &Pool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT generation FROM policy_generation WHERE id = 1").fetch_one(pool).await?)
}

/// The generation, active versions and bindings, as of one read transaction.
pub async fn state(pool: &Pool) -> Result<PolicyState, StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    let generation: i64 =
        sqlx::query_scalar("SELECT generation FROM policy_generation WHERE id = 1").fetch_one(&mut *tx).await?;
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM policy_versions v JOIN policy_activations a
           ON a.name = v.name AND a.version = v.version
         WHERE a.seq = (SELECT MAX(seq) FROM policy_activations WHERE name = v.name AND rolled_back = 0)
         ORDER BY v.name"
    );
    let active = sqlx::query(&sql).fetch_all(&mut *tx).await?.iter().map(version_from).collect::<Result<_, _>>()?;
    let rows = sqlx::query(
        "SELECT provider, kind, module, params, shadow_module, shadow_params, source
         FROM policy_bindings ORDER BY provider, kind",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut bindings = Vec::with_capacity(rows.len());
    for row in rows {
        let shadow_module: Option<String> = row.try_get("shadow_module")?;
        let shadow_params: Option<String> = row.try_get("shadow_params")?;
        let shadow = match shadow_module {
            Some(module) => Some((module, params_from(shadow_params.as_deref().unwrap_or("{}"))?)),
            None => None,
        };
        bindings.push(Binding {
            provider: row.try_get("provider")?,
            kind: row.try_get("kind")?,
            module: row.try_get("module")?,
            params: params_from(&row.try_get::<String, _>("params")?)?,
            shadow,
            source: row.try_get("source")?,
        });
    }
    tx.commit().await?;
    Ok(PolicyState { generation, active, bindings })
}

async fn insert_binding(conn: &mut sqlx::AnyConnection, b: &Binding) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policy_bindings (provider, kind, module, params, shadow_module, shadow_params, source)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (provider, kind) DO UPDATE SET module = excluded.module, params = excluded.params,
           shadow_module = excluded.shadow_module, shadow_params = excluded.shadow_params, source = excluded.source",
    )
    .bind(&b.provider)
    .bind(&b.kind)
    .bind(&b.module)
    .bind(params_json(&b.params))
    .bind(b.shadow.as_ref().map(|(m, _)| m.clone()))
    .bind(b.shadow.as_ref().map(|(_, p)| params_json(p)))
    .bind(&b.source)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces every binding with `bindings`.
pub async fn replace_bindings(pool: &Pool, bindings: &[Binding]) -> Result<(), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    serialize(&mut tx).await?;
    sqlx::query("DELETE FROM policy_bindings").execute(&mut *tx).await?;
    for b in bindings {
        insert_binding(&mut tx, b).await?;
    }
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies a manifest of the policy directory: the bindings it declared before are replaced by
/// `bindings` (which also override bindings made over the API for the same provider and kind),
/// and its content hash is recorded.
pub async fn import_manifest(pool: &Pool, source: &str, sha256: &str, bindings: &[Binding]) -> Result<(), StoreError> {
    let mut tx = crate::database::begin(pool).await?;
    serialize(&mut tx).await?;
    sqlx::query("DELETE FROM policy_bindings WHERE source = $1").bind(source).execute(&mut *tx).await?;
    for b in bindings {
        insert_binding(&mut tx, b).await?;
    }
    record_source(&mut tx, source, sha256).await?;
    bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

async fn record_source(conn: &mut sqlx::AnyConnection, path: &str, sha256: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO policy_sources (path, sha256) VALUES ($1, $2) ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256")
        .bind(path)
        .bind(sha256)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records that a file of the policy directory with this content was imported.
pub async fn set_source(pool: &Pool, path: &str, sha256: &str) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    record_source(&mut conn, path, sha256).await
}

/// The content hash last imported from a file of the policy directory.
pub async fn source(pool: &Pool, path: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT sha256 FROM policy_sources WHERE path = $1").bind(path).fetch_optional(pool).await?)
}

/// Every recorded file of the policy directory with the content hash last imported.
pub async fn sources(pool: &Pool) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query("SELECT path, sha256 FROM policy_sources ORDER BY path").fetch_all(pool).await?;
    rows.iter().map(|r| Ok((r.try_get("path")?, r.try_get("sha256")?))).collect()
}
