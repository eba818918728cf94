//! The `mix` scenario: groups of three desktops playing straight calls, transfers,
//! consultations and conference races, and the check that every record ended exactly once.

use super::*;

pub(crate) struct Group {
    pub(crate) desks: Vec<Client>,
    pub(crate) dns: Vec<String>,
    pub(crate) switch: Client,
    pub(crate) dialer: Client,
}

pub(crate) async fn open_group(
    opts: &LoadOptions,
    g: usize,
    size: usize,
) -> Result<Group, ClientError> {
    let mut desks = Vec::new();
    let mut dns = Vec::new();
    for k in 0..size {
        let agent = format!("{}-a{g}-{k}", opts.run_id);
        let dn = format!("{}-d{g}-{k}", opts.run_id);
        desks.push(desktop(opts, &agent, &dn, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?);
        dns.push(dn);
    }
    Ok(Group {
        desks,
        dns,
        switch: side_conn(opts, Role::Switch).await?,
        dialer: side_conn(opts, Role::Dialer).await?,
    })
}

/// One group of three desktops playing the mix.
pub(crate) async fn mix_worker(run: Arc<Run>, mut grp: Group) -> Result<Stats, ClientError> {
    let mut stats = Stats::new();
    let m = run.opts.mix;
    let total = m.straight + m.transfer + m.consult + m.conference;
    let mut last_ping = Instant::now();
    while let Some(i) = run.take().await {
        // Some flows leave a desktop of the group idle for long: keep all three alive.
        if last_ping.elapsed() >= Duration::from_secs(1) {
            for desk in &mut grp.desks {
                desk.request(Request::Ping).await?;
            }
            last_ping = Instant::now();
        }
        let record = format!("{}-r{i}", run.opts.run_id);
        let call = format!("{}-c{i}", run.opts.run_id);
        let pick = (i.wrapping_mul(2_654_435_761) % total as u64) as u32;
        let reply = timed(
            &mut grp.dialer,
            &mut stats,
            "AttachRecord",
            attach(&call, &record),
        )
        .await?;
        if !expect(&mut stats, "AttachRecord", &reply, |m| {
            matches!(m, ServerMsg::RecordAttached { .. })
        }) {
            continue;
        }
        let (a, b, c) = (grp.dns[0].clone(), grp.dns[1].clone(), grp.dns[2].clone());
        if !events(
            &mut grp.switch,
            &mut stats,
            vec![ringing(&call, &a), established(&call, &a)],
        )
        .await?
        {
            continue;
        }
        wait_access(&mut grp.desks[0], &record, Access::Full).await?;
        let r = timed(
            &mut grp.desks[0],
            &mut stats,
            "UpdateRecord",
            update_req(&record, i),
        )
        .await?;
        expect(&mut stats, "UpdateRecord", &r, |m| {
            matches!(m, ServerMsg::RecordUpdated { .. })
        });
        let finisher;
        let mut last_dns = vec![a.clone()];
        if pick < m.straight {
            finisher = 0;
        } else if pick < m.straight + m.transfer {
            let t = transferred(&call, &a, &b, TransferKind::SingleStep, None);
            events(&mut grp.switch, &mut stats, vec![t, established(&call, &b)]).await?;
            wait_access(&mut grp.desks[1], &record, Access::Full).await?;
            finisher = 1;
            last_dns = vec![b.clone()];
        } else if pick < m.straight + m.transfer + m.consult {
            let c2 = format!("{call}-consult");
            events(
                &mut grp.switch,
                &mut stats,
                vec![
                    ringing_full(&c2, &b, None, Some(&a), Some(&call)),
                    established(&c2, &a),
                    established(&c2, &b),
                ],
            )
            .await?;
            wait_access(&mut grp.desks[1], &record, Access::ReadOnly).await?;
            let r = timed(
                &mut grp.desks[1],
                &mut stats,
                "GetRecord",
                record_req("GetRecord", &record),
            )
            .await?;
            expect(&mut stats, "GetRecord", &r, |m| {
                matches!(
                    m,
                    ServerMsg::Record {
                        access: Access::ReadOnly,
                        ..
                    }
                )
            });
            let t = transferred(&call, &a, &b, TransferKind::TwoStep, Some(&c2));
            events(&mut grp.switch, &mut stats, vec![t]).await?;
            wait_access(&mut grp.desks[1], &record, Access::Full).await?;
            finisher = 1;
            last_dns = vec![b.clone()];
        } else {
            let conf = |dn: &str| conferenced(&call, dn, None);
            events(&mut grp.switch, &mut stats, vec![conf(&b), conf(&c)]).await?;
            wait_access(&mut grp.desks[1], &record, Access::Full).await?;
            wait_access(&mut grp.desks[2], &record, Access::Full).await?;
            // The race: all three send before anyone reads.
            let started = Instant::now();
            let mut refs = Vec::new();
            for d in grp.desks.iter_mut() {
                refs.push(d.send(&processed_req(&record)).await?);
            }
            let mut acks = 0;
            for (d, r) in grp.desks.iter_mut().zip(refs) {
                let reply = d.reply_to(r).await?;
                stats.record("RecordProcessed", started.elapsed());
                match reply {
                    ServerMsg::RecordProcessedAck { .. } => acks += 1,
                    ServerMsg::Error {
                        code: ErrorCode::AlreadyFinal,
                        ..
                    } => stats.expected("RecordProcessed: already_final (race loser)"),
                    other => {
                        expect(&mut stats, "RecordProcessed", &other, |_| false);
                    }
                }
            }
            if acks != 1 {
                stats.error(format!("conference race: {acks} acks instead of 1"));
            }
            events(
                &mut grp.switch,
                &mut stats,
                vec![
                    released(&call, &a, None),
                    released(&call, &b, None),
                    released(&call, &c, None),
                ],
            )
            .await?;
            for d in grp.desks.iter_mut() {
                d.clear_pushes();
            }
            run.done(Some(record));
            continue;
        }
        let r = timed(
            &mut grp.desks[finisher],
            &mut stats,
            "RecordProcessed",
            processed_req(&record),
        )
        .await?;
        if expect(&mut stats, "RecordProcessed", &r, |m| {
            matches!(m, ServerMsg::RecordProcessedAck { .. })
        }) {
            run.done(Some(record));
        }
        let rel: Vec<Request> = last_dns
            .iter()
            .map(|dn| released(&call, dn, None))
            .collect();
        events(&mut grp.switch, &mut stats, rel).await?;
        for d in grp.desks.iter_mut() {
            d.clear_pushes();
        }
    }
    Ok(stats)
}

/// Gives a desktop `count` records on calls established on its DN (setup, not measured).
pub(crate) async fn hand_out(
    opts: &LoadOptions,
    desk: &mut Client,
    sw: &mut Client,
    dialer: &mut Client,
    dn: &str,
    tag: &str,
    count: u64,
) -> Result<Vec<String>, ClientError> {
    let mut records = Vec::new();
    let mut scratch = Stats::new();
    // Handing out thousands of records takes longer than the server's silence limit (3
    // heartbeats): the desktop, which only listens meanwhile, pings now and then to stay alive.
    let mut last_ping = Instant::now();
    for j in 0..count {
        if last_ping.elapsed() >= Duration::from_secs(1) {
            desk.request(Request::Ping).await?;
            last_ping = Instant::now();
        }
        let record = format!("{}-{tag}-r{j}", opts.run_id);
        let call = format!("{}-{tag}-c{j}", opts.run_id);
        dialer.request(attach(&call, &record)).await?;
        events(
            sw,
            &mut scratch,
            vec![ringing(&call, dn), established(&call, dn)],
        )
        .await?;
        wait_access(desk, &record, Access::Full).await?;
        records.push(record);
    }
    desk.clear_pushes();
    Ok(records)
}

/// Every completed record must have exactly one outcome, both as the dialer saw it and as the
/// server reports it.
pub(crate) async fn verify(
    opts: &LoadOptions,
    done: &[String],
    outcomes: &Arc<Mutex<HashMap<String, u32>>>,
) -> Result<Verification, ClientError> {
    let mut v = Verification {
        records_checked: done.len() as u64,
        ..Verification::default()
    };
    // Outcomes are pushed after the ack; give the last ones a moment to arrive.
    for _ in 0..100 {
        let seen = outcomes.lock().unwrap_or_else(|p| p.into_inner()).len();
        if seen >= done.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut admin = side_conn(opts, Role::Admin).await?;
    for record in done {
        let n = counts.get(record).copied().unwrap_or(0);
        let report = admin
            .request(Request::RecordInfo(RecordRef {
                record: record.clone(),
            }))
            .await?;
        let final_ok = matches!(&report, ServerMsg::RecordReport { final_: Some(f), .. } if f.outcome == Outcome::Processed);
        let deleted = matches!(
            &report,
            ServerMsg::Error {
                code: ErrorCode::NoSuchRecord,
                ..
            }
        );
        if n == 1 && (final_ok || deleted) {
            v.with_one_outcome += 1;
            v.already_deleted += u64::from(deleted);
        } else {
            v.problems
                .push(format!("{record}: {n} dialer outcomes, report {report:?}"));
        }
    }
    Ok(v)
}
