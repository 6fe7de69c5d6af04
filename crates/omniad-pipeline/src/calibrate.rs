//! A run's decisions: normal images held out of training, the class-recognition bank and the
//! thresholds fitted on them at the end of `omniad train`, and `omniad calibrate` (thresholds
//! fitted on labelled images, on request). The threshold sweeps themselves are omniad-metrics'
//! `thresholds`.
//!
//! # Held-out validation ([`split_validation`])
//! A layout with its own validation folder (MVTec LOCO `validation/good`) gives it; otherwise
//! `val_fraction` of each class's normal training images (at least `min_val_images`, at most
//! half of the class) are held out, chosen by a seeded shuffle of the class's images, so a
//! resumed run holds out the same ones. They are never trained on.
//!
//! # End of training ([`fit_decisions`])
//! - class recognition: a [`ClassBank`] of teacher descriptors of the training images, with
//!   unknown-class distances that also cover the held-out images;
//! - per class: image threshold = quantile `image_quantile` of the held-out images' image scores,
//!   pixel threshold = quantile `pixel_quantile` of their anomaly-map pixels; the same over all
//!   classes for the global thresholds. A class without held-out images gets none (a warning
//!   says so; `omniad calibrate` can fit it).
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use omniad_data::{Dataset, Loader, LoaderOptions, Sample};
use omniad_metrics::{f1_optimal_threshold, quantile};
use omniad_model::checkpoint::Thresholds;
use omniad_model::recognition::{descriptors, ClassBank, ClassFit};
use omniad_model::OmniAd;
use tch::{Device, Kind, Tensor};

use crate::config::CalibrationConfig;
use crate::device::libtorch;
use crate::input::{images_tensor, preprocess_for};

/// Most anomaly-map pixels per class kept for the pixel quantile (a regular subsample beyond).
const MAX_PIXELS_PER_CLASS: usize = 4_000_000;

/// Moves the held-out validation images out of `ds.train` (see the module docs) and returns
/// them, class-major. `ds.validation` (a layout's own validation folder), when not empty, is
/// returned instead and `ds.train` is left whole.
pub fn split_validation(ds: &mut Dataset, cfg: &CalibrationConfig, seed: u64) -> Vec<Sample> {
    if !ds.validation.is_empty() {
        return std::mem::take(&mut ds.validation);
    }
    if cfg.val_fraction <= 0.0 {
        return Vec::new();
    }
    let mut held = vec![false; ds.train.len()];
    for (k, class) in ds.classes.iter().enumerate() {
        let idx: Vec<usize> = ds
            .train
            .iter()
            .enumerate()
            .filter(|(_, s)| &s.class == class)
            .map(|(i, _)| i)
            .collect();
        let n = idx.len();
        let want = ((cfg.val_fraction * n as f64).ceil() as usize)
            .max(cfg.min_val_images)
            .min(n / 2);
        for &j in omniad_data::shuffled_indices(n, seed, 1_000 + k as u64)
            .iter()
            .take(want)
        {
            held[idx[j]] = true;
        }
    }
    let mut val = Vec::new();
    let mut train = Vec::with_capacity(ds.train.len());
    for (s, h) in std::mem::take(&mut ds.train).into_iter().zip(held) {
        if h {
            val.push(s);
        } else {
            train.push(s);
        }
    }
    ds.train = train;
    val
}

/// What [`fit_decisions`] produced.
#[derive(Debug)]
pub struct Decisions {
    /// The class-recognition bank.
    pub bank: ClassBank,
    /// Its per-class measurements.
    pub fit: BTreeMap<String, ClassFit>,
    /// Thresholds fitted on the held-out images (`None` without any).
    pub thresholds: Option<Thresholds>,
    /// Things to tell the user (a class without held-out images, ...).
    pub warnings: Vec<String>,
}

/// Teacher descriptors `[n, D]` (CPU) of `samples`, in order.
fn describe(model: &OmniAd, samples: &[Sample], batch: usize) -> Result<Tensor> {
    let pp = preprocess_for(&model.cfg);
    let loader = Loader::new(samples, LoaderOptions::new(batch, pp))?;
    let mut parts = Vec::new();
    for b in loader {
        let b = b?;
        let n = b.indices.len();
        let d = libtorch("teacher pass for class recognition", || {
            let feats = model.teacher_features(&images_tensor(&b.images, n, &pp, model.device()));
            descriptors(&feats).to_device(Device::Cpu)
        })?;
        parts.push(d);
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Fits class recognition and the thresholds at the end of training (see the module docs):
/// `train` are the images the model was trained on, `val` the held-out normal images (may be
/// empty: recognition then rests on the training images alone and no threshold is fitted).
///
/// # Errors
/// Unreadable images (named), a class of `classes` without training images, libtorch failures.
pub fn fit_decisions(
    model: &OmniAd,
    classes: &[String],
    train: &[Sample],
    val: &[Sample],
    cfg: &CalibrationConfig,
    batch: usize,
) -> Result<Decisions> {
    let mut warnings = Vec::new();
    let train_desc = describe(model, train, batch)?;
    let pp = preprocess_for(&model.cfg);
    let (h, w) = (pp.size.0 as usize, pp.size.1 as usize);
    // held-out images: descriptors, image scores and map pixels per class
    let mut val_desc: Vec<Vec<Tensor>> = (0..classes.len()).map(|_| Vec::new()).collect();
    let mut val_scores: Vec<Vec<f64>> = vec![Vec::new(); classes.len()];
    let mut val_pixels: Vec<Vec<f64>> = vec![Vec::new(); classes.len()];
    let class_of = |name: &str| classes.iter().position(|c| c == name);
    let per_class_images: Vec<usize> = classes
        .iter()
        .map(|c| val.iter().filter(|s| &s.class == c).count())
        .collect();
    if !val.is_empty() {
        let loader = Loader::new(val, LoaderOptions::new(batch, pp))?;
        for b in loader {
            let b = b?;
            let n = b.indices.len();
            let pred = libtorch("forward pass of held-out images", || {
                model.predict(&images_tensor(&b.images, n, &pp, model.device()))
            })?;
            let maps = Vec::<f32>::try_from(
                pred.anomaly_map
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .flatten(0, -1),
            )?;
            let scores = Vec::<f32>::try_from(
                pred.image_scores
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float),
            )?;
            let desc = pred.descriptors.to_device(Device::Cpu);
            for (j, &i) in b.indices.iter().enumerate() {
                let s = &val[i];
                let Some(c) = class_of(&s.class) else {
                    bail!(
                        "{}: held-out image of class {} which is not among the trained classes",
                        s.image.display(),
                        s.class
                    );
                };
                if !scores[j].is_finite() {
                    bail!(
                        "{}: image score {} is not finite: the model may have diverged",
                        s.image.display(),
                        scores[j]
                    );
                }
                val_scores[c].push(f64::from(scores[j]));
                let map = &maps[j * h * w..(j + 1) * h * w];
                let stride = (per_class_images[c] * h * w)
                    .div_ceil(MAX_PIXELS_PER_CLASS)
                    .max(1);
                val_pixels[c].extend(map.iter().step_by(stride).map(|&x| f64::from(x)));
                val_desc[c].push(desc.get(j as i64).unsqueeze(0));
            }
        }
    }
    let dim = train_desc.size()[1];
    let mut train_sets = Vec::with_capacity(classes.len());
    let mut val_sets = Vec::with_capacity(classes.len());
    for (c, name) in classes.iter().enumerate() {
        let rows: Vec<i64> = train
            .iter()
            .enumerate()
            .filter(|(_, s)| &s.class == name)
            .map(|(i, _)| i as i64)
            .collect();
        if rows.is_empty() {
            bail!("class {name}: no training image left after holding out validation images");
        }
        train_sets.push(train_desc.index_select(0, &Tensor::from_slice(&rows)));
        val_sets.push(if val_desc[c].is_empty() {
            Tensor::zeros([0, dim], (Kind::Float, Device::Cpu))
        } else {
            Tensor::cat(&val_desc[c], 0)
        });
    }
    let (bank, fit) = libtorch("fitting class recognition", || {
        ClassBank::fit(classes.to_vec(), &train_sets, &val_sets, cfg.unknown_margin)
    })?
    .map_err(anyhow::Error::msg)?;
    for (name, f) in &fit {
        if f.unknown_distance == 0.0 {
            warnings.push(format!(
                "class {name}: one training image and no held-out image give no distance scale, so every image recognised as {name} is reported unknown_class; add normal images of it"
            ));
        }
    }

    let thresholds = if val.is_empty() {
        warnings.push(
            "no held-out validation images (--val-fraction 0): no thresholds fitted; run `omniad calibrate` before deciding"
                .to_string(),
        );
        None
    } else {
        let mut t = Thresholds {
            method: format!(
                "quantile {} of held-out normal image scores; pixels: quantile {} of their anomaly-map pixels",
                cfg.image_quantile, cfg.pixel_quantile
            ),
            ..Default::default()
        };
        let mut counts = Vec::new();
        for (c, name) in classes.iter().enumerate() {
            counts.push(format!("{name} {}", val_scores[c].len()));
            match (
                quantile(&val_scores[c], cfg.image_quantile),
                quantile(&val_pixels[c], cfg.pixel_quantile),
            ) {
                (Some(ti), Some(tp)) => {
                    t.per_class.insert(name.clone(), ti);
                    t.pixel_per_class.insert(name.clone(), tp);
                }
                _ => warnings.push(format!(
                    "class {name}: no held-out image (too few training images), so no threshold: run `omniad calibrate` for it"
                )),
            }
        }
        let all_scores: Vec<f64> = val_scores.concat();
        let all_pixels: Vec<f64> = val_pixels.concat();
        t.global = quantile(&all_scores, cfg.image_quantile);
        t.pixel_global = quantile(&all_pixels, cfg.pixel_quantile);
        t.fitted_on = format!(
            "{} held-out normal training images ({})",
            val.len(),
            counts.join(", ")
        );
        Some(t)
    };
    Ok(Decisions {
        bank,
        fit,
        thresholds,
        warnings,
    })
}

/// How `omniad calibrate` fits image thresholds on labelled images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The threshold of the largest F1 on the class's images (normal and anomalous); a class
    /// without both gets none (a warning says so).
    F1,
    /// The lowest threshold whose false-alarm rate on the class's normal images is at most this
    /// fraction.
    Fpr(f64),
    /// This quantile of the class's normal image scores.
    Quantile(f64),
}

impl std::str::FromStr for Method {
    type Err = String;

    /// `f1`, `fpr:0.01`, `quantile:0.995`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("method {s:?}: expected f1, fpr:RATE (e.g. fpr:0.01) or quantile:Q (e.g. quantile:0.995)")
        };
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let num = |v: Option<&str>| -> Result<f64, String> {
            let x: f64 = v.ok_or_else(bad)?.trim().parse().map_err(|_| bad())?;
            if x.is_finite() && (0.0..=1.0).contains(&x) {
                Ok(x)
            } else {
                Err(format!("method {s:?}: the value must be in [0, 1]"))
            }
        };
        match (name.trim().to_ascii_lowercase().as_str(), value) {
            ("f1", None) => Ok(Method::F1),
            ("fpr", v) => num(v).map(Method::Fpr),
            ("quantile", v) => num(v).map(Method::Quantile),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::F1 => write!(f, "f1"),
            Method::Fpr(x) => write!(f, "fpr:{x}"),
            Method::Quantile(q) => write!(f, "quantile:{q}"),
        }
    }
}

/// The threshold of one group of `(score, anomalous)` pairs by `method`; `None` when the group
/// lacks the images the method needs (with a warning naming `name`).
fn fit_one(
    method: Method,
    name: &str,
    pairs: &[(f64, bool)],
    warnings: &mut Vec<String>,
) -> Option<f64> {
    let mut normals: Vec<f64> = pairs.iter().filter(|p| !p.1).map(|p| p.0).collect();
    normals.sort_by(f64::total_cmp);
    let t = match method {
        Method::F1 => match f1_optimal_threshold(pairs) {
            Some((t, _)) => Some(t),
            None => {
                warnings.push(format!(
                    "{name}: the f1 method needs normal and anomalous images ({} normal, {} anomalous here): no threshold fitted; use quantile:Q or fpr:RATE for normal images only",
                    normals.len(),
                    pairs.len() - normals.len()
                ));
                return None;
            }
        },
        Method::Quantile(q) => quantile(&normals, q),
        Method::Fpr(rate) => {
            // smallest t with #(normal >= t) / n <= rate: just above the k-th largest normal
            let n = normals.len();
            (n > 0).then(|| {
                let allowed = (rate * n as f64).floor() as usize;
                if allowed >= n {
                    normals[0]
                } else {
                    let v = normals[n - 1 - allowed];
                    next_up(v)
                }
            })
        }
    };
    if t.is_none() {
        warnings.push(format!(
            "{name}: no normal image, no threshold fitted by {method}"
        ));
    }
    t
}

/// The next representable f64 above `v` (finite `v`).
fn next_up(v: f64) -> f64 {
    if v == 0.0 {
        return f64::from_bits(1);
    }
    let bits = v.to_bits();
    f64::from_bits(if v > 0.0 { bits + 1 } else { bits - 1 })
}

/// Image thresholds by `method` from labelled `(class, score, anomalous)` triples, per class and
/// for all together; `fitted_on` describes the images. Pixel thresholds are left empty (the
/// caller keeps those of the held-out calibration). Normalisation: span `2 t` (`score_bounds`
/// `None`).
pub fn calibrate(
    scores: &[(String, f64, bool)],
    method: Method,
    fitted_on: &str,
    warnings: &mut Vec<String>,
) -> Thresholds {
    let mut by_class: BTreeMap<&str, Vec<(f64, bool)>> = BTreeMap::new();
    for (c, s, l) in scores {
        by_class.entry(c.as_str()).or_default().push((*s, *l));
    }
    let mut per_class = BTreeMap::new();
    for (c, pairs) in &by_class {
        if let Some(t) = fit_one(method, c, pairs, warnings) {
            per_class.insert(c.to_string(), t);
        }
    }
    let all: Vec<(f64, bool)> = scores.iter().map(|(_, s, l)| (*s, *l)).collect();
    let global = fit_one(method, "all classes", &all, warnings);
    Thresholds {
        global,
        per_class,
        method: format!("{method} on labelled images (omniad calibrate)"),
        score_bounds: None,
        fitted_on: fitted_on.to_string(),
        ..Default::default()
    }
}

/// The thresholds after `omniad calibrate`: the image thresholds of `new` for its classes;
/// everything else (other classes, pixel thresholds) from `old`. The run-wide values (the global
/// threshold, `method`, `fitted_on`, the normalisation) are replaced only when `all_classes`
/// (the calibration covered every trained class); otherwise `method` and `fitted_on` gain a
/// clause naming the classes calibrated now and the global threshold stays.
pub fn merge_thresholds(
    old: Option<Thresholds>,
    new: &Thresholds,
    all_classes: bool,
) -> Thresholds {
    let Some(mut merged) = old else {
        let mut t = new.clone();
        if !all_classes {
            t.global = None;
        }
        return t;
    };
    for (class, t) in &new.per_class {
        merged.per_class.insert(class.clone(), *t);
    }
    if all_classes {
        if new.global.is_some() {
            merged.global = new.global;
        }
        merged.score_bounds = new.score_bounds;
        merged.method = new.method.clone();
        merged.fitted_on = new.fitted_on.clone();
    } else if !new.per_class.is_empty() {
        let classes: Vec<&str> = new.per_class.keys().map(String::as_str).collect();
        let join = |old: &str, add: &str| {
            if old.is_empty() {
                add.to_string()
            } else {
                format!("{old}; then {add}")
            }
        };
        merged.method = join(
            &merged.method,
            &format!("{}: {}", classes.join(", "), new.method),
        );
        merged.fitted_on = join(
            &merged.fitted_on,
            &format!("{}: {}", classes.join(", "), new.fitted_on),
        );
    }
    merged
}

/// Refuses to calibrate classes the run was not trained on (`trained` from its provenance).
///
/// # Errors
/// Names the untrained classes and the trained ones.
pub fn check_trained_classes(trained: &[String], asked: &[String], run: &str) -> Result<()> {
    let unknown: Vec<&String> = asked.iter().filter(|c| !trained.contains(c)).collect();
    if !unknown.is_empty() {
        bail!(
            "{run}: the model was not trained on class(es) {}: no threshold can be fitted for them (trained classes: {})",
            unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            trained.join(", ")
        );
    }
    Ok(())
}

/// The classes a run was trained on, from `model.json`: the recognition bank's, else the
/// provenance's `classes`.
///
/// # Errors
/// Neither is recorded.
pub fn trained_classes(meta: &omniad_model::checkpoint::CheckpointMeta) -> Result<Vec<String>> {
    if let Some(r) = &meta.recognition {
        return Ok(r.classes.clone());
    }
    let classes: Option<Vec<String>> = meta
        .provenance
        .get("classes")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    classes.context(
        "model.json records no trained classes (no `recognition`, no provenance `classes`)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_fit() {
        assert_eq!("f1".parse::<Method>().unwrap(), Method::F1);
        assert_eq!("fpr:0.01".parse::<Method>().unwrap(), Method::Fpr(0.01));
        assert_eq!(
            "quantile:0.995".parse::<Method>().unwrap(),
            Method::Quantile(0.995)
        );
        assert!("fpr".parse::<Method>().is_err());
        assert!("quantile:2".parse::<Method>().is_err());
        assert!("knn".parse::<Method>().unwrap_err().contains("expected f1"));

        // 100 normals 0..99, anomalies at 150 and 160
        let mut scores: Vec<(String, f64, bool)> = (0..100)
            .map(|i| ("a".to_string(), i as f64, false))
            .collect();
        scores.push(("a".into(), 150.0, true));
        scores.push(("a".into(), 160.0, true));
        let mut w = Vec::new();
        let t = calibrate(&scores, Method::Fpr(0.05), "test", &mut w);
        // 5 of 100 normals may be >= t: t just above 94
        let ta = t.per_class["a"];
        assert!(ta > 94.0 && ta < 94.0 + 1e-9, "{ta}");
        let fp = (0..100).filter(|&i| i as f64 >= ta).count();
        assert_eq!(fp, 5);
        let t = calibrate(&scores, Method::Quantile(0.5), "test", &mut w);
        assert!((t.per_class["a"] - 49.5).abs() < 1e-9);
        let t = calibrate(&scores, Method::F1, "test", &mut w);
        assert!(t.per_class["a"] > 99.0 && t.per_class["a"] <= 150.0);
        assert_eq!(t.fitted_on, "test");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn f1_without_anomalies_fits_nothing() {
        let scores: Vec<(String, f64, bool)> = (0..201)
            .map(|i| ("a".to_string(), i as f64, false))
            .collect();
        let mut w = Vec::new();
        let t = calibrate(&scores, Method::F1, "x", &mut w);
        assert!(t.per_class.is_empty() && t.global.is_none(), "{t:?}");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains(
                "a: the f1 method needs normal and anomalous images (201 normal, 0 anomalous"
            ),
            "{w:?}"
        );
        // quantile works on normal images only
        let t = calibrate(&scores, Method::Quantile(0.995), "x", &mut w);
        assert!((t.per_class["a"] - 199.0).abs() < 1e-9);
    }

    #[test]
    fn merging_keeps_classes_not_calibrated_and_pixel_thresholds() {
        let old = Thresholds {
            global: Some(0.5),
            per_class: [("a".to_string(), 0.1), ("b".to_string(), 0.2)]
                .into_iter()
                .collect(),
            method: "old".into(),
            pixel_per_class: [("a".to_string(), 0.05)].into_iter().collect(),
            ..Default::default()
        };
        let new = Thresholds {
            global: None,
            per_class: [("a".to_string(), 0.3)].into_iter().collect(),
            method: "new".into(),
            fitted_on: "here".into(),
            ..Default::default()
        };
        let m = merge_thresholds(Some(old.clone()), &new, false);
        assert_eq!(m.global, Some(0.5));
        assert!(m.fitted_on.ends_with("a: here"), "{}", m.fitted_on);
        assert!(m.method.starts_with("old; then a: new"), "{}", m.method);
        // a calibration of every class replaces the run-wide values
        let mut all = new.clone();
        all.global = Some(0.7);
        let m2 = merge_thresholds(Some(old), &all, true);
        assert_eq!((m2.global, m2.fitted_on.as_str()), (Some(0.7), "here"));
        // a subset calibration never makes a global threshold from its classes alone
        assert_eq!(merge_thresholds(None, &all, false).global, None);
        assert_eq!(m.per_class["a"], 0.3);
        assert_eq!(m.per_class["b"], 0.2);
        assert_eq!(m.pixel_per_class["a"], 0.05);
    }

    #[test]
    fn untrained_classes_are_refused() {
        let trained = vec!["a".to_string(), "b".to_string()];
        assert!(check_trained_classes(&trained, &["a".into()], "run").is_ok());
        let e = check_trained_classes(&trained, &["a".into(), "zz".into()], "run")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("zz") && e.contains("trained classes: a, b"),
            "{e}"
        );
    }
}
