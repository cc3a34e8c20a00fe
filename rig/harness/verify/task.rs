//! A spawned task that ends with its owner: the run's background work (the history follower,
//! the ledger sampler, the taps) stops when the run is dropped, also when a signal cancels it.

use std::future::Future;

pub struct Task(tokio::task::JoinHandle<()>);

impl Task {
    pub fn spawn(work: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(work))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}
