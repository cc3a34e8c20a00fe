//! `pubsub-service`: a Google Cloud Pub/Sub v1 service of our own, for tests. The official
//! clients talk to it unchanged through `PUBSUB_EMULATOR_HOST` (plaintext, one port: gRPC and
//! REST/JSON). Unlike Google's emulator it dead-letters ordered subscriptions, applies
//! filters, honours the retry policy's backoff, enforces the documented limits, and can
//! inject faults per subscription. See `docs/pubsub-service.md` for what is supported and
//! where each behaviour is documented.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let service = pubsub_service::PubsubService::start("127.0.0.1:0".parse().unwrap()).await?;
//! let emulator_host = service.local_addr().to_string(); // for PUBSUB_EMULATOR_HOST
//! # drop(emulator_host);
//! drop(service); // stops it
//! # Ok(()) }
//! ```

mod broker;
pub mod error;
pub mod faults;
pub mod filter;
mod grpc;
pub mod history;
mod json;
pub mod limits;
mod observe;
pub mod proto;
mod rest;
mod server;
mod service;
mod snapshot;
mod subscription;

use std::net::SocketAddr;
use std::sync::Arc;

pub use subscription::backoff;

/// Starts services.
pub struct PubsubService;

impl PubsubService {
    /// Binds `addr` (port 0 picks a free one) and serves on the current tokio runtime until
    /// the returned handle is dropped or stopped.
    pub async fn start(addr: SocketAddr) -> std::io::Result<RunningService> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(service::Shared::new());
        tokio::spawn(server::serve(listener, shared.clone()));
        Ok(RunningService { local_addr, shared })
    }
}

/// A running service; dropping it stops it (streams end with UNAVAILABLE, the port closes).
pub struct RunningService {
    local_addr: SocketAddr,
    shared: Arc<service::Shared>,
}

impl RunningService {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://HOST:PORT`, the endpoint the official Rust client's builders take.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// `HOST:PORT`, what `PUBSUB_EMULATOR_HOST` takes.
    pub fn emulator_host(&self) -> String {
        self.local_addr.to_string()
    }

    pub fn stop(self) {}

    /// Starts recording `project`'s history (what the service does with its topics and
    /// subscriptions); returns the last sequence number recorded so far, to read `after`.
    /// The same as `POST /_rig/v1/projects/{project}/history:start`.
    pub fn history_start(&self, project: &str) -> u64 {
        self.shared.lock().history_start(project)
    }

    /// Stops recording `project`; its records stay readable.
    pub fn history_stop(&self, project: &str) {
        self.shared.lock().history_stop(project)
    }

    /// Forgets `project`'s records and stops recording it.
    pub fn history_clear(&self, project: &str) {
        self.shared.lock().history_clear(project)
    }

    /// Up to `limit` (at most `history::MAX_PAGE`) of `project`'s records after sequence
    /// number `after`, oldest first; `next` of the page is the cursor to read on.
    pub fn history(&self, project: &str, after: u64, limit: usize) -> history::Page {
        self.shared.lock().history_page(project, after, limit)
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.shared.stopping.cancel();
    }
}
