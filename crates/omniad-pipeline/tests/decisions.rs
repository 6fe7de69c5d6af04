//! A run's decisions on a tiny synthetic run trained on 2 of 3 classes: held-out validation
//! images, class recognition (including an untrained class flagged unknown), thresholds fitted
//! on the held-out images, `omniad eval` reporting the operating point without touching them,
//! and `omniad calibrate`.
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use omniad_data::{load_rgb, open_dataset, DatasetKind, Label, OpenOptions};
use omniad_metrics::{operating_point, quantile};
use omniad_model::checkpoint;
use omniad_pipeline::calibrate::{split_validation, Method};
use omniad_pipeline::config::{CalibrationConfig, DataConfig, FeatureCache, TrainConfig};
use omniad_pipeline::device::ComputeDevice;
use omniad_pipeline::eval::{calibrate_run, eval_run, EvalOptions};
use omniad_pipeline::predict::{ClassSource, Scorer};
use omniad_pipeline::{train, TrainOptions, TrainOutcome};
use omniad_synth::SynthConfig;

/// Training seeds libtorch's global generator: one training at a time in this binary.
static TRAINING: Mutex<()> = Mutex::new(());

const TRAINED: [&str; 2] = ["flange", "woven"];

struct Fixture {
    data: PathBuf,
    run: PathBuf,
    outcome: TrainOutcome,
    _tmp: tempfile::TempDir,
}

fn cfg(data: &Path, out: &Path) -> TrainConfig {
    let mut cfg = TrainConfig {
        epochs: 1,
        batch_size: 4,
        seed: 11,
        out: out.to_path_buf(),
        feature_cache: FeatureCache::None,
        data: DataConfig {
            dataset: DatasetKind::Mvtec,
            data_root: data.to_path_buf(),
            classes: Some(TRAINED.iter().map(|s| s.to_string()).collect()),
            ..DataConfig::default()
        },
        ..TrainConfig::default()
    };
    cfg.model.depths = [1, 1, 1, 1];
    cfg.model.image_size = (64, 64);
    cfg
}

/// Data of 3 classes (10 training images each), a run trained on 2 of them.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let _serial = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
        tch::set_num_threads(1);
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        omniad_synth::generate(
            &data,
            &SynthConfig {
                seed: 5,
                size: 64,
                train_per_class: 10,
                test_good_per_class: 3,
                test_defect_per_class: 3,
                classes: Some(vec!["woven".into(), "flange".into(), "screw".into()]),
            },
        )
        .unwrap();
        let run = tmp.path().join("run");
        let outcome = train(&cfg(&data, &run), &TrainOptions::default()).unwrap();
        Fixture {
            data,
            run,
            outcome,
            _tmp: tmp,
        }
    })
}

fn dataset(f: &Fixture, classes: &[&str]) -> omniad_data::Dataset {
    let classes: Vec<String> = classes.iter().map(|s| s.to_string()).collect();
    open_dataset(
        DatasetKind::Mvtec,
        &f.data,
        Some(&classes),
        &OpenOptions::default(),
    )
    .unwrap()
}

#[test]
fn validation_images_are_held_out_per_class_deterministically() {
    let f = fixture();
    let mut ds = dataset(f, &TRAINED);
    let all = ds.train.clone();
    let c = CalibrationConfig::default();
    let val = split_validation(&mut ds, &c, 11);
    // 10 per class: ceil(10 %) = 1, at least 3, at most 5
    assert_eq!(val.len(), 6);
    for class in TRAINED {
        assert_eq!(val.iter().filter(|s| s.class == class).count(), 3);
        assert_eq!(ds.train.iter().filter(|s| s.class == class).count(), 7);
    }
    assert!(val.iter().all(|v| !ds.train.contains(v)));
    assert_eq!(ds.train.len() + val.len(), all.len());
    let mut again = dataset(f, &TRAINED);
    assert_eq!(
        split_validation(&mut again, &c, 11),
        val,
        "same seed, same images"
    );
    let mut other = dataset(f, &TRAINED);
    assert_ne!(
        split_validation(&mut other, &c, 12),
        val,
        "another seed, others"
    );
    let mut none = dataset(f, &TRAINED);
    assert!(split_validation(&mut none, &CalibrationConfig::none(), 11).is_empty());
    assert_eq!(none.train.len(), 20);
    // the run trained on the 14 others
    assert_eq!(f.outcome.validation_images, 6);
    let meta = checkpoint::read_meta(&f.run.join("model.json")).unwrap();
    assert_eq!(meta.provenance["train_images"], 14);
    assert_eq!(meta.provenance["validation_images"], 6);
}

#[test]
fn thresholds_are_quantiles_of_the_held_out_scores() {
    let f = fixture();
    let meta = checkpoint::read_meta(&f.run.join("model.json")).unwrap();
    let th = meta
        .thresholds
        .clone()
        .expect("thresholds fitted at the end of training");
    assert!(
        th.fitted_on.contains("6 held-out normal training images"),
        "{}",
        th.fitted_on
    );
    assert_eq!(th.score_bounds, None);
    let mut ds = dataset(f, &TRAINED);
    let val = split_validation(&mut ds, &CalibrationConfig::default(), 11);
    let scorer = Scorer::load(&f.run, ComputeDevice::Cpu).unwrap();
    for class in TRAINED {
        let images: Vec<_> = val
            .iter()
            .filter(|s| s.class == class)
            .map(|s| load_rgb(&s.image).unwrap())
            .collect();
        let scores = scorer.score(&images).unwrap().scores;
        let want = quantile(&scores, 0.995).unwrap();
        let got = th.per_class[class];
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
            "{class}: threshold {got}, quantile of held-out scores {want}"
        );
        assert!(th.pixel_per_class[class] > 0.0 && th.pixel_per_class[class] <= got + 1e-9);
    }
    assert_eq!(
        th.per_class.keys().collect::<Vec<_>>(),
        TRAINED.iter().collect::<Vec<_>>()
    );
}

#[test]
fn classes_are_recognised_and_an_untrained_one_is_unknown() {
    let f = fixture();
    let scorer = Scorer::load(&f.run, ComputeDevice::Cpu).unwrap();
    assert!(scorer.recognises_classes());
    let ds = dataset(f, &["flange", "screw", "woven"]);
    let meta = scorer.meta().clone();
    let th = meta.thresholds.clone().unwrap();
    let (mut screw_unknown, mut screw_total) = (0, 0);
    for s in &ds.test {
        let img = load_rgb(&s.image).unwrap();
        let scored = scorer.score(std::slice::from_ref(&img)).unwrap();
        let j = scorer.judge(&scored, 0, None, None).unwrap();
        if s.class == "screw" {
            screw_total += 1;
            if j.unknown_class {
                screw_unknown += 1;
                assert_eq!(j.threshold, None, "no threshold for an unknown class");
            }
            continue;
        }
        assert_eq!(
            j.class.as_deref(),
            Some(s.class.as_str()),
            "{}",
            s.image.display()
        );
        assert_eq!(j.class_source, Some(ClassSource::Recognised));
        assert!(
            !j.unknown_class,
            "{} ({:?}) flagged unknown",
            s.image.display(),
            s.label
        );
        assert_eq!(j.threshold, Some(th.per_class[&s.class]));
        assert_eq!(j.pixel_threshold, Some(th.pixel_per_class[&s.class]));
        let c = j.class_confidence.unwrap();
        assert!((0.0..=1.0).contains(&c) && c > 0.0, "{c}");
        // normalised score: 0.5 at the class's threshold, span 2 t
        assert_eq!(j.bounds, Some((0.0, 2.0 * th.per_class[&s.class])));
        // a given class overrides recognition
        let g = scorer.judge(&scored, 0, Some("woven"), None).unwrap();
        assert_eq!(
            (g.class.as_deref(), g.class_source),
            (Some("woven"), Some(ClassSource::Given))
        );
        assert_eq!(g.threshold, Some(th.per_class["woven"]));
    }
    assert_eq!(screw_total, 6);
    assert_eq!(
        screw_unknown, 6,
        "every image of the untrained class is unknown"
    );
    let e = scorer.check_class("screw", None).unwrap_err().to_string();
    assert!(
        e.contains("not trained on class \"screw\"") && e.contains("flange, woven"),
        "{e}"
    );
}

#[test]
fn eval_reports_the_operating_point_and_leaves_the_thresholds() {
    let f = fixture();
    let json = f.run.join("model.json");
    let before = std::fs::read(&json).unwrap();
    let ds = dataset(f, &["flange", "screw", "woven"]);
    let out = eval_run(
        &f.run,
        &ds,
        ComputeDevice::Cpu,
        &EvalOptions {
            batch_size: 4,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&json).unwrap(),
        before,
        "eval never rewrites model.json"
    );
    let th = checkpoint::read_meta(&json).unwrap().thresholds.unwrap();
    assert_eq!(
        out.operating_points.len(),
        2,
        "no operating point for screw"
    );
    for p in &out.operating_points {
        let pairs: Vec<(f64, bool)> = out
            .scores
            .iter()
            .filter(|s| s.0 == p.class)
            .map(|s| (s.1, s.2))
            .collect();
        assert_eq!(p.threshold_source, "class");
        assert_eq!(p.point, operating_point(&pairs, th.per_class[&p.class]));
        assert_eq!(p.point.tp + p.point.fp + p.point.tn + p.point.fn_, 6);
    }
    assert!(out
        .warnings
        .iter()
        .any(|w| w.contains("screw: not a class the model was trained on")));
    let rec = out.recognition.as_ref().unwrap();
    assert_eq!(rec["screw"].unknown, 6);
    assert!(!rec["screw"].trained);
    for class in TRAINED {
        assert_eq!(rec[class].correct, 6, "{class}: {:?}", rec[class]);
        assert_eq!(rec[class].anomalous_correct, 3);
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["operating_points"].as_array().unwrap().len(), 2);
    assert_eq!(metrics["recognition"]["screw"]["unknown"], 6);
}

#[test]
fn calibrate_fits_on_labelled_images_and_refuses_untrained_classes() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    for e in std::fs::read_dir(&f.run).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, run.join(p.file_name().unwrap())).unwrap();
        }
    }
    let json = run.join("model.json");
    let before = checkpoint::read_meta(&json).unwrap().thresholds.unwrap();
    let opts = EvalOptions {
        batch_size: 4,
        ..Default::default()
    };
    let all = dataset(f, &["flange", "screw", "woven"]);
    let err = calibrate_run(&run, &all, ComputeDevice::Cpu, Method::F1, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not trained on class(es) screw"), "{err}");
    assert_eq!(
        checkpoint::read_meta(&json).unwrap().thresholds.unwrap(),
        before
    );

    // f1 on normal images only fits nothing: refused, nothing written
    let only_good = tmp.path().join("only-good");
    for split in ["train/good", "test/good"] {
        let to = only_good.join("flange").join(split);
        std::fs::create_dir_all(&to).unwrap();
        for name in ["000.png", "001.png"] {
            std::fs::copy(f.data.join("flange").join(split).join(name), to.join(name)).unwrap();
        }
    }
    let good = open_dataset(
        DatasetKind::Mvtec,
        &only_good,
        Some(&["flange".to_string()]),
        &OpenOptions::default(),
    )
    .unwrap();
    let err = calibrate_run(&run, &good, ComputeDevice::Cpu, Method::F1, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("f1 fitted no threshold") && err.contains("needs normal and anomalous images"),
        "{err}"
    );
    assert_eq!(
        checkpoint::read_meta(&json).unwrap().thresholds.unwrap(),
        before
    );

    let ds = dataset(f, &["woven"]);
    let out = calibrate_run(&run, &ds, ComputeDevice::Cpu, Method::Fpr(0.0), &opts).unwrap();
    let after = checkpoint::read_meta(&json).unwrap().thresholds.unwrap();
    // woven refitted: no normal test image at or above it
    let t = after.per_class["woven"];
    assert_eq!(out.points.len(), 1);
    assert_eq!(out.points[0].point.fp, 0);
    assert!(t > 0.0 && t != before.per_class["woven"]);
    // flange, the pixel thresholds and the global threshold (not refitted from one class) kept;
    // the provenance says which class was calibrated how
    assert_eq!(after.per_class["flange"], before.per_class["flange"]);
    assert_eq!(after.pixel_per_class, before.pixel_per_class);
    assert_eq!(after.global, before.global);
    assert!(
        after.fitted_on.starts_with(&before.fitted_on),
        "{}",
        after.fitted_on
    );
    assert!(
        after.fitted_on.contains("; then woven: test split")
            && after.fitted_on.contains("thresholds fitted for woven"),
        "{}",
        after.fitted_on
    );
    assert!(
        after.method.contains("; then woven: fpr:0"),
        "{}",
        after.method
    );
    assert!(out
        .warnings
        .iter()
        .any(|w| w.contains("only 1 of the 2 trained classes")));
    // the printed operating point is at the stored threshold
    assert_eq!(out.points[0].point.threshold, t);

    // a trained class without its own threshold is judged with the global one, given or
    // recognised alike
    let mut meta = checkpoint::read_meta(&json).unwrap();
    meta.thresholds.as_mut().unwrap().per_class.remove("flange");
    checkpoint::write_meta(&json, &meta).unwrap();
    let scorer = Scorer::load(&run, ComputeDevice::Cpu).unwrap();
    let flange = ds_flange_image(f);
    let scored = scorer.score(std::slice::from_ref(&flange)).unwrap();
    let global = meta.thresholds.as_ref().unwrap().global;
    for given in [None, Some("flange")] {
        let j = scorer.judge(&scored, 0, given, None).unwrap();
        assert_eq!(j.class.as_deref(), Some("flange"));
        assert_eq!(j.threshold, global, "given {given:?}");
    }
    let n_normal = ds.test.iter().filter(|s| s.label == Label::Normal).count();
    assert_eq!(out.points[0].point.tn as usize, n_normal);
}

/// A normal test image of flange.
fn ds_flange_image(f: &Fixture) -> image::RgbImage {
    load_rgb(&f.data.join("flange/test/good/000.png")).unwrap()
}

#[test]
fn resume_completes_a_run_whose_calibration_was_not_saved() {
    let f = fixture();
    let _serial = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = train(&cfg(&f.data, &run), &TrainOptions::default()).unwrap();
    assert!(o.thresholds.is_some());
    // the final save of the weights happened, the calibrated one did not (a crash between them)
    let json = run.join("model.json");
    let first = checkpoint::read_meta(&json).unwrap();
    let (model, meta) = checkpoint::load(&json, tch::Device::Cpu).unwrap();
    checkpoint::save(&model, &run, "model", None, meta.provenance.clone()).unwrap();
    assert!(checkpoint::read_meta(&json).unwrap().recognition.is_none());
    let again = train(
        &cfg(&f.data, &run),
        &TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(again.steps, o.steps, "no further training");
    let m = checkpoint::read_meta(&json).unwrap();
    assert!(m.recognition.is_some());
    // the same thresholds and bank as the uninterrupted end (compared through model.json)
    assert_eq!(m.thresholds, first.thresholds);
    assert_eq!(m.recognition, first.recognition);
    assert_eq!(
        m.weights_sha256, first.weights_sha256,
        "same weights and bank"
    );
    // and now the run is finished
    let err = train(
        &cfg(&f.data, &run),
        &TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("finished all 1 epochs"), "{err}");
}
