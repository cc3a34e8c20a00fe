//! Whether the running worker can work at all. Google's streaming client retries a stream
//! that cannot connect quietly and forever, and an idle worker never touches its database, so
//! neither shows in what the worker does: "stored 0" looks the same as "nothing to do". A
//! watchdog asks each dependency directly, and says what is wrong, with the cause and the
//! variable to look at, once when it starts and then every `warn_every` while it lasts.

use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection};

use crate::Connections;
use crate::event_store::{EVENT_STORE_PREFIX, refusal};
use crate::reach;

/// How often each dependency is asked (at most; `warn_every` if shorter).
const CHECK_EVERY: Duration = Duration::from_secs(5);
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// One dependency's trouble, as the warning states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    /// "Pub/Sub", "the bucket's storage", "the event store".
    pub dependency: &'static str,
    /// The variables that configure it.
    pub variables: String,
    /// What went wrong, and what to do.
    pub cause: String,
}

/// Asks Pub/Sub, storage and the event store once. Empty: all answer.
pub async fn check(env: &Connections) -> Vec<Trouble> {
    // A stand-in must answer HTTP; of Google's endpoints (TLS) a connection is asked only.
    let probe = |endpoint: Option<&str>, google: &str| match endpoint {
        Some(url) => (reach::host_port(url), reach::Protocol::Http),
        None => (google.to_string(), reach::Protocol::Tcp),
    };
    let (pubsub_address, pubsub_protocol) =
        probe(env.pubsub.endpoint.as_deref(), "pubsub.googleapis.com:443");
    let (storage_address, storage_protocol) = probe(
        env.storage.endpoint.as_deref(),
        "storage.googleapis.com:443",
    );
    let (pubsub, storage, database) = tokio::join!(
        reach::speaks(&pubsub_address, pubsub_protocol),
        reach::speaks(&storage_address, storage_protocol),
        database(env),
    );
    let mut troubles = Vec::new();
    if let Err(e) = pubsub {
        troubles.push(Trouble {
            dependency: "Pub/Sub",
            variables: if env.pubsub.is_emulator() {
                format!(
                    "PUBSUB_EMULATOR_HOST={}",
                    env.pubsub.emulator_host().unwrap_or_default()
                )
            } else {
                "PUBSUB_EMULATOR_HOST unset: Google's endpoint".to_string()
            },
            cause: format!(
                "the stream cannot connect to {pubsub_address}: {e}; is the backbone running?"
            ),
        });
    }
    if let Err(e) = storage {
        troubles.push(Trouble {
            dependency: "the bucket's storage",
            variables: match &env.storage.endpoint {
                Some(url) => format!("STORAGE_EMULATOR_HOST={url}"),
                None => "STORAGE_EMULATOR_HOST unset: Google's endpoint".to_string(),
            },
            cause: format!(
                "{storage_address} does not answer: {e}; claim-checked payloads cannot be read"
            ),
        });
    }
    if let Err(trouble) = database {
        troubles.push(trouble);
    }
    troubles
}

/// One fresh login as the worker: a pooled connection would hide a password that no longer
/// works, or a server that restarted with other grants.
async fn database(env: &Connections) -> Result<(), Trouble> {
    let config = &env.event_store;
    let attempt = tokio::time::timeout(DB_TIMEOUT, config.connect_options().connect()).await;
    let failure = |variables: String, cause: String| Trouble {
        dependency: "the event store",
        variables,
        cause,
    };
    let address = format!(
        "{EVENT_STORE_PREFIX}HOST/PORT={}:{}",
        config.host, config.port
    );
    match attempt {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Err(_) => Err(failure(address, format!("no answer within {DB_TIMEOUT:?}"))),
        Ok(Err(e)) => match refusal::refused_by_server(&e, &[(1049, "unknown database")]) {
            Some((number, reason)) => Err(failure(
                format!(
                    "{EVENT_STORE_PREFIX}USERNAME={} {EVENT_STORE_PREFIX}PASSWORD {EVENT_STORE_PREFIX}DATABASE={}",
                    config.username, config.database
                ),
                format!("refused by the server: error {number} ({reason}): {e}"),
            )),
            None => Err(failure(address, format!("cannot connect: {e}"))),
        },
    }
}

/// Runs until dropped: warns about each trouble when it starts and every `warn_every` while
/// it lasts, and says when it is over.
pub async fn watch(env: Connections, warn_every: Duration) {
    struct Ongoing {
        trouble: Trouble,
        since: Instant,
        warned: Instant,
    }
    let mut ongoing: Vec<Ongoing> = Vec::new();
    let every = CHECK_EVERY.min(warn_every).max(Duration::from_millis(100));
    loop {
        let now = Instant::now();
        let found = check(&env).await;
        ongoing.retain(|o| {
            let still = found.iter().any(|t| t.dependency == o.trouble.dependency);
            if !still {
                tracing::info!(
                    "{} answers again, after {}s",
                    o.trouble.dependency,
                    o.since.elapsed().as_secs()
                );
            }
            still
        });
        for trouble in found {
            match ongoing
                .iter_mut()
                .find(|o| o.trouble.dependency == trouble.dependency)
            {
                Some(o) => {
                    if o.warned.elapsed() >= warn_every {
                        tracing::warn!(
                            "{} still unusable after {}s ({}): {}",
                            trouble.dependency,
                            o.since.elapsed().as_secs(),
                            trouble.variables,
                            trouble.cause
                        );
                        o.warned = Instant::now();
                    }
                    o.trouble = trouble;
                }
                None => {
                    tracing::warn!(
                        "{} unusable ({}): {}",
                        trouble.dependency,
                        trouble.variables,
                        trouble.cause
                    );
                    ongoing.push(Ongoing {
                        trouble,
                        since: now,
                        warned: Instant::now(),
                    });
                }
            }
        }
        tokio::time::sleep(every.saturating_sub(now.elapsed())).await;
    }
}
