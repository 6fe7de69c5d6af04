//! Helpers shared by the `predict_*` integration tests: a tiny untrained Omni-AD model with the
//! shipped EfficientNet-Lite0 teacher saved as a run, and generated test images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use omniad_data::{load_rgb, preprocess_rgb};
use omniad_model::checkpoint::{self, Thresholds};
use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};
use omniad_pipeline::input::preprocess_for;
use omniad_pipeline::predict::{PredictOutcome, PredictRecord};
use tch::{Device, Kind, Tensor};

/// A small model (non-square input, so that H/W mix-ups show) that builds in well under a second.
pub fn tiny_config(image_size: (u32, u32)) -> OmniAdConfig {
    OmniAdConfig {
        teacher: TeacherArch::EfficientNetLite0,
        depths: [1, 1, 1, 1],
        neck_width: 64,
        num_tokens: 16,
        heads: 8,
        image_size,
        ..OmniAdConfig::default_offline()
    }
}

/// Builds the tiny model (seeded), loads the shipped teacher and saves it as the run `dir`.
pub fn make_run(dir: &Path, image_size: (u32, u32), thresholds: Option<Thresholds>) -> OmniAd {
    tch::manual_seed(7);
    let mut model = OmniAd::new(&tiny_config(image_size), Device::Cpu).expect("valid tiny config");
    omniad_pipeline::teacher::load_teacher(&mut model, None).expect("shipped teacher weights");
    checkpoint::save(&model, dir, "model", thresholds, serde_json::json!({}))
        .expect("save checkpoint");
    model
}

/// Saves the same model again with other thresholds.
pub fn set_thresholds(model: &OmniAd, dir: &Path, thresholds: Option<Thresholds>) {
    checkpoint::save(model, dir, "model", thresholds, serde_json::json!({}))
        .expect("save checkpoint");
}

/// Independent reference: image score and `[H, W]` anomaly map (model resolution) of one file,
/// computed directly with `OmniAd::predict` on a batch of one.
pub fn reference(model: &OmniAd, path: &Path) -> (f64, Tensor) {
    let img = load_rgb(path).expect("decodable test image");
    let pp = preprocess_for(&model.cfg);
    let x = Tensor::from_slice(&preprocess_rgb(&img, &pp)).reshape([
        1,
        3,
        pp.size.0 as i64,
        pp.size.1 as i64,
    ]);
    let pred = model.predict(&x);
    (
        pred.image_scores.double_value(&[0]),
        pred.anomaly_map.get(0).to_kind(Kind::Float),
    )
}

/// Deterministic textured RGB pixels (a gradient plus hashed noise).
fn pattern(x: u32, y: u32, c: u32, seed: u32) -> u8 {
    let mut h =
        x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ c.wrapping_mul(83_492_791) ^ seed;
    h ^= h >> 13;
    h = h.wrapping_mul(0x5bd1_e995);
    h ^= h >> 15;
    ((x * 255 / 97 + y * 3 + (h % 64)) % 256) as u8
}

/// Writes an 8-bit RGB PNG of `w x h`.
pub fn write_rgb(path: &Path, w: u32, h: u32, seed: u32) {
    let img: RgbImage = ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([
            pattern(x, y, 0, seed),
            pattern(x, y, 1, seed),
            pattern(x, y, 2, seed),
        ])
    });
    img.save(path).expect("write test image");
}

/// Writes an 8-bit grayscale PNG of `w x h`.
pub fn write_gray(path: &Path, w: u32, h: u32, seed: u32) {
    let img: GrayImage = ImageBuffer::from_fn(w, h, |x, y| Luma([pattern(x, y, 0, seed)]));
    img.save(path).expect("write test image");
}

/// Writes an 8-bit RGBA PNG of `w x h` with a varying alpha channel.
pub fn write_rgba(path: &Path, w: u32, h: u32, seed: u32) {
    let img: RgbaImage = ImageBuffer::from_fn(w, h, |x, y| {
        Rgba([
            pattern(x, y, 0, seed),
            pattern(x, y, 1, seed),
            pattern(x, y, 2, seed),
            (x * 5 % 256) as u8,
        ])
    });
    img.save(path).expect("write test image");
}

/// Writes a 16-bit grayscale PNG of `w x h`.
pub fn write_gray16(path: &Path, w: u32, h: u32, seed: u32) {
    let img: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_fn(w, h, |x, y| {
        Luma([u16::from(pattern(x, y, 0, seed)) * 256 + (x * 7 % 256) as u16])
    });
    DynamicImage::ImageLuma16(img)
        .save(path)
        .expect("write test image");
}

/// Runs `predict_run` collecting what `on_record` saw, checks it equals the returned list, and
/// returns the outcome of every input.
pub fn predict_outcomes(
    run: &Path,
    inputs: &[PathBuf],
    opts: &omniad_pipeline::predict::PredictOptions,
) -> anyhow::Result<Vec<PredictOutcome>> {
    let mut seen = Vec::new();
    let outcomes = omniad_pipeline::predict::predict_run(
        run,
        inputs,
        omniad_pipeline::device::ComputeDevice::Cpu,
        opts,
        |r| {
            seen.push(r.clone());
            Ok(())
        },
    )?;
    assert_eq!(seen, outcomes, "on_record must see every outcome, in order");
    let paths: Vec<&Path> = outcomes.iter().map(|o| o.path()).collect();
    let want: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    assert_eq!(paths, want, "one outcome per input, in input order");
    Ok(outcomes)
}

/// [`predict_outcomes`] where every image should be scored: the records, or the first image's
/// failure as the error.
pub fn predict(
    run: &Path,
    inputs: &[PathBuf],
    opts: &omniad_pipeline::predict::PredictOptions,
) -> anyhow::Result<Vec<PredictRecord>> {
    predict_outcomes(run, inputs, opts)?
        .into_iter()
        .map(|o| o.into_result().map_err(anyhow::Error::from))
        .collect()
}

/// Names of the files in a folder, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("readable folder")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}
