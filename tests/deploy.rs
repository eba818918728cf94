//! The files in `deploy/` checked against the server they deploy, so that none of them rots
//! quietly: the Grafana dashboard asks only for metrics a live server exports and shows every
//! family; the production config is accepted by the server's own loader (its commented-out
//! alternative included); the systemd unit runs a command line the binary accepts, agrees with
//! the production config on paths and ports, and passes `systemd-analyze verify` where that tool
//! exists.

use baton::config::{AgentAuth, Config};
use baton::messages::ServerMsg;
use baton_kit::{http_get, processed, Centre, HttpReply};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The metric families and their sample names

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every family the server exports, as `# TYPE` names them in the classic text format (counters
/// with their `_total`).
const FAMILIES: &[(&str, Kind)] = &[
    ("baton_build_info", Kind::Gauge),
    ("baton_start_time_seconds", Kind::Gauge),
    ("baton_connections", Kind::Gauge),
    ("baton_connections_refused_total", Kind::Counter),
    ("baton_agents", Kind::Gauge),
    ("baton_agents_logout_pending", Kind::Gauge),
    ("baton_dns_monitored", Kind::Gauge),
    ("baton_records", Kind::Gauge),
    ("baton_calls", Kind::Gauge),
    ("baton_requests_total", Kind::Counter),
    ("baton_access_changes_total", Kind::Counter),
    ("baton_commit_batch_requests", Kind::Histogram),
    ("baton_commit_duration_seconds", Kind::Histogram),
    ("baton_store_flush_duration_seconds", Kind::Histogram),
    ("baton_commit_failures_total", Kind::Counter),
    ("baton_outbound_queue_drops_total", Kind::Counter),
    ("baton_backpressure_pauses_total", Kind::Counter),
    ("baton_audit_last_seq", Kind::Gauge),
    ("baton_audit_tails", Kind::Gauge),
    ("baton_audit_tail_lag_entries", Kind::Gauge),
    ("baton_login_failures_total", Kind::Counter),
    ("baton_ignored_events_total", Kind::Counter),
];

/// The names a query may use for one family of [`FAMILIES`].
fn sample_names(family: &str, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Gauge | Kind::Counter => vec![family.to_owned()],
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{family}{s}"))
            .collect(),
    }
}

/// The sample names an exposition (classic text or OpenMetrics) offers: each `# TYPE` line
/// expanded by its kind, plus every sample actually present. A counter's `# TYPE` line carries
/// `_total` in the classic format and not in OpenMetrics; both give `name_total`.
fn exported_sample_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                panic!("malformed TYPE line: {line}");
            };
            let suffixes: &[&str] = match kind {
                "counter" => {
                    let base = name.strip_suffix("_total").unwrap_or(name);
                    names.insert(format!("{base}_total"));
                    continue;
                }
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names a query reads

/// Words of PromQL that are neither metric names nor functions.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
];

/// Aggregation operators, which may take their `by (...)` before their parentheses.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the string literal that opens at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    panic!(
        "unterminated string in {:?}",
        chars.iter().collect::<String>()
    );
}

/// Index just past the `close` that ends the group opening at `start`, skipping strings.
fn skip_group(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    panic!(
        "unclosed {close:?} group in {:?}",
        chars.iter().collect::<String>()
    );
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression (with Grafana's `$variables`) reads: identifiers that are
/// not keywords, aggregations or functions (followed by `(`), and not inside label matchers
/// `{...}`, ranges `[...]`, label lists (`by (...)`), strings or variables.
fn metric_names(expr: &str) -> Vec<String> {
    assert!(
        !expr.contains("__name__"),
        "select metrics by name, not through __name__: {expr}"
    );
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '}'),
            '[' => i = skip_group(&chars, i, ']'),
            '(' if label_list_next => {
                i = skip_group(&chars, i, ')');
                label_list_next = false;
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_group(&chars, i, '}');
                } else {
                    while i < chars.len() && is_ident_char(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // A number or a duration: 0.99, 1e3, 5m.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let lower = word.to_ascii_lowercase();
                if KEYWORDS.contains(&lower.as_str()) {
                    label_list_next = LABEL_LIST_KEYWORDS.contains(&lower.as_str());
                } else if next != Some(&'(') && !AGGREGATIONS.contains(&lower.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The metric names a dashboard query reads: PromQL, or Grafana's `label_values(selector, label)`
/// (whose second argument is a label).
fn query_metric_names(query: &str) -> Vec<String> {
    match label_values_selector(query) {
        Some(selector) => metric_names(selector),
        None => metric_names(query),
    }
}

/// The selector of a `label_values(selector, label)` variable query.
fn label_values_selector(query: &str) -> Option<&str> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    Some(
        inner
            .rsplit_once(',')
            .map_or(inner, |(selector, _)| selector),
    )
}

#[test]
fn the_promql_reader_finds_metric_names_and_nothing_else() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.99, sum by (le) (rate(baton_x_bucket{a="}", b=~"$job"}[$__rate_interval])))"#,
            &["baton_x_bucket"],
        ),
        (
            "sum(rate(a_total[5m])) by (type, result) / on (instance) group_left (version) b",
            &["a_total", "b"],
        ),
        ("up == bool 1 and time() - c offset 1h", &["up", "c"]),
        ("count by (version) (d{x!=\"ok\"}) > 1e3", &["d"]),
        (
            "label_values(baton_build_info{job=~\"$job\"}, instance)",
            &["baton_build_info"],
        ),
    ];
    for (expr, expected) in cases {
        assert_eq!(&query_metric_names(expr), expected, "{expr}");
    }
}

// ---------------------------------------------------------------------------------------------
// The dashboard

const DASHBOARD: &str = "deploy/grafana/baton.json";

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, those nested in (collapsed) rows included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every query of the dashboard with where it is: panel targets and template variables.
fn all_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = match &variable["query"] {
            Value::String(q) => q.clone(),
            other => other["query"].as_str().unwrap_or_default().to_owned(),
        };
        queries.push((format!("variable {:?}", variable["name"]), query));
    }
    queries
}

fn is_import_datasource(datasource: &Value) -> bool {
    datasource["uid"] == "${DS_PROMETHEUS}" && datasource["type"] == "prometheus"
}

#[test]
fn dashboard_is_importable_and_laid_out() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "the import asks for a Prometheus data source as DS_PROMETHEUS: {inputs:?}"
    );
    assert_eq!(d["title"], "Baton");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert_eq!(d["time"]["from"], "now-1h");
    assert_eq!(d["refresh"], "10s");

    let variables: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| {
            assert!(is_import_datasource(&v["datasource"]), "variable {v}");
            v["name"].as_str()
        })
        .collect();
    assert_eq!(variables, ["job", "instance"]);

    let panels = all_panels(&d);
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(&str, [u64; 4])> = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_u64().expect("id")), "{title}: id");
        let kind = panel["type"].as_str().unwrap_or_default();
        assert!(
            ["row", "stat", "timeseries"].contains(&kind),
            "{title}: type {kind}"
        );
        let g = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for (other, [ox, oy, ow, oh]) in &boxes {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, [x, y, w, h]));
        if kind == "row" {
            assert_eq!(w, 24, "{title}: a row spans the width");
            continue;
        }
        assert!(
            is_import_datasource(&panel["datasource"]),
            "{title}: datasource {}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(is_import_datasource(&t["datasource"]), "{title}: {t}");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: {t}"
            );
        }
    }
    assert!(panels.iter().any(|p| p["type"] == "row"), "panels in rows");
}

/// The dashboard reads only the families above, and shows every one of them.
#[test]
fn dashboard_covers_every_metric_family() {
    let d = dashboard();
    let mut family_of = BTreeMap::new();
    for &(family, kind) in FAMILIES {
        for name in sample_names(family, kind) {
            family_of.insert(name, family);
        }
    }
    let mut shown = BTreeSet::new();
    for (place, expr) in all_queries(&d) {
        let names = query_metric_names(&expr);
        assert!(!names.is_empty(), "{place}: reads no metric: {expr}");
        for name in names {
            let family = family_of
                .get(&name)
                .unwrap_or_else(|| panic!("{place}: `{name}` is not a Baton metric: {expr}"));
            shown.insert(*family);
        }
    }
    let missing: Vec<&str> = FAMILIES
        .iter()
        .map(|(f, _)| *f)
        .filter(|f| !shown.contains(f))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

/// A live server's `/metrics` offers every family above and every name the dashboard asks for.
#[tokio::test]
async fn dashboard_queries_name_only_metrics_the_server_exports() {
    // Some traffic first (logins, a call answered with its record, the record finished), so that
    // families whose series appear with their first label set have one.
    let mut centre = Centre::new().await;
    centre.call_on_a("C1", "R1").await;
    let answer = centre.a.request(processed("R1", "sale")).await.unwrap();
    assert!(
        matches!(answer, ServerMsg::RecordProcessedAck { .. }),
        "{answer:?}"
    );
    let http = centre.server.http_addr.expect("the server's HTTP listener");

    let HttpReply {
        status,
        body: exposition,
        ..
    } = http_get(http, "/metrics", &[]).await;
    assert_eq!(status, 200, "/metrics: {exposition}");
    let exported = exported_sample_names(&exposition);

    let absent: Vec<String> = FAMILIES
        .iter()
        .flat_map(|&(f, k)| sample_names(f, k))
        .filter(|n| !exported.contains(n))
        .collect();
    assert!(
        absent.is_empty(),
        "/metrics lacks {absent:?}; it offers {exported:?}"
    );
    for (place, expr) in all_queries(&dashboard()) {
        for name in query_metric_names(&expr) {
            assert!(
                exported.contains(&name),
                "{place}: `{name}` is not exported by /metrics: {expr}"
            );
        }
    }
    let HttpReply { status, body, .. } = http_get(http, "/healthz", &[]).await;
    assert_eq!(status, 200, "/healthz: {body}");
    let HttpReply { status, body, .. } = http_get(http, "/readyz", &[]).await;
    assert_eq!(status, 200, "/readyz: {body}");
}

/// Whether `program --version` runs here; prints why a check is skipped when it does not.
fn tool_present(program: &str, skipped: &str) -> bool {
    let present = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        println!("note: {program} is not installed here; skipping {skipped}");
    }
    present
}

/// Every query is PromQL that Prometheus itself parses (`promtool check rules`, with Grafana's
/// variables replaced by values), where promtool is installed.
#[test]
fn dashboard_queries_parse_as_promql() {
    if !tool_present("promtool", "the PromQL syntax check") {
        return;
    }
    let mut rules = Vec::new();
    for (i, (place, query)) in all_queries(&dashboard()).into_iter().enumerate() {
        // A variable's label_values() is Grafana's own; its selector is PromQL.
        let expr = label_values_selector(&query)
            .unwrap_or(&query)
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        assert!(!expr.contains('$'), "{place}: unknown variable in {expr}");
        rules.push(serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}));
    }
    // JSON is YAML, which promtool reads.
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(file.path(), groups.to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool refused a query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The production config

const PRODUCTION_CONFIG: &str = "deploy/config.production.toml";

fn production_config() -> Config {
    Config::load(&repo_file(PRODUCTION_CONFIG)).expect("the production config loads")
}

#[test]
fn production_config_is_accepted_by_the_servers_loader() {
    let c = production_config();
    assert_ne!(
        c.auth.agents,
        AgentAuth::Open,
        "agents must prove who they are"
    );
    assert!(
        !c.listen.ip().is_loopback(),
        "other machines reach the port"
    );
    assert!(
        c.data_dir.is_absolute(),
        "data_dir: {}",
        c.data_dir.display()
    );
    assert!(c.auth.directory.is_absolute());
    let tls = c.tls.as_ref().expect("[tls]");
    for path in [&tls.cert, &tls.key]
        .into_iter()
        .chain(tls.client_ca.as_ref())
    {
        assert!(path.is_absolute(), "{}", path.display());
    }
    for role in ["switch", "dialer", "admin"] {
        assert!(
            tls.require_client_cert.iter().any(|r| r == role),
            "{role} presents a client certificate"
        );
    }
    // The example holds no secret: every token is a value to replace, and the file says how.
    let t = &c.tokens;
    for token in [&t.desktop, &t.dialer, &t.switch, &t.admin]
        .into_iter()
        .chain(t.admin_read.as_ref())
    {
        assert!(token.starts_with("REPLACE-ME"), "{token:?} looks real");
    }
    assert!(read(PRODUCTION_CONFIG).contains("openssl rand -hex 32"));
}

/// A line `# key = value` that is a TOML setting commented out (an alternative for the operator),
/// with the section it is in.
struct CommentedSetting {
    line: usize,
    section: String,
    key: String,
}

fn section_of(line: &str) -> Option<String> {
    let t = line.trim();
    (t.starts_with('[') && t.ends_with(']')).then(|| t[1..t.len() - 1].trim().to_owned())
}

fn setting_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let valid = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (valid && line.trim().parse::<toml::Table>().is_ok()).then(|| key.to_owned())
}

fn commented_settings(text: &str) -> Vec<CommentedSetting> {
    let mut section = String::new();
    let mut found = Vec::new();
    for (line, text) in text.lines().enumerate() {
        if let Some(s) = section_of(text) {
            section = s;
        } else if let Some(body) = text.trim_start().strip_prefix('#') {
            if let Some(key) = setting_key(body) {
                found.push(CommentedSetting {
                    line,
                    section: section.clone(),
                    key,
                });
            }
        }
    }
    found
}

/// The file with the commented settings `chosen` in effect, in place of the active lines of the
/// same key in the same section.
fn with_settings(text: &str, chosen: &[&CommentedSetting]) -> String {
    let replaced: BTreeSet<(&str, &str)> = chosen
        .iter()
        .map(|s| (s.section.as_str(), s.key.as_str()))
        .collect();
    let mut section = String::new();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(s) = section_of(line) {
            section = s;
        }
        if chosen.iter().any(|s| s.line == i) {
            out.push_str(line.trim_start().trim_start_matches('#').trim_start());
        } else if !line.trim_start().starts_with('#')
            && setting_key(line).is_some_and(|k| replaced.contains(&(section.as_str(), &*k)))
        {
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The settings the file offers in comments (the jwt alternative) use real keys of their section,
/// one at a time, and together they make a config the server accepts.
#[test]
fn commented_alternatives_in_the_production_config_are_real_settings() {
    let text = read(PRODUCTION_CONFIG);
    let settings = commented_settings(&text);
    assert!(
        settings
            .iter()
            .any(|s| s.section == "auth" && s.key == "jwt_issuer"),
        "the jwt alternative is offered"
    );
    for setting in &settings {
        let variant = with_settings(&text, &[setting]);
        if let Err(e) = Config::from_toml(&variant) {
            panic!(
                "line {}: `{}` in [{}] is not a setting the server knows: {e}",
                setting.line + 1,
                setting.key,
                setting.section
            );
        }
    }
    let all: Vec<&CommentedSetting> = settings.iter().collect();
    let alternative =
        Config::from_toml(&with_settings(&text, &all)).expect("the alternative parses");
    alternative.validate().expect("the alternative is valid");
    assert_eq!(alternative.auth.agents, AgentAuth::Jwt);
    assert!(alternative.auth.jwt_keys.is_absolute());
}

// ---------------------------------------------------------------------------------------------
// The systemd unit

const UNIT: &str = "deploy/baton.service";

/// A systemd unit file: for each section, each key's values in order (keys may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = None;
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        if let Some(name) = section_of(&line) {
            section = Some(name);
            continue;
        }
        let section = section
            .clone()
            .unwrap_or_else(|| panic!("{line}: outside a section"));
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not `Key=value`: {line}"));
        unit.entry(section)
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

fn unit() -> Unit {
    parse_unit(&read(UNIT))
}

/// The one value of `key` in `[section]`.
fn one<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    match unit
        .get(section)
        .and_then(|s| s.get(key))
        .map(Vec::as_slice)
    {
        Some([value]) => value,
        other => panic!("[{section}] {key}: expected one value, got {other:?}"),
    }
}

/// A command line of an `Exec*=` key, split into words (the unit quotes nothing).
fn command_words(line: &str) -> Vec<&str> {
    assert!(!line.contains(['"', '\'']), "no quoting expected: {line}");
    line.split_whitespace().collect()
}

#[test]
fn systemd_unit_runs_a_command_line_the_binary_accepts() {
    let u = unit();
    let words = command_words(one(&u, "Service", "ExecStart"));
    assert_eq!(words[0], "/usr/local/bin/baton");
    let args = &words[1..];
    assert_eq!(
        args,
        [
            "serve",
            "--config",
            "/etc/baton/config.toml",
            "--log-format",
            "json"
        ]
    );
    // The binary parses these arguments: with --help at the end it stops there, after checking
    // everything before it (an unknown flag or value is an error, status 2).
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "baton {} refused: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        help.contains("--config") && help.contains("--log-format"),
        "{help}"
    );

    let reload = command_words(one(&u, "Service", "ExecReload"));
    assert!(reload[0].ends_with("/kill"), "{reload:?}");
    assert_eq!(&reload[1..], ["-HUP", "$MAINPID"]);

    let service = &u["Service"];
    let setting = |key: &str| one(&u, "Service", key);
    assert_eq!(setting("Restart"), "on-failure");
    let user = setting("User");
    assert!(!user.is_empty() && user != "root", "a dedicated user");
    assert!(setting("LimitNOFILE").parse::<u64>().unwrap() >= 10_000);
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
    ] {
        assert_eq!(setting(key), value, "{key}");
    }
    assert!(service.contains_key("ReadWritePaths"));
    assert!(u["Install"]["WantedBy"]
        .iter()
        .any(|w| w == "multi-user.target"));
}

/// The unit and the production config describe the same installation: the store is where the
/// unit lets the service write, the start check asks the HTTP listener the config opens, and the
/// service gets no capability it does not need.
#[test]
fn systemd_unit_agrees_with_the_production_config() {
    let u = unit();
    let c = production_config();
    let words = command_words(one(&u, "Service", "ExecStart"));
    let config_path = words[words.iter().position(|w| *w == "--config").unwrap() + 1];
    assert!(
        read(PRODUCTION_CONFIG).contains(config_path),
        "{config_path}"
    );

    let writable: Vec<&str> = one(&u, "Service", "ReadWritePaths")
        .split_whitespace()
        .collect();
    assert!(
        writable.iter().any(|w| c.data_dir.starts_with(w)),
        "data_dir {} is not in ReadWritePaths {writable:?}",
        c.data_dir.display()
    );
    let mounts = one(&u, "Unit", "RequiresMountsFor");
    assert!(c.data_dir.starts_with(mounts), "RequiresMountsFor={mounts}");

    let limit: usize = one(&u, "Service", "LimitNOFILE").parse().unwrap();
    assert!(limit >= c.max_connections + 1024, "LimitNOFILE={limit}");

    let check = command_words(one(&u, "Service", "ExecStartPost"));
    let url = *check.last().unwrap();
    let http = c
        .http_addr()
        .expect("the production config has an HTTP listener");
    let scheme = if c.tls.is_some() { "https" } else { "http" };
    assert_eq!(url, format!("{scheme}://127.0.0.1:{}/readyz", http.port()));
    assert!(
        http.ip().is_unspecified() || http.ip().is_loopback(),
        "the start check reaches {http} over loopback"
    );

    let low_port = [c.listen.port(), http.port()].iter().any(|p| *p < 1024);
    let caps = one(&u, "Service", "AmbientCapabilities");
    assert_eq!(
        caps.contains("CAP_NET_BIND_SERVICE"),
        low_port,
        "AmbientCapabilities={caps}: needed only for ports below 1024"
    );
}

/// `systemd-analyze verify` accepts the unit, with ExecStart pointing at the binary just built;
/// skipped (with a note) where the tool, or a program the unit runs, is absent.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !tool_present("systemd-analyze", "`systemd-analyze verify`") {
        return;
    }
    let text = read(UNIT).replace("/usr/local/bin/baton", env!("CARGO_BIN_EXE_baton"));
    let u = parse_unit(&text);
    for (key, lines) in &u["Service"] {
        if !key.starts_with("Exec") {
            continue;
        }
        for line in lines {
            let program = command_words(line)[0].trim_start_matches(['-', '@', '+', '!', ':']);
            if !Path::new(program).exists() {
                println!("note: {program} ({key}) is absent here; skipping systemd-analyze verify");
                return;
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.service");
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // Warnings (an unknown key, a bad value) do not change the status but name the file.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("baton.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify: {about_unit:#?}"
    );
}
