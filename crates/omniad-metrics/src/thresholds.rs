//! Decision thresholds on image scores, fitted from scored images (as anomalib keeps its
//! thresholds beside its metrics): the F1-optimal threshold of a labelled set, a quantile of
//! normal scores, and the normalised score that puts a threshold at 0.5.
//!
//! The F1 sweep is the one of [`crate::binary_metrics`] (the same descending threshold sweep,
//! one threshold per distinct score, predicted anomalous = `score >= threshold`).
use crate::curve::Sweep;

/// Threshold maximising F1 of `score >= t` over `(score, anomalous)` pairs, and that F1.
///
/// Ties in score form one threshold; the returned threshold is the midpoint between the
/// optimal score and the next lower one (robust to tiny score changes); at the lowest score it
/// is that score. `None` without both normal and anomalous images.
pub fn f1_optimal_threshold(pairs: &[(f64, bool)]) -> Option<(f64, f64)> {
    let n_pos = pairs.iter().filter(|p| p.1).count();
    if n_pos == 0 || n_pos == pairs.len() {
        return None;
    }
    let mut v: Vec<(f64, bool)> = pairs.to_vec();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut sweep = Sweep::new(n_pos as u64);
    let mut best: Option<(f64, f64)> = None;
    let mut i = 0;
    while i < v.len() {
        let t = v[i].0;
        let (mut d_pos, mut d_neg) = (0u64, 0u64);
        while i < v.len() && v[i].0 == t {
            if v[i].1 {
                d_pos += 1;
            } else {
                d_neg += 1;
            }
            i += 1;
        }
        sweep.push(d_pos, d_neg);
        let f1 = sweep.f1();
        if best.is_none_or(|(_, b)| f1 > b) {
            let next = v.get(i).map(|p| p.0).unwrap_or(t);
            best = Some(((t + next) / 2.0, f1));
        }
    }
    best
}

/// `q`-quantile (`q` clamped to `[0, 1]`, linear interpolation between order statistics, numpy's
/// default) of `values`; `None` if empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// The confusion counts and rates of the decision `score >= threshold` on labelled images.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OperatingPoint {
    /// The threshold on the image score.
    pub threshold: f64,
    /// Anomalous images flagged.
    pub tp: u64,
    /// Normal images flagged (false alarms).
    pub fp: u64,
    /// Normal images passed.
    pub tn: u64,
    /// Anomalous images passed (missed).
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// `tp / (tp + fp)`; `None` when nothing is flagged.
    pub precision: Option<f64>,
    /// `tp / (tp + fn)`; `None` without anomalous images.
    pub recall: Option<f64>,
    /// `fp / (fp + tn)`; `None` without normal images.
    pub false_alarm_rate: Option<f64>,
}

/// The operating point of `score >= threshold` over `(score, anomalous)` pairs.
pub fn operating_point(pairs: &[(f64, bool)], threshold: f64) -> OperatingPoint {
    let (mut tp, mut fp, mut tn, mut fn_) = (0u64, 0u64, 0u64, 0u64);
    for &(s, l) in pairs {
        match (s >= threshold, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    OperatingPoint {
        threshold,
        tp,
        fp,
        tn,
        fn_,
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        false_alarm_rate: ratio(fp, fp + tn),
    }
}

/// Normalised score in `[0, 1]` with 0.5 at `threshold`:
/// `clamp((score - threshold) / (hi - lo) + 0.5, 0, 1)` with `(lo, hi)` the normalisation bounds
/// (span 1 when absent or empty).
pub fn normalise_score(score: f64, threshold: f64, bounds: Option<(f64, f64)>) -> f64 {
    let span = bounds
        .map(|(lo, hi)| hi - lo)
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    ((score - threshold) / span + 0.5).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operating_point_counts_and_rates() {
        let pairs = [
            (0.1, false),
            (0.6, false),
            (0.7, true),
            (0.2, true),
            (0.9, true),
        ];
        let op = operating_point(&pairs, 0.5);
        assert_eq!((op.tp, op.fp, op.tn, op.fn_), (2, 1, 1, 1));
        assert_eq!(op.precision, Some(2.0 / 3.0));
        assert_eq!(op.recall, Some(2.0 / 3.0));
        assert_eq!(op.false_alarm_rate, Some(0.5));
        let none = operating_point(&[(0.1, false)], 0.5);
        assert_eq!((none.precision, none.recall), (None, None));
        assert_eq!(none.false_alarm_rate, Some(0.0));
    }

    #[test]
    fn f1_threshold_separates_and_reports_f1() {
        let pairs = [(0.1, false), (0.2, false), (0.8, true), (0.9, true)];
        let (t, f1) = f1_optimal_threshold(&pairs).unwrap();
        assert!((t - 0.5).abs() < 1e-12, "{t}");
        assert_eq!(f1, 1.0);
        // Separable with a gap: cut halfway between 0.8 and 0.7.
        let pairs = [(0.1, false), (0.7, false), (0.8, true), (0.9, true)];
        let (t, f1) = f1_optimal_threshold(&pairs).unwrap();
        assert!(
            (f1 - 1.0).abs() < 1e-12 && (t - 0.75).abs() < 1e-12,
            "{t} {f1}"
        );
        // Overlap: best is to flag the top three (TP 2, FP 1, F1 = 4/5), cut between 0.8 and 0.1
        // (flagging only 0.9 gives 2/3, adding 0.85 gives 1/2).
        let pairs = [(0.1, false), (0.85, false), (0.8, true), (0.9, true)];
        let (t, f1) = f1_optimal_threshold(&pairs).unwrap();
        assert!(
            (f1 - 0.8).abs() < 1e-12 && (t - 0.45).abs() < 1e-12,
            "{t} {f1}"
        );
        // A tie between a normal and an anomalous image is one threshold.
        let pairs = [(0.5, false), (0.5, true), (0.1, false)];
        let (t, f1) = f1_optimal_threshold(&pairs).unwrap();
        assert!((t - 0.3).abs() < 1e-12 && (f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!(f1_optimal_threshold(&[(0.1, false)]).is_none());
        assert!(f1_optimal_threshold(&[(0.1, true)]).is_none());
    }

    #[test]
    fn f1_threshold_agrees_with_f1_max_metric() {
        // The same sweep as the I-F1-max metric: equal optimum on scores with ties.
        let scores = [0.3f32, 0.3, 0.5, 0.1, 0.9, 0.7, 0.7, 0.2];
        let labels = [false, true, true, false, true, false, true, false];
        let m = crate::binary_metrics(&scores, &labels).unwrap();
        let pairs: Vec<(f64, bool)> = scores.iter().map(|&s| s as f64).zip(labels).collect();
        let (_, f1) = f1_optimal_threshold(&pairs).unwrap();
        assert!((m.f1_max.value().unwrap() - f1).abs() < 1e-12);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        // numpy.quantile([1, 2, 3, 4], 0.995) = 3.985
        assert!((quantile(&[4.0, 1.0, 3.0, 2.0], 0.995).unwrap() - 3.985).abs() < 1e-12);
        assert_eq!(quantile(&[1.0, 2.0], 7.0), Some(2.0));
    }

    #[test]
    fn normalised_score_is_half_at_threshold() {
        assert_eq!(normalise_score(0.3, 0.3, Some((0.1, 0.5))), 0.5);
        assert!((normalise_score(0.4, 0.3, Some((0.1, 0.5))) - 0.75).abs() < 1e-12);
        assert_eq!(normalise_score(9.0, 0.3, None), 1.0);
        assert_eq!(normalise_score(0.3, 0.3, Some((0.2, 0.2))), 0.5);
    }
}
