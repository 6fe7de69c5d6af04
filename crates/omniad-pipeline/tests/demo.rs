//! A shorter version of `omniad demo` with a lower bar: synthetic data, training on all classes
//! with the shipped EfficientNet-Lite0 teacher, evaluation. The full demo's numbers are in the
//! README (mean image and pixel AUROC >= 0.90).
use omniad_pipeline::demo::{run_demo, DemoConfig};

#[test]
fn short_demo_detects_synthetic_defects() {
    tch::set_num_threads(2);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = DemoConfig::standard(tmp.path());
    cfg.synth.size = 128;
    cfg.synth.train_per_class = 20;
    cfg.synth.test_good_per_class = 8;
    cfg.synth.test_defect_per_class = 10;
    cfg.image_size = 128;
    cfg.epochs = 6;
    cfg.progress = false;
    let out = run_demo(&cfg).expect("demo runs");
    let mean = out.eval.report.to_json()["mean"].clone();
    let i_auroc = mean["image_auroc"].as_f64().expect("image AUROC defined");
    let p_auroc = mean["pixel_auroc"].as_f64().expect("pixel AUROC defined");
    println!("{}", out.eval.report.to_table());
    println!(
        "short demo: mean I-AUROC {i_auroc:.4}, P-AUROC {p_auroc:.4}, times {:?}",
        out.seconds
    );
    assert_eq!(
        out.eval.report.classes.len(),
        omniad_synth::class_names().len()
    );
    assert!(i_auroc >= 0.75, "mean image AUROC {i_auroc}");
    assert!(p_auroc >= 0.80, "mean pixel AUROC {p_auroc}");
    // The run folder holds everything the demo promises.
    for f in [
        "model.json",
        "model.safetensors",
        "config.toml",
        "train_log.jsonl",
        "metrics.json",
        "metrics.csv",
    ] {
        assert!(out.run_dir.join(f).is_file(), "missing {f}");
    }
    assert!(out.maps_dir.join("woven.safetensors").is_file());
}
