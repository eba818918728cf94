//! The `idle` scenario: many logged-in desktops that only heartbeat.

use super::*;

/// `idle`: log in many desktops and keep them heart-beating; measure ping latency and RSS.
pub(crate) async fn run_idle(opts: LoadOptions) -> Result<Summary, ClientError> {
    let n = opts.agents;
    let bar = progress_bar(&opts);
    if let Some(b) = &bar {
        b.set_length(n as u64);
        b.set_message("logging in");
    }
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let logged_in = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(n);
    // At most this many logins in flight, so the server's accept queue is not flooded.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let storm = Instant::now();
    for i in 0..n {
        let o = opts.clone();
        let (hist, errors, logged_in, stop, gate) = (
            hist.clone(),
            errors.clone(),
            logged_in.clone(),
            stop.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // 20,000 connections per loopback source address keeps clear of the ephemeral port limit.
            let local = IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (i / 20_000) as u8, 1));
            let permit = gate.acquire_owned().await;
            let agent = format!("{}-idle{i}", o.run_id);
            let dn = format!("{}-i{i}", o.run_id);
            let mut desk = match desktop(&o, &agent, &dn, local).await {
                Ok(d) => d,
                Err(e) => {
                    *errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(format!("login: {e}"))
                        .or_default() += 1;
                    return;
                }
            };
            drop(permit);
            desk.set_discard_pushes(true);
            logged_in.fetch_add(1, Ordering::Relaxed);
            let period = Duration::from_millis(desk.heartbeat_ms.max(100));
            // Spread the pings over the period.
            tokio::time::sleep(period.mul_f64((i % 1000) as f64 / 1000.0)).await;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match desk.request(Request::Ping).await {
                    Ok(ServerMsg::Pong) => {
                        let _ = hist
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Ok(other) => {
                        *errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(format!("ping: {}", other.type_name()))
                            .or_default() += 1;
                    }
                    Err(e) => {
                        *errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(format!("ping: {e}"))
                            .or_default() += 1;
                        return;
                    }
                }
                tokio::time::sleep(period).await;
            }
            let _ = desk.request(baton_kit::logout(true)).await;
        }));
    }
    while (logged_in.load(Ordering::Relaxed) as usize) < n {
        if let Some(b) = &bar {
            b.set_position(logged_in.load(Ordering::Relaxed));
        }
        let failed: u64 = errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        if logged_in.load(Ordering::Relaxed) + failed >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let storm_s = storm.elapsed().as_secs_f64().max(1e-9);
    if let Some(b) = &bar {
        b.set_message("heart-beating");
    }
    // Measure the steady state only.
    hist.lock().unwrap_or_else(|p| p.into_inner()).reset();
    let cpu = CpuMark::take(opts.server_pid);
    let start = Instant::now();
    tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(30))).await;
    let elapsed = start.elapsed();
    let phase_cpu = cpu.used(hist.lock().unwrap_or_else(|p| p.into_inner()).len());
    let rss = opts.server_pid.and_then(rss_kib);
    stop.store(true, Ordering::Relaxed);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut stats = Stats::new();
    stats.hists.insert(
        "Ping",
        hist.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    );
    stats.errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut summary = summarize(
        &opts,
        &stats,
        elapsed,
        logged_in.load(Ordering::Relaxed),
        None,
        phase_cpu,
    );
    summary.server_rss_kib = rss;
    let done = logged_in.load(Ordering::Relaxed);
    summary.login_storm = Some(LoginStorm {
        logged_in: done,
        seconds: storm_s,
        per_second: done as f64 / storm_s,
    });
    for t in tasks {
        t.abort();
    }
    Ok(summary)
}
