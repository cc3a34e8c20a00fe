//! Re-runs the checker offline on a saved run: `cargo run -p rig-verify --example check --
//! DIR [REPLAY]` reads `DIR/history.jsonl` and `DIR/snapshot.json`, prints the summary and
//! writes `summary.txt`, `junit.xml`, `results.json` and `run.svg` into DIR. Exit 1 when a
//! property fails, 2 when the files cannot be read.

use std::path::Path;
use std::process::ExitCode;

use rig_verify::{History, Snapshot, check, report};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(Path::new) else {
        eprintln!("usage: check DIR [REPLAY]");
        return ExitCode::from(2);
    };
    let loaded = History::load(&dir.join("history.jsonl"))
        .and_then(|h| Ok((h, Snapshot::load(&dir.join("snapshot.json"))?)));
    let (history, snapshot) = match loaded {
        Ok(files) => files,
        Err(e) => {
            eprintln!("check: {e}");
            return ExitCode::from(2);
        }
    };
    let replay = args
        .get(1)
        .cloned()
        .or_else(|| history.header.replay.clone())
        .unwrap_or_else(|| {
            format!(
                "cargo run -p rig-verify --example check -- {}",
                dir.display()
            )
        });
    let verdict = check(&history, &snapshot);
    print!("{}", report::summary(&verdict, &replay));
    if let Err(e) = report::write_all(
        dir,
        &verdict,
        history.header.worker.as_deref().unwrap_or("worker"),
        &replay,
    ) {
        eprintln!("check: {e}");
        return ExitCode::from(2);
    }
    if verdict.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
