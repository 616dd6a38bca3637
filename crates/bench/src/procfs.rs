//! What a process costs, read from Linux's `/proc`: resident memory and CPU time.

use std::fs;

use anyhow::{Context, Result};

/// Clock ticks per second of the CPU times in `/proc/PID/stat`. Linux fixes this `USER_HZ` at 100
/// for user space on every architecture it supports, whatever the kernel's own tick rate.
const USER_HZ_TICKS_PER_S: u64 = 100;

/// Microseconds in one `USER_HZ` tick.
const MICROSECONDS_PER_TICK: u64 = 1_000_000 / USER_HZ_TICKS_PER_S;

/// The process's resident memory (`VmRSS` in `/proc/PID/status`), in KiB.
pub fn resident_memory_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    parse_vm_rss_kib(&status).with_context(|| format!("{path} has no readable VmRSS line"))
}

/// The CPU time, user plus system, that process `pid` (all its threads) has used, in microseconds.
pub fn cpu_time_us(pid: u32) -> Result<u64> {
    read_cpu_time_us(&format!("/proc/{pid}/stat"))
}

/// The CPU time, user plus system, that this process has used, in microseconds.
pub fn own_cpu_time_us() -> Result<u64> {
    read_cpu_time_us("/proc/self/stat")
}

/// Bytes this process has passed to `write`-like system calls (`wchar` in `/proc/self/io`), and
/// how many such calls it made (`syscw`), all threads together.
pub fn own_write_syscalls() -> Result<(u64, u64)> {
    let path = "/proc/self/io";
    let io = fs::read_to_string(path).with_context(|| format!("could not read {path}"))?;
    let field = |name: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .with_context(|| format!("{path} has no readable {name} line"))
    };
    Ok((field("wchar")?, field("syscw")?))
}

fn read_cpu_time_us(path: &str) -> Result<u64> {
    let stat = fs::read_to_string(path).with_context(|| format!("could not read {path}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("{path} has no CPU times"))?;
    Ok(ticks * MICROSECONDS_PER_TICK)
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(value)
}

/// Sums `utime` and `stime`, fields 14 and 15 of `/proc/PID/stat`. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted from the last closing parenthesis, after
/// which field 3 comes.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_command) = stat.rsplit_once(')')?;
    let mut fields = after_command.split_whitespace().skip(14 - 3);
    let user_ticks: u64 = fields.next()?.parse().ok()?;
    let system_ticks: u64 = fields.next()?.parse().ok()?;
    Some(user_ticks + system_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tlevee\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_after_an_awkward_command_name() {
        let stat = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 1";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
    }

    #[test]
    fn reads_this_process() {
        assert!(resident_memory_kib(std::process::id()).unwrap() > 0);
        own_cpu_time_us().unwrap();
        own_write_syscalls().unwrap();
    }
}
