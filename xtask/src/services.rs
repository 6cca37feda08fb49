//! The services the tests talk to, started when they are down: Redis on 127.0.0.1:6379 (the
//! tests' default `LEAKY_TEST_REDIS_URL`). A service declared absent (`LEAKY_TEST_REDIS=absent`)
//! is left alone; its tests then say they skipped.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const REDIS_PORT: u16 = 6379;

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn declared_absent(name: &str) -> bool {
    std::env::var(format!("LEAKY_TEST_{name}")).is_ok_and(|v| v == "absent")
}

/// Starts every service the tests need that is not running.
pub fn ensure() -> Result<()> {
    ensure_redis()
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
    let started = Instant::now();
    while !answers(REDIS_PORT) {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("redis-server started but does not answer on 127.0.0.1:{REDIS_PORT}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
