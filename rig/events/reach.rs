//! Whether the endpoints a command was given answer at all, asked once, briefly and all at
//! once, before anything waits on them. Without this a dead endpoint shows up as the sum of
//! every later client's own timeouts and retries (a minute and more), and as whatever error
//! the first of them happens to phrase.
//!
//! Only whether something answers is asked here: a connection, and the first bytes of the
//! protocol (a MySQL server's greeting, an HTTP server's reply) — a server that accepts
//! connections and never speaks is as useless as none. What the server then says (a refused
//! password, a missing subscription) is for the caller's own request to find out and name.

use std::fmt;
use std::time::Duration;

/// How long one endpoint may take to accept a connection. A loopback or VPC server answers in
/// milliseconds; a host that drops packets (a private IP reached from outside its VPC) never
/// does, and this is how long the user waits to hear so.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One endpoint, named as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What the user set to name it: `PUBSUB_EMULATOR_HOST`, `DB_EVENT_STORE_HOST/PORT`,
    /// `--event-store-db`.
    pub variable: String,
    /// What answers there: "the Pub/Sub emulator", "the event store's database server".
    pub service: String,
    /// `host:port`.
    pub address: String,
    /// What to do when it does not answer.
    pub remedy: String,
    /// What it must say to count as answering.
    pub speaks: Protocol,
}

/// The first words an endpoint must say within [`PROBE_TIMEOUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Accepting the connection is enough.
    Tcp,
    /// A MySQL server greets first, unasked.
    Mysql,
    /// An HTTP server replies to a request (any status).
    Http,
}

impl Endpoint {
    pub fn new(
        variable: impl Into<String>,
        service: impl Into<String>,
        address: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Self {
            variable: variable.into(),
            service: service.into(),
            address: address.into(),
            remedy: remedy.into(),
            speaks: Protocol::Tcp,
        }
    }

    /// A MySQL server at `address` (`host:port`).
    pub fn mysql(
        variable: impl Into<String>,
        service: impl Into<String>,
        address: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Self {
            speaks: Protocol::Mysql,
            ..Self::new(variable, service, address, remedy)
        }
    }

    /// An HTTP service given as a URL (`http://host:port`, `https://host`) or as `host:port`; a
    /// URL without a port gets its scheme's.
    pub fn from_url(
        variable: impl Into<String>,
        service: impl Into<String>,
        url: &str,
        remedy: impl Into<String>,
    ) -> Self {
        Self {
            speaks: Protocol::Http,
            ..Self::new(variable, service, host_port(url), remedy)
        }
    }
}

/// `host:port` of a URL or an address, for connecting.
pub fn host_port(url: &str) -> String {
    let (default_port, rest) = match url.split_once("://") {
        Some(("https", rest)) => (443, rest),
        Some((_, rest)) => (80, rest),
        None => (80, url),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let has_port = match authority.rsplit_once(':') {
        // `[::1]:8085` has a port, `[::1]` has none.
        Some((host, port)) => !port.is_empty() && !port.contains(']') && !host.is_empty(),
        None => false,
    };
    if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    }
}

/// An endpoint that did not answer, and why.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={address} ({service}): {why} — {remedy}",
    variable = endpoint.variable, address = endpoint.address, service = endpoint.service,
    why = describe(cause), remedy = endpoint.remedy)]
pub struct Dead {
    pub endpoint: Endpoint,
    #[source]
    pub cause: std::io::Error,
}

fn describe(cause: &std::io::Error) -> String {
    match cause.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("nothing listens there ({cause})"),
        _ => cause.to_string(),
    }
}

/// Every endpoint that did not answer, one line each.
#[derive(Debug)]
pub struct Unreachable {
    pub dead: Vec<Dead>,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.dead.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for Unreachable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.dead
            .first()
            .map(|d| d as &(dyn std::error::Error + 'static))
    }
}

/// Connects to `address` once, within [`PROBE_TIMEOUT`] (name resolution included).
pub async fn answers(address: &str) -> std::io::Result<()> {
    speaks(address, Protocol::Tcp).await
}

/// Connects to `address` and waits for the first bytes `protocol` says, all within
/// [`PROBE_TIMEOUT`].
pub async fn speaks(address: &str, protocol: Protocol) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut last = None;
        let mut stream = None;
        for candidate in tokio::net::lookup_host(address).await? {
            match tokio::net::TcpStream::connect(candidate).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut stream) = stream else {
            return Err(last.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{address} resolves to no address"),
                )
            }));
        };
        if protocol == Protocol::Http {
            let request = format!("GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
        }
        if protocol != Protocol::Tcp {
            let mut first = [0u8; 1];
            if stream.read(&mut first).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "it accepted the connection and closed it without a word",
                ));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {PROBE_TIMEOUT:?}"),
        )),
    }
}

/// Probes every endpoint at once (duplicates once); `Err` names each one that did not answer.
pub async fn probe_all(endpoints: &[Endpoint]) -> Result<(), Unreachable> {
    let mut unique: Vec<&Endpoint> = Vec::new();
    for e in endpoints {
        if !unique
            .iter()
            .any(|u| u.address == e.address && u.variable == e.variable)
        {
            unique.push(e);
        }
    }
    let mut probes = tokio::task::JoinSet::new();
    for (i, endpoint) in unique.iter().enumerate() {
        let (address, protocol) = (endpoint.address.clone(), endpoint.speaks);
        probes.spawn(async move { (i, speaks(&address, protocol).await) });
    }
    let mut dead = Vec::new();
    while let Some(joined) = probes.join_next().await {
        let (i, result) = match joined {
            Ok(done) => done,
            Err(e) => (usize::MAX, Err(std::io::Error::other(e))),
        };
        if let Err(cause) = result
            && let Some(endpoint) = unique.get(i)
        {
            dead.push((i, (*endpoint).clone(), cause));
        }
    }
    if dead.is_empty() {
        return Ok(());
    }
    // In the order the caller listed them, not the order the timeouts fell.
    dead.sort_by_key(|(i, _, _)| *i);
    Err(Unreachable {
        dead: dead
            .into_iter()
            .map(|(_, endpoint, cause)| Dead { endpoint, cause })
            .collect(),
    })
}

/// [`probe_all`], asked again for up to `patience` while something does not answer yet: for
/// services just started (`compose up -d` returns before they listen). With no patience it
/// is one probe.
pub async fn probe_within(endpoints: &[Endpoint], patience: Duration) -> Result<(), Unreachable> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match probe_all(endpoints).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_host_and_port() {
        assert_eq!(host_port("http://127.0.0.1:8085"), "127.0.0.1:8085");
        assert_eq!(host_port("127.0.0.1:8085"), "127.0.0.1:8085");
        assert_eq!(
            host_port("https://storage.googleapis.com"),
            "storage.googleapis.com:443"
        );
        assert_eq!(host_port("http://localhost/storage/v1"), "localhost:80");
        assert_eq!(host_port("http://[::1]:9000/x"), "[::1]:9000");
        assert_eq!(host_port("http://[::1]"), "[::1]:80");
    }

    #[tokio::test]
    async fn a_closed_port_is_named_with_its_variable_and_remedy() {
        // Bound, then released: nothing listens there for the moment of the test.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listening.local_addr().unwrap().to_string();
        let started = std::time::Instant::now();
        let err = probe_all(&[
            Endpoint::new("A_HOST", "a server", live, "start it"),
            Endpoint::new("B_HOST", "b server", format!("127.0.0.1:{port}"), "start b"),
        ])
        .await
        .unwrap_err();
        assert!(started.elapsed() < PROBE_TIMEOUT, "{:?}", started.elapsed());
        assert_eq!(err.dead.len(), 1, "{err}");
        let line = err.to_string();
        assert!(
            line.starts_with(&format!(
                "B_HOST=127.0.0.1:{port} (b server): nothing listens there"
            )),
            "{line}"
        );
        assert!(line.ends_with("— start b"), "{line}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn a_server_that_accepts_and_never_speaks_does_not_answer() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = silent.local_addr().unwrap().to_string();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        assert!(speaks(&address, Protocol::Tcp).await.is_ok());
        for protocol in [Protocol::Mysql, Protocol::Http] {
            let err = speaks(&address, protocol).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{protocol:?}");
        }
    }
}
