//! The OpenAPI 3.1 document, generated from the handlers' annotations, and a Swagger UI page.

use axum::response::Html;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{admin, analytics, auth, health, policies, purchases, tokens};

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Leaky Tokens", description = "Meter and limit LLM token usage with sandboxed WebAssembly policies."),
    paths(
        health::live, health::ready, health::metrics,
        auth::register, auth::login, auth::me, auth::create_api_key, auth::list_api_keys, auth::revoke_api_key,
        tokens::status, tokens::quota, tokens::consume, purchases::purchase, purchases::get_purchase,
        admin::create_org, admin::add_member, admin::put_quota, admin::list_quotas, admin::set_roles,
        analytics::report,
        policies::list, policies::upload, policies::activate, policies::rollback, policies::bindings, policies::put_bindings,
    ),
    modifiers(&SecuritySchemes),
    tags((name = "auth"), (name = "tokens"), (name = "admin"), (name = "analytics"), (name = "policies"), (name = "operations"))
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components.add_security_scheme("apiKey", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))));
    }
}

/// `GET /api/v1/openapi.json`
pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// `GET /docs`: Swagger UI over the document (the UI's assets load from a CDN).
pub async fn swagger_ui() -> Html<&'static str> {
    Html(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Leaky Tokens API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({ url: "/api/v1/openapi.json", dom_id: "#ui" });</script>
</body></html>"##,
    )
}
