//! Ready time of the containers target beside the local target's, in the same run: the time
//! from `Backbone::start` until the default scope is deployed (topics, subscriptions, bucket,
//! migrations, users) — what `rig up` waits for before printing its exports. Alternates the
//! two targets so machine load hits both alike. Prints figures; asserts nothing about time.
//!
//! `cargo bench --bench containers_ready` (RUNS=N for more runs; default 3 of each). Without a
//! Docker engine it says so and measures nothing. Images are built before the first timed run
//! (a fresh build is reported apart: it happens once per machine).

use std::time::{Duration, Instant};

use anyhow::Context;
use rig_harness::backbone::Backbone;
use rig_harness::provision::DEFAULT_SCOPE;
use rig_harness::targets::TargetKind;
use rig_topology::Topology;

async fn ready(kind: TargetKind, topology: &Topology) -> anyhow::Result<(Duration, Backbone)> {
    let started = Instant::now();
    let (backbone, _) = Backbone::up(kind, DEFAULT_SCOPE, topology)
        .await
        .with_context(|| format!("bringing up the {kind} backbone"))?;
    Ok((started.elapsed(), backbone))
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Err(why) = rig_harness::containers::engine_version() {
        println!("containers_ready: nothing measured: {why}; start dockerd to compare the targets");
        return Ok(());
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3);
    let topology = Topology::of_repository("dev")?;
    let pubsub = rig_harness::containers::PubsubImage::from_env()?;
    let images_started = Instant::now();
    let images =
        tokio::task::spawn_blocking(move || rig_harness::containers::ensure_images(pubsub))
            .await??;
    println!(
        "images ready in {} (a fresh build happens once per machine): {}, {}, {}",
        seconds(images_started.elapsed()),
        images.mysql,
        images.fake_gcs,
        images.pubsub
    );
    let (mut local, mut containers) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let (took, backbone) = ready(TargetKind::Local, &topology).await?;
        drop(backbone);
        println!("  run {run}: local      {}", seconds(took));
        local.push(took);
        let (took, backbone) = ready(TargetKind::Containers, &topology).await?;
        let parts: Vec<String> = backbone
            .startup_times()
            .iter()
            .map(|(name, t)| format!("{name} {}", seconds(*t)))
            .collect();
        let engine = backbone.engine().to_string();
        drop(backbone);
        println!(
            "  run {run}: containers {} ({}); engine {engine}",
            seconds(took),
            parts.join(", ")
        );
        containers.push(took);
    }
    let (local, containers) = (median(&mut local), median(&mut containers));
    println!(
        "ready time, median of {runs}: local {}, containers {} — containers/local = {:.1}x",
        seconds(local),
        seconds(containers),
        containers.as_secs_f64() / local.as_secs_f64()
    );
    Ok(())
}
