//! The `omniad` binary as a user runs it: a tiny end-to-end run (synth -> train -> eval ->
//! metrics -> predict -> info), Ctrl-C + `--resume`, and bad inputs, each of which must end with
//! a non-zero status and ONE stderr line `error: ...` naming the problem (never a panic), leaving
//! no partial file behind.
//!
//! Everything runs on the tiny configuration (2 classes, 4 training images each, 64x64 pixels,
//! depths 1,1,1,1, 1 thread) so the whole file takes well under a minute on 2 cores.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};

#[test]
fn end_to_end_tiny_run() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run_dir = tmp.path().join("run");

    // train
    let stdout = ok(&train_args(&data, &run_dir, &[]));
    let outcome: serde_json::Value = serde_json::from_str(&stdout).expect("train prints JSON");
    assert_eq!(outcome["epochs_done"], 1, "{outcome}");
    assert_eq!(outcome["steps"], 2, "8 images / batch 4: {outcome}");
    assert_eq!(outcome["interrupted"], false);
    let loss = outcome["last_loss"].as_f64().expect("last_loss");
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    let files = names_in(&run_dir);
    for f in [
        "config.toml",
        "model.json",
        "model.safetensors",
        "train_log.jsonl",
        "train_state.json",
        "train_state.safetensors",
    ] {
        assert!(
            files.contains(f),
            "{f} missing from the run folder: {files:?}"
        );
    }
    assert!(
        files.iter().all(|f| !f.starts_with('.')),
        "temporary files left: {files:?}"
    );
    let log = fs::read_to_string(run_dir.join("train_log.jsonl")).expect("log");
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1]["step"], 2);
    let (l0, l1) = (steps[0]["loss"].as_f64(), steps[1]["loss"].as_f64());
    let mean = (l0.expect("loss") + l1.expect("loss")) / 2.0;
    assert!(
        (mean - loss).abs() <= 1e-9 * loss,
        "last_loss {loss} is the epoch mean {mean}"
    );
    let config = fs::read_to_string(run_dir.join("config.toml")).expect("config");
    let parsed: toml::Value = config.parse().expect("config.toml is TOML");
    assert_eq!(
        parsed["model"]["image_size"],
        toml::Value::Array(vec![toml::Value::Integer(64), toml::Value::Integer(64)]),
        "{config}"
    );
    let meta = json_file(&run_dir.join("model.json"));
    assert_eq!(meta["config"]["image_size"], serde_json::json!([64, 64]));
    assert_eq!(meta["config"]["teacher"], "efficientnet_lite0");
    assert_eq!(meta["config"]["depths"], serde_json::json!([1, 1, 1, 1]));
    assert!(
        meta["thresholds"].is_null(),
        "no held-out images (--val-fraction 0), so no thresholds: {meta}"
    );
    assert_eq!(
        meta["recognition"]["classes"],
        serde_json::json!(["screw", "woven"]),
        "class recognition fitted: {meta}"
    );

    // eval (with maps for `omniad metrics`)
    let stdout = ok(&["eval", "--run", p(&run_dir), "--save-maps"]);
    assert!(
        stdout.contains("I-AUROC") && stdout.contains("mean"),
        "{stdout}"
    );
    let metrics = json_file(&run_dir.join("metrics.json"));
    let classes = metrics["classes"].as_array().expect("classes");
    let names: Vec<&str> = classes
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["screw", "woven"]);
    for c in classes {
        for k in [
            "image_auroc",
            "image_ap",
            "image_f1_max",
            "pixel_auroc",
            "pixel_aupro",
        ] {
            let v = c[k].as_f64().unwrap_or_else(|| panic!("{k} in {c}"));
            assert!((0.0..=1.0).contains(&v), "{k} = {v}");
        }
        assert_eq!(c["n_images"], 4, "{c}");
        assert_eq!(c["n_anomalous_images"], 2, "{c}");
    }
    let csv = fs::read_to_string(run_dir.join("metrics.csv")).expect("metrics.csv");
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "header, 2 classes, mean:\n{csv}");
    assert_eq!(rows[0][0], "class");
    let auroc_col = rows[0]
        .iter()
        .position(|h| *h == "image_auroc")
        .expect("image_auroc column");
    assert_eq!(rows[1][0], "screw");
    assert_eq!(rows[3][0], "mean");
    let csv_auroc: f64 = rows[1][auroc_col].parse().expect("number");
    assert!((csv_auroc - classes[0]["image_auroc"].as_f64().unwrap()).abs() < 1e-6);
    // eval never changes the thresholds; `omniad calibrate` fits them on the labelled images
    assert!(json_file(&run_dir.join("model.json"))["thresholds"].is_null());
    assert!(
        stdout.contains("operating point") && stdout.contains("(no stored threshold)"),
        "{stdout}"
    );
    let printed = ok(&["calibrate", "--run", p(&run_dir), "--method", "f1"]);
    let fitted: serde_json::Value = serde_json::from_str(&printed).expect("calibrate prints JSON");
    assert!(
        fitted["fitted_on"]
            .as_str()
            .unwrap()
            .contains("8 images (4 normal, 4 anomalous)"),
        "{fitted}"
    );
    let meta = json_file(&run_dir.join("model.json"));
    assert_eq!(meta["thresholds"], fitted, "stored as printed");
    let global = meta["thresholds"]["global"]
        .as_f64()
        .expect("global threshold stored");
    assert!(
        global.is_finite() && global > 0.0 && global <= 2.0,
        "{global}"
    );
    for class in ["screw", "woven"] {
        assert!(
            meta["thresholds"]["per_class"][class].as_f64().is_some(),
            "per-class threshold of {class}: {meta}"
        );
    }

    // metrics on the saved maps reproduces eval's numbers for that class
    let maps = run_dir.join("maps/screw.safetensors");
    let m = serde_json::from_str::<serde_json::Value>(&ok(&["metrics", "--json", p(&maps)]))
        .expect("metrics --json prints JSON");
    for k in ["image_auroc", "pixel_auroc", "pixel_aupro"] {
        let a = m["mean"][k].as_f64().expect("metric");
        let b = classes[0][k].as_f64().expect("metric");
        assert!((a - b).abs() < 1e-12, "{k}: metrics {a} vs eval {b}");
    }

    // the report: written by eval (path printed), and again by `omniad report` elsewhere
    let report = run_dir.join("report.html");
    assert!(stdout.contains(p(&report)), "{stdout}");
    let html = fs::read_to_string(&report).expect("report.html written by eval");
    for class in ["screw", "woven"] {
        assert!(html.contains(&format!("id=\"class-{class}\"")), "{class}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    let results = json_file(&run_dir.join("results.json"));
    assert_eq!(results["images"].as_array().expect("images").len(), 8);
    let out = tmp.path().join("small-report.html");
    let printed = ok(&[
        "report",
        "--run",
        p(&run_dir),
        "--out",
        p(&out),
        "--thumbs",
        "1",
    ]);
    assert!(printed.contains(p(&out)), "{printed}");
    let small = fs::read_to_string(&out).expect("report --out");
    assert_eq!(
        small.matches("<div class=\"thumb-row").count(),
        2,
        "one gallery image per class"
    );
    // --no-report: no report, no maps recorded, stdout stays JSON with --json
    fs::remove_file(&report).expect("rm report");
    let json_out = ok(&["eval", "--run", p(&run_dir), "--no-report", "--json"]);
    serde_json::from_str::<serde_json::Value>(&json_out).expect("--json prints only JSON");
    assert!(!report.exists(), "--no-report wrote a report");
    assert!(json_file(&run_dir.join("results.json"))["maps_dir"].is_null());
    let out = omniad()
        .args(["report", "--run", p(&run_dir)])
        .output()
        .expect("run omniad report");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no anomaly maps saved"),
        "{}",
        text(&out.stderr)
    );
    assert!(report.exists());

    // predict: a folder of test images plus one odd-sized image
    let odd = tmp.path().join("odd.png");
    image::open(data.join("woven/test/good/000.png"))
        .expect("synth image")
        .resize_exact(97, 31, image::imageops::FilterType::Triangle)
        .save(&odd)
        .expect("write odd image");
    let heat = tmp.path().join("heat");
    let woven_test = data.join("woven/test");
    let stdout = ok(&[
        "predict",
        "--run",
        p(&run_dir),
        "--out",
        p(&heat),
        p(&woven_test),
        p(&odd),
    ]);
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(records.len(), 5, "4 test images + 1: {stdout}");
    let mut folder_scores = Vec::new();
    for r in &records {
        let path = PathBuf::from(r["path"].as_str().expect("path"));
        let score = r["image_score"].as_f64().expect("image_score");
        assert!(score > 0.0 && score <= 2.0, "{r}");
        assert_eq!(r["class"], "woven", "recognised: {r}");
        assert_eq!(r["class_source"], "recognised", "{r}");
        let (w, h) = image::image_dimensions(&path).expect("input size");
        assert_eq!(
            (r["width"].as_u64(), r["height"].as_u64()),
            (Some(w as u64), Some(h as u64))
        );
        if path == odd {
            // squeezed from 64x64 to 97x31: farther from woven than any woven training image
            // (all 4 of them), so not judged: no threshold, no decision, no mask
            assert_eq!(r["unknown_class"], true, "{r}");
            for key in ["threshold", "anomalous", "normalised_score", "mask"] {
                assert!(r[key].is_null(), "{key}: {r}");
            }
            let f = PathBuf::from(r["overlay"].as_str().expect("overlay"));
            assert_eq!(image::image_dimensions(&f).expect("PNG written"), (97, 31));
            continue;
        }
        assert_eq!(r["unknown_class"], false, "{r}");
        let t = meta["thresholds"]["per_class"]["woven"]
            .as_f64()
            .expect("woven threshold");
        assert_eq!(
            r["threshold"].as_f64(),
            Some(t),
            "the class's threshold used: {r}"
        );
        assert_eq!(r["anomalous"].as_bool(), Some(score >= t), "{r}");
        let n = r["normalised_score"].as_f64().expect("normalised");
        assert!(
            (n - (score / (2.0 * t)).clamp(0.0, 1.0)).abs() < 1e-12,
            "{r}"
        );
        for key in ["overlay", "mask"] {
            let f = PathBuf::from(r[key].as_str().unwrap_or_else(|| panic!("{key}: {r}")));
            assert!(f.starts_with(&heat), "{}", f.display());
            assert_eq!(
                image::image_dimensions(&f).expect("PNG written"),
                (w, h),
                "{key} has the input's size"
            );
        }
        folder_scores.push(score);
    }
    assert!(
        names_in(&heat).iter().all(|f| !f.starts_with('.')),
        "temporary files left"
    );
    // predict and eval score the same images alike.
    let eval_scores = tch::Tensor::read_safetensors(run_dir.join("maps/woven.safetensors"))
        .expect("maps file")
        .into_iter()
        .find(|(n, _)| n == "image_scores")
        .expect("image_scores tensor")
        .1;
    let mut eval_scores = Vec::<f32>::try_from(&eval_scores).expect("f32 scores");
    eval_scores.sort_by(f32::total_cmp);
    folder_scores.sort_by(f64::total_cmp);
    assert_eq!(eval_scores.len(), folder_scores.len());
    for (a, b) in eval_scores.iter().zip(&folder_scores) {
        assert!((*a as f64 - b).abs() < 1e-5, "eval {a} vs predict {b}");
    }

    // info: the printed parameter counts are the model's
    let stdout = ok(&["info", "--teacher", "resnet34"]);
    let line = stdout
        .lines()
        .find(|l| l.contains("trainable") && l.contains("frozen"))
        .unwrap_or_else(|| panic!("no parameter line in:\n{stdout}"));
    let paper = OmniAd::new(&OmniAdConfig::paper(), tch::Device::Cpu).expect("paper config");
    assert_eq!(paper.cfg.teacher, TeacherArch::Resnet34);
    let (trainable, frozen) = paper.num_params();
    assert_eq!(number_after(line, "trainable"), trainable, "{line}");
    assert_eq!(number_after(line, "frozen teacher"), frozen, "{line}");
    // ResNet-34 up to layer3 (conv1, bn1, layer1..3): 8,170,304 parameters.
    assert_eq!(frozen, 8_170_304);
    let stdout = ok(&["info", "--run", p(&run_dir)]);
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("info --run prints JSON");
    assert_eq!(shown, json_file(&run_dir.join("model.json")));
}

/// SIGINT during training saves a checkpoint and exits 130; `--resume` then finishes with
/// exactly the weights of an uninterrupted run. The run is started with relative paths and
/// resumed and evaluated from another working directory.
#[cfg(unix)]
#[test]
fn ctrl_c_then_resume_matches_an_uninterrupted_run() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    // 2 steps per epoch, so the interrupt can fall inside an epoch.
    let long = [
        "--epochs",
        "3",
        "--feature-cache",
        "none",
        "--save-every",
        "0",
    ];

    let interrupted = tmp.path().join("interrupted");
    let child = omniad()
        .current_dir(tmp.path())
        .args(train_args(
            Path::new("data"),
            Path::new("interrupted"),
            &long,
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn omniad train");
    let log = interrupted.join("train_log.jsonl");
    let start = Instant::now();
    while fs::read_to_string(&log).map_or(true, |t| t.lines().count() < 1) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no training step within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let outcome: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("JSON");
    assert_eq!(outcome["interrupted"], true);
    let steps = outcome["steps"].as_u64().expect("steps");
    assert!(steps < 6, "stopped early: {outcome}");
    assert!(
        text(&out.stderr).contains("--resume"),
        "{}",
        text(&out.stderr)
    );
    assert!(names_in(&interrupted).contains("model.safetensors"));
    let config = fs::read_to_string(interrupted.join("config.toml")).expect("config.toml");
    let abs_data = fs::canonicalize(&data).expect("canonical data root");
    assert!(
        config.contains(&format!("data_root = \"{}\"", abs_data.display())),
        "data_root stored absolute:\n{config}"
    );

    // Without --resume the folder is protected.
    fails(
        &train_args(&data, &interrupted, &long),
        &["already holds a checkpoint", "--resume"],
    );

    let stdout = ok(&["train", "--resume", "--out", p(&interrupted), "--quiet"]);
    let resumed: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(resumed["epochs_done"], 3);
    assert_eq!(resumed["steps"], 6);
    assert_eq!(resumed["interrupted"], false);

    let straight = tmp.path().join("straight");
    ok(&train_args(&data, &straight, &long));
    let sha = |dir: &Path| json_file(&dir.join("model.json"))["weights_sha256"].clone();
    assert_eq!(sha(&interrupted), sha(&straight), "resumed weights differ");
    let log_a = fs::read_to_string(interrupted.join("train_log.jsonl")).expect("log");
    let log_b = fs::read_to_string(straight.join("train_log.jsonl")).expect("log");
    let losses = |t: &str| -> Vec<f64> {
        t.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("JSON")["loss"]
                    .as_f64()
                    .expect("loss")
            })
            .collect()
    };
    assert_eq!(
        losses(&log_a),
        losses(&log_b),
        "the resumed log reads as one run"
    );
    // eval finds the data from here too (its data_root was given relative to another folder).
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["eval", "--run", p(&interrupted), "--json"])).expect("JSON");
    assert_eq!(
        report["classes"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
}

#[test]
fn missing_data_root() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let missing = tmp.path().join("no-such-data");
    let out = tmp.path().join("run");
    fails(
        &train_args(&missing, &out, &[]),
        &[p(&missing), "data root folder not found"],
    );
    assert!(!out.exists(), "no run folder for a failed start");
    let file = tmp.path().join("file.txt");
    fs::write(&file, "x").expect("write");
    fails(&train_args(&file, &out, &[]), &[p(&file), "not a folder"]);
}

#[test]
fn wrong_dataset_value() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("run");
    let mut args = train_args(tmp.path(), &out, &[]);
    args.extend(["--dataset", "mvtecc"]);
    fails(&args, &["'mvtecc'", "--dataset", "mvtec, visa"]);
    fails(&["info", "--teacher", "vgg"], &["'vgg'", "resnet34"]);
    fails(&["eval"], &["--run"]);
    // (without the --threads 1 of `omniad()`)
    let args = ["--threads", "0", "info"];
    let out = Command::new(env!("CARGO_BIN_EXE_omniad"))
        .args(args)
        .output()
        .expect("run omniad");
    check_failure(out, &args, &["--threads", "'0'"]);
}

#[test]
fn bad_training_settings() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let out = tmp.path().join("run");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--depths", "1,1,1"], &["--depths", "4", "got 3"]),
        (&["--image-size", "100"], &["image_size 100x100", "32"]),
        (&["--lr", "0"], &["lr 0"]),
        (&["--lr", "-1"], &["lr -1"]),
        (&["--weight-decay", "-5"], &["weight_decay -5"]),
        (&["--jitter-scale", "-1"], &["jitter_scale -1"]),
        (&["--num-tokens", "10"], &["num_tokens 10"]),
        (&["--classes", "woven,woven"], &["woven", "twice"]),
        (&["--classes", "woven,nope"], &["nope", "screw, woven"]),
        (&["--device", "tpu"], &["tpu"]),
    ];
    for (extra, words) in cases {
        // later flags override the tiny ones
        fails(&train_args(&data, &out, extra), words);
    }
    if !tch::Cuda::is_available() {
        fails(
            &train_args(&data, &out, &["--device", "cuda"]),
            &["cuda", "not available"],
        );
    }
    assert!(
        !out.join("model.json").exists() && !out.join("model.safetensors").exists(),
        "no checkpoint from failed runs"
    );
}

#[test]
fn resnet_teacher_without_weights() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    fails(
        &train_args(&data, &tmp.path().join("run"), &["--teacher", "resnet34"]),
        &["resnet34", "--teacher-weights"],
    );
    let missing = tmp.path().join("resnet34.pth");
    fails(
        &train_args(
            &data,
            &tmp.path().join("run2"),
            &["--teacher", "resnet34", "--teacher-weights", p(&missing)],
        ),
        &[p(&missing), "not found"],
    );
}

#[test]
fn teacher_weights_of_another_architecture() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    // A ResNet-like file whose stem has the wrong shape (ResNet-18 needs [64, 3, 7, 7]).
    let weights = tmp.path().join("not-resnet18.safetensors");
    let t = tch::Tensor::zeros([8, 3, 3, 3], (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&[("conv1.weight", t)], &weights).expect("write");
    let run_dir = tmp.path().join("run");
    fails(
        &train_args(
            &data,
            &run_dir,
            &["--teacher", "resnet18", "--teacher-weights", p(&weights)],
        ),
        &[
            p(&weights),
            "resnet18",
            "conv1.weight",
            "[64, 3, 7, 7]",
            "[8, 3, 3, 3]",
        ],
    );
    assert!(!run_dir.join("model.safetensors").exists());
}

#[test]
fn eval_and_predict_need_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let empty = tmp.path().join("empty-run");
    fs::create_dir(&empty).expect("mkdir");
    fails(
        &[
            "eval",
            "--run",
            p(&empty),
            "--dataset",
            "mvtec",
            "--data-root",
            p(&data),
        ],
        &[p(&empty), "no checkpoint"],
    );
    fails(&["eval", "--run", p(&empty)], &[p(&empty)]);
    let missing = tmp.path().join("no-such-run");
    fails(
        &[
            "eval",
            "--run",
            p(&missing),
            "--dataset",
            "mvtec",
            "--data-root",
            p(&data),
        ],
        &[p(&missing), "not found"],
    );
    fails(
        &["report", "--run", p(&empty)],
        &[p(&empty), "metrics.json", "omniad eval"],
    );
    fails(
        &["report", "--run", p(&missing)],
        &[p(&missing), "not found"],
    );
    let image = data.join("woven/test/good/000.png");
    fails(
        &["predict", "--run", p(&empty), p(&image)],
        &[p(&empty), "no checkpoint"],
    );
    fails(
        &["predict", "--run", p(&missing), p(&image)],
        &[p(&missing), "not found"],
    );
}

#[test]
fn train_output_folder_problems() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    // A run folder below a regular file cannot be created.
    let file = tmp.path().join("plain-file");
    fs::write(&file, "x").expect("write");
    let below = file.join("run");
    fails(
        &train_args(&data, &below, &[]),
        &[p(&below), "cannot create run folder"],
    );
    // A folder that already holds a checkpoint is not overwritten without --resume.
    let taken = tmp.path().join("taken");
    fs::create_dir(&taken).expect("mkdir");
    fs::write(taken.join("model.json"), "{}").expect("write");
    fails(
        &train_args(&data, &taken, &[]),
        &[p(&taken), "already holds a checkpoint", "--resume"],
    );
    assert_eq!(
        fs::read_to_string(taken.join("model.json")).expect("read"),
        "{}"
    );
    // --resume of a folder without a run.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    fails(
        &["train", "--resume", "--out", p(&empty)],
        &[p(&empty), "resume"],
    );
}

#[test]
fn metrics_on_corrupt_files() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let garbage = tmp.path().join("garbage.safetensors");
    fs::write(&garbage, b"this is not a safetensors file at all").expect("write");
    let line = fails(
        &["metrics", p(&garbage)],
        &[p(&garbage), "not a valid safetensors file"],
    );
    assert_eq!(
        line.matches("not a valid safetensors file").count(),
        1,
        "the cause is not repeated: {line}"
    );
    let missing = tmp.path().join("missing.safetensors");
    fails(&["metrics", p(&missing)], &[p(&missing)]);
    // A valid safetensors file without the required tensors.
    let partial = tmp.path().join("partial.safetensors");
    let t = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&[("image_scores", t)], &partial).expect("write");
    fails(&["metrics", p(&partial)], &[p(&partial), "missing"]);
}

/// A training image that cannot be decoded stops training with an error naming it, and the run
/// folder holds no checkpoint and no temporary file afterwards (with and without the cache).
#[test]
fn unreadable_training_image_leaves_no_partial_checkpoint() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let bad = data.join("screw/train/good/002.png");
    fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").expect("corrupt");
    for (name, cache) in [("cached", "memory"), ("uncached", "none")] {
        let out = tmp.path().join(name);
        fails(
            &train_args(&data, &out, &["--feature-cache", cache]),
            &[p(&bad), "decode"],
        );
        if out.exists() {
            let files = names_in(&out);
            for f in &files {
                assert!(
                    !f.starts_with('.') && !f.contains(".tmp"),
                    "{name}: temporary file left: {f}"
                );
                assert!(
                    !f.starts_with("model.") && !f.starts_with("train_state"),
                    "{name}: checkpoint written by a failed run: {f}"
                );
            }
        }
    }
}

#[test]
fn bench_parts_profiles_every_component() {
    let out = run(&[
        "bench", "parts", "--depths", "1,1,1,1", "--batch", "1", "--iters", "1", "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let parts = v["parts"].as_array().expect("parts");
    let names: Vec<&str> = parts.iter().map(|p| p["part"].as_str().unwrap()).collect();
    for want in [
        "teacher",
        "neck",
        "stage 0 global branch",
        "stage 0 local branch",
        "stage 1 upsample",
        "stage 1 global branch",
        "stage 3 fusion (l, IN, l2)",
        "anomaly map + blur + score",
        "AdamW step (+ clip)",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        !names.contains(&"stage 4 upsample"),
        "only four stages: {names:?}"
    );
    for p in parts {
        let t = p["training_ms"].as_f64().expect("training_ms");
        assert!(t >= 0.0 && t.is_finite(), "{p}");
        if let Some(f) = p["forward_ms"].as_f64() {
            assert!(f > 0.0, "{p}");
            // (Times are not compared: a busy machine reorders them.)
            if let Some(fb) = p["forward_backward_ms"].as_f64() {
                assert!(fb > 0.0 && fb.is_finite(), "{p}");
            }
        }
    }
    // The input shapes are the real ones: stage 3 works at 64x64 with the teacher's 24 channels.
    let s3 = parts
        .iter()
        .find(|p| p["part"] == "stage 3 local branch")
        .expect("stage 3");
    assert_eq!(s3["input_shape"], serde_json::json!([1, 64, 64, 24]));
}
