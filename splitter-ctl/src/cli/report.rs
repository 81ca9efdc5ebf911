//! `splitter-ctl report ROLLOUT_ID --out FILE.svg|FILE.png|FILE.html`: a rollout drawn from the journal:
//! the candidate's share over time, each version's error rate and p99 at every judgement (the
//! samples the daemon keeps), with the steps, the rollback or the promotion marked. The HTML
//! form embeds the same drawing above the rollout's timeline.

use std::{fmt::Write as _, path::Path};

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{CommandError, history::format_time};
use crate::{
    model::config::Config,
    store::journal::{Event, EventKind, Journal, Sample},
};

const WIDTH: u32 = 960;
/// Height of each of the three charts.
const CHART_HEIGHT: u32 = 280;
const BLUE_LINE: RGBColor = RGBColor(31, 119, 180);
const GREEN_LINE: RGBColor = RGBColor(44, 160, 44);
const STEP_MARK: RGBColor = RGBColor(150, 150, 150);

/// What the report draws, read from the journal.
#[derive(Debug)]
pub struct Recorded {
    pub id: i64,
    pub service: String,
    pub events: Vec<Event>,
    pub samples: Vec<Sample>,
}

impl Recorded {
    pub fn read(journal: &Journal, id: i64) -> Result<Self, CommandError> {
        let events = journal
            .rollout_events(id)?
            .ok_or(CommandError::NotARollout(id))?;
        let service = events
            .first()
            .map(|e| e.event.service.clone())
            .ok_or(CommandError::NotARollout(id))?;
        Ok(Self {
            id,
            service,
            samples: journal.samples(id)?,
            events,
        })
    }

    fn start_ms(&self) -> i64 {
        self.events.first().map_or(0, |e| e.at_ms)
    }

    fn seconds(&self, at_ms: i64) -> f64 {
        (at_ms - self.start_ms()) as f64 / 1000.0
    }

    /// The candidate's share in percent over time: from the events (start, steps, the end) and
    /// the share each judgement saw.
    fn share_series(&self) -> Vec<(f64, f64)> {
        let mut points: Vec<(i64, f64)> = self
            .samples
            .iter()
            .map(|s| (s.at_ms, f64::from(s.candidate_share_bp) / 100.0))
            .collect();
        for e in &self.events {
            let share = match e.event.kind {
                EventKind::RolloutStarted => e.event.details["steps_percent"][0].as_f64(),
                EventKind::Step => e.event.details["candidate_percent"].as_f64(),
                EventKind::Rollback => Some(0.0),
                EventKind::Promotion => Some(100.0),
                _ => None,
            };
            if let Some(share) = share {
                points.push((e.at_ms, share));
            }
        }
        points.sort_by_key(|p| p.0);
        // Drawn as steps: the share holds until the next point.
        let mut steps = Vec::with_capacity(points.len() * 2);
        for (i, (at, share)) in points.iter().enumerate() {
            if i > 0 {
                steps.push((self.seconds(*at), points[i - 1].1));
            }
            steps.push((self.seconds(*at), *share));
        }
        steps
    }

    /// (seconds, value) per version, blue then green, from the samples.
    fn per_version(&self, value: impl Fn(&Sample) -> Option<f64>) -> [Vec<(f64, f64)>; 2] {
        ["blue", "green"].map(|version| {
            self.samples
                .iter()
                .filter(|s| s.version == version)
                .filter_map(|s| value(s).map(|v| (self.seconds(s.at_ms), v)))
                .collect()
        })
    }

    /// (seconds, label, color) of the events marked on every chart.
    fn marks(&self) -> Vec<(f64, String, RGBColor)> {
        self.events
            .iter()
            .filter_map(|e| {
                let (label, color) = match e.event.kind {
                    EventKind::Step => (
                        format!("step {}%", e.event.details["candidate_percent"]),
                        STEP_MARK,
                    ),
                    EventKind::Rollback => ("rollback".to_owned(), RED),
                    EventKind::Promotion => ("promotion".to_owned(), GREEN_LINE),
                    EventKind::OperatorOverride => ("override".to_owned(), MAGENTA),
                    _ => return None,
                };
                Some((self.seconds(e.at_ms), label, color))
            })
            .collect()
    }

    fn end_seconds(&self) -> f64 {
        let last_event = self.events.last().map_or(0, |e| e.at_ms);
        let last_sample = self.samples.last().map_or(0, |s| s.at_ms);
        self.seconds(last_event.max(last_sample)).max(0.001)
    }
}

/// The three charts as one SVG document.
pub fn svg(recorded: &Recorded) -> Result<String, CommandError> {
    register_font()?;
    let mut out = String::new();
    draw(
        recorded,
        SVGBackend::with_string(&mut out, SIZE).into_drawing_area(),
    )
    .map_err(drawing)?;
    Ok(out)
}

fn drawing(error: Box<dyn std::error::Error>) -> CommandError {
    CommandError::Draw(error.to_string())
}

/// The font reports lay out their text with (Debian: fonts-dejavu-core; `cargo xtask setup`
/// installs it).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers `FONT` as the drawings' sans-serif, once per process.
fn register_font() -> Result<(), CommandError> {
    static REGISTERED: std::sync::OnceLock<Result<(), FontError>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let font = std::fs::read(FONT).map_err(|e| FontError::Read(e.kind()))?;
            // Registered for the process's life, as plotters keeps it.
            let font: &'static [u8] = Box::leak(font.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, font)
                .map_err(|_| FontError::NotAFont)
        })
        .clone()
        .map_err(CommandError::Font)
}

/// Why the report's font cannot be used.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FontError {
    #[error(
        "cannot read the font reports are drawn with, {FONT} (Debian package fonts-dejavu-core): {0}"
    )]
    Read(std::io::ErrorKind),
    #[error("{FONT} is not a font the report can use")]
    NotAFont,
}

/// The charts as a PNG file at `out`.
pub fn png(recorded: &Recorded, out: &Path) -> Result<(), CommandError> {
    register_font()?;
    draw(recorded, BitMapBackend::new(out, SIZE).into_drawing_area()).map_err(drawing)
}

type Series = Vec<(f64, f64)>;

/// One chart: its caption, the unit of its y axis, its top, and its lines (points, label,
/// color).
struct ChartSpec<'a> {
    caption: &'a str,
    unit: &'a str,
    top: f64,
    lines: Vec<(Series, &'a str, RGBColor)>,
}

/// The size of the drawing.
const SIZE: (u32, u32) = (WIDTH, CHART_HEIGHT * 3 + 40);

fn draw<DB>(
    recorded: &Recorded,
    root: DrawingArea<DB, Shift>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let end = recorded.end_seconds();
    let share = recorded.share_series();
    let errors = recorded
        .per_version(|s| (s.requests > 0).then(|| 100.0 * s.errors as f64 / s.requests as f64));
    let p99 = recorded.per_version(|s| s.p99_ms);
    let marks = recorded.marks();
    let max_of = |series: &[Series], floor: f64| {
        series.iter().flatten().map(|p| p.1).fold(floor, f64::max) * 1.1
    };
    let error_top = max_of(&errors, 1.0);
    let p99_top = max_of(&p99, 1.0);
    {
        root.fill(&WHITE)?;
        let (title, charts) = root.split_vertically(40);
        title.draw_text(
            &format!(
                "Rollout {} of {} (started {} UTC)",
                recorded.id,
                recorded.service,
                format_time(recorded.start_ms())
            ),
            &("sans-serif", 20).into_text_style(&title),
            (10, 10),
        )?;
        let panels = charts.split_evenly((3, 1));
        let charts_spec = [
            ChartSpec {
                caption: "Candidate share of new connections",
                unit: "%",
                top: 100.0,
                lines: vec![(share, "candidate share", BLACK)],
            },
            ChartSpec {
                caption: "Error rate per version, each window between two judgements (5xx, resets, refused handshakes)",
                unit: "%",
                top: error_top,
                lines: vec![
                    (errors[0].clone(), "blue", BLUE_LINE),
                    (errors[1].clone(), "green", GREEN_LINE),
                ],
            },
            ChartSpec {
                caption: "p99 time to first byte per version, each window between two judgements",
                unit: "ms",
                top: p99_top,
                lines: vec![
                    (p99[0].clone(), "blue", BLUE_LINE),
                    (p99[1].clone(), "green", GREEN_LINE),
                ],
            },
        ];
        for (
            area,
            ChartSpec {
                caption,
                unit,
                top,
                lines,
            },
        ) in panels.iter().zip(charts_spec)
        {
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..end, 0f64..top)?;
            chart
                .configure_mesh()
                .x_desc("seconds since the start")
                .y_desc(unit)
                .draw()?;
            let places = label_places(&marks, end);
            for ((t, label, color), place) in marks.iter().zip(&places) {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(*t, 0.0), (*t, top)],
                    color.stroke_width(1),
                )))?;
                // Labels that would overlap go on rows further down; one near the right edge
                // ends at its line instead of starting there.
                let anchor = if place.left_of_line {
                    Pos::new(HPos::Right, VPos::Top)
                } else {
                    Pos::new(HPos::Left, VPos::Top)
                };
                let y = top * (0.98 - LABEL_ROW_HEIGHT * place.row as f64);
                chart.draw_series(std::iter::once(Text::new(
                    format!(" {label} "),
                    (*t, y),
                    ("sans-serif", 12).into_font().color(color).pos(anchor),
                )))?;
            }
            for (points, label, color) in lines {
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(())
}

/// The height of a row of event labels, as a fraction of a chart's height.
const LABEL_ROW_HEIGHT: f64 = 0.08;
/// Rows of labels at most; past them labels share the rows again (a rollout with that many
/// events close together is read from its timeline).
const LABEL_ROWS: usize = 10;
/// The width of the plotting area in pixels, about (the drawing less the y labels and margins).
const PLOT_WIDTH_PX: f64 = (WIDTH - 70) as f64;
/// The width of a label's character at 12 px, about, in pixels.
const LABEL_CHAR_PX: f64 = 7.0;

/// Where an event's label goes: its row (0 at the top), and whether it ends at its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LabelPlace {
    row: usize,
    left_of_line: bool,
}

/// Places the labels of `marks` (in time order) on a chart `end` seconds wide so that none
/// overlaps another or leaves the chart: each takes the first row where it fits.
fn label_places(marks: &[(f64, String, RGBColor)], end: f64) -> Vec<LabelPlace> {
    let px = |t: f64| t / end * PLOT_WIDTH_PX;
    // The right edge of the last label on each row, in pixels.
    let mut rows: Vec<f64> = Vec::new();
    marks
        .iter()
        .map(|(t, label, _)| {
            let width = (label.chars().count() + 2) as f64 * LABEL_CHAR_PX;
            let x = px(*t);
            let left_of_line = x + width > PLOT_WIDTH_PX;
            let (from, to) = if left_of_line {
                (x - width, x)
            } else {
                (x, x + width)
            };
            let row = rows
                .iter()
                .position(|right| *right <= from)
                .unwrap_or_else(|| {
                    if rows.len() < LABEL_ROWS {
                        rows.push(f64::MIN);
                        rows.len() - 1
                    } else {
                        // The row that frees up first.
                        (0..rows.len())
                            .min_by(|a, b| rows[*a].total_cmp(&rows[*b]))
                            .unwrap_or(0)
                    }
                });
            rows[row] = to;
            LabelPlace { row, left_of_line }
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The charts and the rollout's timeline as one self-contained HTML page.
pub fn html(recorded: &Recorded) -> Result<String, CommandError> {
    let svg = svg(recorded)?;
    let mut out = String::new();
    let title = format!("Rollout {} of {}", recorded.id, escape(&recorded.service));
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>\n<body>\n\
         <h1>{title}</h1>\n{svg}\n<h2>Timeline</h2>\n<table>\n<tr><th>time (UTC)</th><th>+s</th>\
         <th>event</th><th>by</th><th>reason or details</th></tr>\n"
    );
    for e in recorded
        .events
        .iter()
        .filter(|e| e.event.kind != EventKind::GateEvaluation)
    {
        let detail = e
            .event
            .reason
            .clone()
            .unwrap_or_else(|| e.event.details.to_string());
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            format_time(e.at_ms),
            recorded.seconds(e.at_ms),
            e.event.kind.name(),
            escape(&e.event.actor),
            escape(&detail)
        );
    }
    out.push_str("</table>\n</body>\n</html>\n");
    Ok(out)
}

/// A report drawn as text (SVG, HTML).
type TextRender = fn(&Recorded) -> Result<String, CommandError>;

/// Writes the report of rollout `id` to `out`, in the format its extension names.
pub fn run(config_path: &Path, id: i64, out: &Path) -> Result<String, CommandError> {
    let extension = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let text: Option<TextRender> = match extension.as_deref() {
        Some("svg") => Some(svg),
        Some("html" | "htm") => Some(html),
        Some("png") => None,
        _ => {
            return Err(CommandError::ReportFormat(out.to_owned()));
        }
    };
    let config = Config::load(config_path)?;
    let recorded = Recorded::read(&Journal::open(&config.state_dir)?, id)?;
    match text {
        Some(render) => {
            std::fs::write(out, render(&recorded)?).map_err(|source| CommandError::Io {
                what: "write the report",
                source,
            })?;
        }
        None => png(&recorded, out)?,
    }
    Ok(format!(
        "{}: rollout {id} of {}, {} events, {} samples",
        out.display(),
        recorded.service,
        recorded.events.len(),
        recorded.samples.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::NewEvent;

    #[test]
    fn labels_that_would_overlap_take_other_rows_and_none_leaves_the_chart() {
        let mark = |t: f64, label: &str| (t, label.to_owned(), RED);
        // A step and an override in the same second, then a rollback at the very end.
        let marks = [
            mark(10.0, "step 5%"),
            mark(10.2, "override"),
            mark(50.0, "step 25%"),
            mark(100.0, "rollback"),
        ];
        let places = label_places(&marks, 100.0);
        let at = |row, left_of_line| LabelPlace { row, left_of_line };
        assert_eq!(
            places,
            [at(0, false), at(1, false), at(0, false), at(0, true)]
        );
        // Many events in one place: the rows stay on the chart.
        let crowd: Vec<_> = (0..30).map(|i| mark(50.0, &format!("step {i}%"))).collect();
        assert!(
            label_places(&crowd, 100.0)
                .iter()
                .all(|p| p.row < LABEL_ROWS)
        );
    }

    /// A rollout recorded through the journal's own API: started at 1%, stepped to 5%, green's
    /// errors rose, rolled back.
    fn recorded(dir: &Path) -> i64 {
        let journal = Journal::open(dir).expect("journal");
        let event = |kind, actor: &str, reason: Option<&str>, details| NewEvent {
            reason: reason.map(str::to_owned),
            details,
            ..NewEvent::new("sentiment", kind, actor)
        };
        let id = journal
            .record(&event(
                EventKind::RolloutStarted,
                "operator",
                None,
                serde_json::json!({ "steps_percent": [1.0, 5.0, 100.0] }),
            ))
            .expect("start");
        let sample = |at_ms: i64, share, version: &str, requests, errors, p99| Sample {
            at_ms,
            candidate_share_bp: share,
            version: version.to_owned(),
            role: if version == "green" {
                "candidate"
            } else {
                "live"
            }
            .to_owned(),
            requests,
            errors,
            p99_ms: Some(p99),
        };
        let later = || {
            std::thread::sleep(std::time::Duration::from_millis(3));
            crate::store::journal::now_ms()
        };
        let at = later();
        journal
            .record_samples(
                id,
                &[
                    sample(at, 100, "green", 50, 0, 12.0),
                    sample(at, 100, "blue", 900, 1, 11.0),
                ],
            )
            .expect("samples");
        later();
        journal
            .record(&event(
                EventKind::Step,
                "gates",
                None,
                serde_json::json!({ "candidate_percent": 5.0 }),
            ))
            .expect("step");
        let at = later();
        journal
            .record_samples(
                id,
                &[
                    sample(at, 500, "green", 60, 30, 40.0),
                    sample(at, 500, "blue", 800, 1, 11.0),
                ],
            )
            .expect("samples");
        later();
        journal
            .record(&event(
                EventKind::Rollback,
                "gates",
                Some("error rate 50.00% > 1.00% <bad>"),
                serde_json::json!({ "live": "blue" }),
            ))
            .expect("rollback");
        id
    }

    #[test]
    fn a_recorded_rollout_draws_share_errors_and_p99_with_steps_and_the_rollback_marked() {
        let dir = std::env::temp_dir().join(format!("splitter-report-{}", std::process::id()));
        let id = recorded(&dir);
        let journal = Journal::open(&dir).expect("journal");
        let recorded = Recorded::read(&journal, id).expect("read");
        assert_eq!(recorded.samples.len(), 4);
        let svg = svg(&recorded).expect("svg");
        let html = html(&recorded).expect("html");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for part in [
            "Rollout",
            "Candidate share of new connections",
            "Error rate per version",
            "p99 time to first byte per version",
            "step 5",
            "rollback",
            "blue",
            "green",
        ] {
            assert!(svg.contains(part), "no `{part}` in the SVG");
        }
        // The data lines, told from markers and legends by their width: the share, then blue
        // and green on the error and p99 charts.
        for (stroke, lines) in [("#000000", 1), ("#1F77B4", 2), ("#2CA02C", 2)] {
            let drawn = format!("stroke=\"{stroke}\" stroke-width=\"2\"");
            assert_eq!(svg.matches(&drawn).count(), lines, "{stroke} in {svg}");
        }
        assert!(html.contains("<svg"));
        let png_path =
            std::env::temp_dir().join(format!("splitter-report-{}.png", std::process::id()));
        png(&recorded, &png_path).expect("png");
        let bytes = std::fs::read(&png_path).expect("png written");
        let _ = std::fs::remove_file(&png_path);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
        // IHDR: width and height, big-endian, right after the signature and chunk header.
        assert_eq!(
            u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            WIDTH
        );
        assert!(
            bytes.len() > 10_000,
            "a drawing, not an empty image: {} bytes",
            bytes.len()
        );
        assert!(
            html.contains("error rate 50.00% &gt; 1.00% &lt;bad&gt;"),
            "escaped"
        );
        // The share steps 1% → 5% → 0 at the rollback.
        let share = recorded.share_series();
        assert_eq!(share.first().map(|p| p.1), Some(1.0));
        assert_eq!(share.last().map(|p| p.1), Some(0.0));
        assert!(share.iter().any(|p| p.1 == 5.0));
    }

    #[test]
    fn an_unknown_extension_or_a_missing_rollout_is_refused() {
        let error = run(
            Path::new("/nonexistent.toml"),
            1,
            Path::new("/tmp/report.pdf"),
        )
        .expect_err("refused")
        .to_string();
        assert!(error.contains(".svg, .png or .html"), "{error}");
        let dir = std::env::temp_dir().join(format!("splitter-report-none-{}", std::process::id()));
        let journal = Journal::open(&dir).expect("journal");
        assert!(matches!(
            Recorded::read(&journal, 42),
            Err(CommandError::NotARollout(42))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
