//! Database connection settings, read from exactly the variables Laravel uses
//! (`DB_EVENT_STORE_*` for the event store, `DB_*` for the primary tenant database).

use std::fmt;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

/// The event store's variables, as the epic names them.
pub const EVENT_STORE_PREFIX: &str = "DB_EVENT_STORE_";
/// The primary (SuiteX tenant) database's variables, as Laravel names them.
pub const PRIMARY_PREFIX: &str = "DB_";

/// The worker's database user, as the epic names it: `DB_EVENT_STORE_USERNAME`, SELECT and
/// INSERT on the ledger only (the grants are in `migrations/`).
pub const WORKER_USER: &str = "sync_worker";
/// The SuiteX application's user on the primary database (`DB_USERNAME`).
pub const APP_USER: &str = "suitex_app";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{0} is not set: export it (see laravel/.env.example), or for a local backbone run `rig up --env-file backbone.env` and `source backbone.env` in another shell"
    )]
    Missing(String),
    #[error("{var}={value:?} is not valid: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
}

/// One MySQL connection's settings (`{PREFIX}CONNECTION/HOST/PORT/DATABASE/USERNAME/PASSWORD`).
#[derive(Clone, PartialEq, Eq)]
pub struct DbConfig {
    pub connection: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("connection", &self.connection)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl DbConfig {
    /// Reads `{prefix}*` from the process environment.
    pub fn from_env(prefix: &str) -> Result<Self, ConfigError> {
        Self::from_lookup(prefix, |name| std::env::var(name).ok())
    }

    /// Reads `{prefix}*` through `lookup`, so callers (and tests) can supply any source.
    pub fn from_lookup(
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |key: &str| {
            let var = format!("{prefix}{key}");
            lookup(&var).ok_or(ConfigError::Missing(var))
        };
        let connection = lookup(&format!("{prefix}CONNECTION")).unwrap_or_else(|| "mysql".into());
        if connection != "mysql" {
            return Err(ConfigError::Invalid {
                var: format!("{prefix}CONNECTION"),
                value: connection,
                reason: "only `mysql` is supported: the event store is Cloud SQL for MySQL".into(),
            });
        }
        let port_var = format!("{prefix}PORT");
        let port = match lookup(&port_var) {
            None => 3306,
            Some(value) => value.parse().map_err(|_| ConfigError::Invalid {
                var: port_var,
                value,
                reason: "expected a TCP port number".into(),
            })?,
        };
        Ok(Self {
            connection,
            host: get("HOST")?,
            port,
            database: get("DATABASE")?,
            username: get("USERNAME")?,
            password: lookup(&format!("{prefix}PASSWORD")).unwrap_or_default(),
        })
    }

    /// The `NAME=value` pairs that [`DbConfig::from_env`] reads back.
    pub fn env_vars(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (format!("{prefix}CONNECTION"), self.connection.clone()),
            (format!("{prefix}HOST"), self.host.clone()),
            (format!("{prefix}PORT"), self.port.to_string()),
            (format!("{prefix}DATABASE"), self.database.clone()),
            (format!("{prefix}USERNAME"), self.username.clone()),
            (format!("{prefix}PASSWORD"), self.password.clone()),
        ]
    }

    pub fn connect_options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .database(&self.database)
            .username(&self.username)
            .password(&self.password)
            .charset("utf8mb4")
            .disable_statement_logging()
    }

    /// Same server and credentials, another database (or none, for server-level work).
    pub fn with_database(&self, database: &str) -> Self {
        Self {
            database: database.to_string(),
            ..self.clone()
        }
    }

    pub async fn pool(&self, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
        MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.connect_options())
            .await
    }
}

/// The server's error number (1062 duplicate key, 1142 command denied, ...), if any.
pub fn mysql_error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_the_epics_variable_names_and_round_trips() {
        let vars: HashMap<String, String> = [
            ("DB_EVENT_STORE_CONNECTION", "mysql"),
            ("DB_EVENT_STORE_HOST", "10.0.0.5"),
            ("DB_EVENT_STORE_PORT", "3306"),
            ("DB_EVENT_STORE_DATABASE", "events"),
            ("DB_EVENT_STORE_USERNAME", "sync_worker"),
            ("DB_EVENT_STORE_PASSWORD", "s3cret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = DbConfig::from_lookup(EVENT_STORE_PREFIX, |k| vars.get(k).cloned()).unwrap();
        assert_eq!(config.host, "10.0.0.5");
        assert_eq!(config.username, "sync_worker");
        let back: HashMap<_, _> = config.env_vars(EVENT_STORE_PREFIX).into_iter().collect();
        assert_eq!(back, vars);
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn missing_and_invalid_variables_are_named() {
        let err = DbConfig::from_lookup("DB_", |_| None).unwrap_err();
        assert!(err.to_string().contains("DB_HOST is not set"), "{err}");
        let err = DbConfig::from_lookup("DB_", |k| (k == "DB_PORT").then(|| "thirty".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("DB_PORT"), "{err}");
        let err = DbConfig::from_lookup("DB_", |k| {
            (k == "DB_CONNECTION").then(|| "pgsql".to_string())
        })
        .unwrap_err();
        assert!(err.to_string().contains("only `mysql`"), "{err}");
    }
}
