//! `baton audit timeline`, run as the binary against a server played through real sockets: a
//! record's life told row by row (a two-step transfer with refusals, a conference race), the same
//! entries as JSON lines, an agent's entries within a time window, and a record the log does not
//! know.

use baton::messages::*;
use baton_kit::centre::{DN_A, DN_B};
use baton_kit::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `baton audit timeline ARGS` against the server `config` points at, off the async
/// threads (the server under test runs on them).
async fn timeline(config: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .args(["audit", "timeline"])
        .args(args)
        .arg("--config")
        .arg(config);
    tokio::task::spawn_blocking(move || command.output().expect("baton runs"))
        .await
        .expect("the command's thread")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The output of a run that must succeed.
async fn success(config: &Path, args: &[&str]) -> String {
    let out = timeline(config, args).await;
    assert!(
        out.status.success(),
        "baton audit timeline {args:?} failed: {}",
        stderr(&out)
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    stdout(&out)
}

/// One row of the table: its cells by header name.
#[derive(Debug)]
struct Row {
    time: String,
    seq: String,
    who: String,
    dn: String,
    call: String,
    event: String,
}

/// Cuts the aligned table into rows, each cell starting under its header.
fn rows(table: &str, who: &str) -> Vec<Row> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let names = ["TIME", "SEQ", who, "DN", "CALL", "EVENT"];
    let starts: Vec<usize> = names
        .iter()
        .map(|n| {
            header
                .find(&format!("{n} "))
                .or_else(|| header.rfind(n))
                .unwrap_or_else(|| panic!("column {n} in {header:?}"))
        })
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{header:?}");
    lines
        .map(|line| {
            let cell = |i: usize| {
                let end = starts.get(i + 1).copied().unwrap_or(line.len());
                line.get(starts[i]..end.min(line.len()))
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            };
            Row {
                time: cell(0),
                seq: cell(1),
                who: cell(2),
                dn: cell(3),
                call: cell(4),
                event: cell(5),
            }
        })
        .collect()
}

/// The (who, event) pairs of a table.
fn events(table: &str, who: &str) -> Vec<(String, String)> {
    rows(table, who)
        .into_iter()
        .map(|r| (r.who, r.event))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(w, e)| (w.to_string(), e.to_string()))
        .collect()
}

/// The entries a `--json` run printed, each line parsed.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A time as `--since` takes it on the command line: the clock time `HH:MM:SS.mmm` when `ts` is
/// today (UTC), else the full RFC 3339 time (a run that straddles midnight).
fn clock_of(ts: &str) -> String {
    let today = rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    if ts[..10] == today[..10] {
        ts[11..23].to_owned()
    } else {
        ts.to_owned()
    }
}

async fn drain_all(t: &mut Centre) {
    drain(&mut t.a).await;
    drain(&mut t.b).await;
    drain(&mut t.c).await;
    drain(&mut t.dialer).await;
}

/// A consults B, B tries to write while read-only, A completes a two-step transfer to B, A tries
/// to write what it no longer holds, and B writes and finishes the record.
async fn two_step_transfer(t: &mut Centre) {
    t.call_on_a("C1", "R1").await;
    t.consult_b("C1", "C2", "R1", true).await;
    let refused = t.b.request(update("R1", json!({"note": "early"}))).await;
    expect_error(&refused.unwrap(), ErrorCode::ReadOnly);
    event(
        &mut t.switch,
        transferred("C1", DN_A, DN_B, TransferKind::TwoStep, Some("C2")),
    )
    .await;
    drain_all(t).await;
    let refused = t.a.request(update("R1", json!({"note": "too late"}))).await;
    expect_error(&refused.unwrap(), ErrorCode::AccessDenied);
    let reply = t.b.request(update("R1", json!({"note": "vip"}))).await;
    assert!(
        matches!(reply, Ok(ServerMsg::RecordUpdated { .. })),
        "{reply:?}"
    );
    let reply = t.b.request(processed("R1", "sale")).await.unwrap();
    assert_eq!(
        reply,
        ServerMsg::RecordProcessedAck {
            record: "R1".into()
        }
    );
}

/// A and B are both `full` in a conference on C5 and both send `RecordProcessed` before reading
/// any answer; returns (winner, loser).
async fn conference_race(t: &mut Centre) -> (&'static str, &'static str) {
    t.call_on_a("C5", "R5").await;
    event(&mut t.switch, conferenced("C5", DN_B, None)).await;
    let m = next_record_push(&mut t.b).await;
    assert_eq!(access_of(&m).1, Access::Full);
    let req = processed("R5", "sale");
    let ra = t.a.send(&req).await.unwrap();
    let rb = t.b.send(&req).await.unwrap();
    let a_won = matches!(
        t.a.reply_to(ra).await.unwrap(),
        ServerMsg::RecordProcessedAck { .. }
    );
    let b_won = matches!(
        t.b.reply_to(rb).await.unwrap(),
        ServerMsg::RecordProcessedAck { .. }
    );
    assert!(a_won != b_won, "exactly one of A and B wins");
    if a_won {
        ("A", "B")
    } else {
        ("B", "A")
    }
}

struct Played {
    centre: Centre,
    config: PathBuf,
    _dir: tempfile::TempDir,
    winner: &'static str,
    loser: &'static str,
}

/// Both scenarios on one server, a little apart in time so that a window can tell them apart.
async fn play() -> Played {
    let mut t = Centre::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), t.server.addr, "");
    // The logins, the transfer and the race each in a moment of their own.
    tokio::time::sleep(Duration::from_millis(30)).await;
    two_step_transfer(&mut t).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (winner, loser) = conference_race(&mut t).await;
    Played {
        centre: t,
        config,
        _dir: dir,
        winner,
        loser,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_step_transfer_is_told_row_by_row() {
    let p = play().await;
    let table = success(&p.config, &["R1"]).await;
    assert_eq!(
        events(&table, "AGENT"),
        pairs(&[
            ("-", "attached by dialer (campaign spring, chain_n 0)"),
            ("A", "granted full (answered)"),
            ("B", "granted read_only (consultation)"),
            (
                "B",
                "UpdateRecord denied: read_only (agent B holds record R1 read-only (consultation))"
            ),
            ("B", "granted full (transferred, was read_only)"),
            ("A", "revoked (transferred)"),
            (
                "A",
                "UpdateRecord denied: access_denied (agent A's access to record R1 was revoked)"
            ),
            ("B", "UpdateRecord accepted"),
            ("B", "RecordProcessed accepted"),
            ("B", "finalized: processed, won by B"),
            ("B", "revoked (finalized: processed)"),
        ]),
        "\n{table}"
    );
    let rows = rows(&table, "AGENT");
    // Who was where. The call named is always the record's, the customer call C1, also for B's
    // consultation (which rang on C2): PROTOCOL.md, "Which call `call` names".
    let place = |i: usize| (rows[i].dn.as_str(), rows[i].call.as_str());
    assert_eq!(place(0), ("-", "C1"), "\n{table}");
    assert_eq!(place(1), (DN_A, "C1"), "\n{table}");
    assert_eq!(place(2), (DN_B, "C1"), "\n{table}");
    assert_eq!(place(4), (DN_B, "C1"), "\n{table}");
    assert_eq!(place(6), (DN_A, "C1"), "\n{table}");
    // Times of one day print as a clock to the millisecond.
    for r in &rows {
        let t = r.time.as_bytes();
        assert!(
            r.time.len() == 12 && t[2] == b':' && t[5] == b':' && t[8] == b'.',
            "{r:?}"
        );
    }

    // The same entries as JSON lines, in increasing seq, as the table numbered them.
    let lines = json_lines(&success(&p.config, &["R1", "--json"]).await);
    let seqs: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let table_seqs: Vec<u64> = rows.iter().map(|r| r.seq.parse().unwrap()).collect();
    assert_eq!(seqs, table_seqs);
    let kinds: Vec<&str> = lines.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "attached",
            "granted",
            "granted",
            "denied",
            "granted",
            "revoked",
            "denied",
            "accepted",
            "accepted",
            "finalized",
            "revoked"
        ]
    );
    assert!(lines.iter().all(|v| v["record"] == "R1"));
    assert_eq!(lines[6]["code"], "access_denied");
    assert_eq!(lines[6]["agent"], "A");
    assert_eq!(lines[4]["previous"], "read_only");
    p.centre.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conference_race_shows_the_winner_and_the_loser_refused() {
    let p = play().await;
    let (w, l) = (p.winner, p.loser);
    let table = success(&p.config, &["R5"]).await;
    let won = format!("finalized: processed, won by {w}");
    let lost = format!(
        "RecordProcessed denied: already_final (record R5 is already final (processed by {w}))"
    );
    assert_eq!(
        events(&table, "AGENT"),
        pairs(&[
            ("-", "attached by dialer (campaign spring, chain_n 0)"),
            ("A", "granted full (answered)"),
            ("B", "granted full (conference)"),
            (w, "RecordProcessed accepted"),
            (w, &won),
            ("A", "revoked (finalized: processed)"),
            ("B", "revoked (finalized: processed)"),
            (l, &lost),
        ]),
        "\n{table}"
    );
    p.centre.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agents_window_shows_what_happened_in_it_and_nothing_else() {
    let p = play().await;
    let (w, l) = (p.winner, p.loser);
    let r1 = json_lines(&success(&p.config, &["R1", "--json"]).await);
    let r5 = json_lines(&success(&p.config, &["R5", "--json"]).await);
    let ts = |v: &serde_json::Value| v["ts"].as_str().unwrap().to_owned();

    // From the conference's first entry on, A's entries are all about R5.
    let since = clock_of(&ts(&r5[0]));
    let table = success(&p.config, &["--agent", "A", "--since", &since]).await;
    let mut expected = vec![("R5", "granted full (answered)".to_owned())];
    let lost = format!(
        "RecordProcessed denied: already_final (record R5 is already final (processed by {w}))"
    );
    if w == "A" {
        expected.push(("R5", "RecordProcessed accepted".into()));
        expected.push(("R5", "finalized: processed, won by A".into()));
        expected.push(("R5", "revoked (finalized: processed)".into()));
    } else {
        expected.push(("R5", "revoked (finalized: processed)".into()));
        assert_eq!(l, "A");
        expected.push(("R5", lost));
    }
    let expected: Vec<(String, String)> = expected
        .into_iter()
        .map(|(r, e)| (r.to_owned(), e))
        .collect();
    assert_eq!(events(&table, "RECORD"), expected, "\n{table}");

    // A window around the transfer only: A's entries about R1, from its grant to its refusal.
    let until = ts(r1.last().unwrap());
    let table = success(
        &p.config,
        &["--agent", "A", "--since", &ts(&r1[0]), "--until", &until],
    )
    .await;
    assert_eq!(
        events(&table, "RECORD"),
        pairs(&[
            ("R1", "granted full (answered)"),
            ("R1", "revoked (transferred)"),
            (
                "R1",
                "UpdateRecord denied: access_denied (agent A's access to record R1 was revoked)"
            ),
        ]),
        "\n{table}"
    );

    // Without a window the agent's whole kept history is there, its login first.
    let table = success(&p.config, &["--agent", "A"]).await;
    let all = rows(&table, "RECORD");
    assert_eq!(
        (all[0].who.as_str(), all[0].event.as_str()),
        ("-", "logged in"),
        "\n{table}"
    );
    assert_eq!(all.len(), 1 + 3 + expected_len(w), "\n{table}");

    // A window after everything: nothing, said plainly, and a failure status.
    let later = rfc3339(parse_rfc3339(&ts(r5.last().unwrap())).unwrap() + 1000);
    let out = timeline(&p.config, &["--agent", "A", "--since", &later]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "no audit entries for agent A since {later} (unknown agent, or its entries were \
             trimmed by retention)"
        )
    );
    p.centre.server.shutdown().await;
}

/// A's rows about R5: granted and revoked, plus its accepted and finalized as the winner or its
/// refusal as the loser.
fn expected_len(winner: &str) -> usize {
    if winner == "A" {
        4
    } else {
        3
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_record_is_said_plainly_and_fails() {
    let t = Centre::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), t.server.addr, "");
    for args in [&["NOPE"][..], &["NOPE", "--json"][..]] {
        let out = timeline(&config, args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
        assert_eq!(
            stderr(&out).trim(),
            "no audit entries for record NOPE (unknown record, or its entries were trimmed by \
             retention)"
        );
    }
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_or_an_agent_exactly_one_and_times_it_can_read() {
    let dir = tempfile::tempdir().unwrap();
    // No server: every one of these is refused before connecting.
    let config = config_file(dir.path(), free_addr(), "");
    for (args, says) in [
        (&["R1", "--agent", "A"][..], "cannot be used with"),
        (&[][..], "required"),
        (&["--agent", "A", "--since", "25:00"][..], "is not a time"),
        (&["--agent", "A", "--since", "noon"][..], "RFC 3339"),
    ] {
        let out = timeline(&config, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = timeline(
        &config,
        // Full times: with clock times, whether 15:00 is today's or yesterday's depends on when
        // the test runs (a --since still to come today is yesterday's).
        &[
            "--agent",
            "A",
            "--since",
            "2026-11-26T15:00:00Z",
            "--until",
            "2026-11-26T14:00:00Z",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is before --since"),
        "{}",
        stderr(&out)
    );
    let help = stdout(&timeline(&config, &["--help"]).await);
    assert!(help.contains("UTC"), "{help}");
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_lost_to_retention_are_shown_where_they_were() {
    let mut t = Centre::with(|c| c.audit_retention_entries = 30).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), t.server.addr, "");
    t.call_on_a("C1", "R1").await;
    for i in 0..60 {
        t.a.request(update("R1", json!({"i": i}))).await.unwrap();
    }
    // Trimming runs in the background: wait until the record's attachment is gone.
    let mut trimmed_to = None;
    for _ in 0..200 {
        let first = t.admin.request_stream(audit_tail(Some(1), false)).await;
        if let Some(ServerMsg::AuditTrimmed { to_seq, .. }) = first.unwrap().first() {
            if *to_seq >= 5 {
                trimmed_to = Some(*to_seq);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let trimmed_to = trimmed_to.expect("old entries were trimmed");

    let table = success(&config, &["R1"]).await;
    let rows = rows(&table, "AGENT");
    let first = &rows[0];
    assert_eq!(
        (
            first.time.as_str(),
            first.who.as_str(),
            first.event.as_str()
        ),
        (
            "-",
            "-",
            "trimmed by retention (what these entries said is lost)"
        ),
        "\n{table}"
    );
    // The gap may have grown between two reads; it starts at the log's start.
    assert!(first.seq.starts_with("1.."), "\n{table}");
    let gap_end: u64 = first.seq[3..].parse().unwrap();
    assert!(gap_end >= trimmed_to, "\n{table}");
    assert!(rows.len() > 1, "\n{table}");
    for r in &rows[1..] {
        assert_eq!(
            (r.who.as_str(), r.event.as_str()),
            ("A", "UpdateRecord accepted")
        );
        assert!(r.seq.parse::<u64>().unwrap() > gap_end, "{r:?}");
    }

    // With --json the gap is a note on stderr, so that stdout holds only entries.
    let out = timeline(&config, &["R1", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json_lines(&stdout(&out))
        .iter()
        .all(|v| v["kind"] == "accepted" && v["record"] == "R1"));
    assert!(
        stderr(&out).starts_with("note: entries 1..="),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("were trimmed by retention"));
    t.server.shutdown().await;
}
