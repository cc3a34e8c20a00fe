//! What `rig worker` checks before it starts: the environment names everything the worker
//! needs (every unset variable named at once), was not left by a backbone that is gone, and
//! each endpoint answers — and the event store takes the worker's login. A worker that cannot
//! work says so and stops at once, instead of printing "stored 0" for as long as it runs.

use std::time::Duration;

use anyhow::Context;
use sqlx::{ConnectOptions, Connection};

use rig_events::Connections;
use rig_events::event_store::{EVENT_STORE_PREFIX, refusal};
use rig_topology::Topology;

const LOGIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The worker's connections, from the process environment, checked as above.
pub async fn connections(topology: &Topology) -> anyhow::Result<Connections> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(why) = crate::env_file::stale_owner(var) {
        anyhow::bail!(why);
    }
    let connections = Connections::from_lookup(var, &topology.bucket.name)?;
    if !connections.pubsub.is_emulator() {
        tracing::info!(
            "PUBSUB_EMULATOR_HOST is not set: Google's Pub/Sub, project {}, with Application Default Credentials",
            connections.pubsub.project_id
        );
    }
    if !connections.storage.is_emulator() {
        tracing::info!("STORAGE_EMULATOR_HOST is not set: Google's Cloud Storage");
    }
    if var("BACKBONE_PAYLOAD_BUCKET").is_none() {
        tracing::info!(
            "BACKBONE_PAYLOAD_BUCKET is not set: the Terraform's bucket {}",
            connections.bucket
        );
    }
    if var(&format!("{EVENT_STORE_PREFIX}PASSWORD")).is_none() {
        tracing::warn!("{EVENT_STORE_PREFIX}PASSWORD is not set: logging in without a password");
    }
    let remedy = "start the backbone this environment describes (`rig up --env-file FILE`, then `source FILE`), or correct the variable";
    let endpoints = connections.endpoints(remedy);
    crate::backbone::probe(connections.uses_google(), &endpoints).await?;
    login(&connections).await?;
    Ok(connections)
}

/// One login as the worker: a refusal now is a configuration to fix, not a moment to wait out.
async fn login(connections: &Connections) -> anyhow::Result<()> {
    let config = &connections.event_store;
    let attempt = tokio::time::timeout(LOGIN_TIMEOUT, config.connect_options().connect())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{EVENT_STORE_PREFIX}HOST/PORT={}:{}: the server accepts connections but did not answer a login within {LOGIN_TIMEOUT:?}",
                config.host,
                config.port
            )
        })?;
    match attempt {
        Ok(conn) => {
            let _ = conn.close().await;
            Ok(())
        }
        Err(e) => {
            let what = match refusal::refused_by_server(&e, &[(1049, "unknown database")]) {
                Some((number, reason)) => format!(
                    "the event store refused {EVENT_STORE_PREFIX}USERNAME={} on {EVENT_STORE_PREFIX}DATABASE={} (error {number}: {reason}): check {EVENT_STORE_PREFIX}USERNAME, {EVENT_STORE_PREFIX}PASSWORD and {EVENT_STORE_PREFIX}DATABASE",
                    config.username, config.database
                ),
                None => format!(
                    "could not log in to the event store at {}:{} ({EVENT_STORE_PREFIX}HOST/PORT)",
                    config.host, config.port
                ),
            };
            Err(anyhow::Error::new(e)).context(what)
        }
    }
}
