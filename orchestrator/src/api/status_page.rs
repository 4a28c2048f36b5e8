//! The operators' status page, `GET /status`: one server-rendered HTML page (inline CSS, no
//! JavaScript) with every flow of the default tenant, each flow's last executions, and the
//! recent failures across flows. It refreshes itself every 10 s.
//!
//! Everything that comes from users or pumps (names, reasons, error messages, trigger types) is
//! HTML-escaped with [`escape`]. A `Content-Security-Policy` meta tag forbids scripts as well, so
//! a missed escape could not run anything.
//!
//! Pump heartbeats and pump memory live in the leading replica's memory; a follower shows the
//! store's view only and says so.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::response::Html;
use futures_util::{StreamExt as _, TryStreamExt as _};
use prometheus::core::Collector as _;

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::store::{exec_status, now_ms, status, ExecutionRecord, FlowRecord};

/// Executions shown per flow.
const RECENT_PER_FLOW: usize = 5;
/// Failures shown in "Recent failures".
const FAILURES_SHOWN: usize = 20;
/// Executions read per flow: "Recent failures" looks at each flow's last this many.
const EXECUTIONS_SCANNED: i64 = 100;
/// Flow events read per flow to count restarts.
const EVENTS_SCANNED: i64 = 1000;
/// The supervisor's reason for a crash it restarts from says this.
const RESTART_MARK: &str = "restarting";
/// Longest reason or error shown in a table cell; the whole text is in the cell's tooltip.
const MAX_CELL_CHARS: usize = 160;
/// Flows read from the store at once.
const CONCURRENT_READS: usize = 4;

/// What the page shows of one flow.
#[derive(Debug, Clone)]
struct FlowRow {
    flow: FlowRecord,
    /// Newest first; at most [`RECENT_PER_FLOW`].
    recent: Vec<ExecutionRecord>,
    restarts: usize,
    /// The pump's last activity by its heartbeats, Unix ms.
    pump_activity: Option<i64>,
    /// The pump's memory in bytes, from the metrics.
    memory: Option<i64>,
}

/// A failed execution, with the name of its flow.
#[derive(Debug, Clone)]
struct Failure {
    flow_name: String,
    execution: ExecutionRecord,
}

impl Failure {
    /// When it failed, or, without that, when it arrived.
    fn at(&self) -> i64 {
        self.execution
            .completed_at
            .unwrap_or(self.execution.received_at)
    }
}

/// The operators' status page: every flow, its last executions, and the recent failures.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, content_type = "text/html", body = String, description = "an HTML page that refreshes itself every 10 s"),
        (status = 401, body = super::ErrorBody, description = "the server has --admin-token and the request has no valid token")))]
pub async fn page(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Html<String>, ApiError> {
    let flows = state.store.list_flows(caller.tenant()).await?;
    let memory = pump_memory(&state.metrics.pump_memory);
    let store = &state.store;
    let read: Vec<(FlowRecord, Vec<ExecutionRecord>, usize)> =
        futures_util::stream::iter(flows.into_iter().map(|flow| async move {
            let executions = store.list_executions(&flow.id, EXECUTIONS_SCANNED).await?;
            let restarts = store
                .flow_events(&flow.id, EVENTS_SCANNED)
                .await?
                .iter()
                .filter(|e| e.reason.contains(RESTART_MARK))
                .count();
            Ok::<_, ApiError>((flow, executions, restarts))
        }))
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await?;

    let mut rows = Vec::with_capacity(read.len());
    let mut failures = Vec::new();
    for (flow, executions, restarts) in read {
        failures.extend(
            executions
                .iter()
                .filter(|e| e.status == exec_status::FAILED)
                .map(|e| Failure {
                    flow_name: flow.name.clone(),
                    execution: e.clone(),
                }),
        );
        let pump_activity = state
            .supervisor
            .heartbeat(&flow.id)
            .map(|h| h.last_activity_ms);
        let memory = memory.get(&flow.id).copied();
        let mut recent = executions;
        recent.truncate(RECENT_PER_FLOW);
        rows.push(FlowRow {
            flow,
            recent,
            restarts,
            pump_activity,
            memory,
        });
    }
    failures.sort_by(|a, b| {
        b.at()
            .cmp(&a.at())
            .then(b.execution.seq.cmp(&a.execution.seq))
    });
    failures.truncate(FAILURES_SHOWN);
    Ok(Html(render(
        caller.tenant(),
        now_ms(),
        &rows,
        &failures,
        state.leadership.is_leader(),
    )))
}

/// The pump memory series that exist, by flow id. Reading them through `collect` creates no
/// series (`with_label_values` would, and a 0 would then appear in `/metrics`).
fn pump_memory(gauge: &prometheus::IntGaugeVec) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for family in gauge.collect() {
        for metric in family.get_metric() {
            let flow = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "flow")
                .map(|l| l.value().to_string());
            if let Some(flow) = flow {
                out.insert(flow, metric.get_gauge().get_value() as i64);
            }
        }
    }
    out
}

/// Escapes text for HTML element content and for quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A duration in milliseconds, short: `850 ms`, `2.4 s`, `3 m 05 s`, `2 h 10 m`.
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{} m {:02} s", ms / 60_000, ms % 60_000 / 1_000)
    } else {
        format!("{} h {:02} m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

/// How long ago `then` was, short.
fn ago(now: i64, then: i64) -> String {
    let ms = now - then;
    if ms < 1_000 {
        "just now".into()
    } else {
        let secs = ms / 1_000;
        match secs {
            0..=59 => format!("{secs} s ago"),
            60..=3_599 => format!("{} m ago", secs / 60),
            3_600..=86_399 => format!("{} h ago", secs / 3_600),
            _ => format!("{} d ago", secs / 86_400),
        }
    }
}

/// Bytes as MiB (or KiB below one MiB).
fn bytes(n: i64) -> String {
    if n < 1024 * 1024 {
        format!("{:.0} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

/// The first line of a text, cut at [`MAX_CELL_CHARS`] characters, escaped.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut cut: String = line.chars().take(MAX_CELL_CHARS).collect();
    if cut.len() < line.len() || text.lines().nth(1).is_some() {
        cut.push('…');
    }
    escape(&cut)
}

/// A cell with the first line of `text` and the whole text as its tooltip.
fn summary_cell(class: &str, text: &str) -> String {
    format!(
        r#"<td class="{class}" title="{}">{}</td>"#,
        escape(text),
        first_line(text)
    )
}

/// The CSS class of a flow's status badge; unknown states get a neutral one.
fn flow_class(state: &str) -> &'static str {
    match state {
        status::RUNNING => "ok",
        status::STARTING => "busy",
        status::IDLE => "idle",
        status::STOPPED => "off",
        status::ERROR => "bad",
        _ => "other",
    }
}

/// The CSS class of an execution's status badge; unknown states get a neutral one.
fn execution_class(state: &str) -> &'static str {
    match state {
        exec_status::COMPLETED => "ok",
        exec_status::RUNNING => "busy",
        exec_status::QUEUED => "wait",
        exec_status::FAILED => "bad",
        _ => "other",
    }
}

fn badge(class: &str, state: &str) -> String {
    format!(r#"<span class="badge {class}">{}</span>"#, escape(state))
}

fn time(now: i64, ms: i64) -> String {
    format!(
        r#"<time>{} UTC</time> <span class="dim">({})</span>"#,
        utc(ms),
        ago(now, ms)
    )
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}
.badge{display:inline-block;padding:0 .5em;border-radius:.8em;font-size:.85em;color:#fff;background:#777}
.ok{background:#2e7d32}.busy{background:#1565c0}.wait{background:#b26a00}.bad{background:#c62828}
.idle{background:#607d8b}.off{background:#9e9e9e}.other{background:#6a1b9a}
.dim{color:#777}.reason,.error{max-width:32em;overflow-wrap:anywhere}.num{text-align:right}
ul.ex{list-style:none;margin:0;padding:0}ul.ex li{white-space:nowrap}ul.ex .error{white-space:normal;color:#c62828}
code{font-size:.9em}time{white-space:nowrap}
";

/// The page, from what was read: a pure function of its inputs.
fn render(tenant: &str, now: i64, rows: &[FlowRow], failures: &[Failure], leader: bool) -> String {
    let mut h = String::with_capacity(4096 + rows.len() * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta http-equiv=\"refresh\" content=\"10\">");
    h.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    h.push_str("<title>pumphouse status</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>\n<h1>pumphouse status</h1>\n");

    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in rows {
        match counts.iter_mut().find(|(s, _)| *s == r.flow.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((&r.flow.status, 1)),
        }
    }
    let _ = write!(
        h,
        r#"<p class="dim">{} flow{} in tenant <code>{}</code>"#,
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        escape(tenant)
    );
    for (s, n) in &counts {
        let _ = write!(h, " · {n} {}", badge(flow_class(s), s));
    }
    let _ = writeln!(
        h,
        " · generated {} UTC · refreshes every 10 s</p>",
        utc(now)
    );
    if !leader {
        h.push_str("<p class=\"dim\">This replica does not lead: pump heartbeats and memory are known to the leading replica only.</p>\n");
    }

    h.push_str("<h2>Flows</h2>\n");
    if rows.is_empty() {
        h.push_str(
            "<p>No flows yet; create one with <code>pumphouse flow apply -f FILE</code>.</p>\n",
        );
    } else {
        h.push_str("<table id=\"flows\"><thead><tr><th>Flow</th><th>Status</th><th>Desired</th><th>Reason</th><th>Last activity</th><th>Restarts</th><th>Memory</th><th>Recent executions</th></tr></thead><tbody>\n");
        for r in rows {
            flow_row(&mut h, now, r);
        }
        h.push_str("</tbody></table>\n");
    }

    h.push_str("<h2 id=\"recent-failures\">Recent failures</h2>\n");
    if failures.is_empty() {
        h.push_str("<p class=\"dim\">No failed executions.</p>\n");
    } else {
        h.push_str("<table id=\"failures\"><thead><tr><th>Failed at</th><th>Flow</th><th>Trigger</th><th>Attempts</th><th>Error</th><th>Execution</th></tr></thead><tbody>\n");
        for f in failures {
            let e = &f.execution;
            let _ = writeln!(
                h,
                "<tr class=\"failure\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>{}<td><code>{}</code></td></tr>",
                time(now, f.at()),
                escape(&f.flow_name),
                escape(&e.trigger_type),
                e.attempts,
                summary_cell("error", e.error_message.as_deref().unwrap_or("")),
                escape(&e.id)
            );
        }
        h.push_str("</tbody></table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn flow_row(h: &mut String, now: i64, r: &FlowRow) {
    let f = &r.flow;
    let _ = write!(
        h,
        "<tr class=\"flow\" id=\"flow-{}\"><td><strong>{}</strong><br><code class=\"dim\">{}</code></td><td>{}</td><td>{}</td>",
        escape(&f.name),
        escape(&f.name),
        escape(&f.id),
        badge(flow_class(&f.status), &f.status),
        escape(&f.desired_state)
    );
    match f.status_reason.as_deref().filter(|s| !s.is_empty()) {
        Some(reason) => h.push_str(&summary_cell("reason", reason)),
        None => h.push_str("<td class=\"reason dim\">—</td>"),
    }
    let _ = write!(h, "<td>flow: {}", time(now, f.updated_at));
    if let Some(at) = r.pump_activity {
        let _ = write!(h, "<br>pump: {}", time(now, at));
    }
    let _ = write!(h, "</td><td class=\"num\">{}</td>", r.restarts);
    match r.memory {
        Some(m) => {
            let _ = write!(h, "<td class=\"num\">{}</td>", bytes(m));
        }
        None => h.push_str("<td class=\"num dim\">—</td>"),
    }
    if r.recent.is_empty() {
        h.push_str("<td class=\"dim\">none yet</td></tr>\n");
        return;
    }
    h.push_str("<td><ul class=\"ex\">");
    for e in &r.recent {
        let took = match (e.started_at, e.completed_at) {
            (Some(s), Some(c)) => duration(c - s),
            _ => "—".into(),
        };
        let _ = write!(
            h,
            "<li title=\"{} · received {} UTC\">{} {} · {}",
            escape(&e.id),
            utc(e.received_at),
            badge(execution_class(&e.status), &e.status),
            escape(&e.trigger_type),
            took
        );
        if e.status == exec_status::FAILED {
            if let Some(err) = e.error_message.as_deref() {
                let _ = write!(h, "<br><span class=\"error\">{}</span>", first_line(err));
            }
        }
        h.push_str("</li>");
    }
    h.push_str("</ul></td></tr>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_replaces_every_character_html_gives_meaning_to() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("plain text, ünïcödé"), "plain text, ünïcödé");
        assert_eq!(escape(""), "");
        assert_eq!(
            escape("&amp;"),
            "&amp;amp;",
            "escaping twice shows the first escape"
        );
    }

    #[test]
    fn utc_formats_known_timestamps() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14 22:13:20");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00", "a leap day");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31 23:59:59");
        assert_eq!(utc(-1), "1969-12-31 23:59:59", "before the epoch");
    }

    #[test]
    fn durations_and_ages_are_short() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(2_400), "2.4 s");
        assert_eq!(duration(185_000), "3 m 05 s");
        assert_eq!(duration(7_800_000), "2 h 10 m");
        assert_eq!(ago(10_000, 9_500), "just now");
        assert_eq!(ago(100_000, 40_000), "1 m ago");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn first_line_cuts_and_escapes() {
        assert_eq!(first_line("a <b>\nsecond"), "a &lt;b&gt;…");
        assert_eq!(first_line("one line"), "one line");
        let long = "é".repeat(MAX_CELL_CHARS + 5);
        assert_eq!(first_line(&long).chars().count(), MAX_CELL_CHARS + 1);
    }

    fn flow(name: &str, status: &str, reason: Option<&str>) -> FlowRecord {
        FlowRecord {
            id: format!("id-{name}"),
            tenant_id: "default".into(),
            name: name.into(),
            manifest: String::new(),
            desired_state: "running".into(),
            status: status.into(),
            status_reason: reason.map(str::to_string),
            webhook_token_hash: "secret-hash".into(),
            idle_timeout_ms: 0,
            keep_alive: false,
            instance_id: None,
            pump_ref: None,
            created_at: 0,
            updated_at: 1_700_000_000_000,
        }
    }

    fn failed(id: &str, error: &str) -> ExecutionRecord {
        ExecutionRecord {
            id: id.into(),
            flow_id: "id-f".into(),
            seq: 1,
            trigger_type: "webhook".into(),
            status: exec_status::FAILED.into(),
            payload: None,
            output: None,
            error_message: Some(error.into()),
            attempts: 1,
            received_at: 1_700_000_000_000,
            deadline_at: 0,
            acked_at: None,
            started_at: Some(1_700_000_000_000),
            completed_at: Some(1_700_000_000_250),
            instance_id: None,
        }
    }

    #[test]
    fn the_page_escapes_what_users_wrote_and_shows_each_part() {
        let exec = failed("e1", "nope <b>bold</b> <script>alert(1)</script>");
        let rows = vec![FlowRow {
            flow: flow("f", status::ERROR, Some("bad <img src=x>\nlog tail")),
            recent: vec![exec.clone()],
            restarts: 2,
            pump_activity: Some(1_700_000_001_000),
            memory: Some(8 * 1024 * 1024),
        }];
        let failures = vec![Failure {
            flow_name: "f".into(),
            execution: exec,
        }];
        let page = render("default", 1_700_000_010_000, &rows, &failures, true);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains("nope &lt;b&gt;bold&lt;/b&gt; &lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("bad &lt;img src=x&gt;…"));
        assert!(page.contains(r#"<span class="badge bad">error</span>"#));
        assert!(page.contains("2023-11-14 22:13:20 UTC"));
        assert!(page.contains("pump: <time"));
        assert!(page.contains("8.0 MiB"));
        assert!(page.contains("250 ms"));
        assert!(page.contains(r#"<tr class="failure">"#));
        assert!(!page.contains("secret-hash"));
        assert!(!page.contains("does not lead"));
        assert!(render("default", 0, &[], &[], false).contains("does not lead"));
    }

    #[test]
    fn memory_is_read_only_for_series_that_exist() {
        let m = crate::metrics::Metrics::new();
        m.pump_memory.with_label_values(&["a"]).set(1234);
        let read = pump_memory(&m.pump_memory);
        assert_eq!(read.get("a"), Some(&1234));
        assert_eq!(read.get("b"), None);
        assert!(
            !m.render().contains("flow=\"b\""),
            "reading created no series"
        );
    }
}
