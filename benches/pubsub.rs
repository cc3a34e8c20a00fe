//! pubsub-service against Google's emulator, in one run, through the official Rust client:
//! - ready time: from start until the first admin call is answered, in process (as the local
//!   target runs it) and as a process (spawn included, like the emulator's figure);
//! - one ordered stream: messages/s received and acked from a backlog on an ordered
//!   subscription (1 KB messages, 100 ordering keys);
//! - memory: RSS of the service process holding 100k unacked 1 KB messages.
//!
//! Prints figures and ratios; asserts nothing about time (the targets: ready at most
//! 50 ms, at least 20,000 msg/s and 10x the emulator, at most 300 MB). Each service runs as its own process
//! (this binary re-executed for pubsub-service) so its RSS is its own.
//!
//! `cargo bench --bench pubsub`; `RIG_BENCH_MESSAGES` changes the stream's message count.
//! Skips the emulator's half, saying why, when Java or the emulator is missing.
//!
//! Against an earlier build of the service, in the same run: `RIG_BENCH_PUBSUB_BASELINE=PATH`
//! (a `pubsub-service` binary built from another commit, run as `PATH --port P`) measures it
//! and this build three times each, alternately, and prints the medians and their ratio; how
//! to build one is in docs/performance.md.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{self, Message};
use rig_harness::services::pubsub_emulator;

const CHILD: &str = "RIG_BENCH_PUBSUB_SERVICE_CHILD";
const PROJECT: &str = "bench";
const KEYS: usize = 100;
const MESSAGE_BYTES: usize = 1024;
const HELD_MESSAGES: usize = 100_000;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if std::env::var_os(CHILD).is_some() {
        return runtime.block_on(serve_as_child());
    }
    runtime.block_on(compare())
}

/// The child: pubsub-service on a free port, the port on stdout, until stdin closes.
async fn serve_as_child() -> anyhow::Result<()> {
    let service = pubsub_service::PubsubService::start("127.0.0.1:0".parse()?).await?;
    println!("{}", service.local_addr().port());
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await?;
    drop(service);
    Ok(())
}

struct Figures {
    ready: Duration,
    stream_rate: f64,
    stream_messages: usize,
    rss_idle_mb: f64,
    rss_held_mb: f64,
}

async fn compare() -> anyhow::Result<()> {
    let messages: usize = std::env::var("RIG_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    println!("pubsub-service vs Google's emulator, through google-cloud-pubsub (Rust)");
    // In process, as the local target runs it: from start() until the first admin call is
    // answered (client construction included).
    let mut in_process = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        let service = pubsub_service::PubsubService::start("127.0.0.1:0".parse()?).await?;
        let topics = TopicAdmin::builder()
            .with_endpoint(service.endpoint())
            .with_credentials(anonymous())
            .build()
            .await?;
        topics
            .create_topic()
            .set_name(format!("projects/{PROJECT}/topics/ready-{i}"))
            .send()
            .await?;
        in_process.push(started.elapsed());
    }
    in_process.sort();
    println!(
        "pubsub-service in process: ready (start() to the first admin call answered) median {:.1} ms of 5 (min {:.1} ms, max {:.1} ms)",
        in_process[2].as_secs_f64() * 1000.0,
        in_process[0].as_secs_f64() * 1000.0,
        in_process[4].as_secs_f64() * 1000.0
    );
    let ours = run_child(
        Command::new(std::env::current_exe()?).env(CHILD, "1"),
        None,
        messages,
    )
    .await?;
    report("pubsub-service", &ours);
    if let Some(baseline) = std::env::var_os("RIG_BENCH_PUBSUB_BASELINE") {
        against_baseline(std::path::Path::new(&baseline), messages).await?;
    }

    let emulator = match (
        pubsub_emulator::locate_java(),
        pubsub_emulator::locate_jar(),
    ) {
        (Ok(java), Ok(jar)) => {
            let dir = tempfile::tempdir()?;
            let http = reqwest::Client::builder().no_proxy().build()?;
            let started = Instant::now();
            let (service, port) = pubsub_emulator::start(&java, &jar, dir.path(), &http).await?;
            let endpoint = format!("http://127.0.0.1:{port}");
            // The emulator is ~10x slower: a smaller stream keeps the run short.
            let figures =
                measure(&endpoint, service.pid(), started, (messages / 5).max(1000)).await?;
            drop(service);
            Some(figures)
        }
        (Err(e), _) | (_, Err(e)) => {
            println!("Google's emulator: SKIPPED ({e})");
            None
        }
    };
    if let Some(emulator) = &emulator {
        report("google-emulator", emulator);
        println!(
            "ratios (pubsub-service / emulator): ready {:.3}x the time, stream {:.1}x the rate, held RSS {:.2}x",
            ours.ready.as_secs_f64() / emulator.ready.as_secs_f64(),
            ours.stream_rate / emulator.stream_rate,
            ours.rss_held_mb / emulator.rss_held_mb
        );
    }
    println!(
        "targets: ready in process <= 50 ms: {}; one ordered stream >= 20,000 msg/s: {}{}; RSS with 100k held <= 300 MB: {}",
        met(in_process[2] <= Duration::from_millis(50)),
        met(ours.stream_rate >= 20_000.0),
        emulator
            .as_ref()
            .map(|e| format!(
                " and >= 10x the emulator: {}",
                met(ours.stream_rate >= 10.0 * e.stream_rate)
            ))
            .unwrap_or_default(),
        met(ours.rss_held_mb <= 300.0)
    );
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn report(name: &str, f: &Figures) {
    println!(
        "{name:<16} ready {:>8.1} ms | one ordered stream {:>9.0} msg/s ({} messages) | RSS idle {:>6.1} MB, holding {HELD_MESSAGES} x 1 KB {:>6.1} MB",
        f.ready.as_secs_f64() * 1000.0,
        f.stream_rate,
        f.stream_messages,
        f.rss_idle_mb,
        f.rss_held_mb
    );
}

fn stop(child: &mut Child) {
    drop(child.stdin.take());
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

async fn measure(
    endpoint: &str,
    pid: u32,
    started: Instant,
    messages: usize,
) -> anyhow::Result<Figures> {
    let topics = TopicAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous())
        .build()
        .await?;
    // Ready: the first admin call that succeeds, counted from the start of the process.
    let ready = loop {
        match topics
            .create_topic()
            .set_name(format!("projects/{PROJECT}/topics/ready"))
            .send()
            .await
        {
            Ok(_) => break started.elapsed(),
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                anyhow::bail!("{endpoint} not ready after 30 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    };
    let rss_idle_mb = rss_mb(pid);
    let subscriptions = SubscriptionAdmin::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous())
        .build()
        .await?;
    let subscriber = Subscriber::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous())
        .build()
        .await?;
    let payload = vec![b'x'; MESSAGE_BYTES];

    // One ordered stream.
    for (topic, sub, ordered) in [
        ("stream", "stream.ordered", true),
        ("held", "held.sub", false),
    ] {
        topics
            .create_topic()
            .set_name(format!("projects/{PROJECT}/topics/{topic}"))
            .send()
            .await?;
        subscriptions
            .create_subscription()
            .with_request(
                model::Subscription::new()
                    .set_name(format!("projects/{PROJECT}/subscriptions/{sub}"))
                    .set_topic(format!("projects/{PROJECT}/topics/{topic}"))
                    .set_enable_message_ordering(ordered)
                    .set_ack_deadline_seconds(60),
            )
            .send()
            .await?;
    }
    publish(endpoint, "stream", messages, &payload, true).await?;
    let mut stream = subscriber
        .subscribe(format!("projects/{PROJECT}/subscriptions/stream.ordered"))
        .set_max_outstanding_messages(20_000i64)
        .build();
    let receiving = Instant::now();
    let mut received = 0usize;
    while received < messages {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no message for 30 s after {received}"))?;
        let Some(next) = next else {
            anyhow::bail!("the stream ended after {received} messages");
        };
        let (_, handler) = next?;
        handler.ack();
        received += 1;
    }
    let stream_rate = received as f64 / receiving.elapsed().as_secs_f64();
    drop(stream);

    // Memory: a backlog nobody pulls.
    publish(endpoint, "held", HELD_MESSAGES, &payload, false).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_held_mb = rss_mb(pid);
    Ok(Figures {
        ready,
        stream_rate,
        stream_messages: messages,
        rss_idle_mb,
        rss_held_mb,
    })
}

async fn publish(
    endpoint: &str,
    topic: &str,
    n: usize,
    payload: &[u8],
    keyed: bool,
) -> anyhow::Result<()> {
    let publisher = Publisher::builder(format!("projects/{PROJECT}/topics/{topic}"))
        .with_endpoint(endpoint)
        .with_credentials(anonymous())
        .build()
        .await?;
    let mut pending = Vec::with_capacity(1000);
    for i in 0..n {
        let mut m = Message::new().set_data(payload.to_vec());
        if keyed {
            m = m.set_ordering_key(format!("key-{}", i % KEYS));
        }
        pending.push(publisher.publish(m));
        if pending.len() == 1000 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    Ok(())
}

/// This build's service and an earlier build's, three rounds each, alternately (so a noisy
/// minute hits both): the medians of the ordered stream's rate and the held RSS, and ratios.
async fn against_baseline(baseline: &std::path::Path, messages: usize) -> anyhow::Result<()> {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        ours.push(
            run_child(
                Command::new(std::env::current_exe()?).env(CHILD, "1"),
                None,
                messages,
            )
            .await?,
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new(baseline);
        command.arg("--port").arg(port.to_string());
        theirs.push(run_child(&mut command, Some(port), messages).await?);
    }
    let median = |v: &[Figures], f: fn(&Figures) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (rate_ours, rate_base) = (
        median(&ours, |f| f.stream_rate),
        median(&theirs, |f| f.stream_rate),
    );
    let (rss_ours, rss_base) = (
        median(&ours, |f| f.rss_held_mb),
        median(&theirs, |f| f.rss_held_mb),
    );
    println!(
        "against the baseline {} (3 rounds each, alternately, medians): one ordered stream {rate_ours:.0} vs {rate_base:.0} msg/s = {:.2}x; RSS holding {HELD_MESSAGES} x 1 KB {rss_ours:.1} vs {rss_base:.1} MB = {:.2}x",
        baseline.display(),
        rate_ours / rate_base,
        rss_ours / rss_base
    );
    Ok(())
}

/// Starts a service process (this binary as the child, or a baseline binary on `port`),
/// waits for its port, measures it and stops it.
async fn run_child(
    command: &mut Command,
    port: Option<u16>,
    messages: usize,
) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut line)?;
    let port = match port {
        Some(p) => p,
        None => line.trim().parse()?,
    };
    let figures = measure(
        &format!("http://127.0.0.1:{port}"),
        child.id(),
        started,
        messages,
    )
    .await;
    stop(&mut child);
    figures
}
