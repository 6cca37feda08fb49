//! `/api/v1/policies`: upload components, list versions, activate, roll back, bind (admin).

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ComponentBody, Json, Path, Query};
use crate::routes::validate;
use crate::services::policies::Params;
use crate::state::AppState;
use leaky_store::policies::Binding;

/// A stored version.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    /// 1, 2, ...
    pub version: i64,
    /// The component's sha256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: i64,
    /// `api` or the policy directory file it came from.
    pub source: String,
    /// When it was stored.
    pub created_at: String,
    /// Whether it is the active version.
    pub active: bool,
}

/// A module and its versions.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleView {
    /// The module's name.
    pub name: String,
    /// `rate-limiter` or `quota-rule`.
    pub kind: String,
    /// The active version, if any.
    pub active_version: Option<i64>,
    /// Every version, oldest first.
    pub versions: Vec<VersionView>,
}

/// Every module with its versions and which one is active (admin).
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = [ModuleView]), (status = 403, description = "not an admin")))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<axum::Json<Vec<ModuleView>>, ApiError> {
    caller.require_admin()?;
    let modules = state.policies.list().await?;
    let views = modules
        .into_iter()
        .map(|m| ModuleView {
            versions: m
                .versions
                .into_iter()
                .map(|v| VersionView {
                    active: m.active == Some(v.version),
                    version: v.version,
                    sha256: v.sha256,
                    size: v.size,
                    source: v.source,
                    created_at: validate::rfc3339(v.created_at),
                })
                .collect(),
            name: m.name,
            kind: m.kind,
            active_version: m.active,
        })
        .collect();
    Ok(axum::Json(views))
}

/// A stored upload.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadAnswer {
    /// The module.
    pub name: String,
    /// The version these bytes are.
    pub version: i64,
    /// `rate-limiter` or `quota-rule`.
    pub kind: String,
    /// The component's sha256.
    pub sha256: String,
}

/// Upload a component as a new version of a module (admin). It is validated first (a
/// component of a known world, no imports beyond the policy types, within the size limit,
/// compiling within the time limit, `configure` accepting the parameters given in the query
/// string or else those of its bindings, and one smoke decision). Nothing in force changes
/// until the version is activated. Uploading the same bytes again answers 200 with the
/// existing version.
#[utoipa::path(post, path = "/api/v1/policies/{name}", tag = "policies", security(("bearer" = []), ("apiKey" = [])),
    params(("name" = String, Path, description = "the module: 1-64 of [a-z0-9-]")),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = UploadAnswer), (status = 200, body = UploadAnswer, description = "these bytes are already a version"),
        (status = 400, description = "invalid_module"), (status = 403, description = "not an admin"),
        (status = 409, description = "the name belongs to a module of the other kind"), (status = 413, description = "larger than 4 MiB")))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
    ComponentBody(bytes): ComponentBody,
) -> Result<(StatusCode, axum::Json<UploadAnswer>), ApiError> {
    caller.require_admin()?;
    let params = (!params.is_empty()).then(|| params.into_iter().collect());
    let (info, created) = state.policies.upload(&name, bytes, params).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        axum::Json(UploadAnswer { name: info.name, version: info.version, kind: info.kind, sha256: info.sha256 }),
    ))
}

/// `POST /policies/{name}/activate` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// The version to make active.
    pub version: i64,
}

/// The active version after a change.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveAnswer {
    /// The module.
    pub name: String,
    /// Its active version now.
    pub version: i64,
    /// The version active before.
    pub previous_version: Option<i64>,
}

/// Make a version active (admin). The new version decides every request that starts after
/// the answer, on every replica within the sync interval; requests in flight finish on the
/// version they started with. Refused (and nothing changes) when a binding's parameters do not
/// configure the new version.
#[utoipa::path(post, path = "/api/v1/policies/{name}/activate", tag = "policies", request_body = ActivateBody, security(("bearer" = []), ("apiKey" = [])),
    params(("name" = String, Path, description = "the module")),
    responses((status = 200, body = ActiveAnswer), (status = 400, description = "a binding cannot use that version"),
        (status = 403, description = "not an admin"), (status = 404, description = "no such version")))]
pub async fn activate(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<ActivateBody>,
) -> Result<axum::Json<ActiveAnswer>, ApiError> {
    caller.require_admin()?;
    let previous_version = state.policies.activate(&name, body.version).await?;
    Ok(axum::Json(ActiveAnswer { name, version: body.version, previous_version }))
}

/// Undo the latest activation (admin): the version active before it is active again.
#[utoipa::path(post, path = "/api/v1/policies/{name}/rollback", tag = "policies", security(("bearer" = []), ("apiKey" = [])),
    params(("name" = String, Path, description = "the module")),
    responses((status = 200, body = ActiveAnswer), (status = 403, description = "not an admin"),
        (status = 404, description = "no such module"), (status = 409, description = "no earlier activation")))]
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<ActiveAnswer>, ApiError> {
    caller.require_admin()?;
    let (previous, version) = state.policies.rollback(&name).await?;
    Ok(axum::Json(ActiveAnswer { name, version, previous_version: Some(previous) }))
}

/// A module with parameters.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModuleParams {
    /// The module.
    pub module: String,
    /// Its parameters: strings, numbers or booleans.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
}

/// A binding.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingView {
    /// The provider.
    pub provider: String,
    /// The module enforced.
    pub module: String,
    /// Its parameters: strings, numbers or booleans.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// A rate limiter evaluated beside it and counted in metrics, never enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ModuleParams>,
    /// `rate-limiter` or `quota-rule` (answers only; derived from the module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `api` or the manifest that declared it (answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

fn params_out(params: Params) -> BTreeMap<String, serde_json::Value> {
    params.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect()
}

fn params_in(params: BTreeMap<String, serde_json::Value>) -> Result<Params, ApiError> {
    params
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(ApiError::InvalidRequest(format!(
                "parameter `{k}` must be a string, number or boolean, not {other}"
            ))),
        })
        .collect()
}

fn view(b: Binding) -> BindingView {
    BindingView {
        provider: b.provider,
        module: b.module,
        params: params_out(b.params),
        shadow: b.shadow.map(|(module, params)| ModuleParams { module, params: params_out(params) }),
        kind: Some(b.kind),
        source: Some(b.source),
    }
}

/// Which module and parameters apply to which provider (admin).
#[utoipa::path(get, path = "/api/v1/policies/bindings", tag = "policies", security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = [BindingView]), (status = 403, description = "not an admin")))]
pub async fn bindings(State(state): State<AppState>, caller: Caller) -> Result<axum::Json<Vec<BindingView>>, ApiError> {
    caller.require_admin()?;
    Ok(axum::Json(state.policies.bindings().await?.into_iter().map(view).collect()))
}

/// Replace every binding (admin). Each module must have an active version; a provider has at
/// most one rate limiter (with an optional shadow) and one quota rule. Refused whole (and
/// nothing changes) when any module refuses its parameters.
#[utoipa::path(put, path = "/api/v1/policies/bindings", tag = "policies", request_body = [BindingView], security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = [BindingView]), (status = 400, description = "an unknown module, a duplicate, or parameters a module refuses"),
        (status = 403, description = "not an admin")))]
pub async fn put_bindings(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Vec<BindingView>>,
) -> Result<axum::Json<Vec<BindingView>>, ApiError> {
    caller.require_admin()?;
    let kinds: HashMap<String, String> =
        state.policies.list().await?.into_iter().filter(|m| m.active.is_some()).map(|m| (m.name, m.kind)).collect();
    let mut bindings: Vec<Binding> = Vec::with_capacity(body.len());
    for b in body {
        validate::provider(&b.provider)?;
        let kind = kinds
            .get(&b.module)
            .ok_or_else(|| ApiError::InvalidRequest(format!("module `{}` has no active version", b.module)))?;
        if bindings.iter().any(|x| x.provider == b.provider && &x.kind == kind) {
            return Err(ApiError::InvalidRequest(format!("provider `{}` has two {kind} bindings", b.provider)));
        }
        if b.shadow.is_some() && kind != "rate-limiter" {
            return Err(ApiError::InvalidRequest("only a rate limiter can have a shadow".into()));
        }
        let shadow = match b.shadow {
            Some(s) => Some((s.module, params_in(s.params)?)),
            None => None,
        };
        bindings.push(Binding {
            provider: b.provider,
            kind: kind.clone(),
            module: b.module,
            params: params_in(b.params)?,
            shadow,
            source: "api".into(),
        });
    }
    state.policies.put_bindings(bindings).await?;
    Ok(axum::Json(state.policies.bindings().await?.into_iter().map(view).collect()))
}
