//! PNG plots of the Services benchmark (plotters): connection rate and
//! latency against the number of Services, one line per datapath, for
//! ClusterIP and NodePort. Text is drawn with DejaVu Sans (Debian's
//! fonts-dejavu-core, which `cargo xtask setup` installs), read at run
//! time from where distributions put it; without it there are no plots.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use gangplank_sim::bench_options::{Dataplane, FONT_PATHS};
use gangplank_sim::measure::median;

use super::services::{ConnRun, ModeResult, RunsOf};

const FONT: &str = "sans-serif";

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = FONT_PATHS
                .iter()
                .find(|p| std::path::Path::new(p).is_file())
                .ok_or_else(|| {
                    format!(
                        "the DejaVu Sans font is not installed (looked for {}; Debian: apt install fonts-dejavu-core)",
                        FONT_PATHS.join(", ")
                    )
                })?;
            let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{path}: not a usable TrueType font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn colour(d: Dataplane) -> RGBColor {
    match d {
        Dataplane::Gangplank => RGBColor(0x1b, 0x9e, 0x77),
        Dataplane::Iptables => RGBColor(0xd9, 0x5f, 0x02),
        Dataplane::Nftables => RGBColor(0x75, 0x70, 0xb3),
    }
}

/// One plotted line: label, colour, points (services, value).
struct Line {
    label: String,
    colour: RGBColor,
    thick: bool,
    points: Vec<(f64, f64)>,
}

fn lines_for(
    results: &[ModeResult],
    pick: RunsOf,
    value: fn(&ConnRun) -> f64,
    suffix: &str,
    thick: bool,
) -> Vec<Line> {
    let mut modes: Vec<Dataplane> = Vec::new();
    for r in results {
        if !modes.contains(&r.mode) {
            modes.push(r.mode);
        }
    }
    modes
        .into_iter()
        .map(|mode| Line {
            label: format!("{}{suffix}", mode.label()),
            colour: colour(mode),
            thick,
            points: results
                .iter()
                .filter(|r| r.mode == mode && !pick(r).is_empty())
                .map(|r| {
                    let values: Vec<f64> = pick(r).iter().map(value).collect();
                    (r.services as f64, median(&values))
                })
                .collect(),
        })
        .collect()
}

fn draw(path: &Path, title: &str, y_label: &str, lines: &[Line]) -> Result<()> {
    let max_x = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_y = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((0.8f64..max_x * 1.25).log_scale(), 0f64..max_y * 1.15)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("Services (10 endpoints each)")
        .y_desc(y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for line in lines {
        let style = ShapeStyle::from(&line.colour).stroke_width(if line.thick { 3 } else { 1 });
        let c = line.colour;
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))
            .map_err(|e| anyhow!("{e}"))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, if line.thick { 4 } else { 3 }, c.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes the four plots into `dir`; returns their paths.
pub fn services(results: &[ModeResult], dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let mut written = Vec::new();
    let paths: [(&str, &str, RunsOf); 2] = [
        ("clusterip", "ClusterIP from a pod", |r| &r.cluster_ip),
        ("nodeport", "NodePort from outside", |r| &r.node_port),
    ];
    for (file, what, pick) in paths {
        let path = dir.join(format!("services-{file}-rate.png"));
        let lines = lines_for(results, pick, |r| r.rate, "", true);
        draw(
            &path,
            &format!("{what}: new connections per second"),
            "connections/s",
            &lines,
        )?;
        written.push(path);

        let path = dir.join(format!("services-{file}-latency.png"));
        let mut lines = lines_for(results, pick, |r| r.p99_us, " p99", true);
        lines.extend(lines_for(results, pick, |r| r.p50_us, " p50", false));
        draw(
            &path,
            &format!("{what}: connection latency (connect to last byte)"),
            "µs",
            &lines,
        )?;
        written.push(path);
    }
    Ok(written)
}
