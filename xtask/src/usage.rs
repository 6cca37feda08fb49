//! What a server process used during the measured seconds, read from Linux's `/proc`: CPU time
//! (user and system, all threads) and bytes written to storage. Divided by the requests served,
//! these are steadier figures than requests per second on a machine whose speed drifts. Also
//! its resident memory, read at the start and at the end: memory that grows with every request
//! shows as a difference that grows with the run's length.

use std::path::PathBuf;
use std::process::Command;

/// A reading of one process's counters.
#[derive(Clone, Copy, Default)]
pub struct Reading {
    /// CPU seconds, user and system.
    pub cpu_seconds: f64,
    /// Bytes the process caused to be written to storage.
    pub write_bytes: u64,
    /// Resident memory, bytes.
    pub resident_bytes: u64,
}

/// Reads the counters of process `pid`; `None` where `/proc` does not have them.
pub fn read(pid: u32) -> Option<Reading> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(proc.join("stat")).ok()?;
    // The command name, in parentheses, may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let io = std::fs::read_to_string(proc.join("io")).unwrap_or_default();
    let write_bytes =
        io.lines().find_map(|line| line.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
    let resident_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(Reading {
        cpu_seconds: ticks as f64 / clock_ticks_per_second(),
        write_bytes,
        resident_bytes: resident_kib * 1024,
    })
}

/// The sum of the readings of several processes.
pub fn read_all(pids: &[u32]) -> Option<Reading> {
    pids.iter().try_fold(Reading::default(), |sum, &pid| {
        let r = read(pid)?;
        Some(Reading {
            cpu_seconds: sum.cpu_seconds + r.cpu_seconds,
            write_bytes: sum.write_bytes + r.write_bytes,
            resident_bytes: sum.resident_bytes + r.resident_bytes,
        })
    })
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
