//! Bad files among good ones (issue 14): `predict` reports an image it cannot score and scores
//! the others (status 1, a summary line), output names never collide, `eval` warns about an
//! anomalous image whose mask is all zero, `train` refuses a test split with a mask of the
//! wrong size in seconds, before training, and `train --resume` accepts repeated flags.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use omniad_model::checkpoint;
use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};

/// An untrained tiny model (64x64, the shipped EfficientNet-Lite0 teacher) saved as the run
/// `dir`: enough to score images without training.
fn tiny_run(dir: &Path) -> PathBuf {
    let cfg = OmniAdConfig {
        teacher: TeacherArch::EfficientNetLite0,
        depths: [1, 1, 1, 1],
        neck_width: 64,
        num_tokens: 16,
        heads: 8,
        image_size: (64, 64),
        ..OmniAdConfig::default_offline()
    };
    tch::manual_seed(7);
    let mut model = OmniAd::new(&cfg, tch::Device::Cpu).expect("valid tiny config");
    omniad_pipeline::teacher::load_teacher(&mut model, None).expect("shipped teacher weights");
    checkpoint::save(&model, dir, "model", None, serde_json::json!({})).expect("save checkpoint");
    dir.to_path_buf()
}

/// The JSON lines of a stdout.
fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    text(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The first ground-truth mask of `class` in the synthetic dataset `data`, and its image.
fn first_mask(data: &Path, class: &str) -> (PathBuf, PathBuf) {
    let gt = data.join(class).join("ground_truth");
    let mut defects: Vec<PathBuf> = fs::read_dir(&gt)
        .expect("ground_truth folder")
        .map(|e| e.expect("entry").path())
        .collect();
    defects.sort();
    let mut masks: Vec<PathBuf> = fs::read_dir(&defects[0])
        .expect("defect folder")
        .map(|e| e.expect("entry").path())
        .collect();
    masks.sort();
    let mask = masks[0].clone();
    let stem = mask.file_stem().unwrap().to_str().unwrap();
    let image = data
        .join(class)
        .join("test")
        .join(defects[0].file_name().unwrap())
        .join(format!("{}.png", stem.trim_end_matches("_mask")));
    assert!(image.is_file(), "{}", image.display());
    (mask, image)
}

#[test]
fn predict_reports_a_corrupt_image_and_scores_the_others() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run_dir = tiny_run(&tmp.path().join("run"));
    // A folder of 4 good images and a truncated PNG, sorted: a, b, broken, c, d.
    let imgs = tmp.path().join("imgs");
    fs::create_dir(&imgs).expect("mkdir");
    let sources = [
        "woven/test/good/000.png",
        "woven/test/good/001.png",
        "screw/test/good/000.png",
        "screw/test/good/001.png",
    ];
    for (name, src) in ["a.png", "b.png", "c.png", "d.png"].iter().zip(sources) {
        fs::copy(data.join(src), imgs.join(name)).expect("copy image");
    }
    let bytes = fs::read(imgs.join("a.png")).expect("read");
    let broken = imgs.join("broken.png");
    fs::write(&broken, &bytes[..bytes.len() / 2]).expect("write truncated PNG");
    let heat = tmp.path().join("heat");
    // Batches of 2: the broken image shares its batch with c.png.
    let args = [
        "predict",
        "--run",
        p(&run_dir),
        "--out",
        p(&heat),
        "--threshold",
        "0.1",
        "--batch-size",
        "2",
        p(&imgs),
    ];
    let out = run(&args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("predict: 4 scored, 1 failed (their lines on stdout have an \"error\")"),
        "{stderr}"
    );
    let lines = json_lines(&out.stdout);
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    let want: Vec<PathBuf> = ["a.png", "b.png", "broken.png", "c.png", "d.png"]
        .iter()
        .map(|n| imgs.join(n))
        .collect();
    assert_eq!(
        paths,
        want.iter().map(|w| p(w)).collect::<Vec<_>>(),
        "one line per input, in order"
    );
    let failed = &lines[2];
    assert_eq!(failed.as_object().unwrap().len(), 2, "{failed}");
    let error = failed["error"].as_str().expect("error message");
    assert!(
        error.contains(p(&broken)) && error.contains("cannot decode image"),
        "{error}"
    );
    for (i, line) in lines.iter().enumerate().filter(|(i, _)| *i != 2) {
        let score = line["image_score"]
            .as_f64()
            .unwrap_or_else(|| panic!("{line}"));
        assert!(score > 0.0 && score <= 2.0, "{line}");
        assert_eq!(line["anomalous"].as_bool(), Some(score >= 0.1), "{line}");
        assert_eq!(
            (line["width"].as_u64(), line["height"].as_u64()),
            (Some(64), Some(64))
        );
        let stem = ["a", "b", "", "c", "d"][i];
        assert_eq!(
            line["overlay"].as_str(),
            Some(p(&heat.join(format!("{stem}_overlay.png")))),
            "{line}"
        );
        assert_eq!(
            image::image_dimensions(heat.join(format!("{stem}_mask.png"))).expect("mask"),
            (64, 64)
        );
    }
    // The broken image's neighbour in its batch is scored as when it is alone.
    let alone = ok(&["predict", "--run", p(&run_dir), p(&imgs.join("c.png"))]);
    let alone = json_lines(alone.as_bytes());
    let (a, b) = (
        alone[0]["image_score"].as_f64().unwrap(),
        lines[3]["image_score"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    assert_eq!(
        names_in(&heat).len(),
        8,
        "4 overlays and 4 masks, nothing for the broken image: {:?}",
        names_in(&heat)
    );

    // All good: status 0 and the summary.
    fs::remove_file(&broken).expect("rm");
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).lines().last(),
        Some("predict: 4 scored, 0 failed")
    );
    assert_eq!(json_lines(&out.stdout).len(), 4);

    // Same names in two folders: paths relative to the common folder, `__` for separators.
    let named = tmp.path().join("named");
    let stdout = ok(&[
        "predict",
        "--run",
        p(&run_dir),
        "--out",
        p(&named),
        p(&data.join("woven/test/good/000.png")),
        p(&data.join("screw/test/good/000.png")),
    ]);
    let overlays: Vec<String> = json_lines(stdout.as_bytes())
        .iter()
        .map(|l| l["overlay"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        overlays,
        [
            p(&named.join("woven__test__good__000_overlay.png")),
            p(&named.join("screw__test__good__000_overlay.png")),
        ]
    );
    assert_eq!(
        names_in(&named).into_iter().collect::<Vec<_>>(),
        [
            "screw__test__good__000_overlay.png",
            "woven__test__good__000_overlay.png"
        ],
        "no threshold: overlays only"
    );
}

#[test]
fn eval_warns_about_an_all_zero_mask() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run_dir = tiny_run(&tmp.path().join("run"));
    let (mask, image) = first_mask(&data, "screw");
    let (w, h) = image::image_dimensions(&mask).expect("mask");
    image::GrayImage::new(w, h)
        .save(&mask)
        .expect("write empty mask");
    let out = run(&[
        "eval",
        "--run",
        p(&run_dir),
        "--dataset",
        "mvtec",
        "--data-root",
        p(&data),
        "--no-report",
        "--json",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("all-zero ground-truth mask"))
        .collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    let want = format!(
        "warning: {}: anomalous test image (class screw, defect {}) has an all-zero ground-truth mask ({}): it counts as anomalous in the image metrics but marks no pixel in the pixel metrics",
        image.display(),
        image.parent().unwrap().file_name().unwrap().to_str().unwrap(),
        mask.display()
    );
    assert_eq!(warned[0], want);
    let metrics = json_file(&run_dir.join("metrics.json"));
    let warnings: Vec<&str> = metrics["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(
        warnings
            .iter()
            .copied()
            .filter(|w| w.contains("all-zero"))
            .collect::<Vec<_>>(),
        [&want["warning: ".len()..]]
    );
}

#[test]
fn train_refuses_a_mask_of_the_wrong_size_before_training() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let (mask, _) = first_mask(&data, "woven");
    image::GrayImage::from_pixel(40, 30, image::Luma([255]))
        .save(&mask)
        .expect("write wrong-size mask");
    let out_dir = tmp.path().join("run");
    let started = Instant::now();
    let line = fails(
        &train_args(&data, &out_dir, &[]),
        &[
            p(&mask),
            "mask is 40x30 pixels but its image is 64x64",
            "test split, checked before training",
        ],
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}: {line}");
    if out_dir.exists() {
        let files = names_in(&out_dir);
        assert!(
            files
                .iter()
                .all(|f| !f.starts_with("model.") && f != "config.toml"),
            "nothing written before the check: {files:?}"
        );
    }

    // Two problems: both named, counted.
    let (other, _) = first_mask(&data, "screw");
    image::GrayImage::new(10, 10).save(&other).expect("write");
    fails(
        &train_args(&data, &out_dir, &[]),
        &["2 of 8 samples have a problem", p(&mask), p(&other)],
    );
}

/// `train --resume` accepts flags that repeat the run's saved values (a user re-running the
/// command they started with, plus `--resume`) and names only the flags whose values differ.
#[test]
fn resume_accepts_repeated_flags_and_names_changed_ones() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run_dir = tmp.path().join("run");
    ok(&train_args(&data, &run_dir, &[]));
    // the start command again (the tiny flags, --data-root given relatively elsewhere is
    // compared as a folder), with --resume and more epochs
    let again = ok(&train_args(
        &data,
        &run_dir,
        &[
            "--resume",
            "--epochs",
            "2",
            "--image-size",
            "64",
            "--batch-size",
            "4",
        ],
    ));
    let outcome: serde_json::Value = serde_json::from_str(&again).expect("train prints JSON");
    assert_eq!(outcome["epochs_done"], 2, "{outcome}");
    // a changed value is refused, naming that flag alone
    let out = omniad()
        .args(train_args(
            &data,
            &run_dir,
            &[
                "--resume",
                "--epochs",
                "3",
                "--batch-size",
                "8",
                "--image-size",
                "64",
            ],
        ))
        .output()
        .expect("run omniad");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("these flags would change it: --batch-size (only"),
        "{err}"
    );
    assert_eq!(
        json_file(&run_dir.join("train_state.json"))["state"]["epoch"],
        2,
        "nothing trained by the refused call"
    );
}
