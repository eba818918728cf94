//! What a load run measured: latency histograms per request type, the summary and how it is
//! printed, the progress bar, and the server's memory read from /proc (CPU times are read in
//! `cpu`).

use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct TypeStats {
    pub count: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Verification {
    pub records_checked: u64,
    pub with_one_outcome: u64,
    /// Of those, records the server had already deleted (final-record retention): only their
    /// dialer outcome could be checked.
    pub already_deleted: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub agents: usize,
    pub pipeline: usize,
    pub elapsed_s: f64,
    pub completed: u64,
    pub completed_per_second: f64,
    pub requests: BTreeMap<String, TypeStats>,
    /// Errors that mean something went wrong: must be empty for a clean run.
    pub errors: BTreeMap<String, u64>,
    /// Refusals the scenario provokes on purpose (losers of a race, `denied` requests).
    pub expected_refusals: BTreeMap<String, u64>,
    pub verification: Option<Verification>,
    pub server_rss_kib: Option<u64>,
    /// With `--server-pid`: the server's RSS when 10,000, 100,000, 1,000,000... were completed.
    pub server_rss_at: Vec<RssMark>,
    /// `idle`: how long the desktops took to connect and log in, all at once.
    pub login_storm: Option<LoginStorm>,
    /// Requests answered in the measured phase, all types: what the CPU figures per 1,000
    /// requests divide by.
    pub measured_requests: u64,
    /// With `--server-pid`: the server's CPU time (user + system) over the measured phase.
    pub server_cpu_ms: Option<f64>,
    /// The load tool's own CPU time over the measured phase: what the client side cost.
    pub client_cpu_ms: Option<f64>,
    /// `server_cpu_ms` per 1,000 measured requests.
    pub server_cpu_ms_per_1k: Option<f64>,
    /// `client_cpu_ms` per 1,000 measured requests.
    pub client_cpu_ms_per_1k: Option<f64>,
}

/// The logins of the `idle` scenario: every desktop connects and logs in at once (at most 256 in
/// flight), as a centre's desktops do after a restart.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoginStorm {
    pub logged_in: u64,
    pub seconds: f64,
    pub per_second: f64,
}

/// The server's resident memory when `records` were completed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssMark {
    pub records: u64,
    pub rss_kib: u64,
}

impl Summary {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
            && self
                .verification
                .as_ref()
                .is_none_or(|v| v.problems.is_empty())
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let who = match self.scenario {
            Scenario::Attach => "dialers",
            _ => "desktops",
        };
        let depth = if self.pipeline > 1 {
            format!(", pipeline {}", self.pipeline)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "scenario {:?}, {} {who}{depth}, {:.1} s: {} completed ({:.0}/s)\n",
            self.scenario, self.agents, self.elapsed_s, self.completed, self.completed_per_second
        ));
        s.push_str(&format!(
            "{:<28} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "request", "count", "per sec", "p50 us", "p90 us", "p99 us", "p99.9", "max us"
        ));
        for (name, t) in &self.requests {
            s.push_str(&format!(
                "{:<28} {:>9} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                name, t.count, t.per_second, t.p50_us, t.p90_us, t.p99_us, t.p999_us, t.max_us
            ));
        }
        if self.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            s.push_str(&format!("errors: {:?}\n", self.errors));
        }
        if !self.expected_refusals.is_empty() {
            s.push_str(&format!(
                "expected refusals: {:?}\n",
                self.expected_refusals
            ));
        }
        if let Some(v) = &self.verification {
            s.push_str(&format!(
                "verified: {} of {} records have exactly one outcome\n",
                v.with_one_outcome, v.records_checked
            ));
            if v.already_deleted > 0 {
                s.push_str(&format!(
                    "  of which {} were already deleted by the server's final-record retention: \
                     their one dialer outcome is all that could be checked\n",
                    v.already_deleted
                ));
            }
            for p in v.problems.iter().take(20) {
                s.push_str(&format!("  problem: {p}\n"));
            }
        }
        if let Some(l) = &self.login_storm {
            s.push_str(&format!(
                "login storm: {} desktops logged in within {:.2} s ({:.0}/s)\n",
                l.logged_in, l.seconds, l.per_second
            ));
        }
        for m in &self.server_rss_at {
            s.push_str(&format!(
                "server RSS after {} completed: {:.1} MiB\n",
                m.records,
                m.rss_kib as f64 / 1024.0
            ));
        }
        if let Some(rss) = self.server_rss_kib {
            s.push_str(&format!("server RSS: {:.1} MiB\n", rss as f64 / 1024.0));
        }
        let sides = [
            ("server", self.server_cpu_ms, self.server_cpu_ms_per_1k),
            ("load tool", self.client_cpu_ms, self.client_cpu_ms_per_1k),
        ];
        for (who, ms, per_1k) in sides {
            let Some(ms) = ms else { continue };
            let per_1k = per_1k.map_or(String::new(), |p| format!(", {p:.2} ms per 1k requests"));
            s.push_str(&format!(
                "{who} CPU over the {} measured requests: {ms:.0} ms{per_1k}\n",
                self.measured_requests
            ));
        }
        s
    }
}

/// Per-worker measurements, merged at the end.
pub(crate) struct Stats {
    pub(crate) hists: HashMap<&'static str, Histogram<u64>>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) expected: BTreeMap<String, u64>,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        Stats {
            hists: HashMap::new(),
            errors: BTreeMap::new(),
            expected: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, name: &'static str, elapsed: Duration) {
        let h = self
            .hists
            .entry(name)
            .or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"));
        let _ = h.record((elapsed.as_micros() as u64).clamp(1, 60_000_000));
    }

    /// Requests timed so far, all types.
    pub(crate) fn requests(&self) -> u64 {
        self.hists.values().map(|h| h.len()).sum()
    }

    pub(crate) fn error(&mut self, what: impl Into<String>) {
        *self.errors.entry(what.into()).or_default() += 1;
    }

    pub(crate) fn expected(&mut self, what: impl Into<String>) {
        *self.expected.entry(what.into()).or_default() += 1;
    }

    pub(crate) fn merge(&mut self, other: Stats) {
        for (k, h) in other.hists {
            match self.hists.get_mut(k) {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => {
                    self.hists.insert(k, h);
                }
            }
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.expected {
            *self.expected.entry(k).or_default() += v;
        }
    }
}

pub(crate) fn progress_bar(opts: &LoadOptions) -> Option<ProgressBar> {
    if !opts.progress {
        return None;
    }
    let bar = match opts.records {
        Some(n) if opts.scenario != Scenario::Idle => ProgressBar::new(n),
        _ => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Follows the run: moves the progress bar and, with `--server-pid`, notes the server's resident
/// memory each time the completed count reaches a power of ten from 10,000 on (how memory grows
/// with the work done: it should not).
pub(crate) fn spawn_progress(
    run: Arc<Run>,
    bar: Option<ProgressBar>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(bar) = &bar {
            bar.set_message("");
        }
        loop {
            if let Some(bar) = &bar {
                bar.set_position(run.completed.load(Ordering::Relaxed));
            }
            run.rss_mark_catch_up();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

pub(crate) fn summarize(
    opts: &LoadOptions,
    stats: &Stats,
    elapsed: Duration,
    completed: u64,
    verification: Option<Verification>,
    cpu: PhaseCpu,
) -> Summary {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let requests = stats
        .hists
        .iter()
        .map(|(name, h)| {
            (
                name.to_string(),
                TypeStats {
                    count: h.len(),
                    per_second: h.len() as f64 / secs,
                    p50_us: h.value_at_quantile(0.5),
                    p90_us: h.value_at_quantile(0.9),
                    p99_us: h.value_at_quantile(0.99),
                    p999_us: h.value_at_quantile(0.999),
                    max_us: h.max(),
                },
            )
        })
        .collect();
    Summary {
        scenario: opts.scenario,
        agents: opts.agents,
        pipeline: opts.pipeline.max(1),
        elapsed_s: secs,
        completed,
        completed_per_second: completed as f64 / secs,
        requests,
        errors: stats.errors.clone(),
        expected_refusals: stats.expected.clone(),
        verification,
        server_rss_kib: opts.server_pid.and_then(rss_kib),
        server_rss_at: Vec::new(),
        login_storm: None,
        measured_requests: cpu.requests,
        server_cpu_ms: ms(cpu.server),
        client_cpu_ms: ms(cpu.client),
        server_cpu_ms_per_1k: cpu.per_1k(cpu.server),
        client_cpu_ms_per_1k: cpu.per_1k(cpu.client),
    }
}

/// Resident set size of a local process, from /proc (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// One memory figure (`VmRSS:`, `VmHWM:`, ...) of a local process, in KiB, from /proc.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
