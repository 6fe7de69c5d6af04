//! Training behaviour on a tiny synthetic configuration: exact resume, feature cache equivalence.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use omniad_data::DatasetKind;
use omniad_model::checkpoint;
use omniad_pipeline::config::{CalibrationConfig, DataConfig, FeatureCache, TrainConfig};
use omniad_pipeline::{train, TrainOptions};
use omniad_synth::SynthConfig;
use tch::{Device, Tensor};

/// libtorch's random generator (initialisation, jitter) is global to the process, and training
/// seeds it: tests that train must not run concurrently in this test binary.
static TRAINING: Mutex<()> = Mutex::new(());

fn tiny_data(dir: &Path) {
    let cfg = SynthConfig {
        seed: 3,
        size: 64,
        train_per_class: 5,
        test_good_per_class: 2,
        test_defect_per_class: 2,
        classes: Some(vec!["woven".into(), "flange".into()]),
    };
    omniad_synth::generate(dir, &cfg).expect("synthetic data");
}

fn tiny_cfg(data: &Path, out: &Path, cache: FeatureCache) -> TrainConfig {
    let mut cfg = TrainConfig {
        epochs: 3,
        batch_size: 4,
        seed: 7,
        out: out.to_path_buf(),
        feature_cache: cache,
        save_every: 1,
        // Keep the short last batch (10 images, batch 4: batches of 4, 4, 2), the harder case
        // for resume; `drop_last_keeps_full_batches_only` covers the reference's default.
        drop_last: false,
        data: DataConfig {
            dataset: DatasetKind::Mvtec,
            data_root: data.to_path_buf(),
            ..DataConfig::default()
        },
        // all 10 images trained on (held-out calibration is tested in decisions.rs)
        calibration: CalibrationConfig::none(),
        ..TrainConfig::default()
    };
    cfg.model.depths = [1, 1, 1, 1];
    cfg.model.image_size = (64, 64);
    cfg
}

fn weights(run: &Path) -> BTreeMap<String, Tensor> {
    let (model, _) = checkpoint::load(&run.join("model.json"), Device::Cpu).expect("checkpoint");
    model.named_tensors().into_iter().collect()
}

fn max_rel_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(k, t)| {
            let d = (t - &b[k]).abs().max().double_value(&[]);
            d / t.abs().max().double_value(&[]).max(1e-12)
        })
        .fold(0.0, f64::max)
}

#[test]
fn resumed_run_ends_with_the_same_weights() {
    let _serial = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_data(&data);
    // 10 training images, batch 4 -> 3 steps per epoch, 9 steps in all.
    let full = tmp.path().join("full");
    let a = train(
        &tiny_cfg(&data, &full, FeatureCache::Memory),
        &TrainOptions::default(),
    )
    .unwrap();
    assert_eq!(a.steps, 9);
    assert_eq!(a.epochs_done, 3);
    assert!(!a.interrupted);

    // Stop in the middle of epoch 2 (after step 4), as a killed run would, then resume.
    let part = tmp.path().join("part");
    let cfg = tiny_cfg(&data, &part, FeatureCache::Memory);
    let b = train(
        &cfg,
        &TrainOptions {
            max_steps: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(b.interrupted);
    assert_eq!(b.steps, 4);
    let c = train(
        &cfg,
        &TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.steps, 9);
    assert_eq!(c.epochs_done, 3);

    let d = max_rel_diff(&weights(&full), &weights(&part));
    println!("resumed vs uninterrupted: max relative weight difference {d:.3e}");
    assert!(d < 1e-6, "resumed run differs: {d}");
    // The log reads as one run: 9 step lines, steps 1..=9 in order.
    let log = std::fs::read_to_string(part.join("train_log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
        .collect();
    assert_eq!(steps, (1..=9).collect::<Vec<u64>>());
    // Resuming a finished run is refused with a clear error (no silent no-op); a larger
    // `epochs` would extend it.
    let err = train(
        &cfg,
        &TrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("finished all 3 epochs"),
        "{err:#}"
    );
    // A new run into a folder with a checkpoint is refused.
    let err = train(&cfg, &TrainOptions::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("already holds a checkpoint"),
        "{err:#}"
    );
}

#[test]
fn feature_cache_gives_the_same_training() {
    let _serial = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_data(&data);
    let mut runs = Vec::new();
    for (name, cache) in [
        ("mem", FeatureCache::Memory),
        ("none", FeatureCache::None),
        ("f16", FeatureCache::MemoryF16),
        ("disk", FeatureCache::Disk),
        ("auto", FeatureCache::Auto),
    ] {
        let out = tmp.path().join(name);
        let mut cfg = tiny_cfg(&data, &out, cache);
        cfg.epochs = 2;
        let o = train(&cfg, &TrainOptions::default()).unwrap();
        runs.push((o, weights(&out)));
    }
    let d = max_rel_diff(&runs[0].1, &runs[1].1);
    println!(
        "cache vs no cache: max relative weight difference {d:.3e}, losses {} {}",
        runs[0].0.last_loss, runs[1].0.last_loss
    );
    assert!(d < 1e-4, "cache changes training: {d}");
    // The memory-mapped disk cache and the automatic choice train bit-identically to the memory
    // cache, and the disk cache's file is gone afterwards.
    for (i, what) in [(3, "disk"), (4, "auto")] {
        let d = max_rel_diff(&runs[0].1, &runs[i].1);
        assert_eq!(d, 0.0, "{what} cache changes training: {d}");
        assert!(!tmp.path().join(what).join(".feature-cache.f32").exists());
    }
    assert!(
        runs[3].0.feature_cache.starts_with("disk, f32"),
        "{}",
        runs[3].0.feature_cache
    );
    assert!(
        runs[4].0.feature_cache.contains("fits the budget"),
        "{}",
        runs[4].0.feature_cache
    );
    let l = (runs[2].0.last_loss - runs[0].0.last_loss).abs() / runs[0].0.last_loss;
    println!(
        "f16 cache: loss {} vs {} (rel {l:.2e})",
        runs[2].0.last_loss, runs[0].0.last_loss
    );
    assert!(l < 1e-3, "f16 cache loss parity {l}");
}

/// The reference's data loader drops the last incomplete batch of every epoch (`drop_last=True`),
/// and so does `drop_last` (the default): 10 images at batch 4 give 2 steps per epoch, every step
/// a full batch; fewer images than one batch is a clear error.
#[test]
fn drop_last_keeps_full_batches_only() {
    let _serial = TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_data(&data);
    let out = tmp.path().join("run");
    let mut cfg = tiny_cfg(&data, &out, FeatureCache::Memory);
    cfg.drop_last = true;
    cfg.epochs = 2;
    let o = train(&cfg, &TrainOptions::default()).unwrap();
    assert_eq!(o.steps, 4);
    assert_eq!(o.epochs_done, 2);
    let mut cfg = tiny_cfg(&data, &tmp.path().join("big"), FeatureCache::Memory);
    cfg.drop_last = true;
    cfg.batch_size = 11;
    let err = format!("{:#}", train(&cfg, &TrainOptions::default()).unwrap_err());
    assert!(
        err.contains("10 training images") && err.contains("batch size 11"),
        "{err}"
    );
}
