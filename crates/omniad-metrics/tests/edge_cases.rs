//! Edge cases: undefined metrics, missing masks, bad values and shapes,
//! constant maps, class handling, sample-level metrics and the file format.

use omniad_metrics::{
    binary_metrics, evaluate_arrays, evaluate_file, write_safetensors, Accumulator, ArrayRef,
    EvalArrays, ImageRecord, Metric, MetricOptions, MetricValue, MetricsError, PixelRecord,
    SyntheticSet,
};

const H: usize = 8;
const W: usize = 8;

/// A small deterministic set: image i anomalous when i % 3 != 0, with a 3x3
/// anomalous square whose scores are raised.
fn small_set(n: usize, seed: u32) -> (Vec<f32>, Vec<u8>, Vec<f32>, Vec<u8>) {
    let mut maps = vec![0f32; n * H * W];
    let mut masks = vec![0u8; n * H * W];
    let mut labels = vec![0u8; n];
    let mut s = seed.wrapping_mul(2654435761).max(1);
    for i in 0..n {
        for p in 0..H * W {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            maps[i * H * W + p] = (s % 1000) as f32 / 1000.0;
        }
        if i % 3 != 0 {
            labels[i] = 1;
            let (y0, x0) = (i % 5, (i * 7) % 5);
            for y in y0..y0 + 3 {
                for x in x0..x0 + 3 {
                    masks[i * H * W + y * W + x] = 1;
                    maps[i * H * W + y * W + x] += 0.4;
                }
            }
        }
    }
    let scores = (0..n)
        .map(|i| {
            maps[i * H * W..(i + 1) * H * W]
                .iter()
                .copied()
                .fold(0.0, f32::max)
        })
        .collect();
    (maps, masks, scores, labels)
}

fn value(v: Option<&MetricValue>) -> f64 {
    match v {
        Some(MetricValue::Defined(x)) => *x,
        other => panic!("expected a value, got {other:?}"),
    }
}

fn reason(v: Option<&MetricValue>) -> String {
    match v {
        Some(MetricValue::Undefined(r)) => r.clone(),
        other => panic!("expected undefined, got {other:?}"),
    }
}

#[test]
fn only_anomalous_images_leave_image_metrics_undefined_but_pixels_computed() {
    let (maps, masks, _, _) = small_set(6, 1);
    let mut acc = Accumulator::new(MetricOptions::default()).unwrap();
    for i in 0..6 {
        acc.push(ImageRecord {
            class: "screw",
            image_score: i as f32,
            label: true,
            pixels: Some(PixelRecord {
                anomaly_map: &maps[i * H * W..(i + 1) * H * W],
                mask: Some(&masks[i * H * W..(i + 1) * H * W]),
                height: H,
                width: W,
            }),
            sample_id: None,
        })
        .unwrap();
    }
    let r = acc.finish().unwrap();
    let c = &r.classes[0];
    assert!(reason(c.metrics.get(&Metric::ImageAuroc)).contains("only anomalous images"));
    assert!(reason(c.metrics.get(&Metric::ImageAp)).contains("only anomalous images"));
    let p = value(c.metrics.get(&Metric::PixelAuroc));
    assert!(p > 0.7 && p <= 1.0, "{p}");
    // mAD over the four pixel metrics only
    assert_eq!(c.mad_terms, 4);
    let want = [
        Metric::PixelAuroc,
        Metric::PixelAp,
        Metric::PixelF1Max,
        Metric::PixelAupro,
    ]
    .iter()
    .map(|m| value(c.metrics.get(m)))
    .sum::<f64>()
        / 4.0;
    assert!((value(Some(&c.mad)) - want).abs() < 1e-12);
    let j = r.to_json();
    assert!(j["classes"][0]["image_auroc"].is_null());
    assert!(j["classes"][0]["undefined"]["image_auroc"]
        .as_str()
        .unwrap()
        .contains("only anomalous"));
    assert_eq!(j["classes"][0]["mad_terms"], 4);
    let t = r.to_table();
    assert!(t.contains("n/a"), "{t}");
    assert!(
        t.contains("screw I-AUROC: n/a, only anomalous images"),
        "{t}"
    );
    assert!(t.contains("mean of the 4 defined metrics"), "{t}");
}

#[test]
fn mean_skips_classes_where_a_metric_is_undefined_and_says_so() {
    let (maps, masks, scores, labels) = small_set(12, 2);
    // class 0: images 0..6 (mixed labels); class 1: only normal images (0, 3, 6, 9)
    let class_ids: Vec<u32> = (0..12).map(|i| (i % 3 == 0 && i >= 6) as u32).collect();
    let shape = [12, H, W];
    let input = EvalArrays {
        image_scores: &scores,
        labels: &labels,
        anomaly_maps: Some(ArrayRef {
            data: &maps,
            shape: &shape,
        }),
        masks: Some(ArrayRef {
            data: &masks,
            shape: &shape,
        }),
        class_ids: Some(&class_ids),
        class_names: vec!["bottle".into(), "cable".into()],
        sample_ids: None,
    };
    let r = evaluate_arrays(&input, &MetricOptions::default()).unwrap();
    assert_eq!(r.classes.len(), 2);
    assert_eq!(r.classes[1].name, "cable");
    assert_eq!(r.classes[1].n_images, 2);
    assert!(reason(r.classes[1].metrics.get(&Metric::ImageAuroc)).contains("only normal"));
    assert!(reason(r.classes[1].metrics.get(&Metric::PixelAupro)).contains("only normal pixels"));
    assert!(r.classes[1].mad.value().is_none());
    let m = &r.mean[&Metric::ImageAuroc];
    assert_eq!(m.skipped, vec!["cable".to_string()]);
    assert_eq!(
        m.value.value(),
        r.classes[0].metrics[&Metric::ImageAuroc].value()
    );
    let j = r.to_json();
    assert_eq!(j["mean"]["skipped"]["image_auroc"][0], "cable");
    assert!(r.to_table().contains("mean I-AUROC: skips cable"));
}

#[test]
fn class_means_equal_the_average_of_separately_scored_classes() {
    let set = SyntheticSet::generate(24, 32, 40, 3, 7);
    let opts = MetricOptions {
        ader: true,
        ..MetricOptions::default()
    };
    let all = evaluate_arrays(&set.as_arrays(), &opts).unwrap();
    assert_eq!(all.classes.len(), 3);
    let hw = 32 * 40;
    let mut sums = std::collections::BTreeMap::<Metric, f64>::new();
    for (k, class) in all.classes.iter().enumerate() {
        let idx: Vec<usize> = (0..24).filter(|&i| set.class_ids[i] == k as u32).collect();
        let (a, b) = (idx[0], idx[idx.len() - 1] + 1);
        let shape = [b - a, 32, 40];
        let one = EvalArrays {
            image_scores: &set.image_scores[a..b],
            labels: &set.labels[a..b],
            anomaly_maps: Some(ArrayRef {
                data: &set.anomaly_maps[a * hw..b * hw],
                shape: &shape,
            }),
            masks: Some(ArrayRef {
                data: &set.masks[a * hw..b * hw],
                shape: &shape,
            }),
            class_ids: None,
            class_names: vec![class.name.clone()],
            sample_ids: None,
        };
        let r = evaluate_arrays(&one, &opts).unwrap();
        assert_eq!(r.classes[0].name, class.name);
        assert_eq!(r.classes[0].metrics, class.metrics);
        for (m, v) in &class.metrics {
            *sums.entry(*m).or_default() += v.value().unwrap();
        }
    }
    for (m, s) in sums {
        assert!(
            (all.mean[&m].value.value().unwrap() - s / 3.0).abs() < 1e-12,
            "{m:?}"
        );
    }
    let mean_mad = Metric::MAD
        .iter()
        .map(|m| all.mean[m].value.value().unwrap())
        .sum::<f64>()
        / 7.0;
    assert!((all.mean_mad.value().unwrap() - mean_mad).abs() < 1e-12);
}

#[test]
fn streaming_and_whole_array_results_are_identical() {
    let set = SyntheticSet::generate(20, 24, 24, 2, 3);
    let opts = MetricOptions {
        ader: true,
        ..MetricOptions::default()
    };
    let a = evaluate_arrays(&set.as_arrays(), &opts).unwrap();
    let b = set.evaluate_streaming(&opts).unwrap();
    assert_eq!(a.classes, b.classes);
    assert_eq!(a.mean, b.mean);
}

#[test]
fn missing_masks_skip_pixel_metrics_with_the_reason() {
    let (maps, _, scores, labels) = small_set(6, 3);
    let shape = [6, H, W];
    let input = EvalArrays {
        image_scores: &scores,
        labels: &labels,
        anomaly_maps: Some(ArrayRef {
            data: &maps,
            shape: &shape,
        }),
        masks: None,
        class_ids: None,
        class_names: vec![],
        sample_ids: None,
    };
    let r = evaluate_arrays(&input, &MetricOptions::default()).unwrap();
    let c = &r.classes[0];
    assert!(value(c.metrics.get(&Metric::ImageAuroc)) > 0.0);
    for m in [
        Metric::PixelAuroc,
        Metric::PixelAp,
        Metric::PixelF1Max,
        Metric::PixelAupro,
    ] {
        assert!(reason(c.metrics.get(&m)).contains("no ground-truth masks"));
    }
    assert_eq!(c.mad_terms, 3);

    // streaming: a class whose images have maps but no masks
    let mut acc = Accumulator::new(MetricOptions::default()).unwrap();
    for i in 0..6 {
        acc.push(ImageRecord {
            class: "grid",
            image_score: scores[i],
            label: labels[i] == 1,
            pixels: Some(PixelRecord {
                anomaly_map: &maps[i * H * W..(i + 1) * H * W],
                mask: None,
                height: H,
                width: W,
            }),
            sample_id: None,
        })
        .unwrap();
    }
    assert_eq!(acc.stored_bytes(), 0);
    let r = acc.finish().unwrap();
    assert!(reason(r.classes[0].metrics.get(&Metric::PixelAupro)).contains("no ground-truth masks"));
}

#[test]
fn a_mask_missing_for_one_image_names_that_image() {
    let (maps, masks, scores, labels) = small_set(4, 4);
    let mut acc = Accumulator::new(MetricOptions::default()).unwrap();
    for i in 0..4 {
        acc.push(ImageRecord {
            class: "tile",
            image_score: scores[i],
            label: labels[i] == 1,
            pixels: Some(PixelRecord {
                anomaly_map: &maps[i * H * W..(i + 1) * H * W],
                mask: (i != 2).then(|| &masks[i * H * W..(i + 1) * H * W]),
                height: H,
                width: W,
            }),
            sample_id: None,
        })
        .unwrap();
    }
    let r = acc.finish().unwrap();
    let why = reason(r.classes[0].metrics.get(&Metric::PixelAuroc));
    assert!(why.contains("image 2 has no mask"), "{why}");
}

#[test]
fn non_finite_values_are_errors_naming_the_image() {
    let (mut maps, masks, mut scores, labels) = small_set(5, 5);
    let shape = [5, H, W];
    scores[3] = f32::NAN;
    let input = EvalArrays {
        image_scores: &scores,
        labels: &labels,
        anomaly_maps: Some(ArrayRef {
            data: &maps,
            shape: &shape,
        }),
        masks: Some(ArrayRef {
            data: &masks,
            shape: &shape,
        }),
        class_ids: None,
        class_names: vec![],
        sample_ids: None,
    };
    let e = evaluate_arrays(&input, &MetricOptions::default()).unwrap_err();
    assert!(
        matches!(e, MetricsError::NonFiniteScore { index: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("image 3"), "{e}");

    scores[3] = 0.5;
    maps[4 * H * W + 2 * W + 5] = f32::INFINITY;
    let input = EvalArrays {
        image_scores: &scores,
        labels: &labels,
        anomaly_maps: Some(ArrayRef {
            data: &maps,
            shape: &shape,
        }),
        masks: Some(ArrayRef {
            data: &masks,
            shape: &shape,
        }),
        class_ids: None,
        class_names: vec![],
        sample_ids: None,
    };
    let e = evaluate_arrays(&input, &MetricOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            MetricsError::NonFiniteMap {
                index: 4,
                y: 2,
                x: 5,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("image 4"), "{e}");

    let mut acc = Accumulator::new(MetricOptions::default()).unwrap();
    let ok = ImageRecord {
        class: "a",
        image_score: 0.1,
        label: false,
        pixels: None,
        sample_id: None,
    };
    acc.push(ok).unwrap();
    let e = acc
        .push(ImageRecord {
            pixels: Some(PixelRecord {
                anomaly_map: &maps[4 * H * W..5 * H * W],
                mask: Some(&masks[..H * W]),
                height: H,
                width: W,
            }),
            ..ok
        })
        .unwrap_err();
    assert!(e.to_string().contains("image 1"), "{e}");
    let e = acc
        .push(ImageRecord {
            image_score: f32::NEG_INFINITY,
            ..ok
        })
        .unwrap_err();
    assert!(e.to_string().contains("image 1"), "{e}");
    // nothing was stored by the failed pushes
    assert_eq!(acc.n_images(), 1);
}

#[test]
fn shape_mismatches_name_both_shapes() {
    let (maps, masks, scores, labels) = small_set(4, 6);
    let map_shape = [4, H, W];
    let bad_mask_shape = [4, 4, 16];
    let input = EvalArrays {
        image_scores: &scores,
        labels: &labels,
        anomaly_maps: Some(ArrayRef {
            data: &maps,
            shape: &map_shape,
        }),
        masks: Some(ArrayRef {
            data: &masks,
            shape: &bad_mask_shape,
        }),
        class_ids: None,
        class_names: vec![],
        sample_ids: None,
    };
    let e = evaluate_arrays(&input, &MetricOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("[4, 8, 8]") && msg.contains("[4, 4, 16]"),
        "{msg}"
    );

    let input = EvalArrays {
        labels: &labels[..3],
        masks: None,
        ..input
    };
    let msg = evaluate_arrays(&input, &MetricOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("labels") && msg.contains("[3]") && msg.contains("[4]"),
        "{msg}"
    );

    let mut acc = Accumulator::new(MetricOptions::default()).unwrap();
    let msg = acc
        .push(ImageRecord {
            class: "a",
            image_score: 0.0,
            label: false,
            pixels: Some(PixelRecord {
                anomaly_map: &maps[..H * W],
                mask: Some(&masks[..H * W - 1]),
                height: H,
                width: W,
            }),
            sample_id: None,
        })
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[63]") && msg.contains("[8, 8]"), "{msg}");
}

#[test]
fn labels_and_masks_must_be_binary() {
    let (maps, mut masks, scores, mut labels) = small_set(4, 7);
    let shape = [4, H, W];
    labels[2] = 2;
    let mk = |labels: &[u8], masks: &[u8]| {
        let input = EvalArrays {
            image_scores: &scores,
            labels,
            anomaly_maps: Some(ArrayRef {
                data: &maps,
                shape: &shape,
            }),
            masks: Some(ArrayRef {
                data: masks,
                shape: &shape,
            }),
            class_ids: None,
            class_names: vec![],
            sample_ids: None,
        };
        evaluate_arrays(&input, &MetricOptions::default()).unwrap_err()
    };
    let e = mk(&labels, &masks);
    assert!(
        matches!(
            e,
            MetricsError::NotBinary {
                what: "label",
                index: 2,
                value: 2
            }
        ),
        "{e}"
    );
    labels[2] = 1;
    masks[H * W * 3 + 1] = 255;
    let e = mk(&labels, &masks);
    assert!(
        matches!(
            e,
            MetricsError::NotBinary {
                what: "mask",
                index: 3,
                value: 255
            }
        ),
        "{e}"
    );
}

#[test]
fn constant_maps_give_half_auroc_not_a_crash() {
    let n = 4;
    let maps = vec![0.25f32; n * H * W];
    let (_, masks, _, labels) = small_set(n, 8);
    let scores = vec![1.0f32; n];
    let shape = [n, H, W];
    let input = EvalArrays {
        image_scores: &scores,
        labels: &labels,
        anomaly_maps: Some(ArrayRef {
            data: &maps,
            shape: &shape,
        }),
        masks: Some(ArrayRef {
            data: &masks,
            shape: &shape,
        }),
        class_ids: None,
        class_names: vec![],
        sample_ids: None,
    };
    let opts = MetricOptions {
        ader: true,
        ..MetricOptions::default()
    };
    let r = evaluate_arrays(&input, &opts).unwrap();
    let c = &r.classes[0];
    assert_eq!(value(c.metrics.get(&Metric::ImageAuroc)), 0.5);
    assert_eq!(value(c.metrics.get(&Metric::PixelAuroc)), 0.5);
    let frac = c.n_anomalous_pixels as f64 / c.n_pixels as f64;
    assert!((value(c.metrics.get(&Metric::PixelAp)) - frac).abs() < 1e-12);
    // one threshold: the PRO curve is the diagonal (0,0)-(1,1): area 0.045 / 0.3
    assert!((value(c.metrics.get(&Metric::PixelAupro)) - 0.15).abs() < 1e-12);
    assert!(reason(c.metrics.get(&Metric::PixelAuproAder)).contains("constant"));
    assert!(r.to_table().contains("n/a"));
}

#[test]
fn sample_level_metrics_use_the_max_over_views() {
    // 3 samples x 2 views; sample 1 anomalous through its second view only
    let scores = [0.1f32, 0.2, 0.15, 0.9, 0.3, 0.05];
    let labels = [0u8, 0, 0, 1, 1, 0];
    let samples = [0u64, 0, 1, 1, 2, 2];
    let input = EvalArrays {
        image_scores: &scores,
        labels: &labels,
        anomaly_maps: None,
        masks: None,
        class_ids: None,
        class_names: vec![],
        sample_ids: Some(&samples),
    };
    let r = evaluate_arrays(&input, &MetricOptions::default()).unwrap();
    let c = &r.classes[0];
    assert_eq!(c.n_samples, Some(3));
    // sample scores [0.2, 0.9, 0.3], labels [0, 1, 1] -> AUROC 1
    let want = binary_metrics(&[0.2, 0.9, 0.3], &[false, true, true]).unwrap();
    assert_eq!(c.metrics[&Metric::SampleAuroc], want.auroc);
    assert_eq!(value(c.metrics.get(&Metric::SampleAuroc)), 1.0);
    assert_eq!(c.metrics[&Metric::SampleAp], want.ap);
    assert!(reason(c.metrics.get(&Metric::PixelAuroc)).contains("no anomaly maps"));
    // the same through the accumulator, with string ids
    let mut acc = Accumulator::new(MetricOptions::default()).unwrap();
    for i in 0..6 {
        let id = format!("s{}", samples[i]);
        acc.push(ImageRecord {
            class: "real_iad",
            image_score: scores[i],
            label: labels[i] == 1,
            pixels: None,
            sample_id: Some(&id),
        })
        .unwrap();
    }
    let r2 = acc.finish().unwrap();
    assert_eq!(r2.classes[0].metrics[&Metric::SampleAuroc], want.auroc);
    assert_eq!(r2.classes[0].n_samples, Some(3));
}

#[test]
fn file_roundtrip_and_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let set = SyntheticSet::generate(9, 16, 12, 2, 11);
    let path = dir.path().join("maps.safetensors");
    write_safetensors(&path, &set.as_arrays()).unwrap();
    // no temporary file left next to it
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let opts = MetricOptions::default();
    let from_file = evaluate_file(&path, &opts).unwrap();
    let direct = evaluate_arrays(&set.as_arrays(), &opts).unwrap();
    assert_eq!(from_file, direct);
    assert_eq!(from_file.classes[0].name, "synthetic_0");

    let missing = dir.path().join("nope.safetensors");
    let e = evaluate_file(&missing, &opts).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors"), "{e}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file").unwrap();
    let e = evaluate_file(&garbage, &opts).unwrap_err().to_string();
    assert!(
        e.contains("garbage.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    // image scores only, with a wrong dtype for labels
    let bad = dir.path().join("bad.safetensors");
    let scores: Vec<u8> = [0.5f32, 0.7].iter().flat_map(|x| x.to_le_bytes()).collect();
    let labels: Vec<u8> = [0.0f32, 1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let t = vec![
        (
            "image_scores",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &scores)
                .unwrap(),
        ),
        (
            "labels",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &labels)
                .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(t, &None, &bad).unwrap();
    let e = evaluate_file(&bad, &opts).unwrap_err().to_string();
    assert!(
        e.contains("bad.safetensors") && e.contains("`labels` has dtype F32"),
        "{e}"
    );

    // class ids beyond the class names
    let mut arrays = set.as_arrays();
    arrays.class_names = vec!["only_one".into()];
    let path2 = dir.path().join("ids.safetensors");
    write_safetensors(&path2, &arrays).unwrap();
    let e = evaluate_file(&path2, &opts).unwrap_err().to_string();
    assert!(
        e.contains("ids.safetensors") && e.contains("class id of image"),
        "{e}"
    );
}

#[test]
fn invalid_options_are_rejected() {
    let bad = MetricOptions {
        aupro_fpr_limit: 0.0,
        ..MetricOptions::default()
    };
    assert!(matches!(
        Accumulator::new(bad).unwrap_err(),
        MetricsError::InvalidOptions(_)
    ));
}

#[test]
fn sparse_class_ids_without_names_are_grouped_by_id() {
    let scores = [0.1f32, 0.9, 0.2, 0.8];
    let labels = [0u8, 1, 0, 1];
    let ids = [7u32, 4_000_000_000, 7, 4_000_000_000];
    let input = EvalArrays {
        image_scores: &scores,
        labels: &labels,
        anomaly_maps: None,
        masks: None,
        class_ids: Some(&ids),
        class_names: vec![],
        sample_ids: None,
    };
    let r = evaluate_arrays(&input, &MetricOptions::default()).unwrap();
    let names: Vec<&str> = r.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["class_7", "class_4000000000"]);
    assert_eq!(r.classes[0].n_images, 2);
    assert!(reason(r.classes[0].metrics.get(&Metric::ImageAuroc)).contains("only normal"));
}
