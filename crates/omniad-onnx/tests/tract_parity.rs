//! The exported ONNX graph, run by an independent runtime (tract, pure Rust), against the
//! libtorch path (`OmniAd::predict`, `omniad_pipeline::predict::predict_run`): anomaly maps
//! within 1e-4 (max abs, f32) and identical verdicts (class, unknown class, thresholds,
//! anomalous), on small models of both teachers and the decoder ablations; and the export's
//! refusals (checkpoint failing verification, unsupported size, unwritable path) leave no file.
use std::path::{Path, PathBuf};

use image::{ImageBuffer, Rgb, RgbImage};
use omniad_data::{load_rgb, preprocess_rgb};
use omniad_lite::Session;
use omniad_model::checkpoint::{self, Thresholds};
use omniad_model::recognition::ClassBank;
use omniad_model::{Branches, GlobalAttention, OmniAd, OmniAdConfig, TeacherArch};
use omniad_onnx::{export_checkpoint, Batch, ExportError, ExportOptions};
use omniad_pipeline::device::ComputeDevice;
use omniad_pipeline::input::preprocess_for;
use omniad_pipeline::predict::{predict_run, PredictOptions};
use tch::{Device, Kind, Tensor};

/// Largest accepted difference of anomaly maps and scores (max abs, f32).
const TOL: f64 = 1e-4;

fn tiny(teacher: TeacherArch, image_size: (u32, u32)) -> OmniAdConfig {
    OmniAdConfig {
        teacher,
        depths: [1, 1, 1, 1],
        neck_width: 64,
        num_tokens: 16,
        heads: 8,
        image_size,
        ..OmniAdConfig::default_offline()
    }
}

/// Builds a model whose every student tensor (and a ResNet teacher's, which has no shipped
/// weights) is randomised, so that no term of the graph is zero: learnable tokens, post-softmax
/// biases, BatchNorm statistics.
fn model(cfg: &OmniAdConfig) -> OmniAd {
    tch::manual_seed(11);
    let mut m = OmniAd::new(cfg, Device::Cpu).expect("valid config");
    if cfg.teacher == TeacherArch::EfficientNetLite0 {
        omniad_pipeline::teacher::load_teacher(&mut m, None).expect("shipped teacher");
    }
    tch::no_grad(|| {
        let stores = if cfg.teacher == TeacherArch::EfficientNetLite0 {
            vec![&m.vs]
        } else {
            vec![&m.vs, &m.teacher_vs]
        };
        for vs in stores {
            for (name, mut v) in vs.variables() {
                let noise = Tensor::randn(v.size(), (Kind::Float, Device::Cpu));
                let new = if name.ends_with("running_var") {
                    noise.abs() * 0.5 + 0.5
                } else if name.ends_with("running_mean")
                    || name.ends_with("pe1")
                    || name.ends_with("pe2")
                {
                    noise * 0.1
                } else if name.contains("learnable") {
                    noise
                } else {
                    &v + noise * 0.05
                };
                v.copy_(&new);
            }
        }
    });
    m
}

/// Deterministic textured image; `kind` 0 and 1 are two visibly different "products".
fn image(w: u32, h: u32, seed: u32, kind: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        let mut v = x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ seed;
        v ^= v >> 13;
        v = v.wrapping_mul(0x5bd1_e995);
        v ^= v >> 15;
        let noise = (v % 48) as u8;
        if kind == 0 {
            Rgb([
                ((x * 255 / w) as u8).wrapping_add(noise),
                (y * 2) as u8,
                noise,
            ])
        } else {
            let stripe = if (x / 6 + y / 6) % 2 == 0 { 200 } else { 40 };
            Rgb([noise, stripe, 255 - (y * 255 / h) as u8])
        }
    })
}

fn batch_tensor(model: &OmniAd, images: &[RgbImage]) -> Tensor {
    let pp = preprocess_for(&model.cfg);
    let flat: Vec<f32> = images.iter().flat_map(|i| preprocess_rgb(i, &pp)).collect();
    Tensor::from_slice(&flat).reshape([images.len() as i64, 3, pp.size.0 as i64, pp.size.1 as i64])
}

/// Saves `model` as a run in `dir` with a recognition bank of two classes and per-class
/// thresholds that split the images' scores; writes the images as PNGs and returns them.
fn make_run(model: &OmniAd, dir: &Path) -> Vec<PathBuf> {
    let imgs: Vec<(RgbImage, u32)> = (0..8)
        .map(|i| (image(80 + 7 * i, 70 + 5 * i, i, i % 2), i % 2))
        .collect();
    let raw: Vec<RgbImage> = imgs.iter().map(|(i, _)| i.clone()).collect();
    let pred = model.predict(&batch_tensor(model, &raw));
    let desc = pred.descriptors;
    let scores = Vec::<f32>::try_from(pred.image_scores).expect("scores");
    let pick = |k: u32| {
        let idx: Vec<i64> = (0..8).filter(|i| i % 2 == k as i64).collect();
        desc.index_select(0, &Tensor::from_slice(&idx))
    };
    // train on the first three of each class, validate on the fourth
    let train = [pick(0).narrow(0, 0, 3), pick(1).narrow(0, 0, 3)];
    let val = [pick(0).narrow(0, 3, 1), pick(1).narrow(0, 3, 1)];
    let (bank, fits) =
        ClassBank::fit(vec!["a".into(), "b".into()], &train, &val, 1.0).expect("bank");
    // thresholds in the middle of the largest gap of each class's sorted scores
    let mut per_class = std::collections::BTreeMap::new();
    for (k, name) in ["a", "b"].iter().enumerate() {
        let mut s: Vec<f64> = (0..8)
            .filter(|i| i % 2 == k)
            .map(|i| f64::from(scores[i]))
            .collect();
        s.sort_by(f64::total_cmp);
        let (i, _) = s
            .windows(2)
            .enumerate()
            .map(|(i, w)| (i, w[1] - w[0]))
            .fold((0, -1.0), |a, b| if b.1 > a.1 { b } else { a });
        per_class.insert(name.to_string(), (s[i] + s[i + 1]) / 2.0);
    }
    let thresholds = Thresholds {
        global: Some(f64::from(scores.iter().copied().fold(0.0, f32::max)) * 0.5),
        per_class,
        method: "test".into(),
        ..Default::default()
    };
    let meta = bank.meta(fits);
    checkpoint::save_full(
        model,
        dir,
        "model",
        Some(thresholds),
        serde_json::json!({"classes": ["a", "b"]}),
        Some((&bank, meta)),
    )
    .expect("save");
    imgs.iter()
        .enumerate()
        .map(|(i, (img, _))| {
            let p = dir.join(format!("img{i}.png"));
            img.save(&p).expect("write png");
            p
        })
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

/// Exports the run of `cfg`, runs it in tract and in libtorch: maps and scores within
/// [`TOL`], descriptors within 1e-5, identical records up to score rounding.
fn parity(cfg: OmniAdConfig) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let m = model(&cfg);
    let paths = make_run(&m, &run);
    let out = tmp.path().join("model.onnx");
    let report = export_checkpoint(&run.join("model.json"), &out, &ExportOptions::default())
        .expect("export");
    assert!(report.bytes > 100_000 && report.nodes > 100, "{report:?}");
    let session = Session::load(&out).expect("tract loads the export");

    // maps, scores and descriptors of one batch of 3 and one of 1 (dynamic batch axis)
    let images: Vec<RgbImage> = paths.iter().map(|p| load_rgb(p).expect("png")).collect();
    for chunk in [&images[..3], &images[3..4]] {
        let lib = m.predict(&batch_tensor(&m, chunk));
        let lib_map = Vec::<f32>::try_from(lib.anomaly_map.flatten(0, -1)).expect("map");
        let lib_desc = Vec::<f32>::try_from(lib.descriptors.flatten(0, -1)).expect("desc");
        let lib_scores = Vec::<f32>::try_from(lib.image_scores).expect("scores");
        let got = session.score(chunk).expect("tract scores");
        let d_map = max_abs(&got.output.maps, &lib_map);
        let d_score = max_abs(&got.output.scores, &lib_scores);
        let flat: Vec<f32> = got.output.descriptors.concat();
        let d_desc = max_abs(&flat, &lib_desc);
        eprintln!(
            "{} {:?}: batch {}: map {d_map:.2e}, score {d_score:.2e}, descriptors {d_desc:.2e}",
            cfg.teacher,
            cfg.attention,
            chunk.len()
        );
        assert!(d_map <= TOL, "anomaly maps differ by {d_map}");
        assert!(d_score <= TOL, "scores differ by {d_score}");
        assert!(d_desc <= 1e-5, "descriptors differ by {d_desc}");
        // a real map, not a constant
        let (lo, hi) = lib_map
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi - lo > 1e-3, "flat map {lo}..{hi}");
    }

    // verdicts: omniad predict (libtorch) vs the lite session, image by image
    let outcomes = predict_run(
        &run,
        &paths,
        ComputeDevice::Cpu,
        &PredictOptions::default(),
        |_| Ok(()),
    )
    .expect("predict");
    let scored = session.score(&images).expect("tract scores");
    let mut anomalous = [0, 0];
    let mut classes = std::collections::BTreeSet::new();
    for (j, o) in outcomes.iter().enumerate() {
        let r = o.record().expect("scored");
        let judgement = session.judge(&scored, j, None, None).expect("judge");
        let lite = omniad_lite::judge::make_record(
            &paths[j],
            scored.scores[j],
            &judgement,
            images[j].dimensions(),
        )
        .expect("record");
        assert!((lite.image_score - r.image_score).abs() <= TOL);
        assert_eq!(lite.class, r.class, "image {j}");
        assert_eq!(lite.unknown_class, r.unknown_class, "image {j}");
        assert_eq!(lite.threshold, r.threshold, "image {j}");
        assert_eq!(lite.pixel_threshold, r.pixel_threshold, "image {j}");
        assert_eq!(lite.anomalous, r.anomalous, "image {j}");
        assert_eq!(
            serde_json::to_value(lite.class_source).expect("json"),
            serde_json::to_value(r.class_source).expect("json")
        );
        let dc = (lite.class_confidence.unwrap_or(0.0) - r.class_confidence.unwrap_or(0.0)).abs();
        assert!(dc <= 1e-4, "confidence differs by {dc}");
        if let Some(a) = r.anomalous {
            anomalous[usize::from(a)] += 1;
        }
        classes.insert(r.class.clone());
        // the same JSON keys as omniad predict
        let keys = |v: serde_json::Value| -> Vec<String> {
            v.as_object().expect("object").keys().cloned().collect()
        };
        assert_eq!(
            keys(serde_json::to_value(&lite).expect("json")),
            keys(serde_json::to_value(r).expect("json"))
        );
    }
    // the thresholds split the images: both verdicts occur
    assert!(anomalous[0] > 0 && anomalous[1] > 0, "{anomalous:?}");
    assert!(classes.len() == 2, "{classes:?}");

    // the sidecar carries what a consumer needs
    let sc = session.sidecar();
    assert_eq!(sc.input.size, cfg.image_size);
    assert_eq!(sc.classes, vec!["a".to_string(), "b".to_string()]);
    assert!(sc.recognition.as_ref().is_some_and(|r| r.bank.len() == 6));
    assert_eq!(
        sc.checkpoint_sha256,
        checkpoint::read_meta(&run.join("model.json"))
            .expect("meta")
            .weights_sha256
    );
}

#[test]
fn efficientnet_lite0_export_matches_libtorch() {
    parity(tiny(TeacherArch::EfficientNetLite0, (64, 96)));
}

#[test]
fn resnet34_export_matches_libtorch() {
    parity(tiny(TeacherArch::Resnet34, (64, 64)));
}

#[test]
fn ablations_export_match_libtorch() {
    for (branches, attention) in [
        (Branches::GlobalOnly, GlobalAttention::SelfAttention),
        (Branches::LocalOnly, GlobalAttention::LearnableTokens),
    ] {
        parity(OmniAdConfig {
            branches,
            attention,
            ..tiny(TeacherArch::EfficientNetLite0, (64, 64))
        });
    }
}

/// A fixed batch size is honoured (and refused for other sizes), an exported size other than
/// the checkpoint's runs at that size.
#[test]
fn fixed_batch_and_other_image_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tiny(TeacherArch::EfficientNetLite0, (64, 64));
    let m = model(&cfg);
    let ckpt = checkpoint::save(
        &m,
        &tmp.path().join("run"),
        "model",
        None,
        serde_json::json!({}),
    )
    .expect("save");
    let out = tmp.path().join("fixed.onnx");
    let opts = ExportOptions {
        batch: Batch::Fixed(2),
        image_size: Some((96, 64)),
    };
    export_checkpoint(&ckpt, &out, &opts).expect("export");
    let session = Session::load(&out).expect("load");
    assert_eq!(session.sidecar().input.size, (96, 64));
    assert_eq!(session.sidecar().input.batch, Some(2));
    let imgs = [image(50, 60, 1, 0), image(70, 40, 2, 1)];
    let got = session.score(&imgs).expect("batch of 2");
    assert_eq!(got.output.maps.len(), 2 * 96 * 64);
    let err = session.score(&imgs[..1]).expect_err("batch of 1 refused");
    assert!(err.to_string().contains("batches of 2"), "{err}");
    // the libtorch model at the exported size agrees
    let mut big = m.cfg.clone();
    big.image_size = (96, 64);
    let pp = preprocess_for(&big);
    let flat: Vec<f32> = imgs.iter().flat_map(|i| preprocess_rgb(i, &pp)).collect();
    let lib = m.predict(&Tensor::from_slice(&flat).reshape([2, 3, 96, 64]));
    let lib_map = Vec::<f32>::try_from(lib.anomaly_map.flatten(0, -1)).expect("map");
    let d = max_abs(&got.output.maps, &lib_map);
    assert!(d <= TOL, "{d}");
    // no calibrated thresholds and no bank: no verdict, no class
    let j = session.judge(&got, 0, None, None).expect("judge");
    assert_eq!((j.class, j.threshold), (None, None));
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_exports_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tiny(TeacherArch::EfficientNetLite0, (64, 64));
    let m = model(&cfg);
    let run = tmp.path().join("run");
    let ckpt = checkpoint::save(&m, &run, "model", None, serde_json::json!({})).expect("save");
    let outdir = tmp.path().join("out");
    std::fs::create_dir(&outdir).expect("mkdir");
    let out = outdir.join("model.onnx");

    // unsupported size
    let opts = ExportOptions {
        image_size: Some((100, 64)),
        ..Default::default()
    };
    let e = export_checkpoint(&ckpt, &out, &opts).expect_err("size 100 refused");
    assert!(matches!(e, ExportError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("multiples of 32"), "{e}");
    assert!(files(&outdir).is_empty());

    // unwritable paths: missing folder, a folder
    let e = export_checkpoint(
        &ckpt,
        &tmp.path().join("nope/model.onnx"),
        &Default::default(),
    )
    .expect_err("missing folder");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = export_checkpoint(&ckpt, &outdir, &Default::default()).expect_err("a folder");
    assert!(e.to_string().contains("is a folder"), "{e}");
    assert!(files(&outdir).is_empty());

    // checkpoint failing verification: one byte of the weights altered
    let w = run.join("model.safetensors");
    let mut bytes = std::fs::read(&w).expect("weights");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&w, &bytes).expect("alter");
    let e = export_checkpoint(&ckpt, &out, &Default::default()).expect_err("checksum");
    assert!(matches!(e, ExportError::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    assert!(files(&outdir).is_empty());

    // an altered export is refused by the runtime
    bytes[last] ^= 0x40;
    std::fs::write(&w, &bytes).expect("restore");
    export_checkpoint(&ckpt, &out, &Default::default()).expect("export");
    assert_eq!(files(&outdir), vec!["model.onnx", "model.onnx.json"]);
    let mut onnx = std::fs::read(&out).expect("onnx");
    onnx[10] ^= 1;
    std::fs::write(&out, &onnx).expect("alter");
    let e = Session::load(&out).err().expect("altered model refused");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
}
