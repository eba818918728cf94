//! The walk-throughs of PROTOCOL.md section 12 are run against a real server, frame by frame.
//!
//! A walk-through is a `text` block whose lines are `name C> {frame}` (a client named `name`
//! sends the frame) or `name S> {frame}` (the server sends `name` the frame), with `#` comments
//! and blank lines between. Each block runs on a fresh server with the default config: a
//! connection opens at its `Hello`; each client frame is sent once the frames before it were,
//! and the test waits for the server's answer to it (so requests are applied in the order
//! written, which is what a race's walk-through shows); each server frame must be the next frame
//! on that connection, equal to the one written but for the values that change from run to run
//! (`session` tokens, which later frames may quote; times; the server's version). When the block
//! ends, no connection may have anything more to read. So every frame a walk-through shows is one
//! the server sends, in the order each client sees it, and nothing it sends is left out.
//!
//! When a block does not match, the failure prints what the server said to the block's client
//! frames, in the block's own format.

use baton::codec::split_frame;
use baton::messages::Role;
use baton_kit::{schema, TestServer};
use bytes::BytesMut;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
enum Line {
    /// Who sends, the frame, and the frame as written.
    Client(String, Value, String),
    Server(String, Value),
    Comment(String),
}

/// The walk-through blocks of PROTOCOL.md, with the heading each sits under.
fn walkthroughs() -> Vec<(String, Vec<Line>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).expect("PROTOCOL.md");
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_owned();
        }
        if line != "```text" {
            continue;
        }
        let mut block = Vec::new();
        let mut frames = 0;
        let mut is_walkthrough = true;
        for line in lines.by_ref() {
            if line == "```" {
                break;
            }
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                block.push(Line::Comment(comment.trim().to_owned()));
                continue;
            }
            match parse_frame_line(trimmed) {
                Some(l) => {
                    frames += 1;
                    block.push(l);
                }
                None => is_walkthrough = false,
            }
        }
        if is_walkthrough && frames > 0 {
            blocks.push((heading.clone(), block));
        }
    }
    blocks
}

fn parse_frame_line(line: &str) -> Option<Line> {
    let (name, rest) = line.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (dir, json) = rest.split_at_checked(2)?;
    let value: Value = serde_json::from_str(json.trim()).ok()?;
    value.get("type")?;
    match dir {
        "C>" => Some(Line::Client(name.to_owned(), value, json.trim().to_owned())),
        "S>" => Some(Line::Server(name.to_owned(), value)),
        _ => None,
    }
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    role: Option<Role>,
    /// Frames read and not yet matched: the parsed frame and its text as the server wrote it.
    unread: VecDeque<(Value, String)>,
}

impl Conn {
    /// Reads one more frame into `unread`; false if none came within `wait` or the connection closed.
    async fn read_one(&mut self, wait: Duration) -> bool {
        loop {
            if let Some(body) = split_frame(&mut self.buf) {
                schema::check_server_frame(self.role, &body);
                let text = String::from_utf8(body.to_vec()).expect("UTF-8");
                let value = serde_json::from_str(&text).expect("JSON");
                self.unread.push_back((value, text));
                return true;
            }
            match tokio::time::timeout(wait, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return false,
            }
        }
    }

    async fn send(&mut self, frame: &Value) {
        let body = serde_json::to_vec(frame).unwrap();
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        self.stream.write_all(&bytes).await.expect("written");
    }

    /// Reads until the answer to `r` has arrived (it and everything before it stay unread).
    async fn await_answer(&mut self, r: &Value) -> Result<(), String> {
        while !self.unread.iter().any(|(v, _)| &v["ref"] == r) {
            if !self.read_one(Duration::from_secs(10)).await {
                return Err(format!("no answer to ref {r} within 10 s"));
            }
        }
        Ok(())
    }
}

/// Values that differ from run to run, and the written value each stands for.
#[derive(Default)]
struct Bindings {
    written_to_actual: HashMap<String, String>,
}

impl Bindings {
    /// Replaces every string a session token was written as by the actual token.
    fn substitute(&self, frame: &mut Value) {
        match frame {
            Value::String(s) => {
                if let Some(actual) = self.written_to_actual.get(s) {
                    *s = actual.clone();
                }
            }
            Value::Object(o) => o.values_mut().for_each(|v| self.substitute(v)),
            Value::Array(a) => a.iter_mut().for_each(|v| self.substitute(v)),
            _ => {}
        }
    }

    /// Whether `actual` is the frame `written`, binding the session tokens it names.
    fn matches(&mut self, written: &Value, actual: &Value) -> bool {
        let (Some(w), Some(a)) = (written.as_object(), actual.as_object()) else {
            return false;
        };
        if w.len() != a.len() {
            return false;
        }
        for (key, wv) in w {
            let Some(av) = a.get(key) else {
                return false;
            };
            let same = match (key.as_str(), wv, av) {
                ("session", Value::String(ws), Value::String(as_)) => {
                    let bound = self
                        .written_to_actual
                        .entry(ws.clone())
                        .or_insert_with(|| as_.clone());
                    bound == as_
                }
                ("at" | "ts", Value::String(_), Value::String(s)) => {
                    baton::messages::parse_rfc3339(s).is_some()
                }
                ("server", Value::String(_), Value::String(s)) => s.starts_with("baton/"),
                _ => wv == av,
            };
            if !same {
                return false;
            }
        }
        true
    }
}

async fn connect(server: &TestServer, hello: &Value) -> Conn {
    assert_eq!(hello["type"], "Hello", "a connection opens with Hello");
    let stream = TcpStream::connect(server.addr).await.expect("connected");
    stream.set_nodelay(true).unwrap();
    Conn {
        stream,
        buf: BytesMut::new(),
        role: hello["role"].as_str().and_then(Role::parse),
        unread: VecDeque::new(),
    }
}

/// Runs `block`, checking every server line; the error says which line did not hold.
async fn run(block: &[Line]) -> Result<(), String> {
    let server = TestServer::start().await;
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let mut bindings = Bindings::default();
    for (i, line) in block.iter().enumerate() {
        match line {
            Line::Comment(_) => {}
            Line::Client(name, frame, _) => {
                let mut frame = frame.clone();
                bindings.substitute(&mut frame);
                if !conns.contains_key(name) {
                    conns.insert(name.clone(), connect(&server, &frame).await);
                }
                let conn = conns.get_mut(name).expect("connected");
                conn.send(&frame).await;
                if let Some(r) = frame.get("ref") {
                    conn.await_answer(r)
                        .await
                        .map_err(|e| format!("line {}: {name} C> {frame}: {e}", i + 1))?;
                }
            }
            Line::Server(name, written) => {
                let conn = conns
                    .get_mut(name)
                    .ok_or_else(|| format!("line {}: {name} has not connected", i + 1))?;
                if conn.unread.is_empty() {
                    conn.read_one(Duration::from_secs(10)).await;
                }
                let Some((actual, text)) = conn.unread.pop_front() else {
                    return Err(format!("line {}: {name} S> {written}: nothing came", i + 1));
                };
                if !bindings.matches(written, &actual) {
                    return Err(format!(
                        "line {}: {name} S> {written}\n  but the server sent {text}",
                        i + 1
                    ));
                }
            }
        }
    }
    for (name, conn) in &mut conns {
        conn.read_one(Duration::from_millis(300)).await;
        if let Some((_, text)) = conn.unread.front() {
            return Err(format!(
                "{name} got a frame the block does not show: {text}"
            ));
        }
    }
    Ok(())
}

/// What the server says to the client lines of `block`, in the block's format: after each client
/// frame, every frame that reached any connection within a short quiet time.
async fn transcript(block: &[Line]) -> String {
    let server = TestServer::start().await;
    let mut conns: Vec<(String, Conn)> = Vec::new();
    let mut bindings = Bindings::default();
    let mut out = String::new();
    for line in block {
        match line {
            Line::Comment(c) => {
                let _ = writeln!(out, "\n# {c}");
            }
            Line::Server(..) => {}
            Line::Client(name, frame, written) => {
                let mut frame = frame.clone();
                bindings.substitute(&mut frame);
                if !conns.iter().any(|(n, _)| n == name) {
                    conns.push((name.clone(), connect(&server, &frame).await));
                }
                let _ = writeln!(out, "{name:<6} C> {written}");
                let conn = &mut conns.iter_mut().find(|(n, _)| n == name).unwrap().1;
                conn.send(&frame).await;
                for (name, conn) in &mut conns {
                    while conn.read_one(Duration::from_millis(150)).await {}
                    for (value, text) in conn.unread.drain(..) {
                        if let Some(s) = value.get("session").and_then(Value::as_str) {
                            bindings
                                .written_to_actual
                                .entry(s.to_owned())
                                .or_insert_with(|| s.to_owned());
                        }
                        let _ = writeln!(out, "{name:<6} S> {text}");
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn every_walkthrough_in_protocol_md_is_what_the_server_does() {
    let blocks = walkthroughs();
    let headings: Vec<&str> = blocks.iter().map(|(h, _)| h.as_str()).collect();
    assert!(
        blocks.len() >= 3,
        "PROTOCOL.md has the single-step, the two-step and the conference walk-throughs: {headings:?}"
    );
    let mut failures = Vec::new();
    for (heading, block) in &blocks {
        if let Err(e) = run(block).await {
            failures.push(format!(
                "walk-through under \"{heading}\": {e}\n\nWhat the server says to its client frames:\n{}",
                transcript(block).await
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    schema::assert_no_violations();
}
