//! Decision thresholds of `omniad predict`: stored global and per-class thresholds, the
//! `--threshold` override, and runs without any threshold.
mod predict_common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use omniad_model::checkpoint::Thresholds;
use omniad_pipeline::predict::PredictOptions;
use predict_common::*;

/// Equal up to the last bits (thresholds go through a JSON round trip in `model.json`).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs()
}

fn setup() -> (
    tempfile::TempDir,
    PathBuf,
    Vec<PathBuf>,
    omniad_model::OmniAd,
) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let a = tmp.path().join("a.png");
    let b = tmp.path().join("b.png");
    write_rgb(&a, 96, 64, 11);
    write_gray(&b, 40, 90, 12);
    let model = make_run(&run, (64, 64), None);
    (tmp, run, vec![a, b], model)
}

#[test]
fn override_decides_both_ways() {
    let (tmp, run, inputs, model) = setup();
    let scores: Vec<f64> = inputs.iter().map(|p| reference(&model, p).0).collect();
    let s = scores[0];
    assert!(s > 0.0);
    // Stored thresholds that would decide the other way must be ignored.
    set_thresholds(
        &model,
        &run,
        Some(Thresholds {
            global: Some(10.0 * s),
            per_class: BTreeMap::from([("bottle".to_string(), 10.0 * s)]),
            ..Default::default()
        }),
    );
    let below = PredictOptions {
        threshold: Some(0.5 * s),
        per_class: Some("bottle".into()),
        ..Default::default()
    };
    let r = predict(&run, &inputs[..1], &below).unwrap();
    assert_eq!(r[0].threshold, Some(0.5 * s));
    assert_eq!(r[0].anomalous, Some(true));
    // No normalisation bounds stored: span 1.
    assert!((r[0].normalised_score.unwrap() - (0.5 * s + 0.5).min(1.0)).abs() < 1e-9);

    let above = PredictOptions {
        threshold: Some(2.0 * s),
        out: Some(tmp.path().join("out")),
        ..Default::default()
    };
    let r = predict(&run, &inputs[..1], &above).unwrap();
    assert_eq!(r[0].anomalous, Some(false));
    assert!(r[0].normalised_score.unwrap() < 0.5);
    // Threshold above the whole map: the mask is empty.
    let mask = image::open(r[0].mask.as_ref().unwrap()).unwrap().to_luma8();
    assert!(mask.as_raw().iter().all(|&v| v == 0));

    // Exactly at the score counts as anomalous (score >= threshold).
    let r = predict(
        &run,
        &inputs[..1],
        &PredictOptions {
            threshold: Some(r[0].image_score),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r[0].anomalous, Some(true));
    assert_eq!(r[0].normalised_score, Some(0.5));

    // A threshold that is negative or not a finite number is refused, naming the value.
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let opts = PredictOptions {
            threshold: Some(bad),
            ..Default::default()
        };
        let err = format!("{:#}", predict(&run, &inputs[..1], &opts).unwrap_err());
        assert!(err.contains(&format!("threshold {bad}")), "{err}");
        assert!(err.contains("finite number >= 0"), "{err}");
    }
}

#[test]
fn stored_global_and_per_class_thresholds() {
    let (_tmp, run, inputs, model) = setup();
    let scores: Vec<f64> = inputs.iter().map(|p| reference(&model, p).0).collect();
    let (lo, hi) = (scores[0].min(scores[1]), scores[0].max(scores[1]));
    assert!(
        hi > lo,
        "two different images should score differently: {scores:?}"
    );
    let mid = (lo + hi) / 2.0;
    set_thresholds(
        &model,
        &run,
        Some(Thresholds {
            global: Some(mid),
            per_class: BTreeMap::from([
                ("screw".to_string(), 0.5 * lo),
                ("wood".to_string(), 2.0 * hi),
            ]),
            method: "test".into(),
            score_bounds: Some((lo, hi)),
            ..Default::default()
        }),
    );
    let r = predict(&run, &inputs, &PredictOptions::default()).unwrap();
    for (rec, s) in r.iter().zip(&scores) {
        assert!(
            close(rec.threshold.unwrap(), mid),
            "{:?} vs {mid}",
            rec.threshold
        );
        assert_eq!(rec.anomalous, Some(*s >= mid));
        let want = ((rec.image_score - mid) / (hi - lo) + 0.5).clamp(0.0, 1.0);
        assert!((rec.normalised_score.unwrap() - want).abs() < 1e-12);
    }
    assert_eq!(r.iter().filter(|x| x.anomalous == Some(true)).count(), 1);

    let screw = PredictOptions {
        per_class: Some("screw".into()),
        ..Default::default()
    };
    let r = predict(&run, &inputs, &screw).unwrap();
    assert!(r
        .iter()
        .all(|x| close(x.threshold.unwrap(), 0.5 * lo) && x.anomalous == Some(true)));
    let wood = PredictOptions {
        per_class: Some("wood".into()),
        ..Default::default()
    };
    let r = predict(&run, &inputs, &wood).unwrap();
    assert!(r
        .iter()
        .all(|x| close(x.threshold.unwrap(), 2.0 * hi) && x.anomalous == Some(false)));

    let unknown = PredictOptions {
        per_class: Some("cable".into()),
        ..Default::default()
    };
    let err = format!("{:#}", predict(&run, &inputs, &unknown).unwrap_err());
    assert!(
        err.contains("cable") && err.contains("screw, wood"),
        "{err}"
    );
}

#[test]
fn without_threshold_no_decision_and_no_mask() {
    let (tmp, run, inputs, model) = setup();
    let out = tmp.path().join("out");
    let r = predict(
        &run,
        &inputs,
        &PredictOptions {
            out: Some(out.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    for (rec, p) in r.iter().zip(&inputs) {
        let (score, map) = reference(&model, p);
        assert!((rec.image_score - score).abs() < 1e-5);
        assert_eq!(
            (
                rec.threshold,
                rec.anomalous,
                rec.normalised_score,
                &rec.mask
            ),
            (None, None, None, &None)
        );
        assert!(rec.overlay.as_ref().unwrap().is_file());
        assert!(map.max().double_value(&[]) > map.min().double_value(&[]));
    }
    assert_eq!(file_names(&out), vec!["a_overlay.png", "b_overlay.png"]);
    // Colour scale without threshold: the map's own [min, max], so with alpha 1 both ends of
    // the colour map appear.
    let r = predict(
        &run,
        &inputs[..1],
        &PredictOptions {
            out: Some(out),
            alpha: 1.0,
            ..Default::default()
        },
    )
    .unwrap();
    let ov = image::open(r[0].overlay.as_ref().unwrap())
        .unwrap()
        .to_rgb8();
    let (c0, c1) = (
        omniad_pipeline::overlay::turbo(0.0),
        omniad_pipeline::overlay::turbo(1.0),
    );
    assert!(ov.pixels().any(|p| p.0 == c0) && ov.pixels().any(|p| p.0 == c1));

    // Per-class threshold asked from a run that was never evaluated: a clear error.
    let err = format!(
        "{:#}",
        predict(
            &run,
            &inputs,
            &PredictOptions {
                per_class: Some("x".into()),
                ..Default::default()
            }
        )
        .unwrap_err()
    );
    assert!(err.contains("omniad calibrate"), "{err}");
}
