//! The services the tests talk to, started when they are down: Redis on 127.0.0.1:6379 and
//! PostgreSQL on 127.0.0.1:5432 (the tests' default `LEAKY_TEST_REDIS_URL` and
//! `LEAKY_TEST_POSTGRES_URL`). A service declared absent (`LEAKY_TEST_REDIS=absent`,
//! `LEAKY_TEST_POSTGRES=absent`) is left alone; its tests then say they skipped.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const REDIS_PORT: u16 = 6379;
const POSTGRES_PORT: u16 = 5432;

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn declared_absent(name: &str) -> bool {
    std::env::var(format!("LEAKY_TEST_{name}")).is_ok_and(|v| v == "absent")
}

/// Starts every service the tests need that is not running.
pub fn ensure() -> Result<()> {
    ensure_redis()?;
    ensure_postgres()
}

fn wait_for(name: &str, port: u16) -> Result<()> {
    let started = Instant::now();
    while !answers(port) {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{name} started but does not answer on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Starts the Debian cluster(s) of PostgreSQL (`pg_ctlcluster`) when nothing answers on 5432.
fn ensure_postgres() -> Result<()> {
    if declared_absent("POSTGRES") {
        println!("postgres: declared absent (LEAKY_TEST_POSTGRES=absent); its tests will skip");
        return Ok(());
    }
    if std::env::var("LEAKY_TEST_POSTGRES_URL").is_ok() || answers(POSTGRES_PORT) {
        return Ok(());
    }
    println!("postgres: not running on 127.0.0.1:{POSTGRES_PORT}; starting it with pg_ctlcluster");
    let versions = std::fs::read_dir("/etc/postgresql")
        .context("PostgreSQL is not installed: install it, or set LEAKY_TEST_POSTGRES=absent")?;
    for version in versions.filter_map(Result::ok) {
        let version = version.file_name().to_string_lossy().into_owned();
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "start"])
            .status()
            .context("cannot run pg_ctlcluster")?;
        if !status.success() {
            bail!("pg_ctlcluster {version} main start failed ({status})");
        }
    }
    wait_for("PostgreSQL", POSTGRES_PORT)
}

fn ensure_redis() -> Result<()> {
    if declared_absent("REDIS") {
        println!("redis: declared absent (LEAKY_TEST_REDIS=absent); its tests will skip");
        return Ok(());
    }
    if std::env::var("LEAKY_TEST_REDIS_URL").is_ok() || answers(REDIS_PORT) {
        return Ok(());
    }
    println!("redis: not running on 127.0.0.1:{REDIS_PORT}; starting redis-server");
    let status = Command::new("redis-server")
        .args(["--daemonize", "yes", "--bind", "127.0.0.1", "--port", &REDIS_PORT.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .status()
        .context("cannot run redis-server: install Redis, or set LEAKY_TEST_REDIS=absent")?;
    if !status.success() {
        bail!("redis-server failed to start ({status})");
    }
    wait_for("redis-server", REDIS_PORT)
}
