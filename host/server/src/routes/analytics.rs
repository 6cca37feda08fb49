//! `GET /api/v1/analytics/report`.

use axum::extract::State;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Query;
use crate::routes::validate;
use crate::state::AppState;
use leaky_store::analytics::{Report, ReportQuery};

/// Report query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct ReportParams {
    /// Whose usage (users: only their own; the default).
    pub user_id: Option<Uuid>,
    /// An org's usage (admins).
    pub org_id: Option<Uuid>,
    /// One provider.
    pub provider: Option<String>,
    /// From, RFC 3339.
    pub from: String,
    /// To, RFC 3339.
    pub to: String,
    /// `hour` (default) or `day`.
    pub granularity: Option<String>,
}

/// Usage totals, a series and a split by provider. Users see their own; admins anyone's.
#[utoipa::path(get, path = "/api/v1/analytics/report", tag = "analytics", params(ReportParams), security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, description = "{totals, series, byProvider}"), (status = 400, description = "invalid range"), (status = 403, description = "another user's or an org's usage")))]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Query(p): Query<ReportParams>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let from = validate::parse_rfc3339("from", &p.from)?;
    let to = validate::parse_rfc3339("to", &p.to)?;
    if to <= from {
        return Err(ApiError::InvalidRequest("to must be after from".into()));
    }
    let bucket_ms = match p.granularity.as_deref().unwrap_or("hour") {
        "hour" => 3_600_000,
        "day" => 86_400_000,
        _ => return Err(ApiError::InvalidRequest("granularity must be hour or day".into())),
    };
    if let Some(provider) = &p.provider {
        validate::provider(provider)?;
    }
    let user_id = match (p.user_id, p.org_id) {
        (_, Some(_)) => {
            caller.require_admin()?;
            p.user_id
        }
        (Some(user), None) => {
            caller.may_read(user)?;
            Some(user)
        }
        (None, None) if caller.is_admin() => None,
        (None, None) => Some(caller.user_id),
    };
    let query = ReportQuery { user_id, org_id: p.org_id, provider: p.provider, from, to, bucket_ms };
    let report: Report = state.analytics.report(&query).await?;
    let series: Vec<_> = report
        .series
        .iter()
        .map(|b| serde_json::json!({ "start": validate::rfc3339(b.start), "tokens": b.tokens, "requests": b.requests }))
        .collect();
    Ok(axum::Json(serde_json::json!({ "totals": report.totals, "series": series, "byProvider": report.by_provider })))
}
