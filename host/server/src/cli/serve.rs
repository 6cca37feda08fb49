//! `leaky serve`, `leaky migrate` and `leaky admin create`.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

use crate::settings::Settings;
use crate::startup::Application;

fn settings(config: &Path) -> Result<Settings> {
    Settings::load(config).map_err(|e| anyhow::anyhow!("invalid settings: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Runs the service until stopped.
pub fn run(config: &Path) -> Result<()> {
    let settings = settings(config)?;
    crate::telemetry::init_logs(&settings.telemetry.log_format);
    runtime()?.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await
    })
}

/// Applies the migrations of the configured database.
pub fn migrate(config: &Path) -> Result<()> {
    let settings = settings(config)?;
    std::fs::create_dir_all(&settings.data_dir)?;
    let url = settings.database_url();
    runtime()?.block_on(async {
        leaky_store::schema::migrate(&url, leaky_store::schema::Schema::Migrate)
            .await
            .context("migrating the database")?;
        match leaky_store::Backend::of_url(&url)? {
            leaky_store::Backend::Sqlite => println!("database at {url} is up to date"),
            leaky_store::Backend::Postgres => println!("the PostgreSQL database is up to date"),
        }
        Ok(())
    })
}

fn password_from_stdin() -> Result<String> {
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password).context("reading the password from stdin")?;
    Ok(password.trim_end_matches(['\n', '\r']).to_string())
}

/// Creates `count` users named `prefix1..prefixN`, printing their ids.
pub fn create_users(config: &Path, count: u32, prefix: &str) -> Result<()> {
    let settings = settings(config)?;
    let password = password_from_stdin()?;
    crate::routes::validate::password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&settings.data_dir)?;
    runtime()?.block_on(async {
        let db = leaky_store::Database::open(&settings.database_url()).await?;
        let hash = crate::auth::hash_password(password).await?;
        for i in 1..=count {
            let name = format!("{prefix}{i}");
            crate::routes::validate::username(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let user = leaky_store::users::create(db.pool(), &name, &format!("{name}@users.invalid"), &hash, &["user"])
                .await?;
            println!("{}", user.id);
        }
        Ok(())
    })
}

/// Creates an admin with a password read from stdin.
pub fn create_admin(config: &Path, username: &str) -> Result<()> {
    let settings = settings(config)?;
    let password = password_from_stdin()?;
    let password = password.as_str();
    std::fs::create_dir_all(&settings.data_dir)?;
    runtime()?.block_on(async {
        let db = leaky_store::Database::open(&settings.database_url()).await?;
        let id = crate::bootstrap::create_admin(db.pool(), username, password).await?;
        println!("admin `{username}` ready (user id {id})");
        Ok(())
    })
}
