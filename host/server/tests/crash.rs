//! Durability: SIGKILL the real `leaky serve` in the middle of a load run, start it again on the
//! same data directory, and find every consume that was answered 200 in the ledger.

#![cfg(unix)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start(data: &Path, port: u16) -> Child {
    let policies =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../../policies");
    assert!(policies.join("leaky-bucket.wasm").exists(), "build the components first: `cargo xtask guests`");
    Command::new(env!("CARGO_BIN_EXE_leaky"))
        .args(["serve", "--config", "/nonexistent/leaky.toml"])
        .env("LEAKY_DATA_DIR", data)
        .env("LEAKY_SERVER__ADDR", format!("127.0.0.1:{port}"))
        .env("LEAKY_POLICIES__DIR", &policies)
        .env("LEAKY_TOKEN__BUCKET__CAPACITY", "1000000000")
        .env("LEAKY_TOKEN__BUCKET__LEAK_RATE_PER_SECOND", "1000000000")
        .env("LEAKY_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("leaky serve starts")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if client.get(format!("{base}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not become ready");
}

#[tokio::test]
async fn every_answered_consume_survives_sigkill() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut server = start(data.path(), port);
    wait_ready(&client, &base).await;

    let r = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": "crashtest", "email": "crash@example.com", "password": "correct horse"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    let login: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "crashtest", "password": "correct horse"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let (token, user) = (login["accessToken"].as_str().expect("token").to_string(), login["userId"].clone());

    // 32 workers consume with unique request ids until the server dies under them.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (client, base, token, user, stop) =
                (client.clone(), base.clone(), token.clone(), user.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("w{w}-{i}");
                    let sent = client
                        .post(format!("{base}/api/v1/tokens/consume"))
                        .bearer_auth(&token)
                        .json(&json!({"userId": user, "provider": "openai", "tokens": 1, "requestId": id}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => answered.push(id),
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => break, // the server is gone
                    }
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    stop.store(true, Ordering::Relaxed);
    let mut answered = Vec::new();
    for w in workers {
        answered.extend(w.await.expect("worker"));
    }
    assert!(answered.len() > 50, "the load run answered only {} requests before the kill", answered.len());

    // The service starts again on the same data and its ledger has every answered consume.
    let mut server = start(data.path(), port);
    wait_ready(&client, &base).await;
    let url = format!("sqlite://{}", data.path().join("leaky.db").display());
    let db = leaky_store::Database::open(&url).await.expect("database");
    let mut missing = Vec::new();
    for id in &answered {
        if !leaky_store::ledger::has_request(db.pool(), id).await.expect("query") {
            missing.push(id.clone());
        }
    }
    let quota: Value = client
        .get(format!("{base}/api/v1/tokens/quota?provider=openai"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("quota")
        .json()
        .await
        .expect("json");
    server.kill().expect("stop");
    let _ = server.wait();
    assert!(
        missing.is_empty(),
        "{} answered consumes missing from the ledger, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // The quota counter is the ledger's sum: the spend the killed process had not written back
    // yet was written back from the ledger rows at the restart, once.
    let user_id = user.as_str().expect("user id").parse().expect("uuid");
    let in_ledger = leaky_store::ledger::consumed(db.pool(), user_id, "openai").await.expect("sum");
    assert!(in_ledger >= answered.len() as i64);
    assert_eq!(quota["used"].as_i64().expect("used"), in_ledger, "{quota}");
}
