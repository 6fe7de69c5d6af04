//! The HTML evaluation report of an omniad run (`omniad report`).
//!
//! From a run folder evaluated by `omniad eval` — `model.json` (configuration and calibrated
//! thresholds), `metrics.json`, `results.json` (every test image's score, label and paths), the
//! saved anomaly maps (`maps/<class>.safetensors`) and `train_log.jsonl` — [`build_report`]
//! makes one self-contained HTML page:
//!
//! * the per-class metric table, with the numbers of `metrics.json` (percent, one decimal; the
//!   exact value in each cell's `data-value`);
//! * the training loss per step and per epoch;
//! * per class: the image-level ROC and precision-recall curves and the pixel-level PRO curve
//!   (from `omniad-metrics`' curve points, the curves behind its AUROC, AP and AUPRO), the
//!   distribution of the image scores of normal and anomalous test images with the class's
//!   stored threshold, the operating point at that threshold (TP, FP, TN, FN, precision, recall,
//!   false-alarm rate; anomalous = `score >= threshold`, as `omniad predict`), and a gallery of
//!   the worst false negatives, worst false positives and a few true positives, each as
//!   image | ground truth | anomaly map | predicted mask. The map's colour scale and the
//!   predicted mask use the class's pixel threshold (its image threshold where it has none), as
//!   `omniad predict` and `omniad serve` do.
//!
//! Charts are SVG drawn by `plotters`, inline; thumbnails are `data:` URIs of a fixed size, at
//! most [`ReportOptions::thumbs_per_class`] images per class, so the file stays small on big
//! datasets. A Content-Security-Policy forbids every request: the page opens offline and never
//! reaches the network.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{context, Environment};
use omniad_metrics::{binary_curve, binary_metrics, pro_curve, EvalResults, Metric};
use serde::Serialize;
use serde_json::Value;

pub mod charts;
pub mod gallery;
pub mod inputs;

use charts::{Series, TwoHistograms, CHART_SIZE, MAX_CURVE_POINTS, PALETTE, WIDE_CHART_SIZE};
use gallery::Kind;

/// File name of the report inside the run folder (`omniad eval` and `omniad report` default).
pub const REPORT_FILE: &str = "report.html";

const TEMPLATE: &str = include_str!("../templates/report.html");

/// Errors of [`build_report`] and [`write_report`]; each names the file (and field) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A required file of the run folder is missing or unreadable.
    #[error("{path}: {reason}; {hint}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        reason: String,
        /// What to do.
        hint: String,
    },
    /// A file exists but its content is not what omniad writes.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (field, value).
        reason: String,
    },
    /// The files of the run disagree with each other (written by different evaluations).
    #[error("{0}; run `omniad eval` again to rewrite them together")]
    Inconsistent(String),
    /// Invalid options.
    #[error("{0}")]
    Options(String),
    /// `model.json` is not a valid checkpoint description (the message names it).
    #[error(transparent)]
    Checkpoint(#[from] omniad_model::checkpoint::CheckpointError),
    /// `results.json` is unreadable or malformed (the message names it).
    #[error(transparent)]
    Results(#[from] omniad_metrics::MetricsError),
    /// A chart could not be drawn.
    #[error("cannot draw a chart: {0}")]
    Chart(String),
    /// A gallery thumbnail could not be encoded.
    #[error("cannot encode a gallery thumbnail: {0}")]
    Thumbnail(String),
    /// The page template failed.
    #[error("cannot render the report page: {0}")]
    Template(String),
    /// The report could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Options of a report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Images per class in the gallery (each shown as four thumbnails), at most. Default 6.
    pub thumbs_per_class: usize,
    /// Side of every thumbnail in pixels (square). Default 128.
    pub thumb_size: u32,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            thumbs_per_class: 6,
            thumb_size: 128,
        }
    }
}

impl ReportOptions {
    /// Checks the ranges: `thumb_size` 16..=512, `thumbs_per_class` <= 100.
    ///
    /// # Errors
    /// [`ReportError::Options`] naming the option and its value.
    pub fn validate(&self) -> Result<(), ReportError> {
        if !(16..=512).contains(&self.thumb_size) {
            return Err(ReportError::Options(format!(
                "thumbnail size {}: must be 16..=512 pixels",
                self.thumb_size
            )));
        }
        if self.thumbs_per_class > 100 {
            return Err(ReportError::Options(format!(
                "thumbnails per class {}: at most 100 (the report embeds every thumbnail)",
                self.thumbs_per_class
            )));
        }
        Ok(())
    }
}

/// A built report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The HTML page.
    pub html: String,
    /// Things the reader should know (also shown in the page): missing maps, unreadable
    /// images, no training log, ...
    pub warnings: Vec<String>,
    /// Classes in the report, in order.
    pub classes: Vec<String>,
}

/// Where the report of `run` goes by default: `RUN/report.html`.
pub fn default_output(run: &Path) -> PathBuf {
    run.join(REPORT_FILE)
}

#[derive(Serialize)]
struct Cell {
    text: String,
    value: Option<f64>,
    reason: Option<String>,
}

#[derive(Serialize)]
struct Row {
    name: String,
    cells: Vec<Cell>,
}

#[derive(Serialize)]
struct Column {
    key: String,
    header: String,
}

#[derive(Serialize)]
struct OperatingPoint {
    tp: u64,
    fp: u64,
    tn: u64,
    fn_: u64,
    precision: String,
    recall: String,
    false_alarm_rate: String,
}

#[derive(Serialize)]
struct Thumb {
    kind: Kind,
    kind_label: &'static str,
    score: String,
    file: String,
    defect: String,
    image: Option<String>,
    image_error: Option<String>,
    ground_truth: String,
    map: String,
    predicted: String,
}

#[derive(Serialize)]
struct ClassSection {
    name: String,
    anchor: String,
    n_images: usize,
    n_anomalous: usize,
    threshold: String,
    threshold_source: &'static str,
    op: Option<OperatingPoint>,
    charts: Vec<Chart>,
    notes: Vec<String>,
    gallery: Vec<Thumb>,
}

#[derive(Serialize)]
struct Chart {
    kind: &'static str,
    title: String,
    svg: String,
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}", 100.0 * x))
        .unwrap_or_else(|| "n/a".into())
}

fn ratio(num: u64, den: u64, none: &str) -> String {
    if den == 0 {
        format!("n/a ({none})")
    } else {
        format!("{:.1}%", 100.0 * num as f64 / den as f64)
    }
}

/// The metric columns of `metrics.json`, in report order, then mAD (and the ADer mAD).
fn columns(mean: &Value) -> Vec<Column> {
    let mut cols: Vec<Column> = Metric::ALL
        .iter()
        .filter(|m| mean.get(m.key()).is_some())
        .map(|m| Column {
            key: m.key().into(),
            header: m.header().into(),
        })
        .collect();
    for (key, header) in [("mad", "mAD"), ("mad_ader", "mAD(ADer)")] {
        if mean.get(key).is_some() {
            cols.push(Column {
                key: key.into(),
                header: header.into(),
            });
        }
    }
    cols
}

fn row(name: &str, obj: &Value, cols: &[Column], reasons: Option<&Value>) -> Row {
    Row {
        name: name.to_string(),
        cells: cols
            .iter()
            .map(|c| {
                let value = obj.get(&c.key).and_then(Value::as_f64);
                Cell {
                    text: pct(value),
                    value,
                    reason: reasons.and_then(|r| r.get(&c.key)).map(|r| match r {
                        Value::String(s) => s.clone(),
                        Value::Array(a) => format!(
                            "skips {} (undefined there)",
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        other => other.to_string(),
                    }),
                }
            })
            .collect(),
    }
}

/// The part of a curve with `x <= limit`, ending exactly at the limit (linear interpolation),
/// as the AUPRO integration does.
fn cut_at(points: &[(f64, f64)], limit: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if out.is_empty() {
            out.push((x0, y0));
        }
        if x1 <= limit {
            out.push((x1, y1));
        } else {
            if x0 < limit {
                out.push((limit, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)));
            }
            break;
        }
    }
    out
}

fn anchor(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("class-{s}")
}

/// Builds the report of the run folder `run` (see the crate documentation for what it reads).
///
/// # Errors
/// A missing or malformed `model.json`, `metrics.json`, `results.json` or maps file (naming
/// the file and field), files from different evaluations, no calibrated threshold.
pub fn build_report(run: &Path, opts: &ReportOptions) -> Result<Report, ReportError> {
    opts.validate()?;
    if !run.is_dir() {
        return Err(ReportError::Missing {
            path: run.to_path_buf(),
            reason: "run folder not found".into(),
            hint: "pass the folder given to `omniad train --out`".into(),
        });
    }
    let metrics_path = run.join("metrics.json");
    let metrics = inputs::read_json(
        &metrics_path,
        "run `omniad eval --run RUN` first (it writes metrics.json)",
    )?;
    let meta = inputs::read_model(&run.join("model.json"))?;
    let results_path = run.join("results.json");
    let results = inputs::read_results(&results_path)?;
    let loss = inputs::read_train_log(&run.join("train_log.jsonl"))?;
    let mut warnings: Vec<String> = metrics
        .get("warnings")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| format!("evaluation: {s}"))
                .collect()
        })
        .unwrap_or_default();

    // metric table
    let invalid = |reason: String| ReportError::Invalid {
        path: metrics_path.clone(),
        reason,
    };
    let class_rows = metrics
        .get("classes")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("field `classes` is missing or not a list".into()))?;
    let mean = metrics
        .get("mean")
        .filter(|m| m.is_object())
        .ok_or_else(|| invalid("field `mean` is missing or not an object".into()))?;
    let cols = columns(mean);
    let mut rows = Vec::new();
    let mut metric_classes: BTreeMap<String, &Value> = BTreeMap::new();
    for (i, c) in class_rows.iter().enumerate() {
        let name = c
            .get("class")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("classes[{i}]: field `class` is missing")))?;
        rows.push(row(name, c, &cols, c.get("undefined")));
        metric_classes.insert(name.to_string(), c);
    }
    let mean_row = row("mean", mean, &cols, mean.get("skipped"));
    let aupro_limit = metrics
        .pointer("/options/aupro_fpr_limit")
        .and_then(Value::as_f64)
        .filter(|l| *l > 0.0 && *l <= 1.0)
        .ok_or_else(|| {
            invalid(format!(
                "field `options.aupro_fpr_limit` is {}, expected a number in (0, 1]",
                metrics
                    .pointer("/options/aupro_fpr_limit")
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "missing".into())
            ))
        })?;

    // the files must describe the same evaluation
    let classes: Vec<String> = results.classes().iter().map(|s| s.to_string()).collect();
    let listed: Vec<&String> = metric_classes.keys().collect();
    let mut sorted = classes.clone();
    sorted.sort();
    if sorted.iter().collect::<Vec<_>>() != listed {
        return Err(ReportError::Inconsistent(format!(
            "{} lists the classes [{}] but {} lists [{}]",
            metrics_path.display(),
            listed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            results_path.display(),
            sorted.join(", ")
        )));
    }

    let thresholds = meta.thresholds.clone().unwrap_or_default();
    if meta.thresholds.is_none() {
        warnings.push("model.json has no calibrated thresholds: no operating point and no gallery; train with held-out images (--val-fraction) or run `omniad calibrate --run RUN`".into());
    }

    let mut sections = Vec::new();
    for class in &classes {
        let items: Vec<&omniad_metrics::ImageResult> = results.of_class(class).collect();
        let n_listed = metric_classes[class]
            .get("n_images")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid(format!("class {class}: field `n_images` is missing")))?
            as usize;
        if n_listed != items.len() {
            return Err(ReportError::Inconsistent(format!(
                "class {class}: {} counts {n_listed} images, {} has {}",
                metrics_path.display(),
                results_path.display(),
                items.len()
            )));
        }
        // the scores must be those the metrics were computed from
        let scores: Vec<f32> = items.iter().map(|r| r.score).collect();
        let labels: Vec<bool> = items.iter().map(|r| r.anomalous).collect();
        let recomputed = binary_metrics(&scores, &labels)?.auroc.value();
        let stored = metric_classes[class]
            .get("image_auroc")
            .and_then(Value::as_f64);
        if let (Some(a), Some(b)) = (recomputed, stored) {
            if (a - b).abs() > 1e-9 {
                return Err(ReportError::Inconsistent(format!(
                    "class {class}: the scores of {} give I-AUROC {a:.6}, {} says {b:.6}",
                    results_path.display(),
                    metrics_path.display()
                )));
            }
        }
        let (threshold, threshold_source) =
            match (thresholds.per_class.get(class), thresholds.global) {
                (Some(t), _) => (Some(*t), "per-class threshold"),
                (None, Some(t)) => {
                    warnings.push(format!(
                        "{class}: no per-class threshold in model.json, the global one is used"
                    ));
                    (Some(t), "global threshold (no per-class one)")
                }
                (None, None) => (None, "no stored threshold"),
            };
        // the mask threshold of predict and serve: the class's pixel threshold, else (no
        // class threshold) the global one, else the image threshold
        let pixel_threshold = threshold.map(|t| {
            thresholds
                .pixel_per_class
                .get(class)
                .copied()
                .or(thresholds
                    .pixel_global
                    .filter(|_| !thresholds.per_class.contains_key(class)))
                .unwrap_or(t)
        });
        sections.push(class_section(
            run,
            class,
            &items,
            &results,
            threshold,
            pixel_threshold,
            threshold_source,
            aupro_limit,
            opts,
            &mut warnings,
        )?);
    }

    let loss_svg = match &loss {
        Some(points) if !points.is_empty() => Some(loss_chart(points)?),
        Some(_) => {
            warnings.push("train_log.jsonl has no training step: no loss curve".into());
            None
        }
        None => {
            warnings.push("no train_log.jsonl in the run folder: no loss curve".into());
            None
        }
    };

    let cfg = serde_json::to_value(&meta.config).unwrap_or(Value::Null);
    let model_line = format!(
        "teacher {}, decoder depths {}, input {}",
        cfg.get("teacher")
            .map(|v| v.to_string().replace('"', ""))
            .unwrap_or_default(),
        cfg.get("depths").map(|v| v.to_string()).unwrap_or_default(),
        cfg.get("image_size")
            .and_then(Value::as_array)
            .map(|a| a
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("x"))
            .unwrap_or_default(),
    );
    let run_name = run
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| run.display().to_string());
    let dataset = metrics
        .get("dataset")
        .map(|d| {
            format!(
                "{} at {}",
                d.get("kind").and_then(Value::as_str).unwrap_or("?"),
                d.get("root").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "not recorded".into());

    let mut env = Environment::new();
    env.add_template("report.html", TEMPLATE)
        .map_err(|e| ReportError::Template(e.to_string()))?;
    let html = env
        .get_template("report.html")
        .and_then(|t| {
            t.render(context! {
                run_name,
                dataset,
                model_line,
                version => env!("CARGO_PKG_VERSION"),
                threshold_method => thresholds.method,
                map_size => format!("{}x{}", results.map_size.0, results.map_size.1),
                n_images => results.images.len(),
                columns => cols,
                rows,
                mean_row,
                loss_svg,
                warnings => warnings.clone(),
                classes => sections,
                thumbs_per_class => opts.thumbs_per_class,
                thumb_size => opts.thumb_size,
            })
        })
        .map_err(|e| ReportError::Template(format!("{e:#}")))?;
    Ok(Report {
        html,
        warnings,
        classes,
    })
}

#[allow(clippy::too_many_arguments)]
fn class_section(
    run: &Path,
    class: &str,
    items: &[&omniad_metrics::ImageResult],
    results: &EvalResults,
    threshold: Option<f64>,
    pixel_threshold: Option<f64>,
    threshold_source: &'static str,
    aupro_limit: f64,
    opts: &ReportOptions,
    warnings: &mut Vec<String>,
) -> Result<ClassSection, ReportError> {
    let scores: Vec<f32> = items.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = items.iter().map(|r| r.anomalous).collect();
    let n_anomalous = labels.iter().filter(|&&l| l).count();
    let mut notes = Vec::new();
    let mut charts_out = Vec::new();

    // operating point (the same counts as `omniad eval`'s)
    let op = threshold.map(|t| {
        let pairs: Vec<(f64, bool)> = scores
            .iter()
            .map(|&s| f64::from(s))
            .zip(labels.iter().copied())
            .collect();
        let p = omniad_metrics::operating_point(&pairs, t);
        OperatingPoint {
            tp: p.tp,
            fp: p.fp,
            tn: p.tn,
            fn_: p.fn_,
            precision: ratio(p.tp, p.tp + p.fp, "nothing flagged"),
            recall: ratio(p.tp, p.tp + p.fn_, "no anomalous image"),
            false_alarm_rate: ratio(p.fp, p.fp + p.tn, "no normal image"),
        }
    });
    if threshold.is_none() {
        notes.push("no stored threshold: no operating point and no gallery".into());
    }

    // image-level curves
    let curve = binary_curve(&scores, &labels).map_err(|e| ReportError::Invalid {
        path: run.join("results.json"),
        reason: format!("class {class}: {e}"),
    })?;
    match &curve {
        Some(c) => {
            let roc = charts::thin(&c.roc(), MAX_CURVE_POINTS);
            charts_out.push(Chart {
                kind: "roc",
                title: "ROC (image level)".into(),
                svg: charts::line_chart(
                    CHART_SIZE,
                    0.0..1.0,
                    0.0..1.0,
                    "false-positive rate",
                    "true-positive rate",
                    &[
                        Series {
                            label: String::new(),
                            points: vec![(0.0, 0.0), (1.0, 1.0)],
                            color: PALETTE[3],
                            width: 1,
                        },
                        Series {
                            label: "ROC".into(),
                            points: roc,
                            color: PALETTE[0],
                            width: 2,
                        },
                    ],
                )?,
            });
            let base = c.n_pos as f64 / (c.n_pos + c.n_neg) as f64;
            let pr = charts::thin(&c.pr(), MAX_CURVE_POINTS);
            charts_out.push(Chart {
                kind: "pr",
                title: "precision-recall (image level)".into(),
                svg: charts::line_chart(
                    CHART_SIZE,
                    0.0..1.0,
                    0.0..1.02,
                    "recall",
                    "precision",
                    &[
                        Series {
                            label: "chance".into(),
                            points: vec![(0.0, base), (1.0, base)],
                            color: PALETTE[3],
                            width: 1,
                        },
                        Series {
                            label: "PR".into(),
                            points: pr,
                            color: PALETTE[1],
                            width: 2,
                        },
                    ],
                )?,
            });
        }
        None => notes.push(format!(
            "no ROC or precision-recall curve: the class has {} anomalous and {} normal test images (both are needed)",
            n_anomalous,
            items.len() - n_anomalous
        )),
    }

    // maps: PRO curve and gallery
    let maps = match inputs::maps_path(run, results, class) {
        None => {
            let w = format!("{class}: no anomaly maps saved (results.json: `maps_dir` is null), no PRO curve and no gallery; run `omniad eval --run RUN` without --no-report, or with --save-maps");
            notes.push(w.clone());
            warnings.push(w);
            None
        }
        Some(p) if !p.is_file() => {
            let w = format!(
                "{class}: {} not found, no PRO curve and no gallery; run `omniad eval --run RUN` again",
                p.display()
            );
            notes.push(w.clone());
            warnings.push(w);
            None
        }
        Some(p) => Some((
            inputs::read_class_maps(&p, items.len(), results.map_size)?,
            p,
        )),
    };
    let mut gallery_out = Vec::new();
    if let Some((m, path)) = &maps {
        match pro_curve(&m.maps, &m.masks, m.n, m.h, m.w).map_err(|e| ReportError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })? {
            Some(pts) => {
                let pts = charts::thin(&cut_at(&pts, aupro_limit), MAX_CURVE_POINTS);
                charts_out.push(Chart {
                    kind: "pro",
                    title: format!("PRO (pixel level, FPR up to {aupro_limit})"),
                    svg: charts::line_chart(
                        CHART_SIZE,
                        0.0..aupro_limit,
                        0.0..1.02,
                        "false-positive rate (pixels)",
                        "per-region overlap",
                        &[Series {
                            label: "PRO".into(),
                            points: pts,
                            color: PALETTE[2],
                            width: 2,
                        }],
                    )?,
                });
            }
            None => notes.push(
                "no PRO curve: the class has no anomalous or no normal pixel in its masks".into(),
            ),
        }
        let pairs: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
        let (threshold, pixel_threshold) = match (threshold, pixel_threshold) {
            (Some(t), Some(p)) => (t, p),
            _ => (f64::INFINITY, f64::INFINITY),
        };
        let budget = if threshold.is_finite() {
            opts.thumbs_per_class
        } else {
            0
        };
        for (k, kind) in gallery::select(&pairs, threshold, budget) {
            let r = items[k];
            let (image, image_error) = match gallery::image_thumbnail(&r.image, opts.thumb_size) {
                Ok(uri) => (Some(uri), None),
                Err(e) => {
                    warnings.push(format!("{class}: cannot show the image {e}"));
                    (None, Some(e))
                }
            };
            gallery_out.push(Thumb {
                kind,
                kind_label: kind.label(),
                score: format!("{:.4}", r.score),
                file: r
                    .image
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                defect: r.defect.clone(),
                image,
                image_error,
                ground_truth: gallery::mask_thumbnail(m.mask(k), m.h, m.w, opts.thumb_size)
                    .map_err(ReportError::Thumbnail)?,
                map: gallery::map_thumbnail(m.map(k), m.h, m.w, pixel_threshold, opts.thumb_size)
                    .map_err(ReportError::Thumbnail)?,
                predicted: gallery::predicted_mask_thumbnail(
                    m.map(k),
                    m.h,
                    m.w,
                    pixel_threshold,
                    opts.thumb_size,
                )
                .map_err(ReportError::Thumbnail)?,
            });
        }
        if gallery_out.is_empty() && budget > 0 {
            notes.push("gallery empty: no false negative, false positive or true positive".into());
        }
    }

    // score distribution
    let normal: Vec<f64> = items
        .iter()
        .filter(|r| !r.anomalous)
        .map(|r| r.score as f64)
        .collect();
    let anomalous: Vec<f64> = items
        .iter()
        .filter(|r| r.anomalous)
        .map(|r| r.score as f64)
        .collect();
    charts_out.push(Chart {
        kind: "scores",
        title: "image scores".into(),
        svg: charts::histograms(
            CHART_SIZE,
            &TwoHistograms {
                a: &normal,
                b: &anomalous,
                labels: ("normal", "anomalous"),
                marker: threshold.map(|t| (t, format!("threshold {t:.4}"))),
                bins: 24,
                x_desc: "image score",
            },
        )?,
    });

    Ok(ClassSection {
        name: class.to_string(),
        anchor: anchor(class),
        n_images: items.len(),
        n_anomalous,
        threshold: threshold.map_or("none".to_string(), |t| format!("{t:.6}")),
        threshold_source,
        op,
        charts: charts_out,
        notes,
        gallery: gallery_out,
    })
}

fn loss_chart(points: &[inputs::LossPoint]) -> Result<String, ReportError> {
    let steps: Vec<(f64, f64)> = points.iter().map(|p| (p.step as f64, p.loss)).collect();
    let mut epochs: BTreeMap<u64, (f64, f64, usize)> = BTreeMap::new();
    for p in points {
        let e = epochs.entry(p.epoch).or_insert((0.0, 0.0, 0));
        e.0 = e.0.max(p.step as f64);
        e.1 += p.loss;
        e.2 += 1;
    }
    let per_epoch: Vec<(f64, f64)> = epochs
        .values()
        .map(|&(s, sum, n)| (s, sum / n as f64))
        .collect();
    let x_max = steps.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = steps.iter().map(|p| p.1).fold(0.0, f64::max) * 1.05;
    let y_min = steps
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    charts::line_chart(
        WIDE_CHART_SIZE,
        0.0..x_max,
        y_min..y_max.max(y_min + 1e-9),
        "optimiser step",
        "loss",
        &[
            Series {
                label: "per step".into(),
                points: charts::thin(&steps, MAX_CURVE_POINTS * 2),
                color: RGBColorExt::light(PALETTE[0]),
                width: 1,
            },
            Series {
                label: "epoch mean".into(),
                points: per_epoch,
                color: PALETTE[1],
                width: 2,
            },
        ],
    )
}

/// A lighter shade of a colour (for the noisy per-step loss).
trait RGBColorExt {
    fn light(self) -> Self;
}

impl RGBColorExt for plotters::style::RGBColor {
    fn light(self) -> Self {
        let f = |c: u8| (c as u16 + (255 - c as u16) * 3 / 5) as u8;
        plotters::style::RGBColor(f(self.0), f(self.1), f(self.2))
    }
}

/// Builds the report of `run` and writes it to `out` (atomically: a reader never sees half a
/// file).
///
/// # Errors
/// See [`build_report`]; an unwritable output file.
pub fn write_report(run: &Path, out: &Path, opts: &ReportOptions) -> Result<Report, ReportError> {
    let report = build_report(run, opts)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(ReportError::Write {
                path: out.to_path_buf(),
                reason: format!("folder {} does not exist", dir.display()),
            });
        }
    }
    omniad_io::write_atomic(out, report.html.as_bytes()).map_err(|e| ReportError::Write {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(report)
}
