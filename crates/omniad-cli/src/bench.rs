//! `omniad bench`: throughput and memory of the pieces users care about, measured in-process.
//!
//! - `omniad bench metrics`: all pixel and image metrics on an MVTec-sized synthetic set.
//! - `omniad bench model`: inference images/s at batch 1 and 8 (teacher + decoder + anomaly map +
//!   score, no autograd) and one training step at batch 16 (forward, backward, AdamW), for a
//!   teacher and decoder depths, in each precision of `--precision` (e.g. `f32,bf16`); peak
//!   resident memory of the process after each phase. Roofline: the model's multiply-accumulates
//!   per image (counted by running it, [`OmniAd::macs_per_image`]), the achieved GFLOP/s
//!   (2 FLOPs per MAC) and, measured in the same run, the machine's matrix-product peak in the
//!   same precision (a square matrix product of side 2048).
//! - `omniad bench epoch --data DIR`: one training epoch over a dataset, with and without the
//!   teacher-feature cache.
//! - `omniad bench parts`: where the time of inference and of a training step goes — teacher,
//!   neck, and per decoder stage the global branch, local branch, fusion and upsampling, the
//!   anomaly map and AdamW — each timed alone on inputs of its real shape.
//!
//! Print JSON with `--json` for scripts (e.g. bench/compare.sh).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use omniad_model::{OmniAd, OmniAdConfig, Precision, TeacherArch};
use omniad_pipeline::device::ComputeDevice;
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

/// Which network to time (the paper configuration with this teacher and these depths).
#[derive(Args, Debug)]
struct ModelChoice {
    #[arg(long, default_value = "efficientnet_lite0")]
    teacher: TeacherArch,
    #[arg(long, value_delimiter = ',', default_value = "3,9,9,7")]
    depths: Vec<usize>,
    #[arg(long, default_value = "cpu")]
    device: ComputeDevice,
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
        #[command(flatten)]
        model: ModelChoice,
        /// Timed repetitions of each measurement (after one warm-up).
        #[arg(long, default_value_t = 3)]
        iters: usize,
        #[arg(long, default_value_t = 16)]
        train_batch: i64,
        /// Inference batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        infer_batches: Vec<i64>,
        /// Precisions to measure, back to back for each measurement (f32, bf16, f16 on CUDA).
        #[arg(long, value_delimiter = ',', default_value = "f32")]
        precision: Vec<Precision>,
    },
    /// Per-component profile: forward (no autograd) and forward + backward time of each part.
    Parts {
        #[command(flatten)]
        model: ModelChoice,
        /// Timed repetitions of each measurement (after one warm-up).
        #[arg(long, default_value_t = 2)]
        iters: usize,
        /// Batch size of every measurement.
        #[arg(long, default_value_t = 16)]
        batch: i64,
        /// Precision of every measurement (f32, bf16, f16 on CUDA).
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// One training epoch (batch 16) over a dataset folder in MVTec layout — by default the
    /// synthetic benchmark (`omniad synth` defaults, 240 training images), generated in a
    /// temporary folder — with and without the teacher-feature cache.
    Epoch {
        /// Dataset root (MVTec layout); default: a freshly generated synthetic benchmark.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value = "efficientnet_lite0")]
        teacher: TeacherArch,
        /// Teacher weights; a ResNet without them gets random weights (timing only).
        #[arg(long)]
        teacher_weights: Option<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "3,9,9,7")]
        depths: Vec<usize>,
        #[arg(long, default_value = "cpu")]
        device: ComputeDevice,
        /// Run only this cache mode (memory, memory_f16, none) so that the process's peak
        /// memory belongs to it; default: memory, then none.
        #[arg(long, value_parser = crate::parse_cache)]
        feature_cache: Option<omniad_pipeline::config::FeatureCache>,
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
            model,
            iters,
            train_batch,
            infer_batches,
            precision,
        } => {
            let (cfg, device) = model.setup()?;
            for p in &precision {
                p.check_device(device).map_err(anyhow::Error::msg)?;
            }
            let out = bench_model(&cfg, device, iters, train_batch, &infer_batches, &precision)?;
            if !a.json {
                print_model(&out);
                return Ok(());
            }
            out
        }
        BenchWhat::Parts {
            model,
            iters,
            batch,
            precision,
        } => {
            let (cfg, device) = model.setup()?;
            precision.check_device(device).map_err(anyhow::Error::msg)?;
            let out = precision.run(|| bench_parts(&cfg, device, iters, batch))?;
            if !a.json {
                print_parts(&out);
                return Ok(());
            }
            out
        }
        BenchWhat::Epoch {
            data,
            teacher,
            teacher_weights,
            depths,
            device,
            feature_cache,
        } => bench_epoch(
            data,
            teacher,
            teacher_weights,
            &depths,
            device,
            feature_cache,
        )?,
    };
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

impl ModelChoice {
    /// The paper configuration with this teacher and these depths, and the parsed device.
    fn setup(&self) -> Result<(OmniAdConfig, Device)> {
        let device = self.device.open()?;
        let cfg = OmniAdConfig {
            teacher: self.teacher,
            depths: crate::depths4(&self.depths)?,
            ..OmniAdConfig::paper()
        };
        Ok((cfg, device))
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The machine's matrix-product throughput in `precision` on `device`, GFLOP/s: a square
/// product of side 2048 (17.2 GFLOP), one warm-up, then repeated for at least 0.5 s.
fn matmul_peak(precision: Precision, device: Device) -> f64 {
    let n = 2048i64;
    let a = Tensor::randn([n, n], (precision.kind(), device));
    let b = Tensor::randn([n, n], (precision.kind(), device));
    let _ = a.matmul(&b);
    sync(device);
    let t = Instant::now();
    let mut reps = 0u32;
    while reps < 2 || t.elapsed().as_secs_f64() < 0.5 {
        let _ = a.matmul(&b);
        sync(device);
        reps += 1;
    }
    2.0 * (n * n * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Inference at each batch size and one training step, each measured in every precision back
/// to back (so that a load change on a shared machine hits them alike), with the roofline
/// numbers (see the module docs).
fn bench_model(
    cfg: &OmniAdConfig,
    device: Device,
    iters: usize,
    train_batch: i64,
    infer_batches: &[i64],
    precisions: &[Precision],
) -> Result<serde_json::Value> {
    tch::manual_seed(0);
    let model = OmniAd::new(cfg, device)?;
    let macs = model.macs_per_image();
    let gflop = |m: u64| 2.0 * m as f64 / 1e9;
    let (gf_infer, gf_train) = (gflop(macs.inference()), gflop(macs.train_step()));
    let (h, w) = (cfg.image_size.0 as i64, cfg.image_size.1 as i64);
    let peaks: Vec<f64> = precisions.iter().map(|&p| matmul_peak(p, device)).collect();
    let mut infer = Vec::new();
    for &b in infer_batches {
        let x = Tensor::randn([b, 3, h, w], (Kind::Float, device));
        for (&p, &peak) in precisions.iter().zip(&peaks) {
            let s = time(iters, || {
                let pred = p.run(|| model.predict(&x));
                let _ = pred.image_scores.sum(Kind::Float).double_value(&[]);
                sync(device);
            });
            let achieved = gf_infer * b as f64 / s;
            infer.push(json!({"precision": p, "batch": b, "seconds_per_batch": s,
                "images_per_sec": b as f64 / s, "gflops": achieved,
                "matmul_peak_gflops": peak, "fraction_of_peak": achieved / peak,
                "peak_rss_mib": peak_rss_mib()}));
        }
    }
    // Training step on a batch: teacher forward (as the reference trainer does every step),
    // neck + decoder with jitter, loss, backward, clip, AdamW.
    let x = Tensor::randn([train_batch, 3, h, w], (Kind::Float, device));
    let mut opt = AdamW::new(AdamWConfig::default(), model.trainable_named());
    let mut train = Vec::new();
    for (&p, &peak) in precisions.iter().zip(&peaks) {
        let mut parts = [0.0f64; 3];
        let step = time(iters, || {
            let t0 = Instant::now();
            // (the teacher runs in float32 under every precision)
            let t = model.teacher_features(&x);
            sync(device);
            let t1 = Instant::now();
            let s = p.run(|| model.reconstruct(&t, true));
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
        let achieved = gf_train * train_batch as f64 / step;
        train.push(json!({"precision": p, "batch": train_batch, "seconds": step,
            "images_per_sec": train_batch as f64 / step, "gflops": achieved,
            "matmul_peak_gflops": peak, "fraction_of_peak": achieved / peak,
            "teacher_s": parts[0] / n, "student_fwd_bwd_s": parts[1] / n, "optimizer_s": parts[2] / n}));
    }
    Ok(json!({
        "bench": "model", "model": crate::info_line(&model), "device": format!("{device:?}"),
        "threads": tch::get_num_threads(),
        "macs_per_image": {"teacher": macs.teacher, "student": macs.student,
            "anomaly_map": macs.anomaly_map},
        "gflop_per_image": {"inference": gf_infer, "train_step": gf_train},
        "inference": infer,
        "train_step": train,
        "peak_rss_mib": peak_rss_mib(),
    }))
}

/// The `omniad bench model` table for a person (the JSON has the same numbers and more).
fn print_model(out: &serde_json::Value) {
    println!(
        "{} | {} | {} threads",
        out["model"].as_str().unwrap_or(""),
        out["device"].as_str().unwrap_or(""),
        out["threads"]
    );
    let g = &out["gflop_per_image"];
    println!(
        "work per image: inference {:.2} GFLOP, training step {:.2} GFLOP (2 FLOPs per multiply-accumulate; teacher {:.2} + student {:.2} + anomaly map {:.3} GMAC)",
        g["inference"].as_f64().unwrap_or(0.0),
        g["train_step"].as_f64().unwrap_or(0.0),
        out["macs_per_image"]["teacher"].as_f64().unwrap_or(0.0) / 1e9,
        out["macs_per_image"]["student"].as_f64().unwrap_or(0.0) / 1e9,
        out["macs_per_image"]["anomaly_map"].as_f64().unwrap_or(0.0) / 1e9,
    );
    println!(
        "{:<16} {:>9} {:>6} {:>10} {:>10} {:>12} {:>9}",
        "measurement", "precision", "batch", "images/s", "GFLOP/s", "peak GFLOP/s", "of peak"
    );
    let rows = |key: &str, name: &str| {
        for r in out[key].as_array().cloned().unwrap_or_default() {
            println!(
                "{:<16} {:>9} {:>6} {:>10.2} {:>10.1} {:>12.1} {:>8.1}%",
                name,
                r["precision"].as_str().unwrap_or(""),
                r["batch"],
                r["images_per_sec"].as_f64().unwrap_or(0.0),
                r["gflops"].as_f64().unwrap_or(0.0),
                r["matmul_peak_gflops"].as_f64().unwrap_or(0.0),
                100.0 * r["fraction_of_peak"].as_f64().unwrap_or(0.0),
            );
        }
    };
    rows("inference", "inference");
    rows("train_step", "training step");
    println!(
        "peak resident memory: {:.0} MiB",
        out["peak_rss_mib"].as_f64().unwrap_or(0.0)
    );
}

fn bench_epoch(
    data: Option<PathBuf>,
    teacher: TeacherArch,
    teacher_weights: Option<PathBuf>,
    depths: &[usize],
    device: ComputeDevice,
    only: Option<omniad_pipeline::config::FeatureCache>,
) -> Result<serde_json::Value> {
    use omniad_pipeline::config::{DataConfig, FeatureCache, TrainConfig};
    let scratch = tempfile::tempdir()?;
    let data = match data {
        Some(d) => d,
        None => {
            let d = scratch.path().join("synth");
            omniad_synth::generate(&d, &omniad_synth::SynthConfig::default())?;
            d
        }
    };
    let mut weights_note = "given";
    let teacher_weights = match teacher_weights {
        Some(w) => Some(w),
        None if teacher == TeacherArch::EfficientNetLite0 => {
            weights_note = "shipped";
            None
        }
        None => {
            // Timing only: random teacher weights in a timm-named file.
            weights_note = "random init (timing only)";
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let _teacher = omniad_model::Teacher::new(&vs.root(), teacher);
            let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            let path = scratch.path().join("teacher.safetensors");
            Tensor::write_safetensors(&tensors, &path)?;
            Some(path)
        }
    };
    let modes = match only {
        Some(m) => vec![m],
        None => vec![FeatureCache::Memory, FeatureCache::None],
    };
    let mut results = Vec::new();
    for cache in modes {
        let dir = tempfile::tempdir()?;
        let mut cfg = TrainConfig {
            teacher_weights: teacher_weights.clone(),
            epochs: 1,
            out: dir.path().join("run"),
            device,
            feature_cache: cache,
            save_every: 0,
            data: DataConfig {
                data_root: data.clone(),
                ..DataConfig::default()
            },
            ..TrainConfig::default()
        };
        cfg.model.teacher = teacher;
        cfg.model.depths = crate::depths4(depths)?;
        let t = Instant::now();
        let o = omniad_pipeline::train(&cfg, &omniad_pipeline::TrainOptions::default())?;
        results.push(json!({"feature_cache": cache, "seconds": t.elapsed().as_secs_f64(), "cache_seconds": o.cache_seconds,
            "images_per_sec": o.images_per_sec, "steps": o.steps,
            "peak_rss_mib_so_far": peak_rss_mib()}));
    }
    Ok(
        json!({"bench": "epoch", "data": data.display().to_string(), "teacher": teacher.to_string(),
        "teacher_weights": weights_note, "depths": depths, "threads": tch::get_num_threads(),
        "runs": results}),
    )
}

/// Forward time of `f` without autograd, seconds per call.
fn time_fwd(iters: usize, device: Device, f: impl Fn() -> Tensor) -> f64 {
    time(iters, || {
        let _ = tch::no_grad(&f);
        sync(device);
    })
}

/// Forward + backward time of `f`, seconds per call. The backward pass is seeded with a fixed
/// random output gradient; gradients accumulate into the parameters and inputs (their values do
/// not matter here).
fn time_bwd(iters: usize, device: Device, f: impl Fn() -> Tensor) -> f64 {
    let g = tch::no_grad(&f).randn_like();
    time(iters, || {
        (f() * &g).sum(Kind::Float).backward();
        sync(device);
    })
}

/// [`time_fwd`] and [`time_bwd`] of the same function.
fn time_fwd_bwd(iters: usize, device: Device, f: impl Fn() -> Tensor) -> (f64, f64) {
    (time_fwd(iters, device, &f), time_bwd(iters, device, &f))
}

fn bench_parts(
    cfg: &OmniAdConfig,
    device: Device,
    iters: usize,
    batch: i64,
) -> Result<serde_json::Value> {
    use omniad_model::decoder::{OmniBlock, PatchExpand};
    use omniad_model::neck::Neck;
    tch::manual_seed(0);
    let model = OmniAd::new(cfg, device)?;
    let (h, w) = (cfg.image_size.0 as i64, cfg.image_size.1 as i64);
    let x = Tensor::randn([batch, 3, h, w], (Kind::Float, device));
    let mut rows = Vec::new();
    let mut row = |name: String, shape: Vec<i64>, count: usize, fwd: f64, fwd_bwd: Option<f64>| {
        rows.push(json!({"part": name, "input_shape": shape, "count": count,
            "forward_ms": fwd * 1e3, "forward_backward_ms": fwd_bwd.map(|t| t * 1e3),
            "inference_ms": fwd * 1e3 * count as f64,
            "training_ms": fwd_bwd.unwrap_or(fwd) * 1e3 * count as f64}));
    };
    // Teacher: always without autograd (frozen; the trainer runs it under no_grad too).
    let t_fwd = time(iters, || {
        let _ = model.teacher_features(&x);
        sync(device);
    });
    row("teacher".into(), x.size(), 1, t_fwd, None);
    let feats = model.teacher_features(&x);
    let vs = tch::nn::VarStore::new(device);
    let neck = Neck::new(&(vs.root() / "Neck"), &cfg.neck());
    // Inference uses BatchNorm running statistics, training batch statistics.
    let fwd = time_fwd(iters, device, || neck.forward_t(&feats, false));
    let fb = time_bwd(iters, device, || neck.forward_t(&feats, true));
    row("neck".into(), feats[0].size(), 1, fwd, Some(fb));
    let dims = cfg.stage_dims();
    let (h0, w0) = (h / 32, w / 32);
    for (i, &depth) in cfg.depths.iter().enumerate() {
        let (sh, sw) = (h0 << i, w0 << i);
        let p = vs.root() / format!("stage{i}");
        if i > 0 {
            let up = PatchExpand::new(&(&p / "upsample"), dims[i - 1], dims[i]);
            let xin = Tensor::randn([batch, sh / 2, sw / 2, dims[i - 1]], (Kind::Float, device))
                .set_requires_grad(true);
            let (fwd, fb) = time_fwd_bwd(iters, device, || up.forward(&xin));
            row(format!("stage {i} upsample"), xin.size(), 1, fwd, Some(fb));
        }
        if depth == 0 {
            continue;
        }
        let block = OmniBlock::new(&(&p / "block"), &cfg.decoder().block(i));
        let xin =
            Tensor::randn([batch, sh, sw, dims[i]], (Kind::Float, device)).set_requires_grad(true);
        type Branch<'a> = &'a dyn Fn(&Tensor) -> Option<Tensor>;
        let branches: [(&str, bool, Branch); 2] = [
            ("global branch", block.has_global_branch(), &|x| {
                block.global_branch(x)
            }),
            ("local branch", block.has_local_branch(), &|x| {
                block.local_branch(x)
            }),
        ];
        for (name, present, branch) in branches {
            if present {
                let (fwd, fb) = time_fwd_bwd(iters, device, || branch(&xin).expect("built"));
                row(
                    format!("stage {i} {name}"),
                    xin.size(),
                    depth,
                    fwd,
                    Some(fb),
                );
            }
        }
        let fused =
            Tensor::randn([batch, sh, sw, dims[i]], (Kind::Float, device)).set_requires_grad(true);
        let (fwd, fb) = time_fwd_bwd(iters, device, || block.fuse(&xin, &fused));
        row(
            format!("stage {i} fusion (l, IN, l2)"),
            xin.size(),
            depth,
            fwd,
            Some(fb),
        );
    }
    // Anomaly map (inference only) and the loss (training only), on real-shaped features.
    let recon: Vec<Tensor> = feats.iter().map(|f| f.randn_like()).collect();
    let map = time(iters, || {
        let _ = omniad_model::anomaly_map::anomaly_map(&feats, &recon, (h, w));
        sync(device);
    });
    rows.push(
        json!({"part": "anomaly map + blur + score", "input_shape": feats[0].size(),
        "count": 1, "forward_ms": map * 1e3, "forward_backward_ms": null,
        "inference_ms": map * 1e3, "training_ms": 0.0}),
    );
    let recon: Vec<Tensor> = recon
        .into_iter()
        .map(|r| r.set_requires_grad(true))
        .collect();
    let loss = time(iters, || {
        OmniAd::loss(&feats, &recon).backward();
        sync(device);
    });
    rows.push(json!({"part": "loss (fwd + bwd)", "input_shape": feats[0].size(), "count": 1,
        "forward_ms": null, "forward_backward_ms": loss * 1e3, "inference_ms": 0.0, "training_ms": loss * 1e3}));
    let mut opt = AdamW::new(AdamWConfig::default(), model.trainable_named());
    // Real gradients for every parameter (one full backward), so that AdamW does all its work.
    OmniAd::loss(&feats, &model.reconstruct(&feats, true)).backward();
    let step = time(iters, || {
        opt.step(1e-3);
        sync(device);
    });
    rows.push(json!({"part": "AdamW step (+ clip)", "input_shape": [model.num_params().0], "count": 1,
        "forward_ms": null, "forward_backward_ms": step * 1e3, "inference_ms": 0.0, "training_ms": step * 1e3}));
    Ok(
        json!({"bench": "parts", "model": crate::info_line(&model), "device": format!("{device:?}"),
        "threads": tch::get_num_threads(), "batch": batch, "parts": rows}),
    )
}

fn print_parts(out: &serde_json::Value) {
    let rows = out["parts"].as_array().cloned().unwrap_or_default();
    let total = |key: &str| rows.iter().filter_map(|r| r[key].as_f64()).sum::<f64>();
    let (ti, tt) = (total("inference_ms"), total("training_ms"));
    println!(
        "{} | {} | {} threads | batch {}",
        out["model"].as_str().unwrap_or(""),
        out["device"].as_str().unwrap_or(""),
        out["threads"],
        out["batch"]
    );
    println!(
        "{:<30} {:>5} {:>11} {:>12} {:>13} {:>6} {:>13} {:>6}",
        "part", "count", "fwd ms", "fwd+bwd ms", "inference ms", "%", "training ms", "%"
    );
    let ms = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |t| format!("{t:.1}"));
    for r in &rows {
        let (i, t) = (
            r["inference_ms"].as_f64().unwrap_or(0.0),
            r["training_ms"].as_f64().unwrap_or(0.0),
        );
        println!(
            "{:<30} {:>5} {:>11} {:>12} {:>13.1} {:>6.1} {:>13.1} {:>6.1}",
            r["part"].as_str().unwrap_or(""),
            r["count"],
            ms(&r["forward_ms"]),
            ms(&r["forward_backward_ms"]),
            i,
            100.0 * i / ti.max(1e-9),
            t,
            100.0 * t / tt.max(1e-9)
        );
    }
    println!(
        "{:<30} {:>5} {:>11} {:>12} {:>13.1} {:>6} {:>13.1}",
        "sum", "", "", "", ti, "", tt
    );
}
