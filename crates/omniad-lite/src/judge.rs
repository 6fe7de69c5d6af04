//! Class recognition and the decision rule of `omniad predict` on a sidecar's data, without
//! libtorch: the same rules as `omniad_model::recognition::ClassBank::recognise` and
//! `omniad_pipeline::predict::judge` (the tests of `omniad-onnx` check both give the same
//! verdicts), and the same JSON record.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use omniad_metrics::normalise_score;
use serde::{Serialize, Serializer};

use crate::sidecar::{Recognition, Sidecar};

/// The class decision for one image (as `omniad_model::recognition::Recognition`).
#[derive(Debug, Clone, PartialEq)]
pub struct Recognised {
    /// Index into the recognition's `classes`.
    pub class: usize,
    /// Cosine distance to the class's nearest bank vector, `[0, 2]`.
    pub distance: f64,
    /// `1 - d1 / d2` in `[0, 1]`.
    pub confidence: f64,
    /// `distance` exceeds the class's unknown-class distance.
    pub unknown: bool,
}

/// Recognises the class of a unit descriptor: nearest bank vector by `max(1 - a·b, 0)`, its
/// class, confidence `1 - d1 / d2`, unknown when `d1` exceeds the class's distance.
///
/// # Errors
/// A descriptor whose length is not the bank's.
pub fn recognise(r: &Recognition, desc: &[f32]) -> Result<Recognised> {
    let dim = r.bank.first().map_or(0, Vec::len);
    if desc.len() != dim {
        bail!(
            "class recognition: a descriptor of length {}, the bank holds length {dim}",
            desc.len()
        );
    }
    let k = r.classes.len();
    let mut per_class = vec![f64::INFINITY; k];
    for (row, &c) in r.bank.iter().zip(&r.labels) {
        let dot: f32 = row.iter().zip(desc).map(|(a, b)| a * b).sum();
        let d = f64::from((1.0 - dot).max(0.0));
        let c = c as usize;
        per_class[c] = per_class[c].min(d);
    }
    let (best, d1) = per_class
        .iter()
        .copied()
        .enumerate()
        .fold(
            (0, f64::INFINITY),
            |a, (c, x)| if x < a.1 { (c, x) } else { a },
        );
    let d2 = per_class
        .iter()
        .enumerate()
        .filter(|(c, _)| *c != best)
        .map(|(_, &x)| x)
        .fold(f64::INFINITY, f64::min);
    let confidence = if d2.is_infinite() {
        1.0
    } else if d2 <= 0.0 {
        0.0
    } else {
        (1.0 - d1 / d2).clamp(0.0, 1.0)
    };
    Ok(Recognised {
        class: best,
        distance: d1,
        confidence,
        unknown: d1 > r.unknown_distance[best],
    })
}

/// How an image's class was chosen (serialised `given` / `recognised`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassSource {
    /// By the caller.
    Given,
    /// By class recognition.
    Recognised,
}

/// The decision rule for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The class judged as.
    pub class: Option<String>,
    /// How it was chosen.
    pub class_source: Option<ClassSource>,
    /// Confidence of a recognised class.
    pub class_confidence: Option<f64>,
    /// Of no trained class.
    pub unknown_class: bool,
    /// Image-score threshold.
    pub threshold: Option<f64>,
    /// Pixel threshold.
    pub pixel_threshold: Option<f64>,
    /// Normalisation bounds.
    pub bounds: Option<(f64, f64)>,
}

/// Refuses a threshold that is negative or not finite.
///
/// # Errors
/// The threshold and the rule.
pub fn check_threshold(t: f64) -> Result<()> {
    if !(t.is_finite() && t >= 0.0) {
        bail!(
            "threshold {t}: a decision threshold on the image score must be a finite number >= 0"
        );
    }
    Ok(())
}

/// A class given by the caller must be trained and have a threshold (its own, or the global
/// one for a trained class) unless `threshold` overrides it (`omniad_pipeline::predict::check_class`).
///
/// # Errors
/// An untrained class, or one without a threshold.
pub fn check_class(s: &Sidecar, class: &str, threshold: Option<f64>) -> Result<()> {
    let trained = &s.classes;
    if !trained.is_empty() && !trained.iter().any(|c| c == class) {
        bail!(
            "the model was not trained on class {class:?} (trained classes: {})",
            trained.join(", ")
        );
    }
    if let Some(t) = threshold {
        return check_threshold(t);
    }
    let Some(th) = s.thresholds.as_ref() else {
        bail!("no calibrated thresholds, so none for class {class}: pass --threshold");
    };
    let global_applies = trained.iter().any(|c| c == class) && th.global.is_some();
    if th.per_class.contains_key(class) || global_applies {
        return Ok(());
    }
    bail!("no calibrated threshold for class {class:?}")
}

/// The decision rule (`omniad_pipeline::predict::judge`): class given, else recognised;
/// `threshold` when given, else the class's calibrated thresholds, else the global ones; none
/// for an unknown class; bounds: the stored ones, else `(0, 2 t)`.
///
/// # Errors
/// As [`check_class`] and [`check_threshold`].
pub fn judge(
    s: &Sidecar,
    recognised: Option<(&str, &Recognised)>,
    given: Option<&str>,
    threshold: Option<f64>,
) -> Result<Judgement> {
    let stored = s.thresholds.as_ref();
    let (class, class_source, class_confidence, unknown_class) = match (given, recognised) {
        (Some(c), _) => {
            check_class(s, c, threshold)?;
            (Some(c.to_string()), Some(ClassSource::Given), None, false)
        }
        (None, Some((name, r))) => (
            Some(name.to_string()),
            Some(ClassSource::Recognised),
            Some(r.confidence),
            r.unknown,
        ),
        (None, None) => (None, None, None, false),
    };
    let (image_t, pixel_t) = if unknown_class {
        (None, None)
    } else if let Some(t) = threshold {
        check_threshold(t)?;
        (Some(t), Some(t))
    } else {
        let per_class = |m: &std::collections::BTreeMap<String, f64>| {
            class.as_ref().and_then(|c| m.get(c)).copied()
        };
        match stored {
            None => (None, None),
            Some(th) => match per_class(&th.per_class) {
                Some(t) => (Some(t), per_class(&th.pixel_per_class).or(Some(t))),
                None => (th.global, th.pixel_global.or(th.global)),
            },
        }
    };
    let bounds = image_t.map(|t| {
        stored
            .and_then(|th| th.score_bounds)
            .unwrap_or((0.0, 2.0 * t))
    });
    Ok(Judgement {
        class,
        class_source,
        class_confidence,
        unknown_class,
        threshold: image_t,
        pixel_threshold: pixel_t,
        bounds,
    })
}

fn lossy_path<S: Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

fn lossy_opt_path<S: Serializer>(
    p: &Option<PathBuf>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// One JSON line of `omniad-lite predict`: the fields of `omniad predict`'s record, in the same
/// order and with the same meaning (`overlay` and `mask` are always `null`: the lite path writes
/// no pictures).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The input file.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Image score (max of the blurred map), `[0, 2]`.
    pub image_score: f64,
    /// Class judged as.
    pub class: Option<String>,
    /// `given` or `recognised`.
    pub class_source: Option<ClassSource>,
    /// Confidence of a recognised class.
    pub class_confidence: Option<f64>,
    /// Of no trained class.
    pub unknown_class: bool,
    /// Score mapped to `[0, 1]`, 0.5 at the threshold.
    pub normalised_score: Option<f64>,
    /// Image-score threshold used.
    pub threshold: Option<f64>,
    /// Pixel threshold.
    pub pixel_threshold: Option<f64>,
    /// `image_score >= threshold`.
    pub anomalous: Option<bool>,
    /// Always `None` here.
    #[serde(serialize_with = "lossy_opt_path")]
    pub overlay: Option<PathBuf>,
    /// Always `None` here.
    #[serde(serialize_with = "lossy_opt_path")]
    pub mask: Option<PathBuf>,
    /// Original width, pixels.
    pub width: u32,
    /// Original height, pixels.
    pub height: u32,
}

/// The record of one scored image (`omniad_pipeline::predict::make_record`).
///
/// # Errors
/// A non-finite score.
pub fn make_record(
    path: &Path,
    score: f64,
    j: &Judgement,
    (width, height): (u32, u32),
) -> Result<Record> {
    if !score.is_finite() {
        bail!(
            "{}: the image score is {score} (not finite)",
            path.display()
        );
    }
    let threshold = j.threshold;
    Ok(Record {
        path: path.to_path_buf(),
        image_score: score,
        class: j.class.clone(),
        class_source: j.class_source,
        class_confidence: j.class_confidence,
        unknown_class: j.unknown_class,
        normalised_score: threshold.map(|t| normalise_score(score, t, j.bounds)),
        threshold,
        pixel_threshold: j.pixel_threshold,
        anomalous: threshold.map(|t| score >= t),
        overlay: None,
        mask: None,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::{InputSpec, OutputSpec, Thresholds};

    fn sidecar(recognition: Option<Recognition>, thresholds: Option<Thresholds>) -> Sidecar {
        Sidecar {
            format: crate::sidecar::FORMAT.into(),
            version: crate::sidecar::VERSION,
            omniad_version: "test".into(),
            model_file: "m.onnx".into(),
            model_sha256: String::new(),
            checkpoint_sha256: String::new(),
            opset: 17,
            config: serde_json::Value::Null,
            input: InputSpec {
                name: "input".into(),
                layout: "NCHW".into(),
                size: (64, 64),
                batch: None,
                mean: [0.5; 3],
                std: [0.5; 3],
                resize: String::new(),
            },
            outputs: OutputSpec {
                anomaly_map: "anomaly_map".into(),
                image_score: "image_score".into(),
                descriptors: "descriptors".into(),
            },
            anomaly_map: String::new(),
            classes: vec!["a".into(), "b".into()],
            thresholds,
            score_normalisation: String::new(),
            recognition,
        }
    }

    fn bank() -> Recognition {
        Recognition {
            descriptor: "teacher-gap-l2-v1".into(),
            classes: vec!["a".into(), "b".into()],
            unknown_distance: vec![0.5, 0.5],
            margin: 1.0,
            bank: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            labels: vec![0, 1],
        }
    }

    #[test]
    fn recognition_nearest_class_confidence_and_unknown() {
        let r = bank();
        // cos 0.8 to a, 0.6 to b: distances 0.2 and 0.4, confidence 1 - 0.2/0.4
        let got = recognise(&r, &[0.8, 0.6]).expect("recognise");
        assert_eq!(got.class, 0);
        assert!((got.distance - 0.2).abs() < 1e-6);
        assert!((got.confidence - 0.5).abs() < 1e-6);
        assert!(!got.unknown);
        // opposite to both: distances 1.6 (a) and 1.8 (b) > 0.5, unknown
        let far = recognise(&r, &[-0.6, -0.8]).expect("recognise");
        assert!(far.unknown && far.class == 0 && (far.distance - 1.6).abs() < 1e-6);
        assert!(recognise(&r, &[1.0]).is_err());
    }

    #[test]
    fn thresholds_by_class_then_global_and_none_for_unknown() {
        let th = Thresholds {
            global: Some(0.3),
            per_class: [("a".to_string(), 0.2)].into_iter().collect(),
            pixel_per_class: [("a".to_string(), 0.25)].into_iter().collect(),
            ..Default::default()
        };
        let s = sidecar(Some(bank()), Some(th));
        let r = recognise(s.recognition.as_ref().unwrap(), &[0.8, 0.6]).unwrap();
        let j = judge(&s, Some(("a", &r)), None, None).unwrap();
        assert_eq!((j.threshold, j.pixel_threshold), (Some(0.2), Some(0.25)));
        assert_eq!(j.bounds, Some((0.0, 0.4)));
        let rec = make_record(Path::new("x.png"), 0.3, &j, (5, 6)).unwrap();
        assert_eq!(rec.anomalous, Some(true));
        assert!((rec.normalised_score.unwrap() - 0.75).abs() < 1e-12);
        // class b has no own threshold: the global one, pixel threshold = image threshold
        let j = judge(&s, None, Some("b"), None).unwrap();
        assert_eq!((j.threshold, j.pixel_threshold), (Some(0.3), Some(0.3)));
        // unknown class: no verdict
        let far = recognise(s.recognition.as_ref().unwrap(), &[-0.6, -0.8]).unwrap();
        let j = judge(&s, Some(("a", &far)), None, None).unwrap();
        assert_eq!((j.threshold, j.unknown_class), (None, true));
        // untrained class and bad thresholds refused
        assert!(judge(&s, None, Some("c"), None).is_err());
        assert!(judge(&s, None, None, Some(f64::NAN)).is_err());
        let bare = sidecar(None, None);
        assert!(check_class(&bare, "a", None).is_err());
        assert!(check_class(&bare, "a", Some(0.1)).is_ok());
        assert!(make_record(Path::new("x"), f64::INFINITY, &j, (1, 1)).is_err());
    }

    #[test]
    fn sidecar_path_and_checks() {
        assert_eq!(
            crate::sidecar::sidecar_path(Path::new("d/model.onnx")),
            Path::new("d/model.onnx.json")
        );
        let mut s = sidecar(Some(bank()), None);
        assert!(s.check().is_ok());
        s.recognition.as_mut().unwrap().labels = vec![0, 2];
        assert!(s.check().is_err());
        let mut s = sidecar(None, None);
        s.version = crate::sidecar::VERSION + 1;
        assert!(s.check().unwrap_err().to_string().contains("newer"));
    }
}
