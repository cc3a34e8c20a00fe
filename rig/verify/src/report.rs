//! What a person and a CI read: one line per property and the explanation of each anomaly
//! (free to change), JUnit XML for CI, the results JSON (versioned: a machine's contract), and
//! a picture of the run — stored, delivered and backlog per second with the fault windows
//! shaded. Each of them carries the command that replays the run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::checker::{Outcome, Verdict};
use crate::error::FileError;

/// The results JSON format.
pub const RESULTS_VERSION: u32 = 1;

/// Explanations printed per anomaly kind in the summary (all of them are in the results JSON).
pub const SUMMARY_EXPLANATIONS: usize = 10;

/// The summary: a line per property, then the anomalies explained, then the replay command.
pub fn summary(verdict: &Verdict, replay: &str) -> String {
    let mut out = String::new();
    let width = verdict
        .properties
        .iter()
        .map(|p| p.property.name().len())
        .max()
        .unwrap_or(0);
    for p in &verdict.properties {
        let counts: Vec<String> = p.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(
            out,
            "{}  {:width$}  {}{}",
            match p.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
            },
            p.property.name(),
            p.summary,
            if counts.is_empty() {
                String::new()
            } else {
                format!(" — {}", counts.join(", "))
            },
        );
    }
    let anomalies: Vec<_> = verdict.anomalies().collect();
    if !anomalies.is_empty() {
        let _ = writeln!(out);
    }
    let mut kinds: Vec<_> = anomalies.iter().map(|a| a.kind).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let of_kind: Vec<_> = anomalies.iter().filter(|a| a.kind == kind).collect();
        let _ = writeln!(
            out,
            "{kind}{} ({}):",
            if kind.fails() { "" } else { " (note)" },
            of_kind.len()
        );
        for a in of_kind.iter().take(SUMMARY_EXPLANATIONS) {
            let _ = writeln!(out, "  - {}", a.explanation);
        }
        if of_kind.len() > SUMMARY_EXPLANATIONS {
            let _ = writeln!(
                out,
                "  … and {} more in results.json",
                of_kind.len() - SUMMARY_EXPLANATIONS
            );
        }
    }
    let f = &verdict.figures;
    let _ = writeln!(
        out,
        "\n{} published ({} valid events, {} poison, {} producer retries, {} claim-checked), {} deliveries ({} redeliveries), {} acks, {} nacks, {} lease expiries, {} rows, {} on merged, {} dead letters, {} worker start(s), {:.1} s",
        f.published,
        f.valid_events,
        f.poison,
        f.producer_retries,
        f.claim_checked,
        f.deliveries,
        f.redeliveries,
        f.acks,
        f.nacks,
        f.expiries,
        f.rows,
        f.merged_messages,
        f.dead_letters,
        f.worker_starts,
        f.run_ms as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "{}: replay with: {replay}",
        if verdict.passed() { "PASS" } else { "FAIL" }
    );
    out
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no place for other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one test case per property, a failure with the explanations when it fails.
pub fn junit(verdict: &Verdict, suite: &str, replay: &str) -> String {
    let failures = verdict
        .properties
        .iter()
        .filter(|p| p.outcome == Outcome::Fail)
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"rig-verify\" tests=\"{}\" failures=\"{failures}\">",
        verdict.properties.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
        xml_escape(suite),
        verdict.properties.len(),
        verdict.figures.run_ms as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "    <properties><property name=\"replay\" value=\"{}\"/></properties>",
        xml_escape(replay)
    );
    for p in &verdict.properties {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\"",
            xml_escape(suite),
            p.property.name()
        );
        let failing: Vec<_> = p.anomalies.iter().filter(|a| a.kind.fails()).collect();
        if failing.is_empty() {
            let _ = writeln!(
                out,
                "><system-out>{}</system-out></testcase>",
                xml_escape(&p.summary)
            );
            continue;
        }
        let counts: Vec<String> = p.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let mut body = String::new();
        for a in &failing {
            let _ = writeln!(body, "{}: {}", a.kind, a.explanation);
        }
        let _ = writeln!(body, "replay with: {replay}");
        let _ = writeln!(
            out,
            ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
            xml_escape(&format!("{}: {}", p.summary, counts.join(", "))),
            failing.first().map_or("", |a| a.kind.name()),
            xml_escape(&body)
        );
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[derive(Serialize)]
struct Results<'a> {
    version: u32,
    outcome: Outcome,
    replay: &'a str,
    failing: Vec<&'static str>,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

/// The results JSON: `{"version": 1, "outcome": "PASS"|"FAIL", "replay", "failing": [anomaly
/// names], "properties": [...], "figures": {...}}`.
pub fn results_json(verdict: &Verdict, replay: &str) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&Results {
        version: RESULTS_VERSION,
        outcome: if verdict.passed() {
            Outcome::Pass
        } else {
            Outcome::Fail
        },
        replay,
        failing: verdict
            .failing_kinds()
            .into_iter()
            .map(|k| k.name())
            .collect(),
        verdict,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("drawing the run: {0}")]
pub struct DrawError(String);

/// The run as a picture: rows stored (right axis), deliveries per second and the backlog
/// (left axis), second by second, each planned fault's window shaded and labelled.
pub fn svg(verdict: &Verdict, title: &str) -> Result<String, DrawError> {
    let f = &verdict.figures;
    let timeline = &f.timeline;
    let seconds = timeline.len().max(1) as f64;
    let left_max = timeline
        .iter()
        .map(|s| s.delivered.max(s.backlog))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;
    let right_max = timeline.iter().map(|s| s.stored).max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (1100, 480)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<std::io::Error>| DrawError(e.to_string());
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .right_y_label_area_size(64)
            .build_cartesian_2d(0f64..seconds, 0f64..left_max)
            .map_err(e)?
            .set_secondary_coord(0f64..seconds, 0f64..right_max);
        chart
            .configure_mesh()
            .x_desc("seconds since the first record")
            .y_desc("delivered per second / backlog")
            .disable_x_mesh()
            .draw()
            .map_err(e)?;
        chart
            .configure_secondary_axes()
            .y_desc("rows stored")
            .draw()
            .map_err(e)?;
        // Fault windows: shaded, one colour per fault, labelled at the top.
        let shades = [
            RGBColor(230, 120, 40),
            RGBColor(40, 120, 230),
            RGBColor(160, 60, 200),
            RGBColor(40, 170, 90),
        ];
        let first_ms = f.started_at_ms;
        for (i, w) in f.faults.iter().enumerate() {
            let from = w.start_ms.saturating_sub(first_ms) as f64 / 1000.0;
            let to = w
                .end_ms
                .map_or(seconds, |end| end.saturating_sub(first_ms) as f64 / 1000.0)
                .max(from + 0.15);
            let colour = shades[i % shades.len()];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(from, 0.0), (to, left_max)],
                    colour.mix(0.18).filled(),
                )))
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    w.label(),
                    (from, left_max * (0.96 - 0.05 * (i % 6) as f64)),
                    ("sans-serif", 11).into_font().color(&colour),
                )))
                .map_err(e)?;
        }
        let points = |pick: fn(&crate::checker::Second) -> u64| -> Vec<(f64, f64)> {
            timeline
                .iter()
                .enumerate()
                .map(|(i, s)| (i as f64 + 0.5, pick(s) as f64))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(
                points(|s| s.delivered),
                BLUE.stroke_width(1),
            ))
            .map_err(e)?
            .label("delivered / s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(points(|s| s.backlog), RED.stroke_width(2)))
            .map_err(e)?
            .label("backlog")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        chart
            .draw_secondary_series(LineSeries::new(points(|s| s.stored), BLACK.stroke_width(2)))
            .map_err(e)?
            .label("rows stored (right axis)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(text)
}

/// The files a report writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub summary: PathBuf,
    pub junit: PathBuf,
    pub results: PathBuf,
    pub picture: PathBuf,
}

/// Writes `summary.txt`, `junit.xml`, `results.json` and `run.svg` into `dir`.
pub fn write_all(
    dir: &Path,
    verdict: &Verdict,
    suite: &str,
    replay: &str,
) -> Result<Written, FileError> {
    std::fs::create_dir_all(dir).map_err(|e| FileError::io(dir, "creating", e))?;
    let written = Written {
        summary: dir.join("summary.txt"),
        junit: dir.join("junit.xml"),
        results: dir.join("results.json"),
        picture: dir.join("run.svg"),
    };
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| FileError::io(path, "writing", e))
    };
    write(&written.summary, summary(verdict, replay))?;
    write(&written.junit, junit(verdict, suite, replay))?;
    write(
        &written.results,
        results_json(verdict, replay)
            .map_err(|e| FileError::io(&written.results, "serializing", e.into()))?,
    )?;
    let picture = svg(
        verdict,
        &format!("{suite}: stored, delivered and backlog per second"),
    )
    .map_err(|e| FileError::invalid(&written.picture, "picture", e.to_string()))?;
    write(&written.picture, picture)?;
    Ok(written)
}
