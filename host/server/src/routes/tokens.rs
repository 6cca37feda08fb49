//! `/api/v1/tokens/*`: status, quota, consume.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::routes::validate;
use crate::services::accounts::lock;
use crate::services::consume::{ConsumeOutcome, ConsumeRequest, QuotaView};
use crate::services::policies::BoundPolicy;
use crate::state::AppState;
use leaky_engine::Verdict;

/// A provider's policy in the status answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    /// The provider, or `*` for the default.
    pub provider: String,
    /// `rate-limiter` or `quota-rule`.
    pub kind: &'static str,
    /// The module's name.
    pub module: String,
    /// The module's active version.
    pub version: i64,
    /// The component's sha256.
    pub sha256: String,
    /// The shadow module (`name@version`), if one is evaluated beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
}

/// The service's status.
#[derive(Serialize, ToSchema)]
pub struct StatusView {
    /// `UP`.
    pub status: &'static str,
    /// The running version.
    pub version: &'static str,
    /// Backends in use.
    #[schema(value_type = Object)]
    pub storage: serde_json::Value,
    /// Rate policies.
    pub policies: Vec<PolicyView>,
}

/// Service status (public).
#[utoipa::path(get, path = "/api/v1/tokens/status", tag = "tokens", responses((status = 200, body = StatusView)))]
pub async fn status(State(state): State<AppState>) -> axum::Json<StatusView> {
    let policies = state
        .policies
        .snapshot()
        .describe()
        .into_iter()
        .map(|p| PolicyView {
            provider: p.provider,
            kind: p.kind,
            module: p.module,
            version: p.version,
            sha256: p.sha256,
            shadow: p.shadow.map(|(module, version)| format!("{module}@{version}")),
        })
        .collect();
    axum::Json(StatusView {
        status: "UP",
        version: env!("CARGO_PKG_VERSION"),
        storage: json!({ "database": match state.db.backend() { leaky_store::Backend::Sqlite => "sqlite", leaky_store::Backend::Postgres => "postgres" }, "rateState": if state.settings.redis.url.is_some() { "redis" } else { "memory" }, "eventBus": if state.settings.kafka.brokers.is_some() { "kafka" } else { "in-process" }, "analytics": state.settings.analytics.backend }),
        policies,
    })
}

/// `GET /tokens/quota` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct QuotaQuery {
    /// Whose quota (default: the caller).
    pub user_id: Option<Uuid>,
    /// Which provider.
    pub provider: String,
}

/// The rate limit's standing.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateView {
    /// The strategy.
    pub strategy: String,
    /// The module and version deciding (`name@version`).
    pub module: String,
    /// Most tokens admitted at once.
    pub capacity: u64,
    /// Tokens admissible now.
    pub remaining: u64,
    /// Milliseconds until fully available again.
    pub reset_after_ms: u64,
}

impl RateView {
    /// The standing `verdict` gives under `policy`.
    fn of(policy: &BoundPolicy, verdict: &Verdict) -> Self {
        Self {
            strategy: policy.strategy.to_string(),
            module: format!("{}@{}", policy.module, policy.version),
            capacity: verdict.limit,
            remaining: verdict.remaining,
            reset_after_ms: verdict.reset_after_ms,
        }
    }
}

/// An org quota's standing.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgQuotaView {
    /// The org.
    pub org_id: Uuid,
    /// Limit.
    pub limit: i64,
    /// Spent.
    pub used: i64,
    /// Left.
    pub remaining: i64,
}

/// A user's quota for a provider.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaAnswer {
    /// The user.
    pub user_id: Uuid,
    /// The provider.
    pub provider: String,
    /// The quota's standing.
    #[serde(flatten)]
    pub standing: QuotaStanding,
    /// The rate limit.
    pub rate_limit: RateView,
}

/// A user's quota and rate-limit standing for a provider.
#[utoipa::path(get, path = "/api/v1/tokens/quota", tag = "tokens", params(QuotaQuery), security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = QuotaAnswer), (status = 401, description = "unauthenticated"), (status = 403, description = "another user's quota"), (status = 404, description = "no such user")))]
pub async fn quota(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QuotaQuery>,
) -> Result<axum::Json<QuotaAnswer>, ApiError> {
    let user = q.user_id.unwrap_or(caller.user_id);
    caller.may_read(user)?;
    validate::provider(&q.provider)?;
    let facts = state.accounts.user(user).await?.ok_or(ApiError::NotFound("user"))?;
    let policy = state.consume.policy(&q.provider);
    let account = state.accounts.account(user, &q.provider).await?;
    let org = match facts.org_id {
        Some(org) => state.accounts.org(org, &q.provider).await?.map(|cell| (org, cell)),
        None => None,
    };
    let now = leaky_store::now_ms();
    let quota = {
        let mut acct = lock(&account);
        acct.quota.roll(now);
        acct.quota.clone()
    };
    let rate_state = state.consume.rate_state(&account, user, &q.provider, &policy.strategy).await;
    // A zero-token probe reads the limiter's standing without changing it.
    let probe = leaky_engine::Request { tokens: 0, now_ms: u64::try_from(now).unwrap_or(0) };
    let verdict = policy.limiter.decide(&policy.config, rate_state, probe).map_err(anyhow::Error::from)?.verdict;
    let org = org.map(|(org_id, cell)| {
        let mut q = lock(&cell);
        q.roll(now);
        OrgQuotaView { org_id, limit: q.limit, used: q.used, remaining: q.remaining() }
    });
    Ok(axum::Json(QuotaAnswer {
        user_id: user,
        provider: q.provider,
        standing: QuotaStanding {
            limit: quota.limit,
            used: quota.used,
            remaining: quota.remaining(),
            reset_at: quota.reset_at().map(validate::rfc3339),
            org,
        },
        rate_limit: RateView::of(&policy, &verdict),
    }))
}

/// `POST /tokens/consume` body.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumeBody {
    /// Whose tokens.
    pub user_id: Uuid,
    /// 1-64 of `[a-z0-9._-]`.
    pub provider: String,
    /// 1 to 10,000,000.
    pub tokens: u64,
    /// The model, if known.
    pub model: Option<String>,
    /// The caller's id for this request, kept in the ledger (at most 128 characters).
    pub request_id: Option<String>,
}

/// An admitted consume.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumeAnswer {
    /// Always true.
    pub allowed: bool,
    /// The user.
    pub user_id: Uuid,
    /// The provider.
    pub provider: String,
    /// Tokens spent.
    pub tokens: u64,
    /// The user's quota after the spend.
    pub quota: QuotaStanding,
    /// The rate limit after the spend.
    pub rate_limit: RateView,
}

/// A user's quota: its standing in the period, and its org's.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStanding {
    /// Limit of the period.
    pub limit: i64,
    /// Spent in the period.
    pub used: i64,
    /// Left in the period.
    pub remaining: i64,
    /// When the period resets, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<String>,
    /// The org's quota, if the user is in an org that has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgQuotaView>,
}

impl QuotaStanding {
    /// After a spend.
    fn spent(q: &QuotaView, org: Option<(Uuid, QuotaView)>) -> Self {
        Self {
            limit: q.limit,
            used: q.used,
            remaining: (q.limit - q.used).max(0),
            reset_at: q.reset_at.map(validate::rfc3339),
            org: org.map(|(org_id, org)| OrgQuotaView {
                org_id,
                limit: org.limit,
                used: org.used,
                remaining: (org.limit - org.used).max(0),
            }),
        }
    }
}

/// The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers):
/// `"<strategy>";q=<limit>` and `"<strategy>";r=<remaining>;t=<seconds to full>`.
///
/// Written with `itoa` into one buffer each, as they are on every consume's answer.
fn rate_headers(policy: &BoundPolicy, v: &Verdict) -> [(HeaderName, HeaderValue); 2] {
    let field = |parts: &[(&str, u64)]| {
        let mut text = String::with_capacity(policy.strategy.len() + 32);
        text.push('"');
        text.push_str(&policy.strategy);
        text.push('"');
        for (name, number) in parts {
            text.push_str(name);
            text.push_str(itoa::Buffer::new().format(*number));
        }
        // A strategy name is 1-64 of `[a-z0-9._-]` (checked when bound), so always valid.
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
    };
    [
        (HeaderName::from_static("ratelimit-policy"), field(&[(";q=", v.limit)])),
        (
            HeaderName::from_static("ratelimit"),
            field(&[(";r=", v.remaining), (";t=", v.reset_after_ms.div_ceil(1000))]),
        ),
    ]
}

/// Spend tokens: admitted only if the provider's rate policy, the user's quota and the org's
/// quota all have room; a refusal spends nothing anywhere.
#[utoipa::path(post, path = "/api/v1/tokens/consume", tag = "tokens", request_body = ConsumeBody, security(("bearer" = []), ("apiKey" = [])),
    responses((status = 200, body = ConsumeAnswer), (status = 400, description = "invalid input"), (status = 401, description = "unauthenticated"),
        (status = 403, description = "another user's tokens"), (status = 404, description = "no such user"),
        (status = 429, description = "rate_limit_exceeded (with Retry-After) or insufficient_quota (with scope)")))]
pub async fn consume(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<ConsumeBody>,
) -> Result<Response, ApiError> {
    caller.may_act_for(body.user_id)?;
    validate::provider(&body.provider)?;
    validate::tokens(body.tokens)?;
    if body.request_id.as_ref().is_some_and(|r| r.len() > 128) || body.model.as_ref().is_some_and(|m| m.len() > 128) {
        return Err(ApiError::InvalidRequest("requestId and model are at most 128 characters".into()));
    }
    let request = ConsumeRequest {
        user_id: body.user_id,
        provider: body.provider.clone(),
        tokens: body.tokens,
        model: body.model,
        request_id: body.request_id,
    };
    let (outcome, policy) = state.consume.consume(request).await?;
    match outcome {
        ConsumeOutcome::Allowed { user, org, rate } => {
            let answer = ConsumeAnswer {
                allowed: true,
                user_id: body.user_id,
                provider: body.provider,
                tokens: body.tokens,
                quota: QuotaStanding::spent(&user, org),
                rate_limit: RateView::of(&policy, &rate),
            };
            Ok((rate_headers(&policy, &rate), axum::Json(answer)).into_response())
        }
        ConsumeOutcome::RateLimited { rate } => {
            let mut details = Map::new();
            details.insert("strategy".into(), json!(&*policy.strategy));
            details.insert("limit".into(), json!(rate.limit));
            details.insert("remaining".into(), json!(rate.remaining));
            if rate.outcome == leaky_engine::Outcome::ExceedsCapacity {
                details.insert(
                    "reason".into(),
                    json!("the request is larger than the rate limit's capacity and can never be admitted"),
                );
            }
            let error = ApiError::RateLimited { retry_after_ms: rate.retry_after_ms, details };
            Ok((rate_headers(&policy, &rate), error).into_response())
        }
        ConsumeOutcome::QuotaExhausted { scope, quota, rate } => {
            let mut details = Map::new();
            details.insert("limit".into(), json!(quota.limit));
            details.insert("used".into(), json!(quota.used));
            details.insert("remaining".into(), json!((quota.limit - quota.used).max(0)));
            if let Some(at) = quota.reset_at {
                details.insert("resetAt".into(), json!(validate::rfc3339(at)));
            }
            Ok((rate_headers(&policy, &rate), ApiError::InsufficientQuota { scope, details }).into_response())
        }
    }
}
