//! `omniad bench`: throughput and memory of the pieces users care about, measured in-process.
//!
//! - `omniad bench metrics`: all pixel and image metrics on an MVTec-sized synthetic set.
//! - `omniad bench model`: inference images/s at batch 1 and 8 (teacher + decoder + anomaly map +
//!   score, no autograd) and one training step at batch 16 (forward, backward, AdamW), for a
//!   teacher and decoder depths; peak resident memory of the process after each phase.
//! - `omniad bench epoch --data DIR`: one training epoch over a dataset, with and without the
//!   teacher-feature cache.
//!
//! Print JSON with `--json` for scripts (e.g. bench/compare.sh).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};
use omniad_pipeline::optim::{AdamW, AdamWConfig};
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// Benchmark options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Metrics on N synthetic maps (default: MVTec-sized, 1725 maps of 256x256).
    Metrics {
        #[arg(long, default_value_t = 1725)]
        maps: usize,
        #[arg(long, default_value_t = 256)]
        size: usize,
    },
    /// Inference and one training step.
    Model {
        #[arg(long, default_value = "efficientnet_lite0")]
        teacher: TeacherArch,
        #[arg(long, value_delimiter = ',', default_value = "3,9,9,7")]
        depths: Vec<usize>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Timed repetitions of each measurement (after one warm-up).
        #[arg(long, default_value_t = 3)]
        iters: usize,
        #[arg(long, default_value_t = 16)]
        train_batch: i64,
        /// Inference batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        infer_batches: Vec<i64>,
    },
    /// One training epoch over a dataset folder (MVTec layout), cache vs no cache.
    Epoch {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "efficientnet_lite0")]
        teacher: TeacherArch,
        #[arg(long)]
        teacher_weights: Option<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "3,9,9,7")]
        depths: Vec<usize>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// Peak resident set size of this process so far, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn time<F: FnMut()>(iters: usize, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters.max(1) {
        f();
    }
    t.elapsed().as_secs_f64() / iters.max(1) as f64
}

/// Runs the benchmarks.
pub fn run(a: BenchArgs) -> Result<()> {
    let out = match a.what {
        BenchWhat::Metrics { maps, size } => {
            let r = omniad_metrics::bench_synthetic(maps, size, size, 0)?;
            json!({"bench": "metrics", "maps": maps, "size": size, "pixels": r.n_pixels,
                "anomalous_pixel_fraction": r.anomalous_pixel_fraction, "generate_s": r.generate_s,
                "evaluate_s": r.evaluate_s, "metrics": r.report.to_json()["mean"],
                "peak_rss_mib": peak_rss_mib()})
        }
        BenchWhat::Model {
            teacher,
            depths,
            device,
            iters,
            train_batch,
            infer_batches,
        } => {
            let device =
                omniad_pipeline::device::parse_device(&device).map_err(anyhow::Error::msg)?;
            let cfg = OmniAdConfig {
                teacher,
                depths: crate::depths4(&depths)?,
                ..OmniAdConfig::paper()
            };
            bench_model(&cfg, device, iters, train_batch, &infer_batches)?
        }
        BenchWhat::Epoch {
            data,
            teacher,
            teacher_weights,
            depths,
            device,
        } => bench_epoch(data, teacher, teacher_weights, &depths, device)?,
    };
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn bench_model(
    cfg: &OmniAdConfig,
    device: Device,
    iters: usize,
    train_batch: i64,
    infer_batches: &[i64],
) -> Result<serde_json::Value> {
    tch::manual_seed(0);
    let model = OmniAd::new(cfg, device).map_err(anyhow::Error::msg)?;
    let (h, w) = cfg.image_size;
    let mut infer = Vec::new();
    for &b in infer_batches {
        let x = Tensor::randn([b, 3, h, w], (Kind::Float, device));
        let s = time(iters, || {
            let p = model.predict(&x);
            let _ = p.image_scores.sum(Kind::Float).double_value(&[]);
            sync(device);
        });
        infer.push(json!({"batch": b, "seconds_per_batch": s, "images_per_sec": b as f64 / s, "peak_rss_mib": peak_rss_mib()}));
    }
    // Training step on a batch: teacher forward (as the reference trainer does every step),
    // neck + decoder with jitter, loss, backward, clip, AdamW.
    let x = Tensor::randn([train_batch, 3, h, w], (Kind::Float, device));
    let mut opt = AdamW::new(AdamWConfig::default(), model.trainable_named());
    let mut parts = [0.0f64; 3];
    let step = time(iters, || {
        let t0 = Instant::now();
        let t = model.teacher_features(&x);
        sync(device);
        let t1 = Instant::now();
        let s = model.reconstruct(&t, true);
        let loss = OmniAd::loss(&t, &s);
        opt.zero_grad();
        loss.backward();
        sync(device);
        let t2 = Instant::now();
        opt.step(1e-3);
        sync(device);
        let t3 = Instant::now();
        parts[0] += (t1 - t0).as_secs_f64();
        parts[1] += (t2 - t1).as_secs_f64();
        parts[2] += (t3 - t2).as_secs_f64();
    });
    let n = (iters.max(1) + 1) as f64;
    Ok(json!({
        "bench": "model", "model": crate::info_line(&model), "device": format!("{device:?}"),
        "threads": tch::get_num_threads(),
        "inference": infer,
        "train_step": {"batch": train_batch, "seconds": step, "images_per_sec": train_batch as f64 / step,
            "teacher_s": parts[0] / n, "student_fwd_bwd_s": parts[1] / n, "optimizer_s": parts[2] / n},
        "peak_rss_mib": peak_rss_mib(),
    }))
}

fn bench_epoch(
    data: PathBuf,
    teacher: TeacherArch,
    teacher_weights: Option<PathBuf>,
    depths: &[usize],
    device: String,
) -> Result<serde_json::Value> {
    use omniad_pipeline::config::{FeatureCache, TrainConfig};
    let mut results = Vec::new();
    for cache in [FeatureCache::Memory, FeatureCache::None] {
        let dir = tempfile::tempdir()?;
        let cfg = TrainConfig {
            data_root: data.clone(),
            teacher,
            teacher_weights: teacher_weights.clone(),
            depths: crate::depths4(depths)?,
            epochs: 1,
            out: dir.path().join("run"),
            device: device.clone(),
            feature_cache: cache,
            save_every: 0,
            ..TrainConfig::default()
        };
        let t = Instant::now();
        let o = omniad_pipeline::train(&cfg, &omniad_pipeline::TrainOptions::default())?;
        results.push(json!({"feature_cache": cache, "seconds": t.elapsed().as_secs_f64(), "cache_seconds": o.cache_seconds,
            "images_per_sec": o.images_per_sec, "peak_rss_mib": peak_rss_mib()}));
    }
    Ok(
        json!({"bench": "epoch", "data": data.display().to_string(), "teacher": teacher.to_string(), "depths": depths, "runs": results}),
    )
}
