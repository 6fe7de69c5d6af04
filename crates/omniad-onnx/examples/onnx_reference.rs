//! Writes what `bench/onnx_ort.py` checks an exported model against: the libtorch outputs of
//! a checkpoint on a batch of images.
//!
//! ```text
//! cargo run --release -p omniad-onnx --example onnx_reference -- \
//!     (--run RUN | --paper efficientnet_lite0|resnet34) --out DIR [--images N] [--seed S] \\
//!     [--from IMAGE_FOLDER]
//! ```
//!
//! `--paper TEACHER` builds the paper's network (depths [3, 9, 9, 7], 256 px, 64 tokens) with
//! seeded random student weights (and, for ResNet34, a seeded random teacher: no weights are
//! shipped) and saves it as `DIR/run/model.json`. The checkpoint is exported to
//! `DIR/model.onnx` (dynamic batch) and `DIR/reference.safetensors` receives `input`
//! `[N, 3, H, W]` (the first N images of `--from`, else generated ones, preprocessed), `anomaly_map` `[N, H, W]`, `image_score`
//! `[N]` and `descriptors` `[N, D]` from `OmniAd::predict`, all f32.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use image::{ImageBuffer, Rgb, RgbImage};
use omniad_data::preprocess_rgb;
use omniad_model::checkpoint;
use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};
use omniad_onnx::{export_checkpoint, ExportOptions};
use omniad_pipeline::input::preprocess_for;
use tch::{Device, Kind, Tensor};

fn image(w: u32, h: u32, seed: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        let mut v = x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ seed;
        v ^= v >> 13;
        v = v.wrapping_mul(0x5bd1_e995);
        v ^= v >> 15;
        let n = (v % 64) as u8;
        let blob = (x as i64 - 40 - seed as i64 * 9).pow(2) + (y as i64 - 60).pow(2) < 200;
        Rgb([
            ((x * 255 / w) as u8).wrapping_add(n),
            if blob { 250 } else { (y / 2) as u8 },
            n,
        ])
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let out = PathBuf::from(get("--out").context("--out DIR")?);
    let n: usize = get("--images").map_or(Ok(4), |s| s.parse())?;
    let seed: i64 = get("--seed").map_or(Ok(0), |s| s.parse())?;
    std::fs::create_dir_all(&out)?;
    let ckpt = match (get("--run"), get("--paper")) {
        (Some(run), None) => omniad_pipeline::runs::checkpoint_of(&PathBuf::from(run))?,
        (None, Some(teacher)) => {
            let teacher: TeacherArch = teacher.parse()?;
            let cfg = OmniAdConfig {
                teacher,
                ..OmniAdConfig::paper()
            };
            tch::manual_seed(seed);
            let mut m = OmniAd::new(&cfg, Device::Cpu)?;
            if teacher == TeacherArch::EfficientNetLite0 {
                omniad_pipeline::teacher::load_teacher(&mut m, None)?;
            }
            tch::no_grad(|| {
                for (name, mut v) in m.vs.variables() {
                    let r = Tensor::randn(v.size(), (Kind::Float, Device::Cpu));
                    let new = if name.ends_with("running_var") {
                        r.abs() * 0.5 + 0.5
                    } else if name.ends_with("running_mean") {
                        r * 0.1
                    } else {
                        &v + r * 0.05
                    };
                    v.copy_(&new);
                }
            });
            checkpoint::save(&m, &out.join("run"), "model", None, serde_json::json!({}))?
        }
        _ => bail!("give --run RUN or --paper TEACHER"),
    };
    let onnx = out.join("model.onnx");
    let r = export_checkpoint(&ckpt, &onnx, &ExportOptions::default())?;
    eprintln!(
        "exported {} ({} bytes, {} nodes)",
        onnx.display(),
        r.bytes,
        r.nodes
    );
    let (model, _meta) = checkpoint::load(&ckpt, Device::Cpu)?;
    let pp = preprocess_for(&model.cfg);
    let images: Vec<RgbImage> = match get("--from") {
        // the first N image files of a folder (sorted), e.g. a sample of a test split
        Some(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| omniad_data::has_image_extension(p))
                .collect();
            files.sort();
            files
                .iter()
                .take(n)
                .map(|p| omniad_data::load_rgb(p).map_err(anyhow::Error::from))
                .collect::<Result<_>>()?
        }
        None => (0..n)
            .map(|i| image(200 + 13 * i as u32, 180, i as u32))
            .collect(),
    };
    let n = images.len();
    let flat: Vec<f32> = images.iter().flat_map(|i| preprocess_rgb(i, &pp)).collect();
    let x = Tensor::from_slice(&flat).reshape([n as i64, 3, pp.size.0 as i64, pp.size.1 as i64]);
    let t0 = std::time::Instant::now();
    let pred = model.predict(&x);
    eprintln!(
        "libtorch forward of {n} images: {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    Tensor::write_safetensors(
        &[
            ("input", &x),
            ("anomaly_map", &pred.anomaly_map.to_kind(Kind::Float)),
            ("image_score", &pred.image_scores.to_kind(Kind::Float)),
            ("descriptors", &pred.descriptors),
        ],
        out.join("reference.safetensors"),
    )?;
    Ok(())
}
