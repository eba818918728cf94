//! `baton audit timeline`: one record's life, or one agent's doings within a time window, read from
//! the access-audit log and told in order and in plain words.
//!
//! It answers the question an admin is woken up for ("why did agent 1042 lose the record at
//! 14:03?") without jq: every attachment, grant, revocation, request decision and final outcome,
//! with the call, the DN and the cause of each, one aligned row per entry. `--json` prints the
//! entries themselves instead, one object per line, for scripts.
//!
//! The entries come from `AuditTail` (filtered by record or agent, from the first kept entry, not
//! following) through the same reader as `baton audit tail`. Because the server writes the entries
//! of reads and refusals up to 20 ms after answering them, a single tail could miss the refusal
//! that is the whole point of the question; the reader therefore follows the protocol's recipe for
//! "the complete history, now" (PROTOCOL.md section 8): it notes the last `seq` given out
//! (`Status`) and tails again from where it stopped until the log on disk has reached it.

use crate::admin::{refused, run_tail, TailItem, Target};
use crate::client::ClientError;
use crate::messages::*;
use std::io::Write;
use std::ops::ControlFlow;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Milliseconds in a day: clock times on the command line count from the start of the UTC day.
const DAY_MS: u64 = 86_400_000;

/// How long the reader waits between tails for entries still on their way to the disk: the
/// server writes them every 20 ms.
const DEFERRED_WRITE_WAIT: Duration = Duration::from_millis(20);

/// How long the reader keeps waiting for the log to reach the last `seq` given out. Normally a
/// single wait suffices; it is bounded because an entry whose batch failed to be written is never
/// kept (its `seq` goes to the next entry, which may not come for a long time).
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// Whose entries a timeline shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Every entry naming this record: its life.
    Record(String),
    /// Every entry naming this agent: its logins, access changes, requests and wins.
    Agent(String),
}

impl Subject {
    /// `RECORD` or `--agent A`, exactly one of them.
    pub fn from_args(record: Option<String>, agent: Option<String>) -> Result<Subject, String> {
        match (record, agent) {
            (Some(record), None) => Ok(Subject::Record(record)),
            (None, Some(agent)) => Ok(Subject::Agent(agent)),
            _ => Err("give either a RECORD or --agent AGENT".to_owned()),
        }
    }

    fn tail(&self, from_seq: u64) -> AuditTail {
        let (record, agent) = match self {
            Subject::Record(r) => (Some(r.clone()), None),
            Subject::Agent(a) => (None, Some(a.clone())),
        };
        AuditTail {
            from_seq: Some(from_seq),
            follow: false,
            record,
            agent,
        }
    }
}

/// A time as the command line gives it: a clock time of the current UTC day (`14:00`,
/// `14:03:12`, `14:03:12.345`, as the timeline table prints them), or an RFC 3339 instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Milliseconds since midnight, UTC, today.
    Today(u64),
    /// Milliseconds since the Unix epoch.
    At(u64),
}

impl FromStr for When {
    type Err = String;

    fn from_str(s: &str) -> Result<When, String> {
        let s = s.trim();
        if let Some(ms) = clock_time(s) {
            return Ok(When::Today(ms));
        }
        parse_rfc3339(s).map(When::At).ok_or_else(|| {
            format!(
                "`{s}` is not a time: give HH:MM or HH:MM:SS (today, UTC) or an RFC 3339 time \
                 such as 2026-11-26T14:00:00Z"
            )
        })
    }
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.mmm` as milliseconds since midnight.
fn clock_time(s: &str) -> Option<u64> {
    let (hms, fraction) = match s.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (s, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    if !(2..=3).contains(&parts.len()) || (fraction.is_some() && parts.len() != 3) {
        return None;
    }
    let number = |p: &str, below: u64| -> Option<u64> {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok().filter(|n| *n < below)
    };
    let hours = number(parts[0], 24)?;
    let minutes = number(parts[1], 60)?;
    let seconds = match parts.get(2) {
        Some(p) => number(p, 60)?,
        None => 0,
    };
    let millis = match fraction {
        // The log keeps milliseconds: more digits than that cannot select anything finer.
        Some(f) if (1..=3).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{f:0<3}").parse::<u64>().ok()?
        }
        Some(_) => return None,
        None => 0,
    };
    Some(((hours * 60 + minutes) * 60 + seconds) * 1000 + millis)
}

impl When {
    /// Milliseconds since the Unix epoch, with `now_ms` saying which day "today" is.
    pub fn resolve(self, now_ms: u64) -> u64 {
        match self {
            When::Today(ms_of_day) => now_ms - now_ms % DAY_MS + ms_of_day,
            When::At(ms) => ms,
        }
    }
}

/// The part of the log's time a timeline shows: entries with `since <= ts <= until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<u64>,
    pub until: Option<u64>,
}

impl Window {
    /// The window `--since` and `--until` give, with clock times taken on the day of `now_ms`.
    pub fn new(since: Option<When>, until: Option<When>, now_ms: u64) -> Result<Window, String> {
        // A clock time still to come today means the last time it was that time: `--since
        // 23:50` asked at 00:30 is yesterday's 23:50, and an `--until 23:55` with it is
        // yesterday's too.
        let mut rolled = false;
        let since = since.map(|w| match (w, w.resolve(now_ms)) {
            (When::Today(_), at) if at > now_ms => {
                rolled = true;
                at - DAY_MS
            }
            (_, at) => at,
        });
        let until = until.map(|w| match (w, w.resolve(now_ms), since) {
            (When::Today(_), at, Some(s)) if rolled && at - DAY_MS >= s => at - DAY_MS,
            (_, at, _) => at,
        });
        let window = Window { since, until };
        if let (Some(s), Some(u)) = (window.since, window.until) {
            if u < s {
                return Err(format!(
                    "--until ({}) is before --since ({})",
                    rfc3339(u),
                    rfc3339(s)
                ));
            }
        }
        Ok(window)
    }

    /// As [`Window::new`], today being the current UTC day.
    pub fn today(since: Option<When>, until: Option<When>) -> Result<Window, String> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Window::new(since, until, now_ms)
    }

    fn is_all(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }
}

/// What `baton audit timeline` was asked.
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    pub subject: Subject,
    pub window: Window,
    pub json: bool,
}

/// What a timeline read from the log: entries and trimmed gaps, in `seq` order.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub items: Vec<TailItem>,
    /// False when entries already decided had still not reached the disk when the reader gave
    /// up waiting for them (a disk that stalls or fails): the last moments may be missing.
    pub complete: bool,
}

impl History {
    /// The entries, without the gaps.
    pub fn entries(&self) -> impl Iterator<Item = &AuditEntry> {
        self.items.iter().filter_map(|i| match i {
            TailItem::Entry(e) => Some(e),
            TailItem::Trimmed { .. } => None,
        })
    }
}

/// Keeps, of what the tail sends, the entries inside the window and the gaps that may have held
/// some. A gap followed by an entry from before the window lies wholly before it (the log is in
/// time order), and a gap after an entry from past the window lies wholly after it; the others
/// are kept, so that the reader knows the timeline may be incomplete there.
struct Collector {
    window: Window,
    items: Vec<TailItem>,
    past_window: bool,
}

impl Collector {
    fn new(window: Window) -> Collector {
        Collector {
            window,
            items: Vec::new(),
            past_window: false,
        }
    }

    fn take(&mut self, item: TailItem) {
        let entry = match item {
            TailItem::Entry(e) => e,
            gap @ TailItem::Trimmed { .. } => {
                if !self.past_window {
                    self.items.push(gap);
                }
                return;
            }
        };
        // An entry whose time cannot be read is shown: hiding it could hide the answer.
        let Some(ms) = parse_rfc3339(&entry.ts) else {
            self.items.push(TailItem::Entry(entry));
            return;
        };
        if self.window.since.is_some_and(|s| ms < s) {
            self.items.retain(|i| matches!(i, TailItem::Entry(_)));
        } else if self.window.until.is_some_and(|u| ms > u) {
            self.past_window = true;
        } else {
            self.items.push(TailItem::Entry(entry));
        }
    }
}

/// Reads the subject's entries within `window` from the server's audit log: everything decided
/// up to the moment of the call, reads and refusals included.
pub async fn fetch(
    target: &Target,
    subject: &Subject,
    window: Window,
) -> Result<History, ClientError> {
    let mut c = target.connect().await?;
    let decided = match c.request(Request::Status).await? {
        ServerMsg::StatusReport { audit_last_seq, .. } => audit_last_seq,
        other => return Err(refused(other)),
    };
    let mut collector = Collector::new(window);
    let mut from_seq = 1;
    let give_up = Instant::now() + SETTLE_LIMIT;
    loop {
        let on_disk = run_tail(&mut c, subject.tail(from_seq), |item| {
            collector.take(item);
            ControlFlow::Continue(())
        })
        .await?;
        // Without `follow` the server always ends with `AuditEnd`; the collector never stops it.
        let on_disk = on_disk.unwrap_or(decided);
        let complete = on_disk >= decided;
        if complete || Instant::now() >= give_up {
            return Ok(History {
                items: collector.items,
                complete,
            });
        }
        from_seq = on_disk + 1;
        tokio::time::sleep(DEFERRED_WRITE_WAIT).await;
    }
}

/// What was printed: how many entries (none means the message of [`nothing_found`] went to the
/// error output instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Printed {
    pub entries: usize,
}

/// `baton audit timeline`: reads the entries and prints them to `out`, as a table or as JSON
/// lines; notes (nothing found, trimmed gaps in JSON mode, an incomplete read) go to `notes`.
pub async fn timeline(
    target: &Target,
    opts: &TimelineOptions,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> Result<Printed, ClientError> {
    let history = fetch(target, &opts.subject, opts.window).await?;
    let entries = history.entries().count();
    if entries == 0 {
        writeln!(notes, "{}", nothing_found(&opts.subject, opts.window)).ok();
        return Ok(Printed { entries });
    }
    if opts.json {
        for item in &history.items {
            match item {
                TailItem::Entry(e) => writeln!(out, "{}", serde_json::to_string(e)?).ok(),
                // Kept off stdout, so that every line there is an entry for jq.
                TailItem::Trimmed { from_seq, to_seq } => writeln!(
                    notes,
                    "note: entries {from_seq}..={to_seq} were trimmed by retention"
                )
                .ok(),
            };
        }
    } else {
        write!(out, "{}", table(&history.items, &opts.subject)).ok();
    }
    if !history.complete {
        writeln!(
            notes,
            "note: the last entries the server decided were still not on disk after {}s; \
             the timeline may lack its last moments",
            SETTLE_LIMIT.as_secs()
        )
        .ok();
    }
    out.flush().ok();
    Ok(Printed { entries })
}

/// What to say when a timeline has no entry at all.
pub fn nothing_found(subject: &Subject, window: Window) -> String {
    let span = match (window.since, window.until) {
        (None, None) => String::new(),
        (Some(s), None) => format!(" since {}", rfc3339(s)),
        (None, Some(u)) => format!(" until {}", rfc3339(u)),
        (Some(s), Some(u)) => format!(" between {} and {}", rfc3339(s), rfc3339(u)),
    };
    match subject {
        Subject::Record(r) if window.is_all() => format!(
            "no audit entries for record {r} (unknown record, or its entries were trimmed by \
             retention)"
        ),
        Subject::Record(r) => format!("no audit entries for record {r}{span}"),
        Subject::Agent(a) => format!(
            "no audit entries for agent {a}{span} (unknown agent, or its entries were trimmed \
             by retention)"
        ),
    }
}

/// The timeline as an aligned table with a header row. A record's timeline names the agent of
/// each row; an agent's names the record instead. Times are UTC to the millisecond, with the
/// date only when the rows span more than one day.
pub fn table(items: &[TailItem], subject: &Subject) -> String {
    let times: Vec<Option<time::OffsetDateTime>> = items
        .iter()
        .map(|i| match i {
            TailItem::Entry(e) => parse_rfc3339(&e.ts).and_then(datetime),
            TailItem::Trimmed { .. } => None,
        })
        .collect();
    let mut days = times.iter().flatten().map(|t| t.date());
    let first_day = days.next();
    let with_date = days.any(|d| Some(d) != first_day);
    let who = match subject {
        Subject::Record(_) => "AGENT",
        Subject::Agent(_) => "RECORD",
    };
    let mut rows: Vec<[String; 6]> = vec![[
        "TIME".into(),
        "SEQ".into(),
        who.into(),
        "DN".into(),
        "CALL".into(),
        "EVENT".into(),
    ]];
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    for (item, at) in items.iter().zip(&times) {
        rows.push(match item {
            TailItem::Entry(e) => [
                match at {
                    Some(t) => clock(*t, with_date),
                    None => e.ts.clone(),
                },
                e.seq.to_string(),
                match subject {
                    Subject::Record(_) => cell(&e.agent),
                    Subject::Agent(_) => cell(&e.record),
                },
                cell(&e.dn),
                cell(&e.call),
                describe(e),
            ],
            TailItem::Trimmed { from_seq, to_seq } => [
                "-".into(),
                format!("{from_seq}..{to_seq}"),
                "-".into(),
                "-".into(),
                "-".into(),
                "trimmed by retention (what these entries said is lost)".into(),
            ],
        });
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn datetime(ms: u64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// `HH:MM:SS.mmm`, preceded by `YYYY-MM-DD` when `with_date`.
fn clock(t: time::OffsetDateTime, with_date: bool) -> String {
    let hms = format!(
        "{:02}:{:02}:{:02}.{:03}",
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    if with_date {
        format!(
            "{:04}-{:02}-{:02} {hms}",
            t.year(),
            u8::from(t.month()),
            t.day()
        )
    } else {
        hms
    }
}

/// One entry in plain words: what happened, why, and to what.
pub fn describe(e: &AuditEntry) -> String {
    let cause = e.cause.as_deref();
    let was = |previous: Option<Access>| match previous {
        Some(p @ (Access::ReadOnly | Access::Full)) => format!(", was {}", p.as_str()),
        _ => String::new(),
    };
    let request = e.request.as_deref().unwrap_or("request");
    match e.kind {
        AuditKind::Granted => format!(
            "granted {} ({}{})",
            access_name(e.access),
            why_access(cause),
            // A grant from nothing is the usual case; an upgrade says what it upgraded.
            was(e.previous.filter(|p| *p != Access::Revoked))
        ),
        AuditKind::Revoked => format!(
            "revoked ({}{})",
            why_access(cause),
            // Losing `full` is the usual case; losing `read_only` says so.
            was(e.previous.filter(|p| *p == Access::ReadOnly))
        ),
        AuditKind::Downgraded => format!(
            "downgraded to {} ({}{})",
            access_name(e.access),
            why_access(cause),
            was(e.previous)
        ),
        AuditKind::Accepted => format!("{request} accepted"),
        AuditKind::Denied => {
            let code = e.code.map_or("refused", |c| c.as_str());
            match cause.filter(|m| !m.is_empty()) {
                Some(message) => format!("{request} denied: {code} ({message})"),
                None => format!("{request} denied: {code}"),
            }
        }
        AuditKind::Finalized => {
            let outcome = cause.unwrap_or("final");
            match (e.agent.as_deref(), e.request.as_deref()) {
                (None, _) => format!("finalized: {outcome}, by the server"),
                (Some("admin"), Some(release)) => {
                    format!("finalized: {outcome}, by an admin ({release})")
                }
                (Some("admin"), None) => format!("finalized: {outcome}, by an admin"),
                (Some("dialer"), _) => format!("finalized: {outcome}, by the dialer"),
                (Some(agent), _) => format!("finalized: {outcome}, won by {agent}"),
            }
        }
        AuditKind::Attached => match cause {
            Some(c) => format!("attached by dialer ({c})"),
            None => "attached by dialer".to_owned(),
        },
        AuditKind::Orphaned => "orphaned: nobody holds it any more".to_owned(),
        AuditKind::Login => match cause {
            Some("resume") => "logged in (resumed its session)".to_owned(),
            Some("replaced") => "logged in (took over its session)".to_owned(),
            Some("desktop") | None => "logged in".to_owned(),
            Some(other) => format!("logged in ({other})"),
        },
        AuditKind::Logout => format!(
            "logged out ({})",
            match cause {
                Some("desktop") => "from the desktop",
                Some("desktop_force") => "from the desktop, records returned",
                Some("phone") => "from the phone",
                Some("replaced") => "session taken over",
                Some("grace_expired") => "desktop did not come back in time",
                Some(other) => other,
                None => "no cause given",
            }
        ),
        AuditKind::LoginFailed => format!(
            "login refused: {}",
            match cause {
                Some("bad_credential") => "bad credential",
                Some("dn_not_allowed") => "DN not allowed for this agent",
                Some(other) => other,
                None => "no cause given",
            }
        ),
    }
}

fn access_name(access: Option<Access>) -> &'static str {
    access.map_or("access", Access::as_str)
}

/// The cause of an access change in plain words. It is an `AccessChanged` cause, or the outcome
/// when the change came from the record becoming final.
fn why_access(cause: Option<&str>) -> String {
    let Some(cause) = cause else {
        return "no cause given".to_owned();
    };
    let words = match cause {
        "established" => "answered",
        "consultation" => "consultation",
        "transfer" => "transferred",
        "conference" => "conference",
        "left" => "left the call",
        "released" => "call ended",
        "logout" => "logged out",
        "admin" => "by an admin",
        "resume" => "resumed",
        outcome => return format!("finalized: {outcome}"),
    };
    words.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, ts: &str, kind: AuditKind) -> AuditEntry {
        AuditEntry {
            seq,
            ts: ts.into(),
            kind,
            record: Some("R1".into()),
            agent: Some("1042".into()),
            dn: Some("7001".into()),
            call: Some("C1".into()),
            access: None,
            previous: None,
            request: None,
            code: None,
            cause: None,
        }
    }

    #[test]
    fn clock_times_and_instants_are_read() {
        assert_eq!("14:00".parse(), Ok(When::Today(14 * 3_600_000)));
        assert_eq!(
            "14:03:12".parse(),
            Ok(When::Today((14 * 3600 + 3 * 60 + 12) * 1000))
        );
        assert_eq!(
            "00:00:01.5".parse(),
            Ok(When::Today(1500)),
            "a fraction counts as the digits of a decimal"
        );
        assert_eq!(
            "2026-11-26T14:00:00Z".parse(),
            Ok(When::At(parse_rfc3339("2026-11-26T14:00:00Z").unwrap()))
        );
        for bad in [
            "24:00",
            "14:60",
            "1:00",
            "14:00:00:00",
            "14:00.5",
            "today",
            "",
        ] {
            assert!(bad.parse::<When>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_clock_time_is_taken_on_the_utc_day_of_now() {
        let now = parse_rfc3339("2026-11-26T23:59:59.999Z").unwrap();
        let w = Window::new(Some(When::Today(0)), Some(When::Today(DAY_MS - 1)), now).unwrap();
        assert_eq!(w.since, parse_rfc3339("2026-11-26T00:00:00Z"));
        assert_eq!(w.until, Some(now));
        assert!(Window::new(Some(When::Today(1)), Some(When::Today(0)), now).is_err());
    }

    #[test]
    fn a_clock_time_still_to_come_today_is_yesterdays() {
        let now = parse_rfc3339("2026-11-27T00:30:00Z").unwrap();
        let at = |hh: u64, mm: u64| When::Today((hh * 60 + mm) * 60_000);
        let w = Window::new(Some(at(23, 50)), None, now).unwrap();
        assert_eq!(w.since, parse_rfc3339("2026-11-26T23:50:00Z"));
        let w = Window::new(Some(at(23, 50)), Some(at(23, 55)), now).unwrap();
        assert_eq!(w.until, parse_rfc3339("2026-11-26T23:55:00Z"));
        let w = Window::new(Some(at(23, 50)), Some(at(0, 10)), now).unwrap();
        assert_eq!(w.until, parse_rfc3339("2026-11-27T00:10:00Z"));
        let w = Window::new(Some(at(0, 10)), None, now).unwrap();
        assert_eq!(w.since, parse_rfc3339("2026-11-27T00:10:00Z"));
    }

    #[test]
    fn gaps_outside_the_window_are_left_out() {
        let since = parse_rfc3339("2026-11-26T14:00:00Z");
        let until = parse_rfc3339("2026-11-26T15:00:00Z");
        let mut c = Collector::new(Window { since, until });
        let gap = |from_seq, to_seq| TailItem::Trimmed { from_seq, to_seq };
        c.take(gap(1, 10));
        c.take(TailItem::Entry(entry(
            11,
            "2026-11-26T13:59:59.999Z",
            AuditKind::Login,
        )));
        c.take(gap(12, 20));
        c.take(TailItem::Entry(entry(
            21,
            "2026-11-26T14:00:00.000Z",
            AuditKind::Granted,
        )));
        c.take(TailItem::Entry(entry(
            22,
            "2026-11-26T15:00:00.001Z",
            AuditKind::Revoked,
        )));
        c.take(gap(23, 30));
        let seqs: Vec<String> = c
            .items
            .iter()
            .map(|i| match i {
                TailItem::Entry(e) => e.seq.to_string(),
                TailItem::Trimmed { from_seq, to_seq } => format!("{from_seq}..{to_seq}"),
            })
            .collect();
        // The first gap is known to be before 14:00; the second may hold entries after it.
        assert_eq!(seqs, ["12..20", "21"]);
    }

    #[test]
    fn entries_are_told_in_plain_words() {
        let mut e = entry(1, "2026-11-26T14:03:00Z", AuditKind::Granted);
        e.access = Some(Access::Full);
        e.previous = Some(Access::ReadOnly);
        e.cause = Some("transfer".into());
        assert_eq!(describe(&e), "granted full (transferred, was read_only)");
        e.kind = AuditKind::Revoked;
        e.access = Some(Access::Revoked);
        e.previous = Some(Access::Full);
        e.cause = Some("processed".into());
        assert_eq!(describe(&e), "revoked (finalized: processed)");
        e.kind = AuditKind::Denied;
        e.request = Some("UpdateRecord".into());
        e.code = Some(ErrorCode::ReadOnly);
        e.cause = None;
        assert_eq!(describe(&e), "UpdateRecord denied: read_only");
        e.kind = AuditKind::Finalized;
        e.agent = Some("admin".into());
        e.request = Some("ReleaseRecord: gone home".into());
        e.cause = Some("returned".into());
        assert_eq!(
            describe(&e),
            "finalized: returned, by an admin (ReleaseRecord: gone home)"
        );
        e.agent = None;
        e.cause = Some("stale".into());
        assert_eq!(describe(&e), "finalized: stale, by the server");
    }

    #[test]
    fn the_date_appears_only_when_the_rows_span_days() {
        let subject = Subject::Record("R1".into());
        let one_day = [
            TailItem::Entry(entry(1, "2026-11-26T14:03:00.120Z", AuditKind::Orphaned)),
            TailItem::Entry(entry(2, "2026-11-26T23:59:00Z", AuditKind::Orphaned)),
        ];
        let text = table(&one_day, &subject);
        assert!(text.lines().nth(1).unwrap().starts_with("14:03:00.120  1 "));
        let two_days = [
            one_day[0].clone(),
            TailItem::Entry(entry(3, "2026-11-27T00:00:01Z", AuditKind::Orphaned)),
        ];
        let text = table(&two_days, &subject);
        assert!(text
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("2026-11-27 00:00:01.000  3 "));
    }
}
