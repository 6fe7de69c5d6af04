//! `omniad eval`: anomaly maps of a run's model on a test split, metrics per class and mean,
//! the operating point at the stored thresholds, class recognition, optional saved maps; and
//! `omniad calibrate` ([`calibrate_run`]), which fits thresholds on labelled images.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use omniad_data::{open_dataset, Dataset, DatasetKind, Label, Loader, LoaderOptions, OpenOptions};
use omniad_metrics::{
    operating_point, Accumulator, EvalResults, ImageRecord, ImageResult, MetricOptions,
    OperatingPoint, PixelRecord, Report,
};
use omniad_model::checkpoint::{self, Thresholds};
use omniad_model::recognition::ClassBank;
use omniad_model::{OmniAd, Precision};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::calibrate::{
    calibrate, check_trained_classes, merge_thresholds, trained_classes, Method,
};
use crate::config::TrainConfig;
use crate::device::{libtorch, ComputeDevice};
use crate::input::{images_tensor, preprocess_for};
use crate::runs::RunPaths;

/// Options of an evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Metric options (ADer-compatible variants, AUPRO limit).
    pub metrics: MetricOptions,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Write the anomaly maps of each class to `<dir>/<class>.safetensors` in the format
    /// `omniad metrics` reads (`anomaly_maps`, `masks`, `image_scores`, `labels`).
    pub save_maps: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// Precision of the forward passes (float32, or bfloat16/float16 matrix products with the
    /// anomaly map in float32; see [`omniad_model::precision`]).
    pub precision: Precision,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            metrics: MetricOptions::default(),
            batch_size: 16,
            save_maps: None,
            progress: false,
            precision: Precision::F32,
        }
    }
}

/// Class recognition on one test class (see [`omniad_model::recognition`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecognitionCounts {
    /// Test images of the class.
    pub images: usize,
    /// Recognised as their own class (and not flagged unknown).
    pub correct: usize,
    /// Recognised as another trained class (and not flagged unknown).
    pub wrong: usize,
    /// Flagged as of an unknown class.
    pub unknown: usize,
    /// Anomalous test images among `images`, and how many of them were recognised correctly.
    pub anomalous: usize,
    /// Anomalous images recognised as their own class.
    pub anomalous_correct: usize,
    /// Whether the model was trained on this class (if not, `unknown` is the right answer).
    pub trained: bool,
}

/// The decision at a stored threshold on one class's test images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassOperatingPoint {
    /// Test class.
    pub class: String,
    /// `class` (the class's own threshold) or `global` (the class has none).
    pub threshold_source: &'static str,
    /// Counts and rates at the threshold.
    #[serde(flatten)]
    pub point: OperatingPoint,
}

/// What an evaluation produced.
#[derive(Debug)]
pub struct EvalOutput {
    /// Metrics per class and mean.
    pub report: Report,
    /// Warnings to show the user (e.g. a class the model was not trained on, an anomalous test
    /// image whose ground-truth mask is all zero).
    pub warnings: Vec<String>,
    /// `(class, image score, anomalous?)` of every test image, in dataset order.
    pub scores: Vec<(String, f64, bool)>,
    /// Every test image with its paths, label and score, in dataset order (the order of the
    /// saved maps within each class); written as `results.json` by [`eval_run`].
    pub results: EvalResults,
    /// Class recognition per test class, when the model has a class bank.
    pub recognition: Option<BTreeMap<String, RecognitionCounts>>,
    /// The operating point per class at the run's stored thresholds (filled by [`eval_run`];
    /// empty from [`evaluate_model`]).
    pub operating_points: Vec<ClassOperatingPoint>,
}

impl EvalOutput {
    /// The operating point per class at the stored `thresholds` (the class's, else the global
    /// one); a class with neither, or not trained on (`trained`, when known), gets none and a
    /// note in `notes`.
    pub fn points_at(
        &self,
        thresholds: Option<&Thresholds>,
        trained: &[String],
        notes: &mut Vec<String>,
    ) -> Vec<ClassOperatingPoint> {
        let mut by_class: BTreeMap<&str, Vec<(f64, bool)>> = BTreeMap::new();
        for (c, s, l) in &self.scores {
            by_class.entry(c.as_str()).or_default().push((*s, *l));
        }
        let mut out = Vec::new();
        for (class, pairs) in by_class {
            if !trained.is_empty() && !trained.iter().any(|t| t == class) {
                notes.push(format!(
                    "{class}: not a class the model was trained on: no threshold, no operating point"
                ));
                continue;
            }
            let (t, source) = match thresholds {
                Some(th) => match th.per_class.get(class) {
                    Some(t) => (Some(*t), "class"),
                    None => (th.global, "global"),
                },
                None => (None, "none"),
            };
            match t {
                Some(t) => out.push(ClassOperatingPoint {
                    class: class.to_string(),
                    threshold_source: source,
                    point: operating_point(&pairs, t),
                }),
                None => notes.push(format!(
                    "{class}: no stored threshold (train with held-out images or run `omniad calibrate`): no operating point"
                )),
            }
        }
        out
    }
}

impl EvalOutput {
    /// Mean metrics as JSON.
    pub fn mean_json(&self) -> serde_json::Value {
        self.report.to_json()["mean"].clone()
    }

    /// One line: mean I-AUROC, P-AUROC, AUPRO, mAD in percent.
    pub fn summary_line(&self) -> String {
        let m = self.mean_json();
        let pct = |k: &str| {
            m[k].as_f64()
                .map(|v| format!("{:.1}", 100.0 * v))
                .unwrap_or_else(|| "n/a".into())
        };
        format!(
            "mI-AUROC {} mP-AUROC {} mAUPRO {} mAD {}",
            pct("image_auroc"),
            pct("pixel_auroc"),
            pct("pixel_aupro"),
            pct("mad")
        )
    }
}

/// Evaluates `model` on the test split of `ds`.
///
/// # Errors
/// Unreadable images or masks (naming the file), metric errors (e.g. a non-finite score, naming
/// the image index), or an unwritable `save_maps` folder.
pub fn evaluate_model(
    model: &OmniAd,
    bank: Option<&ClassBank>,
    ds: &Dataset,
    opts: &EvalOptions,
) -> Result<EvalOutput> {
    if ds.test.is_empty() {
        bail!("{}: no test images", ds.root.display());
    }
    let pp = preprocess_for(&model.cfg);
    let (h, w) = (pp.size.0 as usize, pp.size.1 as usize);
    let mut warnings = Vec::new();
    if !ds.has_masks {
        warnings.push("no ground-truth masks: image-level metrics only".to_string());
    }
    let mut lopts = LoaderOptions::new(opts.batch_size.max(1), pp);
    lopts.with_masks = ds.has_masks;
    let loader = Loader::new(&ds.test, lopts)?;
    let mut acc = Accumulator::new(opts.metrics.clone())?;
    let bar = if opts.progress {
        indicatif::ProgressBar::new(ds.test.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut scores = Vec::with_capacity(ds.test.len());
    let mut results = EvalResults::new((h, w), None);
    let mut recognition: Option<BTreeMap<String, RecognitionCounts>> =
        bank.map(|_| BTreeMap::new());
    let mut saver = opts
        .save_maps
        .as_ref()
        .map(|d| MapSaver::new(d, h, w))
        .transpose()?;
    let mut empty_masks = Vec::new();
    for batch in loader {
        let batch = batch?;
        let b = batch.indices.len();
        let pred = libtorch("forward pass of a test batch", || {
            let x = images_tensor(&batch.images, b, &pp, model.device());
            opts.precision.run(|| model.predict(&x))
        })?;
        let maps: Vec<f32> = Vec::<f32>::try_from(
            pred.anomaly_map
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .flatten(0, -1),
        )?;
        let s: Vec<f32> = Vec::<f32>::try_from(
            pred.image_scores
                .to_device(Device::Cpu)
                .to_kind(Kind::Float),
        )?;
        let recs = match bank {
            Some(b) => Some(
                libtorch("class recognition", || b.recognise(&pred.descriptors))?
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        for (j, &i) in batch.indices.iter().enumerate() {
            let sample = &ds.test[i];
            if let (Some(counts), Some(recs), Some(b)) = (recognition.as_mut(), &recs, bank) {
                let c = counts.entry(sample.class.clone()).or_default();
                let r = &recs[j];
                let own = b.classes[r.class] == sample.class;
                c.images += 1;
                c.trained = b.classes.contains(&sample.class);
                if r.unknown {
                    c.unknown += 1;
                } else if own {
                    c.correct += 1;
                } else {
                    c.wrong += 1;
                }
                if sample.label == Label::Anomaly {
                    c.anomalous += 1;
                    if own && !r.unknown {
                        c.anomalous_correct += 1;
                    }
                }
            }
            let map = &maps[j * h * w..(j + 1) * h * w];
            let mask = batch.masks.as_ref().map(|m| &m[j * h * w..(j + 1) * h * w]);
            let label = sample.label == Label::Anomaly;
            let native_pixels = batch.mask_pixels.as_ref().map(|v| v[j]);
            if label && !sample.masks.is_empty() && native_pixels == Some(0) {
                empty_masks.push(i);
            }
            acc.push(ImageRecord {
                class: &sample.class,
                image_score: s[j],
                label,
                pixels: Some(PixelRecord {
                    anomaly_map: map,
                    mask,
                    height: h,
                    width: w,
                }),
                sample_id: sample.sample_id.as_deref(),
            })
            .with_context(|| format!("{}", sample.image.display()))?;
            if let Some(sv) = saver.as_mut() {
                sv.push(&sample.class, map, mask, s[j], label)?;
            }
            scores.push((sample.class.clone(), s[j] as f64, label));
            results.images.push(ImageResult {
                class: sample.class.clone(),
                image: sample.image.clone(),
                masks: sample.masks.clone(),
                defect: sample.defect.clone(),
                anomalous: label,
                score: s[j],
            });
        }
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    warnings.extend(empty_mask_warnings(&ds.test, &empty_masks));
    if let Some(sv) = saver {
        sv.finish()?;
    }
    let report = acc.finish()?;
    Ok(EvalOutput {
        report,
        warnings,
        scores,
        results,
        recognition,
        operating_points: Vec::new(),
    })
}

/// Anomalous test images whose all-zero masks are named one warning each (the rest are counted).
const MAX_EMPTY_MASK_WARNINGS: usize = 20;

/// One warning per anomalous test image `test[i]` (`i` of `empty`) whose ground-truth mask marks
/// no pixel at all (at native size), naming the image and its mask files; after
/// [`MAX_EMPTY_MASK_WARNINGS`] of them, one warning counts the others.
fn empty_mask_warnings(test: &[omniad_data::Sample], empty: &[usize]) -> Vec<String> {
    let mut out: Vec<String> = empty
        .iter()
        .take(MAX_EMPTY_MASK_WARNINGS)
        .map(|&i| {
            let s = &test[i];
            let masks: Vec<String> = s.masks.iter().map(|m| m.display().to_string()).collect();
            format!(
                "{}: anomalous test image (class {}, defect {}) has an all-zero ground-truth mask ({}): it counts as anomalous in the image metrics but marks no pixel in the pixel metrics",
                s.image.display(),
                s.class,
                s.defect,
                masks.join(", ")
            )
        })
        .collect();
    if empty.len() > MAX_EMPTY_MASK_WARNINGS {
        out.push(format!(
            "{} more anomalous test images have an all-zero ground-truth mask",
            empty.len() - MAX_EMPTY_MASK_WARNINGS
        ));
    }
    out
}

/// Writes maps per class in the `omniad metrics` safetensors format, one class at a time (only
/// one class's maps are in memory).
struct MapSaver {
    dir: PathBuf,
    h: usize,
    w: usize,
    class: Option<String>,
    maps: Vec<f32>,
    masks: Vec<u8>,
    scores: Vec<f32>,
    labels: Vec<u8>,
    written: Vec<String>,
}

impl MapSaver {
    fn new(dir: &Path, h: usize, w: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            h,
            w,
            class: None,
            maps: Vec::new(),
            masks: Vec::new(),
            scores: Vec::new(),
            labels: Vec::new(),
            written: Vec::new(),
        })
    }

    fn push(
        &mut self,
        class: &str,
        map: &[f32],
        mask: Option<&[u8]>,
        score: f32,
        label: bool,
    ) -> Result<()> {
        if self.class.as_deref() != Some(class) {
            self.flush()?;
            if self.written.iter().any(|c| c == class) {
                bail!(
                    "test images of class {class} are not contiguous; cannot save maps per class"
                );
            }
            self.class = Some(class.to_string());
        }
        self.maps.extend_from_slice(map);
        match mask {
            Some(m) => self.masks.extend_from_slice(m),
            None => self.masks.extend(std::iter::repeat_n(0u8, map.len())),
        }
        self.scores.push(score);
        self.labels.push(label as u8);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let Some(class) = self.class.take() else {
            return Ok(());
        };
        let n = self.scores.len() as i64;
        let (h, w) = (self.h as i64, self.w as i64);
        let tensors = vec![
            (
                "anomaly_maps".to_string(),
                Tensor::from_slice(&self.maps).reshape([n, h, w]),
            ),
            (
                "masks".to_string(),
                Tensor::from_slice(&self.masks).reshape([n, h, w]),
            ),
            ("image_scores".to_string(), Tensor::from_slice(&self.scores)),
            ("labels".to_string(), Tensor::from_slice(&self.labels)),
        ];
        let path = self.dir.join(format!("{class}.safetensors"));
        let bytes = checkpoint::safetensors_bytes(&tensors, &path)?;
        omniad_io::write_atomic(&path, &bytes)?;
        self.maps.clear();
        self.masks.clear();
        self.scores.clear();
        self.labels.clear();
        self.written.push(class);
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.flush()
    }
}

/// The dataset a run was trained on, or the one given.
///
/// # Errors
/// The run has no readable `config.toml` and no dataset was given, or the dataset cannot be
/// opened.
pub fn dataset_for_run(
    run: &Path,
    kind: Option<DatasetKind>,
    root: Option<&Path>,
    classes: Option<&[String]>,
) -> Result<Dataset> {
    if !run.is_dir() {
        bail!("{}: run folder not found", run.display());
    }
    let paths = RunPaths::new(run);
    let saved = TrainConfig::from_toml_file(&paths.config)
        .ok()
        .map(|c| c.data);
    let kind = kind.or(saved.as_ref().map(|c| c.dataset));
    let root = root
        .map(Path::to_path_buf)
        .or(saved.as_ref().map(|c| c.data_root.clone()));
    let (Some(kind), Some(root)) = (kind, root) else {
        bail!(
            "{}: no config.toml with the dataset; pass --dataset and --data-root",
            run.display()
        );
    };
    let classes = classes
        .map(|c| c.to_vec())
        .or(saved.and_then(|c| c.classes));
    open_dataset(kind, &root, classes.as_deref(), &OpenOptions::default())
        .with_context(|| format!("cannot open {kind} dataset at {}", root.display()))
}

/// `omniad eval`: loads the run's checkpoint, evaluates, writes `metrics.json` (with the
/// operating point per class at the stored thresholds and, for a run that recognises classes,
/// the class recognition per test class), `metrics.csv` and `results.json` (every image's
/// score, label and paths) into the run folder. It never changes the thresholds (that is
/// `omniad calibrate`).
///
/// # Errors
/// See [`evaluate_model`] and [`dataset_for_run`]; a run folder without a checkpoint.
pub fn eval_run(
    run: &Path,
    ds: &Dataset,
    device: ComputeDevice,
    opts: &EvalOptions,
) -> Result<EvalOutput> {
    let device = device.open()?;
    opts.precision
        .check_device(device)
        .map_err(anyhow::Error::msg)?;
    let ckpt = crate::runs::checkpoint_of(run)?;
    let (model, meta, bank) = checkpoint::load_full(&ckpt, device)?;
    let mut out = evaluate_model(&model, bank.as_ref(), ds, opts)?;
    let trained = trained_classes(&meta).unwrap_or_default();
    let mut notes = Vec::new();
    let points = out.points_at(meta.thresholds.as_ref(), &trained, &mut notes);
    out.warnings.extend(notes);
    let paths = RunPaths::new(run);
    // maps saved inside the run folder are referred to relatively (the run can move)
    out.results.maps_dir = opts.save_maps.as_ref().map(|d| {
        d.strip_prefix(run)
            .map(Path::to_path_buf)
            .unwrap_or(d.clone())
    });
    let mut json = out.report.to_json();
    json["thresholds"] = serde_json::to_value(&meta.thresholds)?;
    json["operating_points"] = serde_json::to_value(&points)?;
    json["recognition"] = serde_json::to_value(&out.recognition)?;
    json["warnings"] = serde_json::to_value(&out.warnings)?;
    json["dataset"] =
        serde_json::json!({"kind": ds.kind.to_string(), "root": ds.root.display().to_string()});
    omniad_io::write_atomic(
        &paths.metrics_json,
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    omniad_io::write_atomic(&paths.metrics_csv, report_csv(&out.report).as_bytes())?;
    omniad_io::write_atomic(&paths.results, out.results.to_json_string()?.as_bytes())?;
    out.operating_points = points;
    Ok(out)
}

/// What `omniad calibrate` fitted.
#[derive(Debug)]
pub struct CalibrateOutput {
    /// The thresholds fitted now (image thresholds of the evaluated classes and global).
    pub fitted: Thresholds,
    /// The run's thresholds after merging (what `model.json` now holds).
    pub stored: Thresholds,
    /// The operating point per class at the thresholds now stored (what `predict` and `eval`
    /// use), on the images they were fitted on.
    pub points: Vec<ClassOperatingPoint>,
    /// Things to tell the user.
    pub warnings: Vec<String>,
}

/// `omniad calibrate`: scores the test split of `ds` (labelled, normal and anomalous images)
/// with the run's model, fits image thresholds per class and global by `method`, and stores
/// them in `model.json` (classes not in `ds` keep theirs, pixel thresholds are kept), saying
/// what they were fitted on.
///
/// # Errors
/// A class of `ds` the model was not trained on, or no threshold fitted at all (e.g. f1 without
/// anomalous images): nothing is written. The errors of [`evaluate_model`], a `model.json` that
/// cannot be written.
pub fn calibrate_run(
    run: &Path,
    ds: &Dataset,
    device: ComputeDevice,
    method: Method,
    opts: &EvalOptions,
) -> Result<CalibrateOutput> {
    let device = device.open()?;
    let ckpt = crate::runs::checkpoint_of(run)?;
    let (model, mut meta, bank) = checkpoint::load_full(&ckpt, device)?;
    let trained = trained_classes(&meta).unwrap_or_default();
    if !trained.is_empty() {
        check_trained_classes(&trained, &ds.classes, &ckpt.display().to_string())?;
    }
    let all_classes = trained.iter().all(|c| ds.classes.contains(c));
    let out = evaluate_model(&model, bank.as_ref(), ds, opts)?;
    let mut warnings = out.warnings.clone();
    let n_anomalous = out.scores.iter().filter(|s| s.2).count();
    let mut fitted = calibrate(&out.scores, method, "", &mut warnings);
    if fitted.per_class.is_empty() && fitted.global.is_none() {
        bail!(
            "{method} fitted no threshold on the test split of {} ({}); {} is unchanged",
            ds.root.display(),
            warnings.join("; "),
            ckpt.display()
        );
    }
    let fitted_classes: Vec<&str> = fitted.per_class.keys().map(String::as_str).collect();
    fitted.fitted_on = format!(
        "test split of the {} dataset at {}: {} images ({} normal, {} anomalous) of classes {}; thresholds fitted for {}",
        ds.kind,
        ds.root.display(),
        out.scores.len(),
        out.scores.len() - n_anomalous,
        n_anomalous,
        ds.classes.join(", "),
        if fitted_classes.is_empty() {
            "no class".to_string()
        } else {
            fitted_classes.join(", ")
        }
    );
    if !all_classes {
        warnings.push(format!(
            "only {} of the {} trained classes calibrated: the global threshold is kept",
            ds.classes.len(),
            trained.len()
        ));
    }
    let stored = merge_thresholds(meta.thresholds.take(), &fitted, all_classes);
    meta.thresholds = Some(stored.clone());
    checkpoint::write_meta(&ckpt, &meta)?;
    // what predict and eval will now use for these images
    let mut notes = Vec::new();
    let points = out.points_at(Some(&stored), &trained, &mut notes);
    warnings.extend(notes);
    Ok(CalibrateOutput {
        fitted,
        stored,
        points,
        warnings,
    })
}

/// The report as CSV: one row per class and a `mean` row, fractions in `[0, 1]`, empty cells
/// for undefined values.
pub fn report_csv(report: &Report) -> String {
    let json = report.to_json();
    let keys = [
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "pixel_aupro",
        "mad",
    ];
    let mut out = format!("class,{}\n", keys.join(","));
    let cell = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.6}")).unwrap_or_default();
    if let Some(rows) = json["classes"].as_array() {
        for row in rows {
            let name = row["class"].as_str().unwrap_or_default().replace(',', "_");
            let cells: Vec<String> = keys.iter().map(|k| cell(&row[*k])).collect();
            out.push_str(&format!("{name},{}\n", cells.join(",")));
        }
    }
    let cells: Vec<String> = keys.iter().map(|k| cell(&json["mean"][*k])).collect();
    out.push_str(&format!("mean,{}\n", cells.join(",")));
    out
}
