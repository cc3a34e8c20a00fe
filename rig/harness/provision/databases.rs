//! The event store and primary databases: accounts, databases, `migrations/` (which also hold
//! the worker's grants) and the primary's seed.

use anyhow::Context;
use sqlx::{ConnectOptions, Connection, Executor};

use rig_events::event_store::{DbConfig, trusted_sql};

use crate::targets::Services;

/// Creates the worker's and the application's accounts with the passwords the target chose.
/// In GCP Terraform creates them (`google_sql_user`); what they may do is in `migrations/`.
pub async fn accounts(services: &Services) -> anyhow::Result<()> {
    tokio::try_join!(
        create_user(&services.event_store_admin, &services.event_store_worker),
        create_user(&services.primary_admin, &services.primary_app),
    )
    .context("creating the database users")?;
    Ok(())
}

async fn create_user(admin: &DbConfig, account: &DbConfig) -> anyhow::Result<()> {
    let mut conn = connect(admin).await?;
    conn.execute(trusted_sql(format!(
        "CREATE USER IF NOT EXISTS '{}'@'%' IDENTIFIED BY '{}'",
        account.username, account.password
    )))
    .await
    .with_context(|| format!("creating user {}", account.username))?;
    conn.close().await?;
    Ok(())
}

/// The event store database with `migrator` applied by its owner.
pub(super) async fn event_store(
    services: &Services,
    database: &str,
    migrator: &sqlx::migrate::Migrator,
) -> anyhow::Result<()> {
    create_database(&services.event_store_admin, database, None).await?;
    let pool = services
        .event_store_admin
        .with_database(database)
        .pool(1)
        .await?;
    migrator
        .run(&pool)
        .await
        .with_context(|| format!("applying migrations/ to {database}"))?;
    pool.close().await;
    Ok(())
}

/// The primary database, owned by the application's account and seeded.
pub(super) async fn primary(services: &Services, database: &str) -> anyhow::Result<()> {
    create_database(
        &services.primary_admin,
        database,
        Some(&services.primary_app.username),
    )
    .await?;
    seed_primary(&services.primary_admin.with_database(database)).await
}

async fn connect(admin: &DbConfig) -> anyhow::Result<sqlx::MySqlConnection> {
    admin.connect_options().connect().await.with_context(|| {
        format!(
            "connecting to {}:{} as {}",
            admin.host, admin.port, admin.username
        )
    })
}

async fn create_database(
    admin: &DbConfig,
    database: &str,
    owner: Option<&str>,
) -> anyhow::Result<()> {
    let mut conn = connect(admin).await?;
    conn.execute(trusted_sql(format!(
        "CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )))
    .await
    .with_context(|| format!("creating database {database}"))?;
    if let Some(owner) = owner {
        conn.execute(trusted_sql(format!(
            "GRANT ALL PRIVILEGES ON `{database}`.* TO '{owner}'@'%'"
        )))
        .await?;
    }
    conn.close().await?;
    Ok(())
}

/// The primary stands for SuiteX's existing database: it has data of its own, so "untouched"
/// can be checked against something.
async fn seed_primary(primary: &DbConfig) -> anyhow::Result<()> {
    let mut conn = primary.connect_options().connect().await?;
    conn.execute(
        "CREATE TABLE tenant_accounts (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            account_id VARCHAR(255) NOT NULL UNIQUE,
            name VARCHAR(255) NOT NULL
        ) ENGINE = InnoDB;
        INSERT INTO tenant_accounts (account_id, name) VALUES
            ('TSTDRV1000001', 'Acme Corp'), ('TSTDRV1000002', 'Globex'), ('TSTDRV1000003', 'Initech');",
    )
    .await
    .context("seeding the primary database")?;
    conn.close().await?;
    Ok(())
}
