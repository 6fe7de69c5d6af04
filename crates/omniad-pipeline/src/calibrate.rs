//! Decision thresholds of a run fitted on evaluated images, and how a new calibration merges
//! with the stored one. The threshold sweeps themselves are omniad-metrics' `thresholds`.
use std::collections::BTreeMap;

use omniad_metrics::{f1_optimal_threshold, quantile};
use omniad_model::checkpoint::Thresholds;

/// Percentile of normal scores used when a class has no anomalous test image.
pub const NORMAL_PERCENTILE: f64 = 0.995;

/// Per-class and global thresholds: F1-optimal where anomalies exist; otherwise the 99.5th
/// percentile of the normal scores (with a warning). The score normalisation bounds are the
/// min and max of all scores (`normalised = clamp((s - t) / (max - min) + 0.5, 0, 1)`, so
/// 0.5 is the decision boundary).
pub fn calibrate(scores: &[(String, f64, bool)], warnings: &mut Vec<String>) -> Thresholds {
    let mut per_class = BTreeMap::new();
    let mut by_class: BTreeMap<&str, Vec<(f64, bool)>> = BTreeMap::new();
    for (c, s, l) in scores {
        by_class.entry(c.as_str()).or_default().push((*s, *l));
    }
    let pick = |name: &str, pairs: &[(f64, bool)], warnings: &mut Vec<String>| -> Option<f64> {
        match f1_optimal_threshold(pairs) {
            Some((t, _)) => Some(t),
            None => {
                let normals: Vec<f64> = pairs.iter().filter(|p| !p.1).map(|p| p.0).collect();
                let t = quantile(&normals, NORMAL_PERCENTILE);
                warnings.push(match t {
                    Some(_) => format!("{name}: no anomalous test image, threshold = 99.5th percentile of normal scores"),
                    None => format!("{name}: no normal test image, no threshold calibrated"),
                });
                t
            }
        }
    };
    for (c, pairs) in &by_class {
        if let Some(t) = pick(c, pairs, warnings) {
            per_class.insert(c.to_string(), t);
        }
    }
    let all: Vec<(f64, bool)> = scores.iter().map(|(_, s, l)| (*s, *l)).collect();
    let global = pick("all classes", &all, warnings);
    let lo = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    Thresholds {
        global,
        per_class,
        method: "F1-optimal image-score threshold on the test split (99.5th percentile of normal scores where a class has no anomaly)".into(),
        score_bounds: (lo.is_finite() && hi > lo).then_some((lo, hi)),
    }
}

/// Thresholds after a new calibration: classes evaluated now get their new threshold, classes
/// not evaluated now keep theirs, and a calibrated global threshold is never replaced by none.
pub fn merge_thresholds(old: Option<Thresholds>, new: &Thresholds) -> Thresholds {
    let Some(mut merged) = old else {
        return new.clone();
    };
    for (class, t) in &new.per_class {
        merged.per_class.insert(class.clone(), *t);
    }
    if new.global.is_some() {
        merged.global = new.global;
        merged.score_bounds = new.score_bounds;
    }
    merged.method = new.method.clone();
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrate_warns_without_anomalies() {
        let scores: Vec<(String, f64, bool)> = (0..201)
            .map(|i| ("a".to_string(), i as f64, false))
            .collect();
        let mut w = Vec::new();
        let t = calibrate(&scores, &mut w);
        assert!((t.per_class["a"] - 199.0).abs() < 1e-9);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("no anomalous test image"));
    }

    #[test]
    fn merging_keeps_classes_not_evaluated() {
        let old = Thresholds {
            global: Some(0.5),
            per_class: [("a".to_string(), 0.1), ("b".to_string(), 0.2)]
                .into_iter()
                .collect(),
            method: "old".into(),
            score_bounds: Some((0.0, 1.0)),
        };
        let new = Thresholds {
            global: None,
            per_class: [("a".to_string(), 0.3)].into_iter().collect(),
            method: "new".into(),
            score_bounds: None,
        };
        let m = merge_thresholds(Some(old), &new);
        assert_eq!(m.global, Some(0.5));
        assert_eq!(m.per_class["a"], 0.3);
        assert_eq!(m.per_class["b"], 0.2);
        assert_eq!(m.score_bounds, Some((0.0, 1.0)));
    }
}
