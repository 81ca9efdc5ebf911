//! `splitter-ctl watch [SERVICE]`: a live view of rollouts for the person on call, redrawn
//! about once a second from the daemon (status and rollouts over the control socket) and the
//! journal. For each running rollout: its step, a bar of the hold towards the next step, and
//! each gate's state; for each version: share, request rate, error rate and p99; then the last
//! journal events. `q`, Esc or Ctrl-C leaves. `--once` prints one frame as text (for scripts,
//! and how it is tested).

use std::{path::Path, time::Duration};

use bytes::Bytes;
use hyper::Method;
use ratatui::{
    Frame, Terminal,
    backend::TestBackend,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Gauge, Paragraph, Row, Table},
};

use super::{CommandError, client, history::format_time};
use crate::{
    io::http::encode,
    model::{config::Config, error::chain},
    store::journal::{EventKind, Journal},
    view::{rollout::RolloutStatus, status::Status},
};

/// Journal events the view shows.
const EVENTS: usize = 8;
/// How long the view waits for the daemon before it shows that it could not reach it: short,
/// so the view (and `q`) never freezes for long.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(2);
/// The width of a `--once` frame; its height is what it shows.
const ONCE_WIDTH: u16 = 120;
/// The most rows the live view's header takes for a problem, wrapped (`--once` shows it whole).
const HEADER_ROWS: usize = 6;

/// One version of one service, as the view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionRow {
    pub service: String,
    pub version: String,
    pub role: String,
    pub share_percent: f64,
    pub requests_per_second: Option<f64>,
    pub error_ratio: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Everything one frame shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// When it was read (UTC).
    pub at: String,
    pub rollouts: Vec<RolloutStatus>,
    pub versions: Vec<VersionRow>,
    /// The newest journal events, newest first, one line each.
    pub events: Vec<String>,
    /// What could not be read (the daemon down, say): shown instead of going blank.
    pub problem: Option<String>,
}

/// Reads the daemon's status and rollouts and the journal for `only` (a service or a release
/// group), or for everything.
#[must_use]
pub fn gather(config_path: &Path, only: Option<&str>) -> View {
    let mut view = View {
        at: format_time(crate::store::journal::now_ms()),
        ..View::default()
    };
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            view.problem = Some(chain(&error).to_string());
            return view;
        }
    };
    let mut draining: Vec<String> = Vec::new();
    let path = only.map_or_else(
        || "/v1/status".to_owned(),
        |s| format!("/v1/status?service={}", encode(s)),
    );
    match client::request(
        config_path,
        Method::GET,
        &path,
        Bytes::new(),
        DAEMON_TIMEOUT,
    )
    .and_then(|json| serde_json::from_value::<Status>(json).map_err(CommandError::from))
    {
        Ok(status) => {
            view.versions = rows(&status);
            // A drain under way heads the journal panel until it ends (and is journaled).
            draining = status
                .drains
                .iter()
                .filter(|d| !d.done)
                .map(|d| format!("draining now: {}", d.describe()))
                .collect();
        }
        Err(error) => view.problem = Some(chain(&error).to_string()),
    }
    let releases = match only {
        Some(name) => config.release(name).into_iter().collect(),
        None => config.releases(),
    };
    for release in releases {
        // No answer is no rollout (404); an answer that cannot be read is said, never shown as
        // "no rollout running".
        if let Ok(json) = client::request(
            config_path,
            Method::GET,
            &format!("/v1/rollouts/{}", encode(release.name)),
            Bytes::new(),
            DAEMON_TIMEOUT,
        ) {
            match serde_json::from_value::<RolloutStatus>(json) {
                Ok(rollout) => view.rollouts.push(rollout),
                Err(error) => {
                    view.problem = Some(format!(
                        "cannot read the rollout of {}: {error}",
                        release.name
                    ));
                }
            }
        }
    }
    let journal_name = only
        .and_then(|n| config.release(n))
        .map(|r| r.name.to_owned());
    // Gate evaluations come every interval and are the gates panel already: the journal panel
    // shows what changed (starts, steps, rollbacks, promotions, overrides, drills, weights).
    // A journal that was never written is not created by looking at it.
    if let Ok(Some(events)) = Journal::open_existing(&config.state_dir).and_then(|j| {
        j.map(|j| {
            j.history_without(
                journal_name.as_deref(),
                EVENTS,
                Some(EventKind::GateEvaluation),
            )
        })
        .transpose()
    }) {
        view.events = events
            .iter()
            .map(|e| {
                format!(
                    "{}  {:<12} {:<17} by {:<8} {}",
                    format_time(e.at_ms),
                    e.event.service,
                    e.event.kind.name(),
                    e.event.actor,
                    e.event.reason.as_deref().unwrap_or_default()
                )
            })
            .collect();
    }
    view.events.splice(0..0, draining);
    view
}

fn rows(status: &Status) -> Vec<VersionRow> {
    let mut rows = Vec::new();
    for service in &status.services {
        for version in ["blue", "green"] {
            let telemetry = service.telemetry.get(version);
            let role = if service.live.as_deref() == Some(version) {
                "live"
            } else {
                "candidate"
            };
            rows.push(VersionRow {
                service: service.name.clone(),
                version: version.to_owned(),
                role: role.to_owned(),
                share_percent: service.share_percent.get(version).copied().unwrap_or(0.0),
                requests_per_second: telemetry.and_then(|t| t.request_rate_per_second),
                error_ratio: telemetry.and_then(|t| t.recent_error_ratio.or(t.error_ratio)),
                p99_ms: telemetry.and_then(|t| t.recent_p99_ms),
            });
        }
    }
    rows
}

/// Whether the view is live on a terminal (it says how to leave) or one frame (`--once`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Live,
    Once,
}

/// The header: the name and the time, then what could not be read, cut into rows of `width`,
/// in red: whole in one frame, up to `HEADER_ROWS` rows in the live view.
fn header(view: &View, mode: Mode, width: u16) -> Vec<Line<'static>> {
    let name = Span::styled("splitter watch ", Style::new().add_modifier(Modifier::BOLD));
    let hint = match (mode, &view.problem) {
        (Mode::Live, None) => "  (q to quit)",
        _ => "",
    };
    let mut lines = vec![Line::from(vec![
        name,
        Span::raw(format!("{}{hint}", view.at)),
    ])];
    if let Some(problem) = &view.problem {
        let chars: Vec<char> = problem.chars().collect();
        lines.extend(
            chars
                .chunks(usize::from(width.max(1)))
                .take(if mode == Mode::Live {
                    HEADER_ROWS
                } else {
                    usize::MAX
                })
                .map(|row| {
                    Line::styled(row.iter().collect::<String>(), Style::new().fg(Color::Red))
                }),
        );
    }
    lines
}

/// The rows each panel of `view` takes: header, rollouts, versions, gates, and the journal's
/// (its borders and a line at least).
fn heights(view: &View, header_rows: usize) -> [u16; 5] {
    let rows = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    let gate_rows: usize = view.rollouts.iter().map(|r| r.gates.len().max(1)).sum();
    [
        rows(header_rows),
        rows(view.rollouts.len().max(1) * 3),
        rows(view.versions.len() + 3),
        rows(gate_rows.max(1) + 3),
        rows(view.events.len().max(1) + 2),
    ]
}

/// Draws `view` on `frame`.
pub fn render(frame: &mut Frame<'_>, view: &View, mode: Mode) {
    let title = header(view, mode, frame.area().width);
    let [header_rows, rollout_rows, version_rows, gate_rows, _] = heights(view, title.len());
    let [header, rollouts, versions, gates, events] = Layout::vertical([
        Constraint::Length(header_rows),
        Constraint::Length(rollout_rows),
        Constraint::Length(version_rows),
        Constraint::Length(gate_rows),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(title), header);
    render_rollouts(frame, rollouts, &view.rollouts);
    render_versions(frame, versions, &view.versions);
    render_gates(frame, gates, &view.rollouts);
    let lines: Vec<Line<'_>> = view.events.iter().map(|e| Line::raw(e.as_str())).collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title(" journal ")),
        events,
    );
}

fn render_rollouts(frame: &mut Frame<'_>, area: Rect, rollouts: &[RolloutStatus]) {
    if rollouts.is_empty() {
        frame.render_widget(
            Paragraph::new("no rollout running")
                .block(Block::new().borders(Borders::ALL).title(" rollouts ")),
            area,
        );
        return;
    }
    let areas = Layout::vertical(rollouts.iter().map(|_| Constraint::Length(3))).split(area);
    for (rollout, area) in rollouts.iter().zip(areas.iter()) {
        let steps = rollout.steps_percent.len();
        // `step` counts from 1: the next step's share is at index `step`.
        let next = rollout.steps_percent.get(rollout.step).copied();
        let held = rollout.held_ms.min(rollout.hold_ms);
        let ratio = if rollout.hold_ms == 0 {
            1.0
        } else {
            held as f64 / rollout.hold_ms as f64
        };
        let state = match (&rollout.paused, next) {
            (Some(why), _) => format!("PAUSED: {why}"),
            (None, Some(next)) if ratio < 1.0 => format!(
                "next step {next}% in {} s (if the gates pass)",
                (rollout.hold_ms - held).div_ceil(1000)
            ),
            (None, Some(next)) => format!("hold done: {next}% at the next passing judgement"),
            (None, None) => "last step: promotion at the next passing judgement".to_owned(),
        };
        let title = format!(
            " rollout of {}: {} {}% (step {} of {steps}) ",
            rollout.service, rollout.candidate, rollout.candidate_percent, rollout.step
        );
        let color = if rollout.paused.is_some() {
            Color::Yellow
        } else {
            Color::Green
        };
        frame.render_widget(
            Gauge::default()
                .block(Block::new().borders(Borders::ALL).title(title))
                .gauge_style(Style::new().fg(color))
                .ratio(ratio.clamp(0.0, 1.0))
                .label(state),
            *area,
        );
    }
}

fn render_versions(frame: &mut Frame<'_>, area: Rect, versions: &[VersionRow]) {
    let cell = |v: Option<f64>, f: fn(f64) -> String| v.map_or_else(|| "-".to_owned(), f);
    let rows = versions.iter().map(|v| {
        Row::new(vec![
            v.service.clone(),
            v.version.clone(),
            v.role.clone(),
            format!("{}%", v.share_percent),
            cell(v.requests_per_second, |r| format!("{r:.1}/s")),
            cell(v.error_ratio, |r| format!("{:.2}%", r * 100.0)),
            cell(v.p99_ms, |p| format!("{p:.1} ms")),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new([
            "service", "version", "role", "share", "requests", "errors", "p99",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::new().borders(Borders::ALL).title(" versions "));
    frame.render_widget(table, area);
}

fn render_gates(frame: &mut Frame<'_>, area: Rect, rollouts: &[RolloutStatus]) {
    let mut rows = Vec::new();
    for rollout in rollouts {
        if rollout.gates.is_empty() {
            rows.push(Row::new(vec![
                rollout.service.clone(),
                "not judged yet".to_owned(),
                String::new(),
                String::new(),
                String::new(),
            ]));
        }
        for gate in &rollout.gates {
            let color = match gate.state.as_str() {
                "pass" => Color::Green,
                "fail" => Color::Red,
                _ => Color::Yellow,
            };
            rows.push(
                Row::new(vec![
                    rollout.service.clone(),
                    gate.gate.clone(),
                    gate.limit_text.clone(),
                    gate.value_text.clone().unwrap_or_else(|| "-".to_owned()),
                    gate.state.clone(),
                ])
                .style(Style::new().fg(color)),
            );
        }
    }
    let table = Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(22),
            Constraint::Length(16),
            Constraint::Length(30),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new(["rollout", "gate", "limit", "last window", "state"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::new().borders(Borders::ALL).title(" gates "));
    frame.render_widget(table, area);
}

/// One frame of `view` as text, `width` columns and as many rows as it shows, trailing blanks
/// trimmed.
#[must_use]
pub fn text_frame(view: &View, width: u16) -> String {
    let rows = header(view, Mode::Once, width).len();
    let height = heights(view, rows)
        .iter()
        .fold(0u16, |a, b| a.saturating_add(*b));
    let Ok(mut terminal) = Terminal::new(TestBackend::new(width, height)) else {
        return String::new();
    };
    if terminal
        .draw(|frame| render(frame, view, Mode::Once))
        .is_err()
    {
        return String::new();
    }
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..height {
        let line: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Runs the live view until `q`, Esc or Ctrl-C; with `once`, prints one frame and returns.
pub fn run(
    config_path: &Path,
    only: Option<&str>,
    every: Duration,
    once: bool,
) -> Result<(), CommandError> {
    if once {
        let view = gather(config_path, only);
        super::out(text_frame(&view, ONCE_WIDTH))?;
        // The frame is printed either way; a script still learns the daemon was not there.
        return match view.problem {
            Some(problem) => Err(CommandError::Daemon(problem)),
            None => Ok(()),
        };
    }
    let io = |what: &'static str| move |source| CommandError::Io { what, source };
    let mut terminal = ratatui::try_init().map_err(io("set up the terminal"))?;
    let result = (|| -> Result<(), CommandError> {
        loop {
            let view = gather(config_path, only);
            terminal
                .draw(|frame| render(frame, &view, Mode::Live))
                .map_err(io("draw"))?;
            if event::poll(every).map_err(io("read the keyboard"))?
                && let Event::Key(key) = event::read().map_err(io("read the keyboard"))?
            {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::try_restore().map_err(io("restore the terminal"))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::rollout::GateView;

    fn view() -> View {
        let gate = |gate: &str, limit: &str, value: &str, state: &str| GateView {
            gate: gate.to_owned(),
            limit_text: limit.to_owned(),
            value_text: Some(value.to_owned()),
            state: state.to_owned(),
            numbers: std::collections::BTreeMap::new(),
        };
        let row = |version: &str, role: &str, share: f64, errors: f64| VersionRow {
            service: "sentiment".to_owned(),
            version: version.to_owned(),
            role: role.to_owned(),
            share_percent: share,
            requests_per_second: Some(120.5),
            error_ratio: Some(errors),
            p99_ms: Some(12.25),
        };
        View {
            at: "2026-11-30 09:00:00".to_owned(),
            rollouts: vec![RolloutStatus {
                service: "sentiment".to_owned(),
                candidate: "green".to_owned(),
                candidate_percent: 25.0,
                step: 3,
                steps: 5,
                steps_percent: vec![1.0, 5.0, 25.0, 50.0, 100.0],
                paused: None,
                consecutive_failures: 0,
                last_judgement: Some("pass".to_owned()),
                gates: vec![
                    gate("max_error_rate", "≤ 1.00%", "0.20%", "pass"),
                    gate("max_p99_vs_live", "≤ 1.20 × live", "1.31 ×", "fail"),
                ],
                judged_by: Vec::new(),
                hold_ms: 60_000,
                held_ms: 30_000,
            }],
            versions: vec![
                row("blue", "live", 75.0, 0.001),
                row("green", "candidate", 25.0, 0.002),
            ],
            events: vec!["2026-11-30 08:59:00  sentiment    step   by gates".to_owned()],
            problem: None,
        }
    }

    #[test]
    fn a_frame_shows_the_step_its_progress_every_version_every_gate_and_the_journal() {
        let text = text_frame(&view(), 120);
        for part in [
            "rollout of sentiment: green 25% (step 3 of 5)",
            "next step 50% in 30 s",
            "blue    live       75%",
            "green   candidate  25%",
            "120.5/s",
            "0.20%",
            "12.2 ms",
            "max_error_rate",
            "≤ 1.00%",
            "max_p99_vs_live",
            "fail",
            "step   by gates",
        ] {
            assert!(text.contains(part), "no `{part}` in:\n{text}");
        }
    }

    #[test]
    fn a_paused_rollout_says_why_and_a_dead_daemon_is_shown_not_blank() {
        let mut paused = view();
        paused.rollouts[0].paused = Some("paused by an operator".to_owned());
        assert!(text_frame(&paused, 120).contains("PAUSED: paused by an operator"));
        let down = View {
            problem: Some("the daemon is not running".to_owned()),
            ..View::default()
        };
        let text = text_frame(&down, 120);
        assert!(text.contains("the daemon is not running"), "{text}");
        assert!(text.contains("no rollout running"), "{text}");
    }

    #[test]
    fn one_frame_has_no_blank_rows_no_key_hint_and_the_whole_problem() {
        let text = text_frame(&view(), 120);
        assert!(!text.contains("q to quit"), "{text}");
        assert!(
            !text.lines().any(|line| line.trim().is_empty()),
            "a blank row in:\n{text}"
        );
        let problem = format!(
            "cannot reach the daemon at /run/splitter/ctl.sock: {}",
            "x".repeat(150)
        );
        let down = View {
            problem: Some(problem.clone()),
            ..View::default()
        };
        let text = text_frame(&down, 120);
        let unspaced = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        assert!(
            unspaced(&text).contains(&unspaced(&problem)),
            "cut:\n{text}"
        );
        assert!(!text.lines().any(|line| line.trim().is_empty()), "{text}");
    }
}
