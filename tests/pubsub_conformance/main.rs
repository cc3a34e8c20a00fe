//! The Pub/Sub conformance suite: documented behaviours, each checked against every
//! implementation through an official client (Google's Rust client, and for the subscriber's
//! behaviours Google's Python client too: `python::*`), one libtest trial per behaviour ×
//! implementation (`google_emulator::ordering::per_key_publish_order`, ...), so `cargo nextest
//! run --test pubsub_conformance` lists and runs each by name.
//!
//! Outcomes: our service getting a behaviour wrong fails its trial; Google's emulator getting
//! it wrong is reported as its DIVERGENCE (an ignored trial with the reason, never a pass);
//! real Pub/Sub (`RIG_TARGET=env` with `GOOGLE_CLOUD_PROJECT`) getting it wrong fails, since it
//! is the reference.
//! `RIG_FIDELITY_RECORD=1` records outcomes into docs/fidelity/*.json and regenerates
//! docs/fidelity.md.

mod behaviours;
mod fidelity;
mod implementation;
mod python;
mod scope;
mod wire;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use implementation::{Endpoint, Implementation, Running};

struct Shared {
    runtime: tokio::runtime::Runtime,
    started: Mutex<HashMap<Implementation, Started>>,
    behaviours: Vec<behaviours::Behaviour>,
}

/// An implementation started (kept alive until the harness ends) and where to reach it.
type Started = Result<(Arc<Running>, Endpoint), Unavailable>;

#[derive(Clone)]
enum Unavailable {
    /// A prerequisite is absent on this machine (no Java, no emulator jar): skipped, loudly.
    Missing(String),
    Broken(String),
}

impl Shared {
    fn endpoint(&self, implementation: Implementation) -> Result<Endpoint, Unavailable> {
        let mut started = self
            .started
            .lock()
            .map_err(|_| Unavailable::Broken("lock poisoned".into()))?;
        let entry = started.entry(implementation).or_insert_with(|| {
            let begun = Instant::now();
            let result = self.runtime.block_on(implementation::start(implementation));
            match result {
                Ok((running, endpoint)) => {
                    eprintln!(
                        "{} ready in {:.2} s at {}",
                        fidelity::label(implementation),
                        begun.elapsed().as_secs_f64(),
                        endpoint.url.as_deref().unwrap_or("pubsub.googleapis.com")
                    );
                    Ok((Arc::new(running), endpoint))
                }
                Err(e)
                    if implementation == Implementation::GoogleEmulator
                        && e.contains("not found") =>
                {
                    Err(Unavailable::Missing(e))
                }
                Err(e) => Err(Unavailable::Broken(e)),
            }
        });
        entry.clone().map(|(_, endpoint)| endpoint)
    }
}

fn run_trial(
    shared: &Shared,
    implementation: Implementation,
    behaviour: &behaviours::Behaviour,
) -> Result<Completion, Failed> {
    let endpoint = match shared.endpoint(implementation) {
        Ok(endpoint) => endpoint,
        Err(Unavailable::Missing(reason)) => {
            eprintln!("SKIPPED {}: {reason}", fidelity::label(implementation));
            return Ok(Completion::ignored_with(format!("SKIPPED: {reason}")));
        }
        Err(Unavailable::Broken(reason)) => {
            return Err(Failed::from(format!(
                "{} could not be started: {reason}",
                fidelity::label(implementation)
            )));
        }
    };
    if behaviour.client() == behaviours::Client::Python
        && let Err(reason) = python::available()
    {
        // A prerequisite, not a behaviour: our service's column must not pass without it
        // (`./x install` installs it); the others say SKIPPED, loudly.
        if implementation == Implementation::OurService {
            return Err(Failed::from(reason));
        }
        eprintln!("SKIPPED {}: {reason}", behaviour.name);
        return Ok(Completion::ignored_with(format!("SKIPPED: {reason}")));
    }
    let begun = Instant::now();
    let scope = scope::Scope::new(
        implementation,
        &endpoint,
        behaviour.name,
        shared.runtime.handle().clone(),
    )
    .map_err(|e| Failed::from(format!("setting up the check's scope: {e}")))?;
    let verdict = (behaviour.check)(&scope);
    scope.clean_up();
    let seconds = begun.elapsed().as_secs_f64();
    let outcome = match &verdict {
        Ok(()) => fidelity::Outcome::Pass,
        Err(_) if implementation.failure_is_divergence() => fidelity::Outcome::Divergence,
        Err(_) => fidelity::Outcome::Fail,
    };
    println!("    {} in {seconds:.1} s", behaviour.name);
    if fidelity::recording() {
        let recorded = fidelity::Recorded {
            outcome,
            detail: verdict.clone().err().unwrap_or_default(),
        };
        fidelity::record(implementation, behaviour.name, recorded, &shared.behaviours)
            .map_err(|e| Failed::from(format!("recording the outcome: {e}")))?;
    }
    match verdict {
        Ok(()) => Ok(Completion::Completed),
        Err(reason) if implementation.failure_is_divergence() => {
            eprintln!(
                "DIVERGENCE of {} from the documented behaviour {}: {reason}",
                fidelity::label(implementation),
                behaviour.name
            );
            Ok(Completion::ignored_with(format!("DIVERGENCE: {reason}")))
        }
        Err(reason) => Err(Failed::from(format!(
            "{}\n  expected: {}\n  source: {}",
            reason, behaviour.expectation, behaviour.source
        ))),
    }
}

/// The implementations this build and environment can run: our service and Google's emulator
/// always, real Pub/Sub only when asked for with credentials.
fn implementations() -> Vec<Implementation> {
    let mut all = vec![Implementation::OurService, Implementation::GoogleEmulator];
    if implementation::gcp_project_from_env().is_some() {
        all.push(Implementation::Gcp);
    }
    all
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // The checks mostly wait on ack deadlines and backoffs: run many at once when one process
    // runs them all (`cargo test`); nextest runs each trial in its own process anyway.
    if args.test_threads.is_none() {
        args.test_threads = Some(16);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared {
        runtime,
        started: Mutex::new(HashMap::new()),
        behaviours: behaviours::all(),
    });
    let mut trials = Vec::new();
    for implementation in implementations() {
        for index in 0..shared.behaviours.len() {
            let shared = shared.clone();
            let name = format!("{}::{}", implementation.id(), shared.behaviours[index].name);
            trials.push(Trial::ignorable_test(name, move || {
                run_trial(&shared, implementation, &shared.behaviours[index])
            }));
        }
    }
    {
        let shared = shared.clone();
        trials.push(Trial::test("fidelity::doc_is_current", move || {
            fidelity::staleness(&shared.behaviours).map_err(Failed::from)
        }));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(shared) = Arc::try_unwrap(shared) {
        if let Ok(mut started) = shared.started.lock() {
            started.clear();
        }
        shared
            .runtime
            .shutdown_timeout(std::time::Duration::from_secs(5));
    }
    conclusion.exit_code()
}
