//! What a server process used during the measured seconds, read from Linux's `/proc`: CPU time
//! (user and system, all threads) and bytes written to storage. Divided by the requests served,
//! these are steadier figures than requests per second on a machine whose speed drifts. Also
//! its resident memory, read at the start and at the end: memory that grows with every request
//! shows as a difference that grows with the run's length.
//!
//! And, for the whole machine, the CPU it spent busy and what each command took of it: on a
//! setup whose database, cache and broker share the machine with the server, the server's own
//! figures leave most of the cost out.

use std::collections::BTreeMap;
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
    let (_, ticks) = cpu_ticks(&stat)?;
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

/// What the whole machine's CPUs did up to a moment: busy seconds (every state but idle and
/// waiting for I/O, from `/proc/stat`) and CPU seconds per command name, over every process
/// `/proc` shows.
#[derive(Clone, Default)]
pub struct Machine {
    /// Busy CPU seconds, all CPUs together.
    pub busy_seconds: f64,
    /// CPU seconds per command name.
    pub by_command: BTreeMap<String, f64>,
}

/// Reads the machine's counters.
pub fn machine() -> Machine {
    let per_second = clock_ticks_per_second();
    let busy_ticks: u64 = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().find(|l| l.starts_with("cpu "))?.to_string();
            let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal: all but idle and iowait.
            Some(ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum())
        })
        .unwrap_or(0);
    let mut by_command = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        // Processes only: not `self` and `thread-self`, which would count this one again.
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((name, ticks)) = cpu_ticks(&stat) else { continue };
        *by_command.entry(name.to_string()).or_insert(0.0) += ticks as f64 / per_second;
    }
    Machine { busy_seconds: busy_ticks as f64 / per_second, by_command }
}

impl Machine {
    /// What was used between `self` and the later reading `after`: busy seconds, and the
    /// commands that took at least `least` CPU seconds, most first. (A process that ended in
    /// between is not counted in its command's figure.)
    pub fn used_until(&self, after: &Machine, least: f64) -> (f64, Vec<(String, f64)>) {
        let mut commands: Vec<(String, f64)> = after
            .by_command
            .iter()
            .map(|(name, seconds)| (name.clone(), seconds - self.by_command.get(name).copied().unwrap_or(0.0)))
            .filter(|(_, used)| *used >= least)
            .collect();
        commands.sort_by(|a, b| b.1.total_cmp(&a.1));
        (after.busy_seconds - self.busy_seconds, commands)
    }
}

/// The command name and the CPU clock ticks (user and system) of a `/proc/PID/stat` line:
/// `PID (NAME) FIELDS...`, where the name may hold spaces and parentheses and the fields do not.
fn cpu_ticks(stat: &str) -> Option<(&str, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((name, fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?))
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

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_read_whole() {
        let stat = "42 (tokio (rt) 1) S 1 42 42 0 -1 4194560 10 0 0 0 7 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(("tokio (rt) 1", 12)));
        assert_eq!(cpu_ticks("42 (x) S"), None);
    }
}
