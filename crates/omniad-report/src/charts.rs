//! The report's charts, drawn by `plotters` into SVG strings that the page embeds inline.
use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::ReportError;

/// Width and height of a per-class chart, in pixels.
pub const CHART_SIZE: (u32, u32) = (300, 240);
/// Width and height of the training-loss chart, in pixels.
pub const WIDE_CHART_SIZE: (u32, u32) = (900, 280);
/// Most points drawn per curve; denser curves are thinned (see [`thin`]).
pub const MAX_CURVE_POINTS: usize = 600;

/// Colours of the series, in order.
pub const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(127, 127, 127),
];

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend entry (empty: no legend).
    pub label: String,
    /// Points, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub color: RGBColor,
    /// Line width in pixels.
    pub width: u32,
}

/// A histogram of two groups of values with an optional vertical marker.
#[derive(Debug, Clone)]
pub struct TwoHistograms<'a> {
    /// Values of the first group (normal images).
    pub a: &'a [f64],
    /// Values of the second group (anomalous images).
    pub b: &'a [f64],
    /// Legend entries of `a` and `b`.
    pub labels: (&'a str, &'a str),
    /// Vertical marker (the decision threshold) and its legend entry.
    pub marker: Option<(f64, String)>,
    /// Number of bins.
    pub bins: usize,
    /// X axis title.
    pub x_desc: &'a str,
}

fn chart_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// Renders `draw` into an SVG string of `size`; the `xmlns` attribute is dropped (the SVG is
/// embedded inline in HTML, where it is not needed, and the report holds no URL at all).
fn render(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), ReportError>,
) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        draw(&root)?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg.replace(" xmlns=\"http://www.w3.org/2000/svg\"", ""))
}

/// At most about `max` points of `points`, for drawing: a point is kept when it moved by more
/// than `1/max` of the axis span (in x or y) from the last kept one; the first and last are
/// always kept.
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let span = |f: fn(&(f64, f64)) -> f64| {
        let lo = points.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = points.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        (hi - lo).max(f64::MIN_POSITIVE)
    };
    let (dx, dy) = (span(|p| p.0) / max as f64, span(|p| p.1) / max as f64);
    let mut out = vec![points[0]];
    for p in &points[1..points.len() - 1] {
        let last = out[out.len() - 1];
        if (p.0 - last.0).abs() > dx || (p.1 - last.1).abs() > dy {
            out.push(*p);
        }
    }
    out.push(points[points.len() - 1]);
    out
}

/// A line chart of `series` over `x` and `y`, with axis titles and a legend.
pub fn line_chart(
    size: (u32, u32),
    x: Range<f64>,
    y: Range<f64>,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<String, ReportError> {
    render(size, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(46)
            .build_cartesian_2d(x, y)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(6)
            .y_labels(6)
            .light_line_style(RGBColor(240, 240, 240))
            .draw()
            .map_err(chart_err)?;
        let mut legend = false;
        for s in series {
            let color = s.color;
            let drawn = chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(s.width),
                ))
                .map_err(chart_err)?;
            if !s.label.is_empty() {
                legend = true;
                drawn.label(s.label.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
        if legend {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()
                .map_err(chart_err)?;
        }
        Ok(())
    })
}

/// Bin counts of `values` over `bins` equal bins of `[lo, hi]` (the last bin includes `hi`).
pub fn bin_counts(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<u64> {
    let mut counts = vec![0u64; bins];
    let width = (hi - lo) / bins as f64;
    for &v in values {
        if !(lo..=hi).contains(&v) || width <= 0.0 {
            continue;
        }
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    counts
}

/// Two overlaid histograms (semi-transparent bars) with the marker as a vertical line.
pub fn histograms(size: (u32, u32), h: &TwoHistograms<'_>) -> Result<String, ReportError> {
    let all = h.a.iter().chain(h.b).copied();
    let mut lo = all.clone().fold(f64::INFINITY, f64::min);
    let mut hi = all.fold(f64::NEG_INFINITY, f64::max);
    if let Some((t, _)) = &h.marker {
        lo = lo.min(*t);
        hi = hi.max(*t);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let (lo, hi) = (lo - pad, hi + pad);
    let bins = h.bins.max(1);
    let ca = bin_counts(h.a, lo, hi, bins);
    let cb = bin_counts(h.b, lo, hi, bins);
    let ymax = ca.iter().chain(&cb).copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    let width = (hi - lo) / bins as f64;
    render(size, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(46)
            .build_cartesian_2d(lo..hi, 0.0..ymax)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .x_desc(h.x_desc)
            .y_desc("images")
            .x_labels(5)
            .y_labels(5)
            .light_line_style(RGBColor(240, 240, 240))
            .draw()
            .map_err(chart_err)?;
        for (counts, label, color) in [(&ca, h.labels.0, PALETTE[0]), (&cb, h.labels.1, PALETTE[1])]
        {
            chart
                .draw_series(
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, &c)| c > 0)
                        .map(|(i, &c)| {
                            let x0 = lo + i as f64 * width;
                            Rectangle::new(
                                [(x0, 0.0), (x0 + width, c as f64)],
                                color.mix(0.45).filled(),
                            )
                        }),
                )
                .map_err(chart_err)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.45).filled())
                });
        }
        if let Some((t, label)) = &h.marker {
            chart
                .draw_series(LineSeries::new(
                    vec![(*t, 0.0), (*t, ymax)],
                    BLACK.stroke_width(2),
                ))
                .map_err(chart_err)?
                .label(label.as_str())
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(chart_err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_ends_and_bounds_the_count() {
        let pts: Vec<(f64, f64)> = (0..100_000)
            .map(|i| (i as f64 / 1e5, (i as f64 / 1e5).sqrt()))
            .collect();
        let t = thin(&pts, 500);
        assert!(t.len() <= 1002 && t.len() > 100, "{}", t.len());
        assert_eq!(t[0], pts[0]);
        assert_eq!(t.last(), pts.last());
        let few = thin(&pts[..10], 500);
        assert_eq!(few, pts[..10].to_vec());
    }

    #[test]
    fn bins_count_every_value_in_range() {
        let c = bin_counts(&[0.0, 0.1, 0.5, 0.99, 1.0, 2.0], 0.0, 1.0, 4);
        assert_eq!(c, vec![2, 0, 1, 2]);
    }

    #[test]
    fn charts_are_svg_without_urls() {
        let s = line_chart(
            CHART_SIZE,
            0.0..1.0,
            0.0..1.0,
            "FPR",
            "TPR",
            &[Series {
                label: "ROC <a&b>".into(),
                points: vec![(0.0, 0.0), (0.2, 0.8), (1.0, 1.0)],
                color: PALETTE[0],
                width: 2,
            }],
        )
        .unwrap();
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{s}"
        );
        assert!(!s.contains("http"), "{s}");
        assert!(s.contains("<polyline") || s.contains("<path"), "{s}");
        let h = histograms(
            CHART_SIZE,
            &TwoHistograms {
                a: &[0.1, 0.2, 0.2],
                b: &[0.5, 0.7],
                labels: ("normal", "anomalous"),
                marker: Some((0.4, "threshold 0.4".into())),
                bins: 10,
                x_desc: "image score",
            },
        )
        .unwrap();
        assert!(h.contains("<rect") && h.contains("threshold 0.4"), "{h}");
    }
}
