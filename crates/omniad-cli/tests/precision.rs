//! `--precision` of predict, eval, train, demo and bench (issue 19): bfloat16 results close to
//! float32, float16 refused on the CPU, the training precision recorded and kept on resume, and
//! the roofline fields of `omniad bench model`.
mod common;

use common::*;

/// Image scores by input path from `omniad predict`'s JSON lines.
fn scores(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            (
                v["path"].as_str().expect("path").to_string(),
                v["image_score"].as_f64().expect("image_score"),
            )
        })
        .collect()
}

#[test]
fn bfloat16_inference_and_training() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run_dir = tmp.path().join("run");
    ok(&train_args(&data, &run_dir, &[]));
    let test = data.join("screw/test");

    // predict: bf16 scores within 5% of f32 on this 1-epoch 64 px model (measured up to 2.4%),
    // and different (it really ran in bf16)
    let f32_out = ok(&["predict", "--run", p(&run_dir), p(&test)]);
    let bf16_out = ok(&[
        "predict",
        "--run",
        p(&run_dir),
        "--precision",
        "bf16",
        p(&test),
    ]);
    let (a, b) = (scores(&f32_out), scores(&bf16_out));
    assert_eq!(a.len(), 4);
    for ((pa, sa), (pb, sb)) in a.iter().zip(&b) {
        assert_eq!(pa, pb);
        assert!((sa - sb).abs() <= 0.05 * sa, "{pa}: f32 {sa} bf16 {sb}");
    }
    assert_ne!(a, b, "bf16 must change the scores a little");

    // float16 needs CUDA: refused before anything is scored, naming the way out
    fails(
        &[
            "predict",
            "--run",
            p(&run_dir),
            "--precision",
            "f16",
            p(&test),
        ],
        &["f16", "CUDA", "bf16"],
    );
    fails(
        &[
            "predict",
            "--run",
            p(&run_dir),
            "--precision",
            "f8",
            p(&test),
        ],
        &["f8", "f32, bf16, f16"],
    );

    // eval in bf16 gives metrics
    let json = ok(&[
        "eval",
        "--run",
        p(&run_dir),
        "--precision",
        "bf16",
        "--no-report",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("eval JSON");
    let auroc = v["mean"]["image_auroc"].as_f64().expect("mean I-AUROC");
    assert!((0.0..=1.0).contains(&auroc), "{v}");

    // resuming an f32 run in bf16 would change it: refused, naming the flag
    fails(
        &train_args(
            &data,
            &run_dir,
            &["--resume", "--epochs", "2", "--precision", "bf16"],
        ),
        &["--precision"],
    );

    // a bf16-trained run records its precision and resumes in it
    let bf16_run = tmp.path().join("run-bf16");
    let out = ok(&train_args(&data, &bf16_run, &["--precision", "bf16"]));
    let outcome: serde_json::Value = serde_json::from_str(&out).expect("train JSON");
    assert!(outcome["last_loss"].as_f64().unwrap().is_finite());
    let cfg = std::fs::read_to_string(bf16_run.join("config.toml")).unwrap();
    assert!(cfg.contains("precision = \"bf16\""), "{cfg}");
    let meta = json_file(&bf16_run.join("model.json"));
    assert_eq!(meta["provenance"]["precision"], "bf16", "{meta}");
    ok(&train_args(
        &data,
        &bf16_run,
        &["--resume", "--epochs", "2"],
    ));
    assert_eq!(
        json_file(&bf16_run.join("train_state.json"))["state"]["epoch"],
        2
    );
}

#[test]
fn bench_model_reports_the_roofline() {
    let out = run(&[
        "bench",
        "model",
        "--depths",
        "1,1,1,1",
        "--infer-batches",
        "1",
        "--train-batch",
        "2",
        "--iters",
        "1",
        "--precision",
        "f32,bf16",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let gf = v["gflop_per_image"]["inference"].as_f64().unwrap();
    let macs = &v["macs_per_image"];
    let total = ["teacher", "student", "anomaly_map"]
        .iter()
        .map(|k| macs[k].as_f64().unwrap())
        .sum::<f64>();
    assert!((gf - 2.0 * total / 1e9).abs() < 1e-9 * gf, "{v}");
    // EfficientNet-Lite0, depths 1,1,1,1, 256x256: 0.869 GMAC counted when this was written.
    assert!((gf / 1.738 - 1.0).abs() < 0.01, "{gf}");
    for key in ["inference", "train_step"] {
        let rows = v[key].as_array().unwrap();
        let precisions: Vec<&str> = rows
            .iter()
            .map(|r| r["precision"].as_str().unwrap())
            .collect();
        assert_eq!(precisions, ["f32", "bf16"], "{key}");
        for r in rows {
            let (ips, g, peak) = (
                r["images_per_sec"].as_f64().unwrap(),
                r["gflops"].as_f64().unwrap(),
                r["matmul_peak_gflops"].as_f64().unwrap(),
            );
            assert!(ips > 0.0 && peak > 0.0, "{r}");
            let per_image = if key == "inference" {
                gf
            } else {
                v["gflop_per_image"]["train_step"].as_f64().unwrap()
            };
            assert!((g - per_image * ips).abs() < 1e-6 * g, "{r}");
            assert!(
                (r["fraction_of_peak"].as_f64().unwrap() - g / peak).abs() < 1e-9,
                "{r}"
            );
        }
    }
    fails(
        &["bench", "model", "--precision", "f16", "--iters", "1"],
        &["f16", "CUDA"],
    );
}
