//! Threshold sweeps for binary scores: AUROC, AP and F1-max, exact and with
//! scikit-learn's tie handling.
//!
//! A curve is described by groups of samples sharing one score, visited from
//! the highest score down; each group is one threshold of scikit-learn's
//! `roc_curve` / `precision_recall_curve` (thresholds at distinct score values,
//! predicted anomalous = `score >= threshold`).

use crate::keys::{f32_of, key_of};
use crate::report::MetricValue;
use crate::MetricsError;

/// Running sums of one descending threshold sweep.
///
/// * AUROC: trapezoidal area under (FPR, TPR), kept as an exact integer
///   (twice the area times `P * N`), i.e. scikit-learn's `roc_auc_score`.
/// * AP: `sum_k (R_k - R_{k-1}) * P_k` over the thresholds, i.e.
///   scikit-learn's `average_precision_score` (step-wise, no interpolation).
/// * F1-max: `max_k 2 TP_k / (TP_k + FP_k + P)`, the maximum of
///   `2 p r / (p + r)` over the precision-recall curve.
#[derive(Debug, Clone)]
pub(crate) struct Sweep {
    n_pos: u64,
    tp: u64,
    fp: u64,
    auc2: u128,
    ap: f64,
    f1_max: f64,
}

impl Sweep {
    pub(crate) fn new(n_pos: u64) -> Self {
        Sweep {
            n_pos,
            tp: 0,
            fp: 0,
            auc2: 0,
            ap: 0.0,
            f1_max: 0.0,
        }
    }

    /// Lowers the threshold past one group of `d_pos` positives and `d_neg`
    /// negatives that share one score.
    #[inline]
    pub(crate) fn push(&mut self, d_pos: u64, d_neg: u64) {
        self.auc2 += d_neg as u128 * (2 * self.tp as u128 + d_pos as u128);
        self.tp += d_pos;
        self.fp += d_neg;
        if d_pos > 0 {
            let tp = self.tp as f64;
            let precision = tp / (tp + self.fp as f64);
            self.ap += (d_pos as f64 / self.n_pos as f64) * precision;
            let f1 = 2.0 * tp / (tp + self.fp as f64 + self.n_pos as f64);
            if f1 > self.f1_max {
                self.f1_max = f1;
            }
        }
    }

    /// F1 of `score >= threshold` at the current threshold: `2 TP / (TP + FP + P)`.
    pub(crate) fn f1(&self) -> f64 {
        2.0 * self.tp as f64 / (self.tp + self.fp + self.n_pos) as f64
    }

    /// Negatives seen so far (= false positives at the current threshold).
    pub(crate) fn fp(&self) -> u64 {
        self.fp
    }

    /// (AUROC, AP, F1-max); call after all groups were pushed, with both
    /// classes present.
    pub(crate) fn finish(&self) -> (f64, f64, f64) {
        let n_neg = self.fp;
        let auroc = self.auc2 as f64 / (2.0 * self.n_pos as f64 * n_neg as f64);
        (auroc, self.ap, self.f1_max)
    }
}

/// AUROC, AP and F1-max of one binary scoring problem.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryMetrics {
    /// Area under the ROC curve, in `[0, 1]`.
    pub auroc: MetricValue,
    /// Average precision (scikit-learn definition), in `[0, 1]`.
    pub ap: MetricValue,
    /// Maximum F1 over all thresholds, in `[0, 1]`.
    pub f1_max: MetricValue,
}

impl BinaryMetrics {
    /// All three undefined for the same reason.
    pub(crate) fn undefined(reason: &str) -> Self {
        BinaryMetrics {
            auroc: MetricValue::Undefined(reason.to_string()),
            ap: MetricValue::Undefined(reason.to_string()),
            f1_max: MetricValue::Undefined(reason.to_string()),
        }
    }
}

/// Reason used when a set has no positive or no negative sample.
pub(crate) fn one_class_reason(n_pos: u64, n_neg: u64, unit: &str) -> Option<String> {
    match (n_pos, n_neg) {
        (0, 0) => Some(format!("no {unit}s")),
        (0, _) => Some(format!("only normal {unit}s (no anomalous {unit})")),
        (_, 0) => Some(format!("only anomalous {unit}s (no normal {unit})")),
        _ => None,
    }
}

/// Checks image scores against their labels (same length, every score finite) and counts the
/// anomalous and normal images: `(n_pos, n_neg)`.
fn check_scores(scores: &[f32], labels: &[bool]) -> Result<(u64, u64), MetricsError> {
    if scores.len() != labels.len() {
        return Err(MetricsError::ShapeMismatch {
            a: "scores".into(),
            a_shape: vec![scores.len()],
            b: "labels".into(),
            b_shape: vec![labels.len()],
        });
    }
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(MetricsError::NonFiniteScore { index, value });
    }
    let n_pos = labels.iter().filter(|&&l| l).count() as u64;
    let n_neg = labels.len() as u64 - n_pos;
    Ok((n_pos, n_neg))
}

/// Exact AUROC, AP and F1-max of `scores` against binary `labels`
/// (`true` = anomalous), as scikit-learn's `roc_auc_score`,
/// `average_precision_score` and the maximum F1 of `precision_recall_curve`.
///
/// Shapes: `scores` `[N]`, `labels` `[N]`. Metrics are
/// [`MetricValue::Undefined`] when all labels are equal.
///
/// # Errors
/// [`MetricsError::NonFiniteScore`] naming the first NaN or infinite score,
/// [`MetricsError::ShapeMismatch`] when the lengths differ.
pub fn binary_metrics(scores: &[f32], labels: &[bool]) -> Result<BinaryMetrics, MetricsError> {
    let (n_pos, n_neg) = check_scores(scores, labels)?;
    if let Some(reason) = one_class_reason(n_pos, n_neg, "image") {
        return Ok(BinaryMetrics::undefined(&reason));
    }
    let mut sweep = Sweep::new(n_pos);
    for_each_group(scores, labels, |_, d_pos, d_neg| sweep.push(d_pos, d_neg));
    let (auroc, ap, f1) = sweep.finish();
    Ok(BinaryMetrics {
        auroc: MetricValue::Defined(auroc),
        ap: MetricValue::Defined(ap),
        f1_max: MetricValue::Defined(f1),
    })
}

/// Visits the groups of equal scores from the highest score down, calling `f(key, d_pos, d_neg)`
/// with the score's order-preserving key and the anomalous and normal samples of the group.
/// Scores must be finite.
fn for_each_group(scores: &[f32], labels: &[bool], mut f: impl FnMut(u32, u64, u64)) {
    // (key << 1 | label), sorted descending: groups of equal keys are adjacent.
    let mut packed: Vec<u64> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| ((key_of(s) as u64) << 1) | l as u64)
        .collect();
    packed.sort_unstable_by(|a, b| b.cmp(a));
    let mut i = 0;
    while i < packed.len() {
        let k = packed[i] >> 1;
        let (mut d_pos, mut d_neg) = (0u64, 0u64);
        while i < packed.len() && packed[i] >> 1 == k {
            if packed[i] & 1 == 1 {
                d_pos += 1;
            } else {
                d_neg += 1;
            }
            i += 1;
        }
        f(k as u32, d_pos, d_neg);
    }
}

/// One threshold of a descending sweep: predicted anomalous = `score >= threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepPoint {
    /// The threshold, one of the distinct scores.
    pub threshold: f32,
    /// Anomalous samples with `score >= threshold` (true positives).
    pub tp: u64,
    /// Normal samples with `score >= threshold` (false positives).
    pub fp: u64,
}

/// The points behind [`binary_metrics`]: one [`SweepPoint`] per distinct score, from the highest
/// score down (scikit-learn's `roc_curve` / `precision_recall_curve` thresholds, without
/// dropping collinear points).
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryCurve {
    /// Number of anomalous samples.
    pub n_pos: u64,
    /// Number of normal samples.
    pub n_neg: u64,
    /// One point per distinct score, highest threshold first.
    pub points: Vec<SweepPoint>,
}

impl BinaryCurve {
    /// The ROC curve as `(FPR, TPR)` points from `(0, 0)` to `(1, 1)`; its trapezoidal area is
    /// the AUROC of [`binary_metrics`].
    pub fn roc(&self) -> Vec<(f64, f64)> {
        let (p, n) = (self.n_pos as f64, self.n_neg as f64);
        std::iter::once((0.0, 0.0))
            .chain(
                self.points
                    .iter()
                    .map(|q| (q.fp as f64 / n, q.tp as f64 / p)),
            )
            .collect()
    }

    /// The precision-recall curve as `(recall, precision)` points, one per threshold with at
    /// least one predicted anomaly, highest threshold first; `sum (R_k - R_{k-1}) P_k` over
    /// them is the AP of [`binary_metrics`].
    pub fn pr(&self) -> Vec<(f64, f64)> {
        let p = self.n_pos as f64;
        self.points
            .iter()
            .filter(|q| q.tp + q.fp > 0)
            .map(|q| (q.tp as f64 / p, q.tp as f64 / (q.tp + q.fp) as f64))
            .collect()
    }
}

/// The ROC / precision-recall sweep of `scores` against `labels` (`true` = anomalous), the
/// curve of [`binary_metrics`]; `None` when all labels are equal (no curve is defined).
///
/// # Errors
/// As [`binary_metrics`]: a NaN or infinite score (naming its index), different lengths.
pub fn binary_curve(scores: &[f32], labels: &[bool]) -> Result<Option<BinaryCurve>, MetricsError> {
    let (n_pos, n_neg) = check_scores(scores, labels)?;
    if one_class_reason(n_pos, n_neg, "image").is_some() {
        return Ok(None);
    }
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    for_each_group(scores, labels, |k, d_pos, d_neg| {
        tp += d_pos;
        fp += d_neg;
        points.push(SweepPoint {
            threshold: f32_of(k),
            tp,
            fp,
        });
    });
    Ok(Some(BinaryCurve {
        n_pos,
        n_neg,
        points,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(m: &MetricValue) -> f64 {
        match m {
            MetricValue::Defined(x) => *x,
            MetricValue::Undefined(r) => panic!("undefined: {r}"),
        }
    }

    #[test]
    fn matches_hand_computed_values_with_ties() {
        // scikit-learn: roc_auc_score = 0.6666..., average_precision_score = 0.7,
        // max F1 of precision_recall_curve = 0.75.
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4];
        let l = [false, false, true, true, false, true];
        let m = binary_metrics(&s, &l).unwrap();
        // pairs: pos {0.35,0.8,0.4} vs neg {0.1,0.4,0.4}
        // 0.35: >0.1 -> 1 ; 0.8 -> 3 ; 0.4 -> 1 + 2*0.5 = 2  => 6/9
        assert!((v(&m.auroc) - 6.0 / 9.0).abs() < 1e-12);
        // thresholds: 0.8 (tp1 fp0 p=1 r=1/3), 0.4 (tp2 fp2 p=.5 r=2/3), 0.35 (tp3 fp2 p=.6 r=1)
        let ap = 1.0 / 3.0 * 1.0 + 1.0 / 3.0 * 0.5 + 1.0 / 3.0 * 0.6;
        assert!((v(&m.ap) - ap).abs() < 1e-12);
        // F1: 2*1/(1+0+3)=0.5, 2*2/(2+2+3)=0.571, 2*3/(3+2+3)=0.75
        assert!((v(&m.f1_max) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn curve_points_reproduce_auroc_and_ap() {
        let mut s = 99u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        // quantised scores: many ties
        let l: Vec<bool> = (0..300).map(|_| rnd() % 3 == 0).collect();
        let sc: Vec<f32> = l
            .iter()
            .map(|&a| ((rnd() % 40) as f32 + 10.0 * a as u8 as f32) / 50.0)
            .collect();
        let m = binary_metrics(&sc, &l).unwrap();
        let c = binary_curve(&sc, &l).unwrap().unwrap();
        assert_eq!((c.n_pos + c.n_neg) as usize, sc.len());
        let roc = c.roc();
        assert_eq!(roc[0], (0.0, 0.0));
        assert_eq!(*roc.last().unwrap(), (1.0, 1.0));
        let area: f64 = roc
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
            .sum();
        assert!(
            (area - v(&m.auroc)).abs() < 1e-12,
            "{area} vs {:?}",
            m.auroc
        );
        let mut prev_r = 0.0;
        let mut ap = 0.0;
        for (r, p) in c.pr() {
            ap += (r - prev_r) * p;
            prev_r = r;
        }
        assert!((ap - v(&m.ap)).abs() < 1e-12, "{ap} vs {:?}", m.ap);
        let f1 = c
            .pr()
            .iter()
            .map(|&(r, p)| 2.0 * p * r / (p + r))
            .fold(0.0, f64::max);
        assert!((f1 - v(&m.f1_max)).abs() < 1e-12);
        // thresholds are the distinct scores, descending
        let mut d: Vec<f32> = sc.clone();
        d.sort_by(|a, b| b.total_cmp(a));
        d.dedup();
        let th: Vec<f32> = c.points.iter().map(|p| p.threshold).collect();
        assert_eq!(th, d);
        assert!(binary_curve(&[0.1, 0.2], &[true, true]).unwrap().is_none());
        assert!(binary_curve(&[0.1, f32::INFINITY], &[true, false]).is_err());
    }

    #[test]
    fn constant_scores_give_half_auroc() {
        let s = [0.3f32; 10];
        let l: Vec<bool> = (0..10).map(|i| i % 3 == 0).collect();
        let m = binary_metrics(&s, &l).unwrap();
        assert_eq!(v(&m.auroc), 0.5);
        assert!((v(&m.ap) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn single_class_is_undefined_and_nan_is_an_error() {
        let m = binary_metrics(&[0.1, 0.2], &[false, false]).unwrap();
        assert!(matches!(m.auroc, MetricValue::Undefined(ref r) if r.contains("only normal")));
        let m = binary_metrics(&[0.1, 0.2], &[true, true]).unwrap();
        assert!(matches!(m.ap, MetricValue::Undefined(ref r) if r.contains("only anomalous")));
        let e = binary_metrics(&[0.1, f32::NAN, 0.3], &[true, false, true]).unwrap_err();
        assert!(e.to_string().contains("image 1"), "{e}");
    }
}
