//! How long `rig up` takes until the environment is printed: a median of 5 runs (the
//! target: at most 2.5 s on a 2-core machine; the goal: at most 0.5 s). Prints figures;
//! asserts nothing about time.
//!
//! `cargo bench --bench rig_up` (the rig binary is then built with the bench profile).
//! `RIG_UP_BASELINE=/path/to/another/rig` also times that binary, run for run alternating with
//! this one, so that both see the same load on a shared machine (e.g. a copy of
//! `target/release/rig` built from an earlier commit).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const TARGET: Duration = Duration::from_millis(2500);
const GOAL: Duration = Duration::from_millis(500);
/// The last line `rig up` prints on stdout.
const LAST_EXPORT: &str = "export DB_PASSWORD=";

fn main() -> Result<(), String> {
    let rig = env!("CARGO_BIN_EXE_rig");
    let baseline = std::env::var("RIG_UP_BASELINE")
        .ok()
        .filter(|b| !b.is_empty());
    println!("rig up: time from spawn until `{LAST_EXPORT}...` is printed, {RUNS} runs");
    let mut times = Vec::with_capacity(RUNS);
    let mut baseline_times = Vec::with_capacity(RUNS);
    for run in 1..=RUNS {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        let took = one_run(rig).map_err(|e| format!("run {run}: {e}"))?;
        print!(
            "  run {run}: {:.3} s (load {})",
            took.as_secs_f64(),
            load.join(" ")
        );
        times.push(took);
        if let Some(baseline) = &baseline {
            let took = one_run(baseline).map_err(|e| format!("baseline run {run}: {e}"))?;
            print!("; baseline {:.3} s", took.as_secs_f64());
            baseline_times.push(took);
        }
        println!();
    }
    let median = summary("rig up", &mut times);
    println!(
        "  target <= {:.1} s: {}; goal <= {:.1} s: {}",
        TARGET.as_secs_f64(),
        if median <= TARGET { "met" } else { "NOT met" },
        GOAL.as_secs_f64(),
        if median <= GOAL { "met" } else { "NOT met" }
    );
    if let Some(baseline) = &baseline {
        let before = summary(&format!("baseline {baseline}"), &mut baseline_times);
        println!(
            "  this build takes {:.0} % of the baseline's median",
            100.0 * median.as_secs_f64() / before.as_secs_f64()
        );
    }
    Ok(())
}

/// Prints the median (with min and max) and returns it.
fn summary(name: &str, times: &mut [Duration]) -> Duration {
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{name} median: {:.3} s (min {:.3} s, max {:.3} s)",
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
    );
    median
}

fn one_run(rig: &str) -> Result<Duration, String> {
    let stderr_file = tempfile::NamedTempFile::new().map_err(|e| format!("temp file: {e}"))?;
    let stderr = stderr_file
        .reopen()
        .map_err(|e| format!("temp file: {e}"))?;
    let started = Instant::now();
    let mut child = Command::new(rig)
        .arg("up")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting {rig}: {e}"))?;
    let stdout = child.stdout.take().ok_or("rig up's stdout was not piped")?;
    let printed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with(LAST_EXPORT));
    let took = started.elapsed();
    let stopped = stop(&mut child);
    if !printed {
        let log = std::fs::read_to_string(stderr_file.path()).unwrap_or_default();
        return Err(format!(
            "rig up ended without printing {LAST_EXPORT}; stderr:\n{log}"
        ));
    }
    stopped?;
    Ok(took)
}

/// SIGTERM, as a developer's Ctrl-C would, then wait for the rig to stop everything.
///
/// A SIGTERM that arrives right after the last export line can be lost (`rig up` starts
/// listening for the signal only after printing), so it is repeated until the rig exits; a
/// repeat is reported, since a supervisor sending one SIGTERM would have hung.
fn stop(child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for rig up: {e}"))?
        {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("rig up ignored {sent} SIGTERM(s) for 30 s: killed"));
        }
        let _ = rig_harness::process::send_signal(child.id(), libc::SIGTERM);
        sent += 1;
        std::thread::sleep(Duration::from_millis(500));
    };
    if sent > 1 {
        println!("    (rig up needed {sent} SIGTERMs to stop: the first was lost)");
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("rig up exited with {status} after SIGTERM"))
    }
}
