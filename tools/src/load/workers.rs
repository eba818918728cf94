//! The closed-loop and pipelined workers of the `processed`, `get`, `denied` and `attach`
//! scenarios.

use super::*;

/// `processed` / `get` / `denied`: requests on the desktop's records, `pipeline` at a time.
pub(crate) async fn request_worker(
    run: Arc<Run>,
    mut desk: Client,
    records: Vec<String>,
) -> Result<Stats, ClientError> {
    let mut stats = Stats::new();
    let depth = run.opts.pipeline.max(1);
    let mut j = 0usize;
    let mut burst: Vec<Request> = Vec::with_capacity(depth);
    let mut burst_records: Vec<String> = Vec::with_capacity(depth);
    loop {
        burst.clear();
        burst_records.clear();
        while burst.len() < depth {
            // Each desktop finishes each of its records once.
            if run.opts.scenario == Scenario::Processed && j >= records.len() {
                break;
            }
            if run.take().await.is_none() {
                break;
            }
            let record = records[j % records.len()].clone();
            j += 1;
            let request = match run.opts.scenario {
                Scenario::Processed | Scenario::Denied => processed_req(&record),
                Scenario::Get => Request::GetRecord(RecordRef {
                    record: record.clone(),
                }),
                _ => unreachable!(),
            };
            burst.push(request);
            burst_records.push(record);
        }
        if burst.is_empty() {
            break;
        }
        let started = Instant::now();
        let refs = desk.send_many(burst.iter()).await?;
        for (record, r) in burst_records.iter().zip(refs) {
            let reply = desk.reply_to(r).await?;
            let elapsed = started.elapsed();
            match run.opts.scenario {
                Scenario::Processed => {
                    stats.record("RecordProcessed", elapsed);
                    if expect(&mut stats, "RecordProcessed", &reply, |m| {
                        matches!(m, ServerMsg::RecordProcessedAck { .. })
                    }) {
                        if let Some(marks) = &run.tail {
                            mark(marks, record, 0, Instant::now());
                        }
                        run.done(None);
                    }
                }
                Scenario::Get => {
                    stats.record("GetRecord", elapsed);
                    if expect(&mut stats, "GetRecord", &reply, |m| {
                        matches!(m, ServerMsg::Record { .. })
                    }) {
                        run.done(None);
                    }
                }
                Scenario::Denied => {
                    stats.record("RecordProcessed (denied)", elapsed);
                    if matches!(
                        reply,
                        ServerMsg::Error {
                            code: ErrorCode::AccessDenied,
                            ..
                        }
                    ) {
                        stats.expected("RecordProcessed: access_denied");
                        run.done(None);
                    } else {
                        expect(&mut stats, "RecordProcessed (denied)", &reply, |_| false);
                    }
                }
                _ => unreachable!(),
            }
        }
        desk.clear_pushes();
    }
    Ok(stats)
}

/// `attach`: a dialer attaching new records to new calls, `pipeline` at a time.
pub(crate) async fn attach_worker(run: Arc<Run>, mut dialer: Client) -> Result<Stats, ClientError> {
    let mut stats = Stats::new();
    let depth = run.opts.pipeline.max(1);
    let mut burst: Vec<Request> = Vec::with_capacity(depth);
    loop {
        burst.clear();
        while burst.len() < depth {
            let Some(i) = run.take().await else {
                break;
            };
            let record = format!("{}-at-r{i}", run.opts.run_id);
            let call = format!("{}-at-c{i}", run.opts.run_id);
            burst.push(attach(&call, &record));
        }
        if burst.is_empty() {
            break;
        }
        let started = Instant::now();
        let refs = dialer.send_many(burst.iter()).await?;
        for r in refs {
            let reply = dialer.reply_to(r).await?;
            stats.record("AttachRecord", started.elapsed());
            if expect(&mut stats, "AttachRecord", &reply, |m| {
                matches!(m, ServerMsg::RecordAttached { .. })
            }) {
                run.done(None);
            }
        }
    }
    Ok(stats)
}
