//! Plots of `orch bench` and `orch eval`: one SVG file with a panel per chart (p2 throughput
//! against the NATS floor by concurrency, p3 efficiency by number of GPU
//! workers, eval reliability diagrams). SVG rather than PNG: vector, viewable in any browser, and its
//! text needs no font files or rasteriser in the binary.

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub name: String,
    /// (x, y) in data units, drawn in this order.
    pub points: Vec<(f64, f64)>,
}

/// One panel.
#[derive(Debug, Clone)]
pub(crate) struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// x on a log2 scale (concurrency, worker counts).
    pub log2_x: bool,
    pub series: Vec<Series>,
    /// A dashed horizontal line (a target), with its label.
    pub target: Option<(f64, String)>,
}

const WIDTH: f64 = 780.0;
const PANEL: f64 = 340.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 240.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step of 1, 2 or 5 × 10^k giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn number(v: f64) -> String {
    if v >= 1000.0 {
        let k = v / 1000.0;
        if k.fract() == 0.0 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A y tick: as many decimals as the step needs, thousands as "k".
fn tick_label(v: f64, step: f64) -> String {
    if step >= 1.0 {
        number(v)
    } else {
        let decimals = (-step.log10()).ceil() as usize;
        format!("{v:.decimals$}")
    }
}

/// Renders the charts that have data, one under the other; `None` if none has.
pub(crate) fn svg(charts: &[Chart]) -> Option<String> {
    let charts: Vec<&Chart> = charts
        .iter()
        .filter(|c| c.series.iter().any(|s| !s.points.is_empty()))
        .collect();
    if charts.is_empty() {
        return None;
    }
    let height = PANEL * charts.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    for (i, chart) in charts.iter().enumerate() {
        panel(&mut out, chart, i as f64 * PANEL);
    }
    out.push_str("</svg>\n");
    Some(out)
}

fn panel(out: &mut String, chart: &Chart, y0: f64) {
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let xs: Vec<f64> = points.clone().map(|p| p.0).collect();
    let y_max = points
        .map(|p| p.1)
        .chain(chart.target.as_ref().map(|t| t.0))
        .fold(0.0_f64, f64::max)
        * 1.1;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let fx = |x: f64| if chart.log2_x { x.max(1e-9).log2() } else { x };
    let (x_lo, x_hi) = xs
        .iter()
        .map(|x| fx(*x))
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let span = if x_hi > x_lo { x_hi - x_lo } else { 1.0 };
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, PANEL - TOP - BOTTOM);
    let px = |x: f64| LEFT + (fx(x) - x_lo) / span * plot_w;
    let py = |y: f64| y0 + TOP + plot_h - y / y_max * plot_h;

    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        y0 + 24.0,
        escape(&chart.title)
    );
    // Axes, y grid and ticks.
    let (bottom, right) = (y0 + TOP + plot_h, LEFT + plot_w);
    let _ = writeln!(
        out,
        "<path d=\"M{LEFT},{} V{bottom} H{right}\" stroke=\"black\" fill=\"none\"/>",
        y0 + TOP
    );
    let step = tick_step(y_max);
    let mut tick = 0.0;
    while tick <= y_max {
        let y = py(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            tick_label(tick, step)
        );
        tick += step;
    }
    let mut seen: Vec<f64> = Vec::new();
    for x in xs {
        if seen.iter().any(|s| (s - x).abs() < 1e-9) {
            continue;
        }
        seen.push(x);
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            bottom + 16.0,
            number(x)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        bottom + 36.0,
        escape(&chart.x_label)
    );
    let mid = y0 + TOP + plot_h / 2.0;
    let _ = writeln!(
        out,
        r#"<text x="18" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 18 {mid:.1})">{}</text>"#,
        escape(&chart.y_label)
    );
    if let Some((value, label)) = &chart.target {
        let y = py(*value);
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="black" stroke-dasharray="5,4"/><text x="{}" y="{:.1}">{}</text>"#,
            LEFT + 6.0,
            y - 5.0,
            escape(label)
        );
    }
    // Lines, markers and the legend.
    for (i, s) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" stroke="{color}" stroke-width="2" fill="none"/>"#,
            path.join(" ")
        );
        for (x, y) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(*x),
                py(*y)
            );
        }
        let ly = y0 + TOP + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            out,
            r#"<line x1="{}" y1="{ly:.1}" x2="{}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{}" y="{:.1}">{}</text>"#,
            right + 8.0,
            right + 28.0,
            right + 34.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "p2 <throughput> & floor".into(),
            x_label: "concurrency".into(),
            y_label: "per second".into(),
            log2_x: true,
            series: vec![
                Series {
                    name: "tasks/s".into(),
                    points: vec![(1.0, 600.0), (16.0, 2200.0), (64.0, 3000.0)],
                },
                Series {
                    name: "floor chains/s".into(),
                    points: vec![(1.0, 1500.0), (16.0, 14000.0), (64.0, 24000.0)],
                },
            ],
            target: Some((10_000.0, "target".into())),
        }
    }

    #[test]
    fn draws_every_series_inside_its_panel_with_escaped_text() {
        let svg = svg(&[chart()]).expect("a chart with data");
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.contains("p2 &lt;throughput&gt; &amp; floor"));
        assert!(!svg.contains("<throughput>"));
        for (cx, cy) in svg.split("<circle cx=\"").skip(1).map(|rest| {
            let mut it = rest.split('"');
            let cx: f64 = it.next().unwrap().parse().unwrap();
            let cy: f64 = it.nth(1).unwrap().parse().unwrap();
            (cx, cy)
        }) {
            assert!((LEFT..=WIDTH - RIGHT).contains(&cx), "x {cx}");
            assert!((TOP..=PANEL - BOTTOM).contains(&cy), "y {cy}");
        }
        // log2 x: 16 sits two thirds of the way from 1 to 64.
        let x16 = LEFT + 4.0 / 6.0 * (WIDTH - LEFT - RIGHT);
        assert!(svg.contains(&format!("cx=\"{x16:.1}\"")), "{svg}");
    }

    #[test]
    fn charts_without_data_are_left_out() {
        let mut empty = chart();
        empty.series.iter_mut().for_each(|s| s.points.clear());
        assert!(svg(std::slice::from_ref(&empty)).is_none());
        let svg = svg(&[empty, chart()]).expect("one chart has data");
        assert!(svg.contains(&format!("height=\"{PANEL}\"")));
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(tick_step(11_000.0), 5000.0);
        assert_eq!(tick_step(1.1), 0.5);
        assert_eq!(tick_step(26_000.0), 10_000.0);
        assert_eq!(number(2500.0), "2.5k");
        assert_eq!(number(10_000.0), "10k");
        assert_eq!(number(0.95), "0.95");
        assert_eq!(tick_label(0.5, 0.5), "0.5");
        assert_eq!(tick_label(1.0, 0.2), "1.0");
        assert_eq!(tick_label(20_000.0, 10_000.0), "20k");
    }
}
