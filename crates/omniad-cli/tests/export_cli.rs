//! `omniad export --format onnx` and `omniad predict --onnx` (issue 17): the exported model,
//! run through tract, prints the same JSON lines as `omniad predict --run` (scores within 1e-4,
//! same verdicts at a given threshold); bad exports fail with one clear line and write nothing.
mod common;

use std::path::Path;

use common::*;
use image::{ImageBuffer, Rgb, RgbImage};
use omniad_model::checkpoint;
use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};

/// An untrained tiny model (64x64, shipped teacher) saved as the run `dir`.
fn tiny_run(dir: &Path) {
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
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn export_then_predict_onnx_matches_predict_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    tiny_run(&run_dir);
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir(&imgs).expect("mkdir");
    for i in 0..3u32 {
        let img: RgbImage = ImageBuffer::from_fn(70 + 10 * i, 60, |x, y| {
            Rgb([(x * 3 + i * 40) as u8, (y * 4) as u8, ((x * y) % 251) as u8])
        });
        img.save(imgs.join(format!("{i}.png"))).expect("png");
    }
    std::fs::write(imgs.join("broken.png"), b"not a png").expect("write");
    let model = tmp.path().join("m.onnx");
    let out = ok(&[
        "export",
        "--run",
        p(&run_dir),
        "--format",
        "onnx",
        "--out",
        p(&model),
    ]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("json summary");
    assert_eq!(report["opset"], 17);
    assert!(model.is_file() && tmp.path().join("m.onnx.json").is_file());

    let args_run = [
        "predict",
        "--run",
        p(&run_dir),
        "--threshold",
        "0.3",
        p(&imgs),
    ];
    let args_onnx = [
        "predict",
        "--onnx",
        p(&model),
        "--threshold",
        "0.3",
        p(&imgs),
    ];
    let a = run(&args_run);
    let b = run(&args_onnx);
    // the broken image fails in both (status 1), the others are scored
    assert_eq!(a.status.code(), Some(1));
    assert_eq!(b.status.code(), Some(1));
    let (a, b) = (lines(&text(&a.stdout)), lines(&text(&b.stdout)));
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["path"], y["path"]);
        if x.get("error").is_some() {
            assert!(y.get("error").is_some(), "{y}");
            continue;
        }
        let d = (x["image_score"].as_f64().unwrap() - y["image_score"].as_f64().unwrap()).abs();
        assert!(d <= 1e-4, "{x} vs {y}");
        for k in [
            "anomalous",
            "threshold",
            "class",
            "width",
            "height",
            "unknown_class",
        ] {
            assert_eq!(x[k], y[k], "{k}: {x} vs {y}");
        }
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(x), keys(y));
    }

    // --out is refused with --onnx, clearly
    fails(
        &[
            "predict",
            "--onnx",
            p(&model),
            "--out",
            p(tmp.path()),
            p(&imgs),
        ],
        &["--out", "--onnx"],
    );
    // so is a precision other than the graph's float32
    fails(
        &[
            "predict",
            "--onnx",
            p(&model),
            "--precision",
            "bf16",
            p(&imgs),
        ],
        &["--onnx", "--precision"],
    );
}

#[test]
fn bad_exports_fail_with_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run_dir = tmp.path().join("run");
    tiny_run(&run_dir);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let model = out.join("m.onnx");
    fails(
        &[
            "export",
            "--run",
            p(&run_dir),
            "--out",
            p(&model),
            "--format",
            "tflite",
        ],
        &["only `onnx`"],
    );
    fails(
        &[
            "export",
            "--run",
            p(&run_dir),
            "--out",
            p(&model),
            "--image-size",
            "100",
        ],
        &["unsupported", "multiples of 32"],
    );
    fails(
        &[
            "export",
            "--run",
            p(&run_dir),
            "--out",
            p(&model),
            "--batch",
            "0",
        ],
        &["batch"],
    );
    fails(
        &[
            "export",
            "--run",
            p(&run_dir),
            "--out",
            p(&tmp.path().join("no/m.onnx")),
        ],
        &["does not exist"],
    );
    // weights altered after saving: checksum verification fails
    let w = run_dir.join("model.safetensors");
    let mut bytes = std::fs::read(&w).expect("weights");
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    std::fs::write(&w, bytes).expect("alter");
    fails(
        &["export", "--run", p(&run_dir), "--out", p(&model)],
        &["checksum mismatch"],
    );
    assert_eq!(std::fs::read_dir(&out).expect("read").count(), 0);
}
