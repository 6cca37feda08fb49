//! `leaky admin create --password-stdin`, `leaky migrate` and `LEAKY_BOOTSTRAP_ADMIN`, as an
//! operator runs them.

use std::io::Write;
use std::process::{Command, Stdio};

fn leaky(data: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_leaky"))
        .args(args)
        .env("LEAKY_DATA_DIR", data)
        .env("LEAKY_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("leaky runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write");
    child.wait_with_output().expect("exit")
}

/// The workspace's built policies.
fn policies_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../policies")
}

#[tokio::test]
async fn admins_are_created_from_stdin_and_from_the_environment() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = leaky(data.path(), &["migrate", "--config", "/nonexistent.toml"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = leaky(
        data.path(),
        &["admin", "create", "--username", "root", "--password-stdin", "--config", "/nonexistent.toml"],
        "s3cret-password\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin `root` ready"));
    let short = leaky(
        data.path(),
        &["admin", "create", "--username", "weak", "--password-stdin", "--config", "/nonexistent.toml"],
        "short\n",
    );
    assert!(!short.status.success(), "a short password is refused");

    let url = format!("sqlite://{}", data.path().join("leaky.db").display());
    let db = leaky_store::Database::open(&url).await.expect("database");
    let root = leaky_store::users::by_username(db.pool(), "root").await.expect("query").expect("root exists");
    assert!(root.roles.contains(&"admin".to_string()));
    assert!(leaky_server::auth::verify_password("s3cret-password".into(), root.password_hash).await);

    // LEAKY_BOOTSTRAP_ADMIN at start.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_leaky"))
        .args(["serve", "--config", "/nonexistent.toml"])
        .env("LEAKY_DATA_DIR", data.path())
        .env("LEAKY_SERVER__ADDR", format!("127.0.0.1:{port}"))
        .env("LEAKY_POLICIES__DIR", policies_dir())
        .env("LEAKY_BOOTSTRAP_ADMIN", "boot:boot-password")
        .env("LEAKY_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("serve");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if client.get(format!("http://127.0.0.1:{port}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let login = client
        .post(format!("http://127.0.0.1:{port}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "boot", "password": "boot-password"}))
        .send()
        .await
        .expect("login");
    let status = login.status();
    let body: serde_json::Value = login.json().await.expect("json");
    server.kill().expect("stop");
    let _ = server.wait();
    assert!(ready, "the server did not become ready");
    assert_eq!(status, 200);
    assert!(body["roles"].as_array().expect("roles").contains(&serde_json::json!("admin")), "{body}");
}

#[tokio::test]
async fn serve_refuses_a_schema_behind_it_when_told_not_to_migrate_and_says_what_to_run() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_leaky"))
        .args(["serve", "--config", "/nonexistent.toml"])
        .env("LEAKY_DATA_DIR", data.path())
        .env("LEAKY_DATABASE__MIGRATE_ON_START", "false")
        .env("LEAKY_SERVER__ADDR", "127.0.0.1:0")
        .env("LEAKY_LOG", "warn")
        .output()
        .expect("leaky runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("run `leaky migrate`"), "{stderr}");
    let out = leaky(data.path(), &["migrate", "--config", "/nonexistent.toml"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn migrate_prepares_a_postgres_database_that_serve_then_runs_on() {
    use sqlx::Connection;
    if std::env::var("LEAKY_TEST_POSTGRES").is_ok_and(|v| v == "absent") {
        eprintln!("SKIPPED: LEAKY_TEST_POSTGRES=absent declares PostgreSQL absent");
        return;
    }
    let server = std::env::var("LEAKY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("PostgreSQL (or LEAKY_TEST_POSTGRES=absent)");
    let name = format!("leaky_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
    let url = format!("{}/{name}", server.rsplit_once('/').expect("a URL ending in /database").0);

    let data = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_leaky"))
            .args(args)
            .env("LEAKY_DATA_DIR", data.path())
            .env("LEAKY_DATABASE__URL", &url)
            .env("LEAKY_SERVER__ADDR", "127.0.0.1:0")
            .env("LEAKY_LOG", "warn")
            .output()
            .expect("leaky runs")
    };
    for _ in 0..2 {
        let out = run(&["migrate", "--config", "/nonexistent.toml"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("PostgreSQL database is up to date"));
    }
    // Serving requires the schema to be current (no migration at start) and runs on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_leaky"))
        .args(["serve", "--config", "/nonexistent.toml"])
        .env("LEAKY_DATA_DIR", data.path())
        .env("LEAKY_DATABASE__URL", &url)
        .env("LEAKY_DATABASE__MIGRATE_ON_START", "false")
        .env("LEAKY_SERVER__ADDR", format!("127.0.0.1:{port}"))
        .env("LEAKY_POLICIES__DIR", policies_dir())
        .env("LEAKY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("leaky serve starts");
    let client = reqwest::Client::new();
    let status_url = format!("http://127.0.0.1:{port}/api/v1/tokens/status");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status: serde_json::Value = loop {
        if let Ok(r) = client.get(&status_url).send().await
            && r.status() == 200
        {
            break r.json().await.expect("json");
        }
        assert!(std::time::Instant::now() < deadline, "leaky serve did not answer on PostgreSQL");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    serve.kill().expect("kill");
    serve.wait().expect("reaped");
    assert_eq!(status["storage"]["database"], "postgres", "{status}");
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.expect("drop database");
}
