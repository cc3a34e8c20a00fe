//! What /proc says about processes: the orphan checks of the library and command-line tests.

use std::process::Child;
use std::time::{Duration, Instant};

/// A process as /proc shows it: state letter, parent pid and start time (to tell a reused pid
/// from the original process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub start_time: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every live descendant of `root`, through /proc's parent links.
pub fn descendants(root: u32) -> Vec<(u32, ProcStat)> {
    let all: Vec<(u32, ProcStat)> = std::fs::read_dir("/proc")
        .expect("reading /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for &(pid, stat) in &all {
            if stat.ppid == parent && stat.state != 'Z' {
                found.push((pid, stat));
                parents.push(pid);
            }
        }
    }
    found
}

/// Whether the process seen as `stat` still runs. A zombie counts as gone: after the rig is
/// SIGKILLed its children are reparented to this machine's init, which may reap them late, and
/// a zombie holds no port, file or memory.
pub fn still_running(pid: u32, seen: ProcStat) -> bool {
    match proc_stat(pid) {
        Some(now) => now.start_time == seen.start_time && now.state != 'Z' && now.state != 'X',
        None => false,
    }
}

/// Polls `done` until it holds or `limit` passes; returns whether it held.
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` to a child the test started.
pub fn signal(pid: u32, signal: libc::c_int) {
    if let Err(e) = rig_harness::process::send_signal(pid, signal) {
        panic!("kill({pid}, {signal}) failed: {e}");
    }
}

/// Waits for `child` to exit; fails the test after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the rig") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the rig did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
