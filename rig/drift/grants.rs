//! The worker's grants on the live event store, read with its own credentials (`SHOW GRANTS`)
//! and compared with what the migrations grant. Cloud SQL can give users created through the
//! API the `cloudsqlsuperuser` role, which silently widens `sync_worker`: a role grant is drift.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::{ConnectOptions, Connection, Row};

use crate::compare::Findings;
use rig_events::event_store::DbConfig;

/// What the migrations grant one user: privileges on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredGrant {
    pub user: String,
    pub privileges: BTreeSet<String>,
    pub table: String,
}

/// The `GRANT ... TO 'user'` statements of the embedded migrations.
pub fn declared_grants(migrator: &sqlx::migrate::Migrator) -> Vec<DeclaredGrant> {
    let mut out = Vec::new();
    for migration in migrator.iter() {
        for statement in migration.sql.as_str().split(';') {
            let text: String = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(LiveGrant::Privileges {
                privileges,
                object,
                user,
                ..
            }) = parse_grant(text.trim())
            {
                out.push(DeclaredGrant {
                    user,
                    privileges,
                    table: object,
                });
            }
        }
    }
    out
}

/// One line of `SHOW GRANTS`, or one GRANT statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveGrant {
    Privileges {
        privileges: BTreeSet<String>,
        /// `db.table`, `db.*` or `*.*`, without quotes.
        object: String,
        user: String,
        grant_option: bool,
    },
    Role {
        role: String,
    },
}

fn unquote(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, '`' | '\'' | '"'))
        .collect()
}

pub fn parse_grant(line: &str) -> Option<LiveGrant> {
    let rest = line.trim().strip_prefix("GRANT ")?;
    let (what, to) = rest.split_once(" TO ")?;
    let user = unquote(to.split(['@', ' ']).next().unwrap_or_default());
    match what.split_once(" ON ") {
        Some((privileges, object)) => Some(LiveGrant::Privileges {
            privileges: privileges
                .split(',')
                .map(|p| p.trim().to_ascii_uppercase())
                .filter(|p| !p.is_empty())
                .collect(),
            object: unquote(object.trim()),
            user,
            grant_option: to.contains("WITH GRANT OPTION"),
        }),
        None => Some(LiveGrant::Role {
            role: unquote(what.trim().split('@').next().unwrap_or_default()),
        }),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects as the worker and compares its grants with the migrations'.
/// `databases` are every database where the migrations run for the worker (the ledger and, in
/// dev and staging, the acceptance database): each must hold exactly the declared privileges.
pub async fn check(
    out: &mut Findings,
    config: &DbConfig,
    declared: &[DeclaredGrant],
    databases: &[String],
) {
    let r = format!(
        "event store user {} on {}",
        config.username, config.database
    );
    let Some(declared) = declared.iter().find(|g| g.user == config.username) else {
        out.unreadable(
            &r,
            "grants",
            "a GRANT in migrations/".into(),
            format!(
                "the migrations grant nothing to {}: DB_EVENT_STORE_USERNAME should be the worker (sync_worker)",
                config.username
            ),
        );
        return;
    };
    let declared_privileges = declared
        .privileges
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let mut tables: Vec<String> = databases
        .iter()
        .chain(std::iter::once(&config.database))
        .map(|db| format!("{db}.{}", declared.table))
        .collect();
    tables.sort();
    tables.dedup();
    let lines = match read_grants(config).await {
        Ok(lines) => lines,
        Err(e) => {
            out.unreadable(&r, "privileges", declared_privileges, e);
            return;
        }
    };
    let mut on_tables: std::collections::BTreeMap<&str, BTreeSet<String>> = tables
        .iter()
        .map(|t| (t.as_str(), BTreeSet::new()))
        .collect();
    let mut elsewhere = Vec::new();
    let mut roles = Vec::new();
    let mut unparsed = Vec::new();
    for line in &lines {
        match parse_grant(line) {
            Some(LiveGrant::Privileges {
                privileges,
                object,
                grant_option,
                ..
            }) => {
                if grant_option {
                    elsewhere.push(format!("WITH GRANT OPTION on {object}"));
                }
                if let Some(held) = on_tables.get_mut(object.as_str()) {
                    held.extend(privileges);
                } else if !(privileges.len() == 1 && privileges.contains("USAGE")) {
                    let list: Vec<_> = privileges.into_iter().collect();
                    elsewhere.push(format!("{} on {object}", list.join(", ")));
                }
            }
            Some(LiveGrant::Role { role }) => roles.push(role),
            None => unparsed.push(line.clone()),
        }
    }
    for (table, held) in on_tables {
        out.field(
            &r,
            &format!("privileges on {table}"),
            declared_privileges.clone(),
            if held.is_empty() {
                "none".into()
            } else {
                held.into_iter().collect::<Vec<_>>().join(", ")
            },
        );
    }
    elsewhere.extend(unparsed.into_iter().map(|l| format!("unrecognised: {l}")));
    out.field(
        &r,
        "privileges elsewhere",
        "none (USAGE on *.*)".into(),
        if elsewhere.is_empty() {
            "none (USAGE on *.*)".into()
        } else {
            elsewhere.join("; ")
        },
    );
    let widened = !roles.is_empty();
    out.judged(
        &r,
        "roles granted",
        "none".into(),
        if widened {
            roles.join(", ")
        } else {
            "none".into()
        },
        !widened,
        if widened {
            format!(
                "a role widens {} beyond SELECT/INSERT: REVOKE {} FROM '{}'@'%' as the migration owner",
                config.username,
                roles.join(", "),
                config.username
            )
        } else {
            String::new()
        },
    );
}

async fn read_grants(config: &DbConfig) -> Result<Vec<String>, String> {
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, config.connect_options().connect())
        .await
        .map_err(|_| {
            format!(
                "no answer from {}:{} within {CONNECT_TIMEOUT:?}; against Cloud SQL run from a machine on the VPC",
                config.host, config.port
            )
        })?
        .map_err(|e| format!("connecting as {}: {e}", config.username))?;
    let rows = sqlx::query("SHOW GRANTS")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| format!("SHOW GRANTS: {e}"))?;
    let lines = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("SHOW GRANTS: {e}"))?;
    let _ = conn.close().await;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_grants_lines_are_parsed() {
        assert_eq!(
            parse_grant("GRANT SELECT, INSERT ON `events`.`event_store` TO `sync_worker`@`%`"),
            Some(LiveGrant::Privileges {
                privileges: ["INSERT".to_string(), "SELECT".to_string()].into(),
                object: "events.event_store".into(),
                user: "sync_worker".into(),
                grant_option: false,
            })
        );
        // MySQL 8 names the role with its host; MariaDB without.
        assert_eq!(
            parse_grant("GRANT `cloudsqlsuperuser`@`%` TO `sync_worker`@`%`"),
            Some(LiveGrant::Role {
                role: "cloudsqlsuperuser".into()
            })
        );
        assert_eq!(
            parse_grant("GRANT `cloudsqlsuperuser` TO `sync_worker`@`%`"),
            Some(LiveGrant::Role {
                role: "cloudsqlsuperuser".into()
            })
        );
        assert!(matches!(
            parse_grant("GRANT ALL PRIVILEGES ON *.* TO `x`@`%` WITH GRANT OPTION"),
            Some(LiveGrant::Privileges {
                grant_option: true,
                ..
            })
        ));
    }

    #[test]
    fn the_migrations_grant_the_worker_select_and_insert() {
        let grants = declared_grants(&rig_events::event_store::MIGRATOR);
        assert_eq!(
            grants,
            vec![DeclaredGrant {
                user: "sync_worker".into(),
                privileges: ["INSERT".to_string(), "SELECT".to_string()].into(),
                table: "event_store".into(),
            }]
        );
    }
}
