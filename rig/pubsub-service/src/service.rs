//! What both transports share: the broker behind its lock, the stop signal, and the
//! operations gRPC and REST serve alike (unary pull, acknowledge, modify deadlines), so the two
//! paths cannot drift apart. Below `grpc.rs`, `rest.rs` and `observe.rs`; above `broker.rs`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{AckOutcome, Broker};
use crate::error::{Result, ServiceError};
use crate::history::{Consumer, Transport};
use crate::limits;
use crate::proto;

/// Longest a unary Pull without `return_immediately` waits for a message.
pub const PULL_WAIT: Duration = Duration::from_secs(10);

/// State shared by every connection.
pub struct Shared {
    broker: Mutex<Broker>,
    pub stopping: CancellationToken,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            broker: Mutex::new(Broker::default()),
            stopping: CancellationToken::new(),
        }
    }

    /// The broker. A panic while holding the lock leaves consistent-enough state for a test
    /// service; carrying on beats wedging every client.
    pub fn lock(&self) -> MutexGuard<'_, Broker> {
        self.broker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn closing(&self) -> Arc<Notify> {
        self.lock().closing.clone()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// Unary Pull (gRPC `Pull`, REST `:pull`): leases for the subscription's ack deadline. Each
/// request is its own consumer, so an ordering key it leases is held until those messages
/// are settled.
pub async fn pull(
    shared: &Shared,
    subscription: &str,
    max_messages: i32,
    return_immediately: bool,
    transport: Transport,
) -> Result<Vec<proto::ReceivedMessage>> {
    if max_messages <= 0 {
        return Err(ServiceError::invalid(
            "max_messages must be a positive integer.",
        ));
    }
    let max = (max_messages as usize).min(limits::MAX_PULL_MESSAGES);
    let give_up = Instant::now() + PULL_WAIT;
    let pull = shared
        .lock()
        .pull_request(subscription, max_messages, transport, Instant::now())?;
    loop {
        let (notify, wake) = {
            let mut broker = shared.lock();
            let lease = Duration::from_secs(
                broker
                    .subscription(subscription)?
                    .config
                    .ack_deadline_seconds as u64,
            );
            let now = Instant::now();
            let got = broker.pull(
                subscription,
                Consumer::Pull(pull),
                transport,
                max,
                u64::MAX,
                lease,
                now,
            )?;
            if !got.is_empty() || return_immediately || now >= give_up {
                return Ok(got);
            }
            let sub = broker.subscription(subscription)?;
            (sub.notify.clone(), sub.next_event())
        };
        let wake = wake.unwrap_or(give_up).min(give_up);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.stopping.cancelled() => {
                return Err(ServiceError::new(tonic::Code::Unavailable, "The service is stopping."));
            }
        }
    }
}

/// Exactly-once subscriptions report the ack ids that did not take effect; others ignore
/// them, as the real service does.
fn outcome(shared: &Shared, subscription: &str, outcome: AckOutcome) -> Result<()> {
    let exactly_once = shared
        .lock()
        .subscription(subscription)
        .is_ok_and(|s| s.exactly_once());
    if exactly_once && !outcome.invalid.is_empty() {
        return Err(ServiceError::invalid_ack_ids(outcome.invalid));
    }
    Ok(())
}

/// A unary Acknowledge (gRPC or REST), for messages leased by any stream or pull.
pub fn acknowledge(
    shared: &Shared,
    subscription: &str,
    ack_ids: &[String],
    transport: Transport,
) -> Result<()> {
    limits::check_ack_ids(ack_ids)?;
    let result = shared
        .lock()
        .acknowledge(subscription, ack_ids, transport, Instant::now())?;
    outcome(shared, subscription, result)
}

/// A unary ModifyAckDeadline (gRPC or REST): `0` nacks, more extends.
pub fn modify_ack_deadline(
    shared: &Shared,
    subscription: &str,
    ack_ids: &[String],
    seconds: i32,
    transport: Transport,
) -> Result<()> {
    limits::check_ack_ids(ack_ids)?;
    let result = shared.lock().modify_ack_deadline(
        subscription,
        ack_ids,
        seconds,
        transport,
        Instant::now(),
    )?;
    outcome(shared, subscription, result)
}

/// Acks and deadline changes sent on a StreamingPull: the same broker calls as the unary
/// ones, lenient about ids (bad ones are ignored, as on the real service's stream).
pub fn stream_request(
    shared: &Shared,
    subscription: &str,
    req: &proto::StreamingPullRequest,
) -> Result<()> {
    if req.modify_deadline_ack_ids.len() != req.modify_deadline_seconds.len() {
        return Err(ServiceError::invalid(
            "modify_deadline_seconds and modify_deadline_ack_ids must have the same length.",
        ));
    }
    let now = Instant::now();
    let mut broker = shared.lock();
    if !req.ack_ids.is_empty() {
        broker.acknowledge(subscription, &req.ack_ids, Transport::GrpcStream, now)?;
    }
    for (id, seconds) in req
        .modify_deadline_ack_ids
        .iter()
        .zip(&req.modify_deadline_seconds)
    {
        broker.modify_ack_deadline(
            subscription,
            std::slice::from_ref(id),
            *seconds,
            Transport::GrpcStream,
            now,
        )?;
    }
    Ok(())
}

/// `page_token`/`page_size` paging over a sorted list: the token is the next index.
pub fn page<T>(items: Vec<T>, page_size: i32, token: &str) -> Result<(Vec<T>, String)> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| ServiceError::invalid(format!("Invalid page_token {token:?}.")))?
    };
    let size = if page_size <= 0 {
        usize::MAX
    } else {
        page_size as usize
    };
    let end = start.saturating_add(size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    let page = items
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect();
    Ok((page, next))
}
