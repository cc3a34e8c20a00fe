//! Plain-text tables for people and JUnit XML for CI. Human output may change between
//! versions; the JUnit shape follows the common Jenkins/GitLab schema.

use std::fmt::Write as _;
use std::time::Duration;

/// How one check or scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// The emulator behaved differently from the real service, so the property could not be
    /// decided here. Never counted as a pass.
    Divergence,
    Skipped,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Divergence => "DIVERGENCE",
            Outcome::Skipped => "SKIPPED",
        }
    }
}

/// A left-aligned text table.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == columns {
                    out.push_str(cell);
                } else {
                    let _ = write!(out, "{cell:<width$}  ");
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        out.push_str(&line(
            &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
        ));
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row));
        }
        out.push('\n');
        out
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// One JUnit test case.
pub struct JunitCase {
    pub name: String,
    pub classname: String,
    pub outcome: Outcome,
    pub took: Duration,
    pub message: String,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A JUnit XML document. Divergences are reported as skipped with their reason, so CI systems
/// neither count them as passes nor fail the build on them.
pub fn junit(suite: &str, cases: &[JunitCase]) -> String {
    let failures = cases.iter().filter(|c| c.outcome == Outcome::Fail).count();
    let skipped = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Divergence | Outcome::Skipped))
        .count();
    let total: f64 = cases.iter().map(|c| c.took.as_secs_f64()).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">",
        xml_escape(suite),
        cases.len()
    );
    for case in cases {
        let _ = write!(
            out,
            "  <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
            xml_escape(&case.name),
            xml_escape(&case.classname),
            case.took.as_secs_f64()
        );
        let message = xml_escape(&case.message);
        match case.outcome {
            Outcome::Pass => out.push_str("/>\n"),
            Outcome::Fail => {
                let _ = writeln!(
                    out,
                    "><failure message=\"{message}\">{message}</failure></testcase>"
                );
            }
            Outcome::Divergence | Outcome::Skipped => {
                let _ = writeln!(
                    out,
                    "><skipped message=\"{}: {message}\"/></testcase>",
                    case.outcome.label()
                );
            }
        }
    }
    out.push_str("</testsuite></testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["check", "result"]);
        t.row(vec!["a long check".into(), "PASS".into()]);
        t.row(vec!["b".into(), "FAIL".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "check         result");
        assert_eq!(lines[2], "a long check  PASS");
        assert_eq!(lines[3], "b             FAIL");
    }

    #[test]
    fn junit_counts_and_escapes() {
        let case = |name: &str, outcome| JunitCase {
            name: name.into(),
            classname: "rig".into(),
            outcome,
            took: Duration::from_millis(5),
            message: "a < b & \"c\"".into(),
        };
        let xml = junit(
            "s",
            &[
                case("ok", Outcome::Pass),
                case("bad", Outcome::Fail),
                case("emu", Outcome::Divergence),
            ],
        );
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" skipped=\"1\""),
            "{xml}"
        );
        assert!(xml.contains("a &lt; b &amp; &quot;c&quot;"), "{xml}");
        assert!(xml.contains("DIVERGENCE: "), "{xml}");
    }
}
