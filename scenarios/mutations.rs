//! Broken copies of the world, one per guarantee, to show each scenario fails when what it
//! guards is broken. Each mutation edits a copy of the Terraform or of `migrations/` (never
//! the repository's files) or miswires the deployment, and names the scenario that must catch it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};

use super::World;
use rig_topology::Topology;

/// A broken world, and the temp dir holding any copied files it reads (kept alive with it).
pub type BrokenWorld = (World, Option<tempfile::TempDir>);

pub struct Mutation {
    pub name: &'static str,
    /// The scenario that must fail under this mutation.
    pub scenario: &'static str,
    pub what: &'static str,
    /// Builds the broken world; the temp dir holding any copies lives as long as the world.
    pub build: fn(&World) -> anyhow::Result<BrokenWorld>,
}

pub fn all() -> Vec<Mutation> {
    vec![
        Mutation {
            name: "ordering_without_message_ordering",
            scenario: "ordering",
            what: "the Terraform's subscriptions with enable_message_ordering = false",
            build: |world| {
                terraform_edit(
                    world,
                    "enable_message_ordering = true",
                    "enable_message_ordering = false",
                )
            },
        },
        Mutation {
            name: "dead_letter_after_6_attempts",
            scenario: "dead_letter_unordered",
            what: "the Terraform's dead-letter policy with max_delivery_attempts = 6",
            build: |world| {
                terraform_edit(
                    world,
                    "max_delivery_attempts = 5",
                    "max_delivery_attempts = 6",
                )
            },
        },
        Mutation {
            name: "uniqueness_without_unique_key",
            scenario: "event_id_uniqueness",
            what: "migrations/ without the UNIQUE KEY on event_id",
            build: migrations_without_unique_key,
        },
        Mutation {
            name: "isolation_event_store_on_primary",
            scenario: "connection_isolation",
            what: "DB_EVENT_STORE_* pointing at the primary database",
            build: |world| {
                Ok((
                    World {
                        event_store_points_at_primary: true,
                        ..world.clone()
                    },
                    None,
                ))
            },
        },
        Mutation {
            name: "oversized_without_claim_verification",
            scenario: "oversized_payloads",
            what: "a worker that does not verify claim-checked payloads",
            build: |world| {
                Ok((
                    World {
                        verify_claims: false,
                        ..world.clone()
                    },
                    None,
                ))
            },
        },
    ]
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        // Terraform's own caches are not part of the configuration.
        if name == ".terraform" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A copy of the repository's Terraform with each `(extension, from, to)` edit applied to
/// every file of that extension: for tests that need other settings than the repository's
/// (point `RIG_TERRAFORM_ROOT` or `Topology::load` at it). An edit that matches nothing is an
/// error, so a copy never silently keeps the setting it was meant to change.
pub fn terraform_copy(edits: &[(&str, &str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    copy_tree(&Topology::default_root(), dir.path()).context("copying infra/terraform")?;
    for (extension, from, to) in edits {
        if edit_files(dir.path(), extension, from, to)? == 0 {
            bail!("no `{from}` in the Terraform's .{extension} files: update this edit");
        }
    }
    Ok(dir)
}

/// Replaces `from` by `to` in every `.tf` file of a copy of the Terraform and reloads it.
fn terraform_edit(world: &World, from: &str, to: &str) -> anyhow::Result<BrokenWorld> {
    let dir = terraform_copy(&[("tf", from, to)])
        .map_err(|e| anyhow::anyhow!("{e:#} (this mutation no longer applies)"))?;
    let topology = Topology::load(dir.path(), &world.topology.environment)?;
    Ok((
        World {
            topology,
            ..world.clone()
        },
        Some(dir),
    ))
}

fn edit_files(root: &Path, extension: &str, from: &str, to: &str) -> anyhow::Result<usize> {
    let mut edited = 0;
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                let text = std::fs::read_to_string(&path)?;
                if text.contains(from) {
                    std::fs::write(&path, text.replace(from, to))?;
                    edited += 1;
                }
            }
        }
    }
    Ok(edited)
}

fn migrations_without_unique_key(world: &World) -> anyhow::Result<BrokenWorld> {
    let dir = tempfile::tempdir()?;
    let source = rig_topology::repository_root().join("migrations");
    copy_tree(&source, dir.path())?;
    let line = "    UNIQUE KEY event_store_event_id_unique (event_id),\n";
    if edit_files(dir.path(), "sql", line, "")? == 0 {
        bail!(
            "migrations/ has no `{}`: this mutation no longer applies, update it",
            line.trim()
        );
    }
    let path = dir.path().to_path_buf();
    let migrator = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(sqlx::migrate::Migrator::new(path))
                    .map_err(anyhow::Error::from)
            })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("loading the mutated migrations panicked"))??;
    Ok((
        World {
            migrator: Some(Arc::new(migrator)),
            ..world.clone()
        },
        Some(dir),
    ))
}
