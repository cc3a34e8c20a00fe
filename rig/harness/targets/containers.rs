//! The containers target: the same services as the local target, as containers on a Docker
//! engine (testcontainers), reached on loopback ports. The images are built from this
//! repository's files (`compose/images.sh`) unless overridden — `RIG_MYSQL_IMAGE=mysql:8.4`
//! runs the real engine with no other change. Containers never outlive the rig: see
//! [`crate::containers`].

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::{Capabilities, ControlFuture, Service, ServiceControl, Services, Target};
use crate::containers::{self, Images, PubsubImage, split_image};
use crate::services::{free_port, http_ok};
use rig_events::event_store::{APP_USER, DbConfig, WORKER_USER, trusted_sql};
use rig_events::pubsub::PubsubImplementation;
use rig_events::reach::Endpoint;

/// The rig's privileged account on both servers (created by the servers' root).
const ADMIN_USER: &str = "rig_admin";

fn secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Creates the rig's admin account through a server's root login.
async fn create_admin(root: &MySqlConnectOptions, password: &str) -> anyhow::Result<()> {
    let mut conn = root.connect().await?;
    for sql in [
        format!("CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{password}'"),
        format!("GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION"),
    ] {
        conn.execute(trusted_sql(sql)).await?;
    }
    conn.close().await?;
    Ok(())
}

/// The services a target hands back once both servers have the rig's admin account.
async fn services_on(
    pubsub: PubsubImage,
    pubsub_endpoint: String,
    storage_endpoint: String,
    event_store_root: &MySqlConnectOptions,
    primary_root: &MySqlConnectOptions,
    engine: String,
    startup: Vec<(String, Duration)>,
) -> anyhow::Result<Services> {
    let admin_password = secret();
    tokio::try_join!(
        create_admin(event_store_root, &admin_password),
        create_admin(primary_root, &admin_password),
    )
    .context("creating the rig's admin account on the database servers")?;
    let account = |root: &MySqlConnectOptions, username: &str, password: String| DbConfig {
        connection: "mysql".into(),
        host: root.get_host().to_string(),
        port: root.get_port(),
        database: String::new(),
        username: username.into(),
        password,
    };
    Ok(Services {
        target: "containers".into(),
        capabilities: Capabilities {
            provisions: true,
            owns_primary: true,
        },
        pubsub: match pubsub {
            PubsubImage::Emulator => PubsubImplementation::GoogleEmulator,
            PubsubImage::Service => PubsubImplementation::PubsubService,
        },
        pubsub_endpoint: Some(pubsub_endpoint),
        storage_endpoint: Some(storage_endpoint),
        event_store_admin: account(event_store_root, ADMIN_USER, admin_password.clone()),
        event_store_worker: account(event_store_root, WORKER_USER, secret()),
        primary_admin: account(primary_root, ADMIN_USER, admin_password),
        primary_app: account(primary_root, APP_USER, secret()),
        engine,
        existing: None,
        startup,
    })
}

const MYSQL_PORT: u16 = 3306;
const FAKE_GCS_PORT: u16 = 4443;
const PUBSUB_PORT: u16 = 8085;
/// Pulls (on machines with a registry), JVM start-up and a first datadir initialisation all
/// fit in this on 2 cores.
const START_LIMIT: Duration = Duration::from_secs(180);

/// Where the services of a stack the rig did not start listen, and their databases' root
/// password.
#[derive(Debug, Clone)]
pub struct AttachedServices {
    /// `http://host:port` of the Pub/Sub emulator (REST and gRPC on one port).
    pub pubsub: String,
    /// `http://host:port` of fake-gcs-server.
    pub storage: String,
    pub event_store_db: (String, u16),
    pub primary_db: (String, u16),
    pub root_password: String,
    /// How long the services may take to start answering at all (a stack just started); past
    /// it each silent one is named.
    pub patience: Duration,
}

impl AttachedServices {
    /// The four endpoints, named by the flags that gave them.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let remedy = "start the compose stack (`compose/up.sh` does, then provisions it) or pass the port it listens on";
        let db = |(host, port): &(String, u16)| format!("{host}:{port}");
        vec![
            Endpoint::from_url("--pubsub", "the Pub/Sub emulator", &self.pubsub, remedy),
            Endpoint::from_url("--storage", "fake-gcs-server", &self.storage, remedy),
            Endpoint::mysql(
                "--event-store-db",
                "the event store's MySQL server",
                db(&self.event_store_db),
                remedy,
            ),
            Endpoint::mysql(
                "--primary-db",
                "the primary's MySQL server",
                db(&self.primary_db),
                remedy,
            ),
        ]
    }
}

struct Running {
    service: &'static str,
    container: ContainerAsync<GenericImage>,
}

pub struct ContainersBackbone {
    services: Services,
    pub images: Images,
    // Each container is removed when its handle drops.
    containers: Vec<Running>,
}

/// Publishes `container_port` on loopback only (testcontainers would publish on every
/// interface), on `host_port` or, with `None`, a port the engine picks.
fn loopback_only(
    container_port: u16,
    host_port: Option<u16>,
) -> impl Fn(&mut HostConfig) + Send + Sync + 'static {
    move |config: &mut HostConfig| {
        config.publish_all_ports = Some(false);
        config.port_bindings = Some(
            [(
                format!("{container_port}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host_port.map(|p| p.to_string()).unwrap_or_default()),
                }]),
            )]
            .into_iter()
            .collect(),
        );
    }
}

fn image(reference: &str) -> GenericImage {
    let (name, tag) = split_image(reference);
    GenericImage::new(name, tag)
}

/// The engine a MySQL container runs, as banners name it: a MariaDB says it is a stand-in.
/// `source` says where it runs: `image …` or `compose stack`.
pub fn engine_label(version: &str, source: &str) -> String {
    if version.contains("MariaDB") {
        format!(
            "MariaDB {} (container stand-in for Cloud SQL MySQL 8.4, {source})",
            version.split('-').next().unwrap_or(version)
        )
    } else {
        format!("MySQL {version} (container, {source})")
    }
}

/// Where a MySQL container keeps its data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Datadir {
    /// In memory: gone when the container stops.
    Tmpfs,
    /// On the image's volume, on a fixed host port: the server can be killed and started
    /// again (`ServiceControl`) with its data, where its clients left it.
    Volume,
}

async fn start_mysql(
    reference: &str,
    service: &'static str,
    root_password: &str,
    datadir: Datadir,
) -> anyhow::Result<(Running, MySqlConnectOptions, String)> {
    // A restart must come back where its clients reconnect: pick the host port first.
    let host_port = match datadir {
        Datadir::Tmpfs => None,
        Datadir::Volume => {
            Some(free_port().with_context(|| format!("picking a port for {service}"))?)
        }
    };
    let request = image(reference)
        .with_exposed_port(MYSQL_PORT.tcp())
        // mysqld: "ready for connections. Version: '8.4.x'  socket: '…'  port: 3306  MySQL
        // Community Server"; MariaDB: the same words over two lines. The entrypoints' temporary
        // servers (no TCP) say "port: 0".
        .with_wait_for(WaitFor::message_on_stderr("port: 3306  "))
        .with_env_var("MYSQL_ROOT_PASSWORD", root_password);
    let request = match datadir {
        // The datadir in memory: on the engine's overlay storage InnoDB's first start took
        // 10x longer (13.7 s against 1.4 s for the stand-in, measured). A volume is not on
        // the overlay.
        Datadir::Tmpfs => request.with_mount(Mount::tmpfs_mount("/var/lib/mysql")),
        // The image's anonymous volume (removed with the container) outlives a stop.
        Datadir::Volume => request,
    };
    let container = request
        // Flags both engines take: what Cloud SQL's flags and the local target set.
        .with_cmd([
            "--skip-log-bin",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--skip-name-resolve",
            "--max-allowed-packet=64M",
            "--max-connections=500",
            "--innodb-flush-log-at-trx-commit=2",
        ])
        .with_labels(containers::labels(service))
        .with_host_config_modifier(loopback_only(MYSQL_PORT, host_port))
        .with_startup_timeout(START_LIMIT)
        .start()
        .await
        .with_context(|| format!("starting {service} from image {reference}"))?;
    let port = container.get_host_port_ipv4(MYSQL_PORT).await?;
    let root = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("root")
        .password(root_password)
        .disable_statement_logging();
    let version = wait_mysql_root(&root, service, Duration::from_secs(30), || {
        containers::log_tail(container.id(), 40)
    })
    .await?;
    Ok((Running { service, container }, root, version))
}

/// Waits until root logs in over TCP (a readiness line comes a moment before the first TCP login
/// succeeds on some engines); returns the server's version.
async fn wait_mysql_root(
    root: &MySqlConnectOptions,
    service: &str,
    limit: Duration,
    log: impl Fn() -> String,
) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        match root.connect().await {
            Ok(mut conn) => {
                let version: String = sqlx::query_scalar("SELECT VERSION()")
                    .fetch_one(&mut conn)
                    .await?;
                conn.close().await?;
                return Ok(version);
            }
            Err(e) if started.elapsed() > limit => {
                return Err(anyhow::Error::new(e).context(format!(
                    "{service} refused root over TCP for {limit:?}; its log:\n{}",
                    log()
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn start_fake_gcs(reference: &str, http: &reqwest::Client) -> anyhow::Result<(Running, u16)> {
    // Upload sessions hand out URLs on the port clients reach, so that port is fixed first.
    let host_port = free_port().context("picking a port for fake-gcs-server")?;
    let external = format!("http://127.0.0.1:{host_port}");
    let container = image(reference)
        .with_exposed_port(FAKE_GCS_PORT.tcp())
        .with_wait_for(WaitFor::message_on_either_std("server started at"))
        .with_cmd([
            "-scheme".to_string(),
            "http".into(),
            "-host".into(),
            "0.0.0.0".into(),
            "-port".into(),
            FAKE_GCS_PORT.to_string(),
            "-backend".into(),
            "memory".into(),
            "-public-host".into(),
            format!("127.0.0.1:{host_port}"),
            "-external-url".into(),
            external.clone(),
        ])
        .with_labels(containers::labels("fake-gcs-server"))
        .with_host_config_modifier(loopback_only(FAKE_GCS_PORT, Some(host_port)))
        .with_startup_timeout(START_LIMIT)
        .start()
        .await
        .with_context(|| format!("starting fake-gcs-server from image {reference}"))?;
    let running = Running {
        service: "fake-gcs-server",
        container,
    };
    wait_http(&running, http, &format!("{external}/storage/v1/b")).await?;
    Ok((running, host_port))
}

async fn start_pubsub(
    reference: &str,
    kind: PubsubImage,
    http: &reqwest::Client,
) -> anyhow::Result<(Running, u16)> {
    let (service, request) = match kind {
        PubsubImage::Emulator => (
            "pubsub-emulator",
            // The official Cloud SDK emulators image takes this command; ours does too.
            image(reference)
                .with_exposed_port(PUBSUB_PORT.tcp())
                .with_wait_for(WaitFor::message_on_either_std(
                    "Server started, listening on",
                ))
                .with_cmd([
                    "gcloud".to_string(),
                    "beta".into(),
                    "emulators".into(),
                    "pubsub".into(),
                    "start".into(),
                    format!("--host-port=0.0.0.0:{PUBSUB_PORT}"),
                ]),
        ),
        PubsubImage::Service => (
            "pubsub-service",
            image(reference)
                .with_exposed_port(PUBSUB_PORT.tcp())
                .with_wait_for(WaitFor::Nothing)
                .with_cmd([
                    "--host".to_string(),
                    "0.0.0.0".into(),
                    "--port".into(),
                    PUBSUB_PORT.to_string(),
                ]),
        ),
    };
    let container = request
        .with_labels(containers::labels(service))
        .with_host_config_modifier(loopback_only(PUBSUB_PORT, None))
        .with_startup_timeout(START_LIMIT)
        .start()
        .await
        .with_context(|| format!("starting {service} from image {reference}"))?;
    let port = container.get_host_port_ipv4(PUBSUB_PORT).await?;
    let running = Running { service, container };
    match kind {
        PubsubImage::Emulator => {
            let url = format!("http://127.0.0.1:{port}/v1/projects/rig-readiness/topics");
            wait_http(&running, http, &url).await?;
        }
        PubsubImage::Service => wait_tcp(&running, port).await?,
    }
    Ok((running, port))
}

/// Docker publishes a port before the program inside listens on it: ask the program.
async fn wait_http(running: &Running, http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    wait_http_for(running.service, http, url, Duration::from_secs(60), || {
        containers::log_tail(running.container.id(), 40)
    })
    .await
}

async fn wait_http_for(
    service: &str,
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
    log: impl Fn() -> String,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match http_ok(http, url).await {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() > limit => anyhow::bail!(
                "{service} did not answer {url} within {limit:?} (last error: {e}); its log:\n{}",
                log()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn wait_tcp(running: &Running, port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > Duration::from_secs(60) => anyhow::bail!(
                "{} did not accept connections on port {port} within 60 s ({e}); its log:\n{}",
                running.service,
                containers::log_tail(running.container.id(), 40)
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl ContainersBackbone {
    pub async fn start() -> anyhow::Result<Self> {
        let engine_version = containers::engine_version().map_err(|why| {
            anyhow::anyhow!(
                "target `containers` needs a Docker engine: {why}. Start dockerd (or point DOCKER_HOST at one), or use `--target local`"
            )
        })?;
        let pubsub_kind = PubsubImage::from_env()?;
        let started = Instant::now();
        let images = tokio::task::spawn_blocking(move || {
            let removed = containers::remove_abandoned()?;
            if removed > 0 {
                tracing::info!("removed {removed} container(s) left by rigs that are gone");
            }
            containers::ensure_reaper()?;
            containers::ensure_images(pubsub_kind)
        })
        .await??;
        let images_took = started.elapsed();
        tracing::info!(
            "Docker engine {engine_version}; images: {} (event store and primary), {}, {}",
            images.mysql,
            images.fake_gcs,
            images.pubsub
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building an HTTP client")?;
        let root_password = secret();
        let timed = |name: &'static str, since: Instant| (name.to_string(), since.elapsed());
        let started = Instant::now();
        let (pubsub, storage, event_store, primary) = tokio::try_join!(
            async {
                let r = start_pubsub(&images.pubsub, images.pubsub_kind, &http).await?;
                Ok::<_, anyhow::Error>((r, timed("pubsub", started)))
            },
            async {
                let r = start_fake_gcs(&images.fake_gcs, &http).await?;
                Ok((r, timed("fake-gcs-server", started)))
            },
            async {
                let r = start_mysql(
                    &images.mysql,
                    "event-store-db",
                    &root_password,
                    Datadir::Volume,
                )
                .await?;
                Ok((r, timed("event-store-db", started)))
            },
            async {
                let r = start_mysql(&images.mysql, "primary-db", &root_password, Datadir::Tmpfs)
                    .await?;
                Ok((r, timed("primary-db", started)))
            },
        )?;
        let ((pubsub_container, pubsub_port), t1) = pubsub;
        let ((storage_container, storage_port), t2) = storage;
        let ((event_store_container, event_store_root, version), t3) = event_store;
        let ((primary_container, primary_root, _), t4) = primary;
        let mut startup = vec![("images".to_string(), images_took), t1, t2, t3, t4];
        startup.retain(|(_, t)| !t.is_zero());
        let services = services_on(
            images.pubsub_kind,
            format!("http://127.0.0.1:{pubsub_port}"),
            format!("http://127.0.0.1:{storage_port}"),
            &event_store_root,
            &primary_root,
            engine_label(&version, &format!("image {}", images.mysql)),
            startup,
        )
        .await?;
        Ok(Self {
            services,
            images,
            containers: vec![
                pubsub_container,
                storage_container,
                event_store_container,
                primary_container,
            ],
        })
    }

    /// Takes over services someone else started — the compose stack (`compose/up.sh`) — waits
    /// until each answers, and creates the rig's users; [`crate::backbone::Backbone::deploy`] then provisions them
    /// like any other target's. Nothing is removed on drop: the stack belongs to compose.
    pub async fn attach(services: AttachedServices) -> anyhow::Result<Self> {
        // The compose stack runs the Pub/Sub `RIG_PUBSUB` names (compose/up.sh sets it).
        let pubsub_kind = PubsubImage::from_env()?;
        // Nothing listening is told in seconds; the waits below are for services that listen
        // but are not ready yet.
        rig_events::reach::probe_within(&services.endpoints(), services.patience).await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building an HTTP client")?;
        let limit = Duration::from_secs(180);
        let hint = |service: &'static str| {
            move || format!("(see `docker-compose -p backbone-rig logs {service}`)")
        };
        let started = Instant::now();
        let root = |(host, port): &(String, u16)| {
            MySqlConnectOptions::new()
                .host(host)
                .port(*port)
                .username("root")
                .password(&services.root_password)
                .disable_statement_logging()
        };
        let (event_store_root, primary_root) =
            (root(&services.event_store_db), root(&services.primary_db));
        let pubsub_url = format!("{}/v1/projects/rig-readiness/topics", services.pubsub);
        let storage_url = format!("{}/storage/v1/b", services.storage);
        let (_, _, version, _) = tokio::try_join!(
            wait_http_for("pubsub", &http, &pubsub_url, limit, hint("pubsub"),),
            wait_http_for("storage", &http, &storage_url, limit, hint("storage"),),
            wait_mysql_root(
                &event_store_root,
                "event-store-db",
                limit,
                hint("event-store-db")
            ),
            wait_mysql_root(&primary_root, "primary-db", limit, hint("primary-db")),
        )?;
        let services = services_on(
            pubsub_kind,
            services.pubsub.clone(),
            services.storage.clone(),
            &event_store_root,
            &primary_root,
            engine_label(&version, "compose stack"),
            vec![("compose stack answered".into(), started.elapsed())],
        )
        .await?;
        Ok(Self {
            services,
            images: Images {
                mysql: "(compose)".into(),
                fake_gcs: "(compose)".into(),
                pubsub: "(compose)".into(),
                pubsub_kind,
            },
            containers: Vec::new(),
        })
    }
}

impl Target for ContainersBackbone {
    fn services(&self) -> &Services {
        &self.services
    }

    fn control(&self) -> Option<&dyn ServiceControl> {
        // A compose stack the rig attached to is compose's to stop.
        (!self.containers.is_empty()).then_some(self as &dyn ServiceControl)
    }

    fn containers(&self) -> Vec<(String, String)> {
        self.containers
            .iter()
            .map(|r| (r.service.to_string(), r.container.id().to_string()))
            .collect()
    }

    fn log_tails(&self, max_bytes: u64) -> String {
        self.containers
            .iter()
            .map(|r| {
                let log = containers::log_tail(r.container.id(), 60);
                let start = log
                    .len()
                    .saturating_sub(usize::try_from(max_bytes).unwrap_or(usize::MAX));
                let start = (start..log.len())
                    .find(|i| log.is_char_boundary(*i))
                    .unwrap_or(log.len());
                format!(
                    "--- {} (container {}) ---\n{}",
                    r.service,
                    r.container.id(),
                    &log[start..]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl ContainersBackbone {
    fn container(&self, service: Service) -> anyhow::Result<&Running> {
        let name = match service {
            Service::EventStore => "event-store-db",
            Service::Storage => "fake-gcs-server",
        };
        self.containers
            .iter()
            .find(|r| r.service == name)
            .with_context(|| format!("the containers target runs no {name}"))
    }
}

impl ServiceControl for ContainersBackbone {
    fn kill(&self, service: Service) -> ControlFuture<'_> {
        Box::pin(async move {
            let running = self.container(service)?;
            // No grace period: SIGKILL at once, as a crash.
            running
                .container
                .stop_with_timeout(Some(0))
                .await
                .with_context(|| {
                    format!("killing {service} (container {})", running.container.id())
                })
        })
    }

    fn restart(&self, service: Service) -> ControlFuture<'_> {
        Box::pin(async move {
            let running = self.container(service)?;
            running.container.start().await.with_context(|| {
                format!(
                    "starting {service} again (container {})",
                    running.container.id()
                )
            })?;
            let log = || containers::log_tail(running.container.id(), 40);
            match service {
                Service::EventStore => {
                    let admin = self.services.event_store_admin.connect_options();
                    wait_mysql_root(&admin, running.service, Duration::from_secs(60), log)
                        .await
                        .map(|_| ())
                }
                Service::Storage => {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .build()
                        .context("building an HTTP client")?;
                    let endpoint = self.services.storage_endpoint.clone().unwrap_or_default();
                    wait_http_for(
                        running.service,
                        &http,
                        &format!("{endpoint}/storage/v1/b"),
                        Duration::from_secs(60),
                        log,
                    )
                    .await
                }
            }
        })
    }

    fn freeze(&self, service: Service) -> ControlFuture<'_> {
        Box::pin(async move {
            let running = self.container(service)?;
            running.container.pause().await.with_context(|| {
                format!("pausing {service} (container {})", running.container.id())
            })
        })
    }

    fn thaw(&self, service: Service) -> ControlFuture<'_> {
        Box::pin(async move {
            let running = self.container(service)?;
            running.container.unpause().await.with_context(|| {
                format!("unpausing {service} (container {})", running.container.id())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::engine_label;

    #[test]
    fn a_mariadb_is_always_labelled_as_a_stand_in() {
        let label = engine_label(
            "10.11.18-MariaDB-0+deb12u1",
            "backbone-rig/mysql-standin:abc",
        );
        assert!(label.starts_with("MariaDB 10.11.18 "), "{label}");
        assert!(
            label.contains("stand-in for Cloud SQL MySQL 8.4"),
            "{label}"
        );
        let label = engine_label("8.4.3", "image mysql:8.4");
        assert_eq!(label, "MySQL 8.4.3 (container, image mysql:8.4)");
        assert!(!label.contains("stand-in"));
    }
}
