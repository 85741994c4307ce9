//! The benchmark suite's common output: every measurement as a row next to its raw
//! baseline, one table with ratios, one JSON file and one SVG chart for all sections.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::{Value, json};

/// What a row's numbers are, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds; lower is better.
    Ms,
    /// Events per second; higher is better.
    EventsPerS,
    /// MiB of memory; lower is better.
    MiB,
    /// MiB per second; higher is better.
    MiBPerS,
    /// A count (workspaces); higher is better.
    Count,
    /// Percent of one CPU; lower is better.
    Percent,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::EventsPerS => "events/s",
            Unit::MiB => "MiB",
            Unit::MiBPerS => "MiB/s",
            Unit::Count => "count",
            Unit::Percent => "% of a CPU",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Unit::EventsPerS | Unit::MiBPerS | Unit::Count)
    }

    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Ms if v >= 10_000.0 => format!("{:.1} s", v / 1000.0),
            Unit::Ms if v >= 100.0 => format!("{v:.0} ms"),
            Unit::Ms => format!("{v:.1} ms"),
            Unit::EventsPerS => format!("{v:.0} ev/s"),
            Unit::MiB if v < 1.0 => format!("{:.0} KiB", v * 1024.0),
            Unit::MiB => format!("{v:.1} MiB"),
            Unit::MiBPerS => format!("{v:.0} MiB/s"),
            Unit::Count => format!("{v:.0}"),
            Unit::Percent => format!("{v:.1} %"),
        }
    }
}

/// One measurement: kraal's number and, when there is one, the raw baseline's, taken in
/// the same run.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub unit: Unit,
    pub kraal: f64,
    pub baseline: Option<(String, f64)>,
}

impl Row {
    pub fn vs(name: impl Into<String>, unit: Unit, kraal: f64, base: &str, baseline: f64) -> Row {
        Row {
            name: name.into(),
            unit,
            kraal,
            baseline: Some((base.to_owned(), baseline)),
        }
    }

    pub fn alone(name: impl Into<String>, unit: Unit, kraal: f64) -> Row {
        Row {
            name: name.into(),
            unit,
            kraal,
            baseline: None,
        }
    }

    /// kraal ÷ baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| self.kraal / b)
    }

    fn to_json(&self) -> Value {
        json!({
            "measurement": self.name,
            "unit": self.unit.as_str(),
            "kraal": self.kraal,
            "baseline": self.baseline.as_ref().map(|(n, _)| n),
            "baseline_value": self.baseline.as_ref().map(|(_, v)| v),
            "ratio": self.ratio(),
        })
    }
}

/// One section of the suite: its rows for the table and chart, and everything it measured
/// in detail for the JSON file.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: &'static str,
    pub title: String,
    pub rows: Vec<Row>,
    pub details: Value,
}

/// The table printed at the end of a run.
pub fn table(sections: &[Section]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<60} {:>13} {:>13}  {:<26} {:>8}",
        "measurement", "kraal", "baseline", "(baseline is)", "ratio"
    );
    for s in sections {
        let _ = writeln!(out, "── {} ──", s.title);
        for r in &s.rows {
            let (b, bn) = match &r.baseline {
                Some((n, v)) => (r.unit.format(*v), n.as_str()),
                None => (String::new(), ""),
            };
            let ratio = r.ratio().map(|x| format!("{x:.2}×")).unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<60} {:>13} {:>13}  {:<26} {:>8}",
                r.name,
                r.unit.format(r.kraal),
                b,
                bn,
                ratio
            );
        }
    }
    out
}

/// The whole run as one JSON document.
pub fn to_json(machine: Value, sections: &[Section], errors: &[(String, String)]) -> Value {
    json!({
        "machine": machine,
        "sections": sections.iter().map(|s| json!({
            "name": s.name,
            "title": s.title,
            "rows": s.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "details": s.details,
        })).collect::<Vec<_>>(),
        "errors": errors.iter().map(|(s, e)| json!({"section": s, "error": e})).collect::<Vec<_>>(),
    })
}

const KRAAL: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const BASE: RGBColor = RGBColor(0xa0, 0xa0, 0xa0);

/// Renders every row with a baseline as a small panel of two bars (kraal, baseline) with
/// their values, grouped by section, into an SVG file.
pub fn chart(path: &Path, title: &str, sections: &[Section]) -> anyhow::Result<()> {
    let rows: Vec<(&Section, &Row)> = sections
        .iter()
        .flat_map(|s| s.rows.iter().map(move |r| (s, r)))
        .filter(|(_, r)| r.baseline.is_some())
        .collect();
    let cols = 3usize;
    let (pw, ph) = (420u32, 150u32);
    let lines = rows.len().div_ceil(cols).max(1) as u32;
    let size = (pw * cols as u32, 70 + ph * lines);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(70);
    head.draw(&Text::new(
        title.to_owned(),
        (12, 12),
        ("sans-serif", 20).into_font().color(&BLACK),
    ))?;
    head.draw(&Text::new(
        "blue: kraal · grey: raw baseline in the same run · ratio = kraal ÷ baseline",
        (12, 42),
        ("sans-serif", 13).into_font().color(&RGBColor(80, 80, 80)),
    ))?;
    let panels = body.split_evenly((lines as usize, cols));
    for ((section, row), area) in rows.iter().zip(panels.iter()) {
        panel(area, section, row)?;
    }
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    section: &Section,
    row: &Row,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (bname, bval) = row.baseline.clone().expect("rows with a baseline only");
    let max = row.kraal.max(bval).max(1e-9) * 1.7;
    let better = if row.unit.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    let ratio = row
        .ratio()
        .map(|r| format!(" ({r:.2}×, {better})"))
        .unwrap_or_default();
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .caption(
            format!("{}: {}{ratio}", section.name, row.name),
            ("sans-serif", 13),
        )
        .x_label_area_size(18)
        .y_label_area_size(0)
        .build_cartesian_2d(0f64..max, 0f64..2f64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_x_mesh()
        .x_labels(4)
        .x_label_formatter(&|v| short(*v))
        .label_style(("sans-serif", 10))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (y, v, color, label) in [
        (1.0, row.kraal, KRAAL, "kraal".to_owned()),
        (0.0, bval, BASE, bname),
    ] {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.15), (v, y + 0.85)],
                color.filled(),
            )))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{} {}", label, row.unit.format(v)),
                (v + max * 0.01, y + 0.62),
                ("sans-serif", 11).into_font().color(&BLACK),
            )))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sections() -> Vec<Section> {
        vec![Section {
            name: "create",
            title: "gVisor workspaces".into(),
            rows: vec![
                Row::vs(
                    "create → first exec",
                    Unit::Ms,
                    330.0,
                    "raw runsc run",
                    160.0,
                ),
                Row::vs(
                    "event throughput",
                    Unit::EventsPerS,
                    7500.0,
                    "raw pipe",
                    50_000.0,
                ),
                Row::alone("warm exec", Unit::Ms, 29.0),
            ],
            details: json!({"n": 5}),
        }]
    }

    #[test]
    fn rows_carry_their_ratio_and_the_table_shows_it() {
        let s = sections();
        assert!((s[0].rows[0].ratio().unwrap() - 2.0625).abs() < 1e-9);
        assert_eq!(s[0].rows[2].ratio(), None);
        let t = table(&s);
        assert!(t.contains("create → first exec"), "{t}");
        assert!(t.contains("2.06×"), "{t}");
        assert!(t.contains("0.15×"), "{t}");
        let j = to_json(json!({}), &s, &[("vm".into(), "no qemu".into())]);
        assert_eq!(j["sections"][0]["rows"][1]["baseline"], "raw pipe");
        assert_eq!(j["errors"][0]["section"], "vm");
    }

    #[test]
    fn the_chart_has_a_panel_per_compared_row_with_both_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        chart(&p, "kraal benchmarks", &sections()).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "create: create → first exec",
            "kraal 330 ms",
            "raw runsc run 160 ms",
            "raw pipe 50000 ev/s",
            "(2.06×, lower is better)",
        ] {
            assert!(svg.contains(text), "{text} missing from the chart: {svg}");
        }
        // The row without a baseline has no panel.
        assert!(!svg.contains("warm exec"));
    }
}
