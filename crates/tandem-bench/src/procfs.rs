//! CPU and memory counters from Linux's `/proc`. Everything returns `None`
//! where `/proc` is missing or unreadable (not Linux, a process that exited).

use std::time::Instant;

/// Cumulative CPU time counters: for the machine, the `cpu` line of
/// `/proc/stat`; for this process and for the processes given to
/// [`CpuSample::take_with`], `utime + stime` of `/proc/<pid>/stat`. All in
/// `USER_HZ` ticks (1/100 s on Linux).
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    /// user + nice + system + irq + softirq.
    busy: u64,
    /// idle + iowait.
    idle: u64,
    /// Time the hypervisor ran something else while this machine wanted to run.
    steal: u64,
    /// This process.
    process: u64,
    /// The other processes, in the order they were given.
    others: Vec<Option<u64>>,
}

/// CPU use between two samples.
#[derive(Debug, Clone)]
pub struct CpuUse {
    /// CPU time of this process, in cores (1.0 = one core all the time).
    pub process_cores: f64,
    /// The same for each other process; `None` when it could not be read.
    pub others_cores: Vec<Option<f64>>,
    pub machine_cores: usize,
    /// Shares of all the machine's CPU time.
    pub busy: f64,
    pub steal: f64,
    pub idle: f64,
}

impl CpuSample {
    const USER_HZ: f64 = 100.0;

    /// The machine and this process.
    pub fn take() -> Option<Self> {
        Self::take_with(&[])
    }

    /// The machine, this process and the processes `pids`.
    pub fn take_with(pids: &[u32]) -> Option<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal (guest is inside user).
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            return None;
        };
        Some(Self {
            at,
            busy: user + nice + system + irq + softirq,
            idle: idle + iowait,
            steal,
            process: process_ticks("self")?,
            others: pids
                .iter()
                .map(|pid| process_ticks(&pid.to_string()))
                .collect(),
        })
    }

    pub fn since(&self, earlier: &Self) -> CpuUse {
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        let total = (busy + idle + steal).max(1.0);
        let seconds = (self.at - earlier.at).as_secs_f64().max(f64::EPSILON);
        let cores = |ticks: u64| ticks as f64 / Self::USER_HZ / seconds;
        CpuUse {
            process_cores: cores(self.process.saturating_sub(earlier.process)),
            others_cores: self
                .others
                .iter()
                .zip(&earlier.others)
                .map(|(now, then)| Some(cores(now.as_ref()?.saturating_sub((*then)?))))
                .collect(),
            machine_cores: std::thread::available_parallelism().map_or(1, usize::from),
            busy: busy / total,
            steal: steal / total,
            idle: idle / total,
        }
    }
}

/// `utime + stime` of `/proc/<pid>/stat` (`pid` may be `self`).
fn process_ticks(pid: &str) -> Option<u64> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces) come fields 3...;
    // utime and stime are fields 14 and 15.
    let mut after_name = own.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = after_name.next()?.parse().ok()?;
    let stime: u64 = after_name.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now, in bytes.
    pub rss: u64,
    /// `VmHWM`: the most it has been resident, in bytes.
    pub peak: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(key))?;
            let value = line[key.len()..].trim().strip_suffix("kB")?.trim();
            value.parse::<u64>().ok().map(|kib| kib * 1024)
        };
        Some(Self {
            rss: kib("VmRSS:")?,
            peak: kib("VmHWM:")?,
        })
    }
}
