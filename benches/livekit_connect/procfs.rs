//! CPU time and peak resident memory of a running process, read from `/proc/<pid>` (Linux).
//! Covers every thread of the process.

use std::time::Instant;

/// CPU time (user + system, all threads) of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| bad(&stat))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> std::io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| bad(&stat))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok((ticks(11)? + ticks(12)?) as f64 / hz)
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes.
pub fn peak_rss_bytes(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| bad(&status))
}

/// Resets this process's peak RSS to its current RSS (`clear_refs` 5, Linux 4.0+), so that a
/// later [`peak_rss_bytes`] covers only what follows. Best effort: false if refused.
pub fn reset_own_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn bad(text: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "unexpected /proc contents: {}",
            text.lines().next().unwrap_or("")
        ),
    )
}

/// CPU seconds used per wall-clock second by a process over an interval.
pub struct CpuWindow {
    pid: u32,
    cpu0: f64,
    t0: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> std::io::Result<Self> {
        Ok(Self {
            pid,
            cpu0: cpu_seconds(pid)?,
            t0: Instant::now(),
        })
    }

    /// CPU seconds per second since [`CpuWindow::start`] (must be read while it still runs).
    pub fn per_second(&self) -> std::io::Result<f64> {
        let cpu = cpu_seconds(self.pid)? - self.cpu0;
        Ok(cpu / self.t0.elapsed().as_secs_f64())
    }
}
