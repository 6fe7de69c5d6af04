//! `omniad predict` outputs: records, scores against an independent forward pass, overlay and
//! mask PNGs at the original image size, and the reference preprocessing on shared fixtures.
mod predict_common;

use std::path::PathBuf;

use omniad_data::load_rgb;
use omniad_metrics::normalise_score;
use omniad_model::checkpoint::Thresholds;
use omniad_model::OmniAd;
use omniad_pipeline::predict::PredictOptions;
use predict_common::*;
use tch::{Device, Kind, Tensor};

/// The model's map upsampled like the overlay/mask contract says (bilinear, align_corners false).
fn upsampled(map: &Tensor, w: u32, h: u32) -> Vec<f32> {
    let s = map.size();
    let up = map.reshape([1, 1, s[0], s[1]]).upsample_bilinear2d(
        [i64::from(h), i64::from(w)],
        false,
        None,
        None,
    );
    Vec::<f32>::try_from(up.flatten(0, -1)).unwrap()
}

#[test]
fn records_overlays_and_masks_match_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let inputs: Vec<PathBuf> = vec![
        imgs.join("rgb.png"),
        imgs.join("gray.png"),
        imgs.join("rgba.png"),
        imgs.join("gray16.png"),
    ];
    write_rgb(&inputs[0], 100, 80, 1);
    write_gray(&inputs[1], 64, 64, 2);
    write_rgba(&inputs[2], 50, 70, 3);
    write_gray16(&inputs[3], 33, 47, 4);
    let sizes = [(100, 80), (64, 64), (50, 70), (33, 47)];

    let model = make_run(&run, (64, 96), None);
    let refs: Vec<(f64, Tensor)> = inputs.iter().map(|p| reference(&model, p)).collect();
    // Threshold in the middle of the first image's map, so its mask has both values.
    let (lo, hi) = (
        refs[0].1.min().double_value(&[]),
        refs[0].1.max().double_value(&[]),
    );
    assert!(
        hi > lo,
        "untrained model should still give a non-constant map ({lo}..{hi})"
    );
    let t_set = (lo + hi) / 2.0;
    let bounds = (0.0, 4.0 * hi);
    let thresholds = Thresholds {
        global: Some(t_set),
        score_bounds: Some(bounds),
        ..Default::default()
    };
    set_thresholds(&model, &run, Some(thresholds));

    let out = tmp.path().join("out");
    let opts = PredictOptions {
        out: Some(out.clone()),
        batch_size: 3, // a full batch and a partial one
        ..Default::default()
    };
    let records = predict(&run, &inputs, &opts).unwrap();
    assert_eq!(records.len(), 4);
    // The stored threshold (JSON round trip: may differ from the value set in the last bit).
    let t = records[0].threshold.unwrap();
    assert!((t - t_set).abs() <= 1e-12 * t_set, "{t} vs {t_set}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.path, inputs[i]);
        assert_eq!((r.width, r.height), sizes[i], "{}", r.path.display());
        let want = refs[i].0;
        assert!(
            (r.image_score - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{}: {} vs {want}",
            r.path.display(),
            r.image_score
        );
        assert!(
            r.image_score > 0.0 && r.image_score <= 2.0,
            "{}",
            r.image_score
        );
        assert_eq!(r.threshold, Some(t));
        assert_eq!(r.anomalous, Some(r.image_score >= t));
        let ns = r.normalised_score.unwrap();
        assert!((ns - normalise_score(r.image_score, t, Some(bounds))).abs() < 1e-12);
        assert!(
            (ns - ((r.image_score - t) / (4.0 * hi) + 0.5)).abs() < 1e-12,
            "{ns}"
        );

        let overlay_path = r.overlay.as_ref().unwrap();
        let mask_path = r.mask.as_ref().unwrap();
        assert_eq!(
            overlay_path,
            &out.join(format!(
                "{}_overlay.png",
                ["rgb", "gray", "rgba", "gray16"][i]
            ))
        );
        let ov = image::open(overlay_path).unwrap();
        assert_eq!((ov.width(), ov.height()), sizes[i]);
        assert!(matches!(ov, image::DynamicImage::ImageRgb8(_)));
        let original = load_rgb(&inputs[i]).unwrap();
        assert_ne!(ov.to_rgb8(), original, "alpha 0.5 must colour the image");

        let mask = image::open(mask_path).unwrap();
        assert!(matches!(mask, image::DynamicImage::ImageLuma8(_)));
        let mask = mask.to_luma8();
        assert_eq!(mask.dimensions(), sizes[i]);
        assert!(mask.as_raw().iter().all(|&v| v == 0 || v == 255));
        // 255 exactly where the upsampled map reaches the threshold.
        let map = upsampled(&refs[i].1, sizes[i].0, sizes[i].1);
        let mut disagree = 0;
        for (m, v) in mask.as_raw().iter().zip(&map) {
            let expect = if f64::from(*v) >= t { 255 } else { 0 };
            if *m != expect && (f64::from(*v) - t).abs() > 1e-5 {
                disagree += 1;
            }
        }
        assert_eq!(disagree, 0, "{}", r.path.display());
        if i == 0 {
            let high = mask.as_raw().iter().filter(|&&v| v == 255).count();
            assert!(
                high > 0 && high < mask.as_raw().len(),
                "mixed mask expected, {high} pixels at 255"
            );
        }
    }
    // Nothing else (no temporary file) in the output folder.
    assert_eq!(file_names(&out).len(), 8, "{:?}", file_names(&out));

    // JSON line: the CLI prints this.
    let line = serde_json::to_value(&records[0]).unwrap();
    assert_eq!(line["width"], 100);
    assert_eq!(line["height"], 80);
    assert_eq!(
        line["anomalous"],
        serde_json::json!(records[0].anomalous.unwrap())
    );
    assert_eq!(line["path"], inputs[0].to_string_lossy().as_ref());

    // alpha 0: the overlay is the decoded image itself (gray replicated, alpha dropped, 16 bit scaled).
    let out0 = tmp.path().join("out0");
    let opts0 = PredictOptions {
        out: Some(out0),
        alpha: 0.0,
        batch_size: 1,
        ..Default::default()
    };
    let records0 = predict(&run, &inputs, &opts0).unwrap();
    for (r, r_batched) in records0.iter().zip(&records) {
        let ov = image::open(r.overlay.as_ref().unwrap()).unwrap().to_rgb8();
        assert_eq!(ov, load_rgb(&r.path).unwrap(), "{}", r.path.display());
        assert!(
            (r.image_score - r_batched.image_score).abs() < 1e-5,
            "batching changes the score"
        );
    }
    // alpha 1: the bare colour map; with a threshold the colour scale is [0, 2t].
    let out1 = tmp.path().join("out1");
    let opts1 = PredictOptions {
        out: Some(out1),
        alpha: 1.0,
        ..Default::default()
    };
    let r1 = predict(&run, &inputs[..1], &opts1).unwrap();
    let ov = image::open(r1[0].overlay.as_ref().unwrap())
        .unwrap()
        .to_rgb8();
    let map = upsampled(&refs[0].1, 100, 80);
    let mut bad = 0;
    for (px, v) in ov.pixels().zip(&map) {
        let want = omniad_pipeline::overlay::turbo(f64::from(*v) / (2.0 * t));
        // Pixels at a quantisation boundary may round to the neighbouring colour.
        let near = [
            f64::from(*v) / (2.0 * t) - 1.0 / 510.0,
            f64::from(*v) / (2.0 * t) + 1.0 / 510.0,
        ]
        .map(omniad_pipeline::overlay::turbo);
        if px.0 != want && px.0 != near[0] && px.0 != near[1] {
            bad += 1;
        }
    }
    assert_eq!(bad, 0);
}

fn fixtures() -> PathBuf {
    omniad_testkit::fixture_dir("preprocess", "expected.safetensors")
}

/// Inference applies the reference (Pillow) preprocessing at any image size: scores equal the
/// model's on the fixture's expected input tensors (ImageNet-normalised, converted to the
/// EfficientNet normalisation of this teacher).
#[test]
fn scores_use_the_reference_preprocessing() {
    let fx = fixtures();
    let names = ["rgb_700x523.png", "gray_257x300.png", "rgba_320x200.png"];
    let expected = Tensor::read_safetensors(fx.join("expected.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model: OmniAd = make_run(tmp.path(), (256, 256), None);
    let (mean_in, std_in) = (
        Tensor::from_slice(&omniad_model::TeacherArch::Resnet34.input_mean_std().0)
            .reshape([3, 1, 1]),
        Tensor::from_slice(&omniad_model::TeacherArch::Resnet34.input_mean_std().1)
            .reshape([3, 1, 1]),
    );
    let xs: Vec<Tensor> = names
        .iter()
        .map(|n| {
            let key = format!("image.{n}");
            let x = expected
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap_or_else(|| panic!("{key} not in fixture"))
                .1
                .shallow_clone();
            let pixels = x.to_kind(Kind::Float) * &std_in + &mean_in; // [0, 1]
            (pixels - 127.0 / 255.0) / (128.0 / 255.0)
        })
        .collect();
    let pred = model.predict(&Tensor::stack(&xs, 0).to_device(Device::Cpu));
    let want = Vec::<f32>::try_from(pred.image_scores).unwrap();

    let inputs: Vec<PathBuf> = names.iter().map(|n| fx.join(n)).collect();
    let records = predict(tmp.path(), &inputs, &PredictOptions::default()).unwrap();
    for ((r, w), n) in records.iter().zip(&want).zip(names) {
        assert!(
            (r.image_score - f64::from(*w)).abs() < 1e-4,
            "{n}: {} vs {w}",
            r.image_score
        );
        let (iw, ih) = omniad_data::image_size(&fx.join(n)).unwrap();
        assert_eq!((r.width, r.height), (iw, ih));
        assert_eq!(r.threshold, None);
        assert_eq!(r.anomalous, None);
        assert_eq!(r.normalised_score, None);
        assert_eq!(r.overlay, None);
    }
    assert_eq!((records[0].width, records[0].height), (700, 523));
}
