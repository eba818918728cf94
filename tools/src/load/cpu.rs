//! CPU time spent during the measured phase, by the server and by the load tool itself, read
//! from /proc (Linux; elsewhere nothing is reported). Both are given so that a server is judged
//! by its own work per request and not by its client's: on one machine, a costly load generator
//! takes CPU the server could have used.

use super::*;

/// CPU times taken when the measured phase starts, to be subtracted from those at its end.
pub(crate) struct CpuMark {
    server_pid: Option<u32>,
    server: Option<Duration>,
    client: Option<Duration>,
}

/// What the measured phase used: CPU time on each side and the requests answered in it, which
/// the per-1,000-request figures divide by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PhaseCpu {
    /// The server's CPU time (with `--server-pid`).
    pub(crate) server: Option<Duration>,
    /// The load tool's own CPU time, all its threads.
    pub(crate) client: Option<Duration>,
    pub(crate) requests: u64,
}

impl CpuMark {
    /// Takes the CPU times of the server (if its pid is known) and of this process, now.
    pub(crate) fn take(server_pid: Option<u32>) -> CpuMark {
        CpuMark {
            server_pid,
            server: server_pid.and_then(pid_cpu),
            client: process_cpu("self"),
        }
    }

    /// The CPU time used on each side since the mark; `requests` are those answered meanwhile.
    /// A side whose time could not be read at either end is unknown.
    pub(crate) fn used(&self, requests: u64) -> PhaseCpu {
        let since =
            |before: Option<Duration>, now: Option<Duration>| Some(now?.saturating_sub(before?));
        PhaseCpu {
            server: since(self.server, self.server_pid.and_then(pid_cpu)),
            client: since(self.client, process_cpu("self")),
            requests,
        }
    }
}

impl PhaseCpu {
    /// Milliseconds of CPU per 1,000 requests; unknown when no request was answered.
    pub(crate) fn per_1k(&self, cpu: Option<Duration>) -> Option<f64> {
        let ms = cpu?.as_secs_f64() * 1000.0;
        (self.requests > 0).then(|| ms * 1000.0 / self.requests as f64)
    }
}

/// CPU time (user + system) a process has used so far, all its threads together, including the
/// threads that have already exited; `proc` is a pid or `self`.
///
/// It comes from `/proc/<pid>/stat` (utime and stime, in clock ticks of normally 10 ms, each
/// rounded down). The per-thread `/proc/<pid>/task/*/schedstat` counts nanoseconds, but only for
/// the threads alive when it is read: the server commits on tokio's blocking threads, which end
/// after 10 s without work, and a sum over live threads would lose their time, or go backwards.
#[cfg(target_os = "linux")]
pub(crate) fn process_cpu(proc: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{proc}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
    // the fields that follow start after the last `)`, with the state (field 3).
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks_per_second = rustix::param::clock_ticks_per_second();
    if ticks_per_second == 0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_second as f64,
    ))
}

/// [`process_cpu`] of the process `pid`.
fn pid_cpu(pid: u32) -> Option<Duration> {
    process_cpu(&pid.to_string())
}

/// Not measured outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn process_cpu(_proc: &str) -> Option<Duration> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = process_cpu("self").expect("/proc/self/stat is readable");
        // Spin until a tick of CPU time is counted (on a busy machine, that may take a while).
        let start = Instant::now();
        let mut x = 0u64;
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let now = process_cpu("self").expect("/proc/self/stat is readable");
            if now > before {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no CPU time counted"
            );
        }
    }

    #[test]
    fn a_missing_process_has_no_cpu_time() {
        assert_eq!(process_cpu("4294967295"), None);
    }

    #[test]
    fn per_1k_divides_by_the_requests() {
        let cpu = PhaseCpu {
            server: Some(Duration::from_millis(500)),
            client: None,
            requests: 50_000,
        };
        assert_eq!(cpu.per_1k(cpu.server), Some(10.0));
        assert_eq!(cpu.per_1k(cpu.client), None);
        let none = PhaseCpu { requests: 0, ..cpu };
        assert_eq!(none.per_1k(none.server), None);
    }
}
