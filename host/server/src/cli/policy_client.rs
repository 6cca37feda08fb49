//! `leaky policy upload|list|activate|rollback|bindings`: the policy REST API from a terminal,
//! authenticated with a JWT (`--token`, `LEAKY_CLI_TOKEN`) or an API key (`--api-key`,
//! `LEAKY_CLI_API_KEY`) against `--url` (`LEAKY_CLI_URL`). Answers are printed as JSON; an
//! error answer prints its code and message and exits non-zero.

use std::path::Path;

use anyhow::{Context, Result, bail};
use reqwest::{Client, RequestBuilder};
use serde_json::Value;

/// Where the API is and who calls it.
pub struct Remote {
    /// The service's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// A JWT.
    pub token: Option<String>,
    /// An API key.
    pub api_key: Option<String>,
}

/// One policy operation.
pub enum Operation<'a> {
    /// Upload a component, smoke-tested with `params`.
    Upload { name: &'a str, file: &'a Path, params: &'a [String] },
    /// List modules and versions.
    List,
    /// Activate a version.
    Activate { name: &'a str, version: i64 },
    /// Roll back the latest activation.
    Rollback { name: &'a str },
    /// Show the bindings.
    Bindings,
}

impl Remote {
    fn request(&self, client: &Client, method: reqwest::Method, path: &str) -> Result<RequestBuilder> {
        let request = client.request(method, format!("{}{path}", self.url.trim_end_matches('/')));
        Ok(match (&self.token, &self.api_key) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Some(key)) => request.header("x-api-key", key),
            (None, None) => bail!("pass --token or --api-key (or set LEAKY_CLI_TOKEN or LEAKY_CLI_API_KEY)"),
        })
    }
}

/// Runs `operation` against `remote` and prints the answer.
pub fn run(remote: &Remote, operation: Operation<'_>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime.block_on(call(remote, operation))?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

async fn call(remote: &Remote, operation: Operation<'_>) -> Result<Value> {
    use reqwest::Method;
    let client = Client::new();
    let request = match operation {
        Operation::Upload { name, file, params } => {
            let bytes = super::read_component(file)?;
            let query = super::policy_simulate::parse_params(params)?;
            remote
                .request(&client, Method::POST, &format!("/api/v1/policies/{name}"))?
                .query(&query)
                .header("content-type", "application/wasm")
                .body(bytes)
        }
        Operation::List => remote.request(&client, Method::GET, "/api/v1/policies")?,
        Operation::Activate { name, version } => remote
            .request(&client, Method::POST, &format!("/api/v1/policies/{name}/activate"))?
            .json(&serde_json::json!({ "version": version })),
        Operation::Rollback { name } => {
            remote.request(&client, Method::POST, &format!("/api/v1/policies/{name}/rollback"))?
        }
        Operation::Bindings => remote.request(&client, Method::GET, "/api/v1/policies/bindings")?,
    };
    let response = request.send().await.with_context(|| format!("cannot reach {}", remote.url))?;
    let status = response.status();
    let body: Value = response.json().await.with_context(|| format!("the answer ({status}) is not JSON"))?;
    if !status.is_success() {
        let code = body["error"]["code"].as_str().unwrap_or("error");
        let message = body["error"]["message"].as_str().unwrap_or("");
        bail!("{status} {code}: {message}");
    }
    Ok(body)
}
