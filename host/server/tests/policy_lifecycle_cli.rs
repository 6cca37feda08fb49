//! `leaky policy new` (a crate that builds as it is) and `leaky policy
//! upload|list|activate|rollback|bindings` against a running service.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leaky_server::settings::{Secret, Settings};
use leaky_server::{Application, bootstrap};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
        .join("../..")
}

fn leaky(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leaky"));
    cmd.args(args).env_remove("LEAKY_CLI_TOKEN").env_remove("LEAKY_CLI_API_KEY");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().expect("leaky runs")
}

/// Runs the command off the async workers and returns its JSON answer, failing with its
/// stderr when it fails.
async fn leaky_json(args: Vec<String>, env: Vec<(String, String)>) -> Value {
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        leaky(&args, &env)
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "leaky failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn spawn_app(data: &Path) -> String {
    let mut s = Settings::default();
    s.server.addr = "127.0.0.1:0".parse().unwrap();
    s.data_dir = data.to_path_buf();
    s.policies.dir = workspace().join("policies");
    s.policies.cache_dir = Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache"));
    s.auth.jwt_secret = Some(Secret::new("a test secret of at least thirty-two characters"));
    let app = Application::build(s).await.expect("app builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let pool = app.state().db.pool().clone();
    tokio::spawn(app.run_until_stopped());
    bootstrap::create_admin(&pool, "operator", "operator password").await.unwrap();
    url
}

async fn post_json(url: &str, token: Option<&str>, body: Value) -> Value {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_list_activate_rollback_and_bindings_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let url = spawn_app(data.path()).await;
    let login = post_json(
        &format!("{url}/api/v1/auth/login"),
        None,
        json!({ "username": "operator", "password": "operator password" }),
    )
    .await;
    let token = login["accessToken"].as_str().unwrap().to_string();
    let as_admin = vec![("LEAKY_CLI_URL".to_string(), url.clone()), ("LEAKY_CLI_TOKEN".to_string(), token.clone())];
    let component = |name: &str| workspace().join(format!("policies/{name}.wasm")).display().to_string();

    let upload = |file: String| {
        args(&["policy", "upload", "cli-demo", &file, "--param", "capacity=10", "--param", "window_seconds=60"])
    };
    let first = leaky_json(upload(component("fixed-window")), as_admin.clone()).await;
    assert_eq!((first["name"].clone(), first["version"].clone()), (json!("cli-demo"), json!(1)));
    let second = leaky_json(upload(component("sliding-window")), as_admin.clone()).await;
    assert_eq!(second["version"], 2);
    let activated = leaky_json(args(&["policy", "activate", "cli-demo", "1"]), as_admin.clone()).await;
    assert_eq!(activated["version"], 1);
    let activated = leaky_json(args(&["policy", "activate", "cli-demo", "2"]), as_admin.clone()).await;
    assert_eq!(activated["previousVersion"], 1);
    let rolled = leaky_json(args(&["policy", "rollback", "cli-demo"]), as_admin.clone()).await;
    assert_eq!((rolled["version"].clone(), rolled["previousVersion"].clone()), (json!(1), json!(2)));

    // An API key works as well as a JWT.
    let key = post_json(&format!("{url}/api/v1/auth/api-keys"), Some(&token), json!({ "name": "ci" })).await;
    let with_key = vec![
        ("LEAKY_CLI_URL".to_string(), url.clone()),
        ("LEAKY_CLI_API_KEY".to_string(), key["key"].as_str().unwrap().to_string()),
    ];
    let listed = leaky_json(args(&["policy", "list"]), with_key.clone()).await;
    let demo = listed.as_array().unwrap().iter().find(|m| m["name"] == "cli-demo").cloned().unwrap();
    assert_eq!(demo["activeVersion"], 1);
    assert_eq!(demo["versions"].as_array().unwrap().len(), 2);
    let bindings = leaky_json(args(&["policy", "bindings"]), with_key).await;
    assert!(bindings.as_array().unwrap().iter().any(|b| b["provider"] == "anthropic"), "{bindings}");

    // Failures say why and exit non-zero.
    let out = leaky(&["policy", "list", "--url", &url], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token or --api-key"));
    let out = leaky(&["policy", "rollback", "cli-demo", "--url", &url, "--token", &token], &[]);
    assert!(!out.status.success(), "only one activation is left to stand on");
    assert!(String::from_utf8_lossy(&out.stderr).contains("409 Conflict conflict"), "{:?}", out);
    let hostile = workspace().join("guests/fixtures/wasm/trap.wasm");
    let out = leaky(&["policy", "upload", "bad", hostile.to_str().unwrap(), "--url", &url, "--token", &token], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_module"), "{:?}", out);
}

#[test]
fn a_new_policy_crate_builds_as_it_is_and_passes_the_check() {
    let parent = tempfile::tempdir().unwrap();
    let sdk = workspace().join("guests/sdk");
    let dir = parent.path().display().to_string();
    let out = leaky(
        &["policy", "new", "my-limiter", "--strategy", "fixed-window", "--dir", &dir, "--sdk", sdk.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = leaky(
        &["policy", "new", "my-limiter", "--strategy", "fixed-window", "--dir", &dir, "--sdk", sdk.to_str().unwrap()],
        &[],
    );
    assert!(!again.status.success(), "an existing directory is never overwritten");
    let crate_dir = parent.path().join("my-limiter");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&crate_dir)
        .output()
        .expect("cargo runs");
    assert!(build.status.success(), "the new crate does not build:\n{}", String::from_utf8_lossy(&build.stderr));
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| crate_dir.join("target"), PathBuf::from);
    let component = target.join("wasm32-wasip2/release/my_limiter.wasm");
    let out = leaky(&["policy", "check", component.to_str().unwrap()], &[]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("strategy:     my-limiter"), "{report}");
    assert!(report.contains("world:        leaky:policy/rate-limit-policy@0.1.0"), "{report}");
}
