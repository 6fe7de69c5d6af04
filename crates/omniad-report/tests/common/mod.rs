//! A run folder as `omniad eval` leaves it, built without a model: synthetic anomaly maps and
//! masks, their real metrics (`omniad-metrics`), calibrated thresholds, per-image results, the
//! maps files, input images and a training log.
#![allow(dead_code)] // each test file uses a part of these

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use omniad_metrics::{
    evaluate_arrays, f1_optimal_threshold, ArrayRef, EvalArrays, EvalResults, ImageResult,
    MetricOptions,
};
use omniad_model::checkpoint::{CheckpointMeta, Thresholds, FORMAT, VERSION};
use omniad_model::OmniAdConfig;
use serde_json::json;

/// Map side of the fixture.
pub const SIDE: usize = 24;

/// A fixture run folder (removed on drop).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub run: PathBuf,
    /// Per class: (score, anomalous) of its images in order.
    pub scores: BTreeMap<String, Vec<(f32, bool)>>,
    pub thresholds: Thresholds,
}

fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `classes`: (name, normal images, anomalous images). Anomalous images have a square defect
/// whose map response is weak for some images (so there are misses), normal images have noise
/// that is strong for some (so there are false alarms).
pub fn make_run(classes: &[(&str, usize, usize)], with_maps: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&run).unwrap();
    let (h, w) = (SIDE, SIDE);
    let mut all_maps: Vec<f32> = Vec::new();
    let mut all_masks: Vec<u8> = Vec::new();
    let mut scores_all: Vec<f32> = Vec::new();
    let mut labels_all: Vec<u8> = Vec::new();
    let mut ids: Vec<u32> = Vec::new();
    let mut results = EvalResults::new((h, w), with_maps.then(|| PathBuf::from("maps")));
    let mut per_class_scores = BTreeMap::new();
    if with_maps {
        std::fs::create_dir_all(run.join("maps")).unwrap();
    }
    for (ci, &(class, n_good, n_bad)) in classes.iter().enumerate() {
        let mut r = rng(ci as u64 + 7);
        let cdir = data.join(class);
        std::fs::create_dir_all(&cdir).unwrap();
        let (mut maps, mut masks, mut sc, mut lab) = (vec![], vec![], vec![], vec![]);
        for i in 0..n_good + n_bad {
            let bad = i >= n_good;
            let mut mask = vec![0u8; h * w];
            let strength = 0.2 + 0.8 * r();
            if bad {
                let (y0, x0) = (2 + (r() * 12.0) as usize, 2 + (r() * 12.0) as usize);
                for y in y0..y0 + 6 {
                    for x in x0..x0 + 5 {
                        mask[y * w + x] = 1;
                    }
                }
            }
            let noise = if !bad && i % 4 == 0 { 0.6 } else { 0.35 };
            let map: Vec<f32> = mask
                .iter()
                .map(|&m| noise * r() + if m == 1 { 0.45 * strength } else { 0.0 })
                .collect();
            let score = map.iter().copied().fold(f32::MIN, f32::max);
            let img = image::RgbImage::from_fn(40, 30, |x, y| {
                image::Rgb([(x * 6) as u8, (y * 8) as u8, if bad { 200 } else { 40 }])
            });
            let path = cdir.join(format!("{i:03}.png"));
            img.save(&path).unwrap();
            results.images.push(ImageResult {
                class: class.into(),
                image: path,
                masks: vec![],
                defect: if bad { "crack".into() } else { "good".into() },
                anomalous: bad,
                score,
            });
            maps.extend_from_slice(&map);
            masks.extend_from_slice(&mask);
            sc.push(score);
            lab.push(bad);
            ids.push(ci as u32);
        }
        if with_maps {
            let n = sc.len();
            let map_bytes: Vec<u8> = maps.iter().flat_map(|v: &f32| v.to_le_bytes()).collect();
            let views = vec![
                (
                    "anomaly_maps",
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        vec![n, h, w],
                        &map_bytes,
                    )
                    .unwrap(),
                ),
                (
                    "masks",
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::U8,
                        vec![n, h, w],
                        &masks,
                    )
                    .unwrap(),
                ),
            ];
            let bytes = safetensors::serialize(views, &None).unwrap();
            std::fs::write(run.join(format!("maps/{class}.safetensors")), bytes).unwrap();
        }
        per_class_scores.insert(
            class.to_string(),
            sc.iter()
                .copied()
                .zip(lab.iter().copied())
                .collect::<Vec<_>>(),
        );
        all_maps.extend_from_slice(&maps);
        all_masks.extend_from_slice(&masks);
        scores_all.extend_from_slice(&sc);
        labels_all.extend(lab.iter().map(|&b| b as u8));
    }
    let n = scores_all.len();
    let shape = [n, h, w];
    let report = evaluate_arrays(
        &EvalArrays {
            image_scores: &scores_all,
            labels: &labels_all,
            anomaly_maps: Some(ArrayRef {
                data: &all_maps,
                shape: &shape,
            }),
            masks: Some(ArrayRef {
                data: &all_masks,
                shape: &shape,
            }),
            class_ids: Some(&ids),
            class_names: classes.iter().map(|c| c.0.to_string()).collect(),
            sample_ids: None,
        },
        &MetricOptions::default(),
    )
    .unwrap();
    let mut per_class = BTreeMap::new();
    for (c, pairs) in &per_class_scores {
        let p: Vec<(f64, bool)> = pairs.iter().map(|&(s, l)| (s as f64, l)).collect();
        if let Some((t, _)) = f1_optimal_threshold(&p) {
            per_class.insert(c.clone(), t);
        }
    }
    let thresholds = Thresholds {
        global: Some(0.5),
        per_class,
        method: "F1-optimal (test fixture)".into(),
        score_bounds: None,
        ..Default::default()
    };
    let mut metrics = report.to_json();
    metrics["thresholds"] = serde_json::to_value(&thresholds).unwrap();
    metrics["warnings"] = json!([]);
    metrics["dataset"] = json!({"kind": "folder", "root": "data"});
    std::fs::write(
        run.join("metrics.json"),
        serde_json::to_string_pretty(&metrics).unwrap(),
    )
    .unwrap();
    std::fs::write(
        run.join("results.json"),
        results.to_json_string().expect("JSON"),
    )
    .unwrap();
    let meta = CheckpointMeta {
        format: FORMAT.into(),
        version: VERSION,
        config: OmniAdConfig::default(),
        input_mean_std: ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        weights_file: "model.safetensors".into(),
        weights_sha256: "0".repeat(64),
        thresholds: Some(thresholds.clone()),
        provenance: json!({}),
        recognition: None,
    };
    std::fs::write(
        run.join("model.json"),
        serde_json::to_string_pretty(&meta).unwrap(),
    )
    .unwrap();
    let mut log = String::new();
    for step in 1..=40u64 {
        let epoch = (step - 1) / 8 + 1;
        let loss = 0.5 / (1.0 + step as f64 * 0.1);
        log.push_str(&format!(
            "{{\"epoch\":{epoch},\"step\":{step},\"loss\":{loss},\"lr\":0.001,\"grad_norm\":1.0,\"images_per_sec\":10.0}}\n"
        ));
    }
    log.push_str("{\"epoch\":5,\"eval\":{\"image_auroc\":0.9}}\n");
    std::fs::write(run.join("train_log.jsonl"), log).unwrap();
    Fixture {
        dir,
        run,
        scores: per_class_scores,
        thresholds,
    }
}

/// The parts of `html` between `start` markers (each up to the next `start` or the end).
pub fn sections<'a>(html: &'a str, start: &str) -> Vec<&'a str> {
    html.split(start).skip(1).collect()
}

/// Value of attribute `name` in each tag of `html` that has it.
pub fn attrs<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let pat = format!(" {name}=\"");
    html.split(pat.as_str())
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect()
}

/// `html` with the entity minijinja writes for `/` decoded (text comparisons).
pub fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}
