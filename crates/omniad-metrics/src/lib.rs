//! Anomaly-detection metrics in pure Rust (no tensor library): exact, clearly
//! defined and fast.
//!
//! # Metrics
//! Per class, and their mean over classes (the "m" prefix in papers):
//!
//! | JSON key | paper name | definition |
//! |---|---|---|
//! | `image_auroc` | I-AUROC | area under the ROC curve of the image scores (scikit-learn `roc_auc_score`; ties count 1/2) |
//! | `image_ap` | I-AP | average precision, `sum_k (R_k - R_{k-1}) P_k` over thresholds at the distinct scores (scikit-learn `average_precision_score`: step-wise, no interpolation) |
//! | `image_f1_max` | I-F1-max | max over the thresholds of the precision-recall curve of `2 P R / (P + R)` |
//! | `pixel_auroc` | P-AUROC | as `image_auroc` over all pixels of the class (mask = label) |
//! | `pixel_ap` | P-AP | as `image_ap` over all pixels, exact |
//! | `pixel_f1_max` | P-F1-max | as `image_f1_max` over all pixels, exact (every distinct score is a threshold) |
//! | `pixel_aupro` | AUPRO | PRO = mean over the connected ground-truth regions (8-connectivity, per image) of the fraction of the region predicted anomalous (`score >= threshold`); the (FPR, PRO) curve over every distinct score, from (0, 0), integrated with the trapezoid rule up to FPR = [`MetricOptions::aupro_fpr_limit`] (0.3) with linear interpolation at the limit, divided by the limit (as the MVTec AD evaluation code) |
//! | `mad` | mAD | mean of the seven above that are defined (see below) |
//!
//! With [`MetricOptions::ader`], the ADer-benchmark variants (ADer `util/metric.py`) for
//! comparing with tables published from that code: `pixel_aupro_ader`
//! (`cal_pro_score`: [`MetricOptions::ader_aupro_steps`] equal threshold
//! steps from the class's min score (`np.arange` on float32), predicted anomalous
//! = `score > th`, points with FPR < limit kept, their FPR min-max rescaled
//! to [0, 1], trapezoid, no division by the limit), `pixel_f1_max_ader`
//! (`mF1_max_px`: maps min-max normalised over the class, 21 thresholds
//! 0, 0.05, ..., 1 with `>`, F1 with their 1e-8 epsilons) and `mad_ader`
//! (mAD with these two in place of `pixel_aupro` and `pixel_f1_max`).
//!
//! Real-IAD sample-level metrics (`sample_auroc`, `sample_ap`,
//! `sample_f1_max`) are added when sample ids are given: the score of a
//! sample is the max over its views, and a sample is anomalous when any of
//! its views is.
//!
//! # Undefined values
//! A metric that cannot be computed is [`MetricValue::Undefined`] with a
//! reason (JSON `null` plus an entry in the class's `"undefined"` object;
//! `n/a` in the table with a note); the other metrics are still computed:
//! * image (sample) metrics need both normal and anomalous images (samples);
//! * pixel metrics need maps and masks, and both normal and anomalous pixels;
//! * ADer variants are undefined for constant maps (max = min) and when fewer
//!   than two of its thresholds have FPR below the limit.
//!
//! Constant maps are not an error: P-AUROC is then 0.5.
//!
//! mAD of a class is the mean of those of the seven metrics that are defined
//! there (`mad_terms` says how many, the table notes it when fewer than 7); it
//! is undefined only when none is. The mean row averages each metric over the
//! classes where it is defined and lists the skipped classes (`"skipped"` in
//! JSON, a note in the table); its mAD is the mean of the seven mean values
//! that are defined.
//!
//! # Inputs
//! * [`Accumulator`]: streaming, for `omniad eval` (push one image at a time).
//! * [`evaluate_arrays`]: whole arrays in memory.
//! * [`evaluate_file`] / [`evaluate_safetensors`]: a safetensors file with
//!   tensors `anomaly_maps` F32 `[N, H, W]`, `masks` U8 `[N, H, W]` (0/1),
//!   `image_scores` F32 `[N]`, `labels` U8 `[N]` (0/1), optional
//!   `class_ids` U8/I32/I64 `[N]` indexing the class names stored in the
//!   metadata key [`CLASS_NAMES_KEY`] (`"class_names"`, a JSON list of
//!   strings), optional `sample_ids` U8/I32/I64 `[N]`. Without `class_ids`
//!   all images form one class (named by a single-element `class_names`, else `all`).
//!
//! # Algorithm and cost
//! All pixel metrics of a class come from one sort of the anomalous pixels
//! (a few % of all) and one parallel counting pass over the normal pixels
//! against the distinct anomalous scores (see the `pixel` module); see
//! `benches/metrics.rs` and [`bench_synthetic`] for measured times.

#![warn(missing_docs)]

mod curve;
mod error;
mod eval;
mod file;
mod keys;
mod pixel;
mod regions;
mod report;
pub mod results;
pub mod synthetic;
pub mod thresholds;

pub use curve::{binary_curve, binary_metrics, BinaryCurve, BinaryMetrics, SweepPoint};
pub use error::MetricsError;
pub use eval::{
    evaluate_arrays, Accumulator, ArrayRef, EvalArrays, ImageRecord, MetricOptions, PixelRecord,
};
pub use file::{evaluate_file, evaluate_safetensors, write_safetensors, CLASS_NAMES_KEY};
pub use pixel::pro_curve;
pub use report::{ClassReport, MeanValue, Metric, MetricValue, Report};
pub use results::{EvalResults, ImageResult};
pub use synthetic::{bench_synthetic, BenchResult, SyntheticSet};
pub use thresholds::{
    f1_optimal_threshold, normalise_score, operating_point, quantile, OperatingPoint,
};
