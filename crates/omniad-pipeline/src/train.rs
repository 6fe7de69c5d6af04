//! `omniad train`: one Omni-AD model on all classes of a dataset (reference trainer
//! `trainer/omniad_trainer.py`), with a teacher-feature cache, exact resume and Ctrl-C safety.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use omniad_data::{open_dataset, Dataset, Loader, LoaderOptions, OpenOptions, Preprocess};
use omniad_model::checkpoint;
use omniad_model::OmniAd;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::{FeatureCache, TrainConfig};
use crate::device::{device_name, parse_device};
use crate::optim::{step_lr, AdamW};
use crate::runs::{self, RunPaths};
use crate::teacher::load_teacher;

/// Options of a training call that are not part of the saved configuration.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue the run in `cfg.out` from its last checkpoint.
    pub resume: bool,
    /// Show progress bars (otherwise log lines).
    pub progress: bool,
    /// Set to `true` (e.g. by a Ctrl-C handler) to stop after the current step; a checkpoint is
    /// saved before returning.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Stop after this many optimiser steps in total (tests of resume; `None` = run to the end).
    pub max_steps: Option<u64>,
}

/// Result of [`train`].
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    /// Run folder.
    pub run_dir: PathBuf,
    /// Checkpoint description (`model.json`) of the latest weights.
    pub checkpoint: PathBuf,
    /// Mean loss over the last epoch run (or partial epoch).
    pub last_loss: f64,
    /// Completed epochs.
    pub epochs_done: usize,
    /// Optimiser steps taken in total.
    pub steps: u64,
    /// Whether training stopped early (interrupt or `max_steps`).
    pub interrupted: bool,
    /// Training throughput over this call, images per second.
    pub images_per_sec: f64,
    /// Seconds spent in the teacher while filling the feature cache (the first epoch, or the
    /// first use of each image after a resume); 0 without a cache.
    pub cache_seconds: f64,
}

/// Resume position stored next to the optimiser state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch_in_epoch: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Sum of losses of the batches done in the current epoch.
    pub epoch_loss_sum: f64,
}

/// Seed of the global libtorch RNG for optimiser step `step` (feature jitter), so that a resumed
/// run draws exactly the noise an uninterrupted one would.
fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// The preprocessing the teacher of `cfg` expects.
pub fn preprocess_for(model_cfg: &omniad_model::OmniAdConfig) -> Preprocess {
    let (mean, std) = model_cfg.teacher.normalization();
    Preprocess {
        size: (model_cfg.image_size.0 as u32, model_cfg.image_size.1 as u32),
        mean,
        std,
    }
}

/// Opens the dataset a training configuration names.
///
/// # Errors
/// The data crate's error (names the folder and the layouts tried).
pub fn open_train_dataset(cfg: &TrainConfig) -> Result<Dataset> {
    let ds = open_dataset(
        cfg.dataset,
        &cfg.data_root,
        cfg.classes.as_deref(),
        &OpenOptions::default(),
    )
    .with_context(|| {
        format!(
            "cannot open {} dataset at {}",
            cfg.dataset,
            cfg.data_root.display()
        )
    })?;
    if ds.train.is_empty() {
        bail!("{}: no training images found", cfg.data_root.display());
    }
    Ok(ds)
}

/// The teacher-feature cache: features of every training image, `[N, C_i, h_i, w_i]` per scale,
/// on the CPU, filled the first time each image is used (so the first epoch runs exactly like
/// training without a cache — same batches, same teacher calls — and later epochs skip the
/// teacher and the image decoding). Not saved: a resumed run fills it again as it goes.
struct FeatureStore {
    /// f32 (bit-identical to recomputing) or f16 ([`FeatureCache::MemoryF16`]).
    kind: Kind,
    /// Allocated at the first fill, from that batch's feature shapes.
    feats: Option<Vec<Tensor>>,
    filled: Vec<bool>,
    /// Seconds spent in the teacher while filling.
    teacher_seconds: f64,
}

impl FeatureStore {
    fn new(mode: FeatureCache, n: usize) -> Option<Self> {
        let kind = match mode {
            FeatureCache::None => return None,
            FeatureCache::Memory => Kind::Float,
            FeatureCache::MemoryF16 => Kind::Half,
        };
        Some(Self {
            kind,
            feats: None,
            filled: vec![false; n],
            teacher_seconds: 0.0,
        })
    }

    fn has_all(&self, idx: &[usize]) -> bool {
        idx.iter().all(|&i| self.filled[i])
    }

    /// Cached features of images `idx`, as f32 on `device`.
    fn get(&self, idx: &[usize], device: Device) -> Vec<Tensor> {
        let index = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        self.feats
            .iter()
            .flatten()
            .map(|c| {
                c.index_select(0, &index)
                    .to_device(device)
                    .to_kind(Kind::Float)
            })
            .collect()
    }

    /// Stores fresh teacher features of images `idx` and returns what training should use: the
    /// stored values (f16-rounded in f16 mode, so that every epoch sees the same features).
    fn put(&mut self, idx: &[usize], feats: Vec<Tensor>) -> Vec<Tensor> {
        let n = self.filled.len() as i64;
        let kind = self.kind;
        let store = self.feats.get_or_insert_with(|| {
            feats
                .iter()
                .map(|f| {
                    let mut shape = f.size();
                    shape[0] = n;
                    Tensor::zeros(shape, (kind, Device::Cpu))
                })
                .collect()
        });
        let index = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let mut out = Vec::with_capacity(feats.len());
        for (c, f) in store.iter_mut().zip(feats) {
            let stored = f.to_device(Device::Cpu).to_kind(kind);
            let _ = c.index_copy_(0, &index, &stored);
            out.push(if kind == Kind::Float {
                f
            } else {
                stored.to_device(f.device()).to_kind(Kind::Float)
            });
        }
        for &i in idx {
            self.filled[i] = true;
        }
        out
    }
}

/// `[B, 3, H, W]` tensor from the loader's flat CHW buffer.
pub fn images_tensor(images: &[f32], b: usize, pp: &Preprocess, device: Device) -> Tensor {
    Tensor::from_slice(images)
        .reshape([b as i64, 3, pp.size.0 as i64, pp.size.1 as i64])
        .to_device(device)
}

fn make_bar(progress: bool, len: u64, what: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>18} [{bar:30}] {pos}/{len} {msg} ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Trains (or resumes) the run described by `cfg`.
///
/// Determinism: initialisation and feature jitter draw from libtorch's process-global random
/// generator, seeded from `cfg.seed` (per step for the jitter, so a resumed run draws what an
/// uninterrupted one would). Two trainings running concurrently in one process therefore
/// disturb each other's random draws; run them one after the other for reproducible results.
///
/// Writes into `cfg.out`: `config.toml` (effective configuration), `model.safetensors` +
/// `model.json` (checkpoint, atomically), `train_state.safetensors` + `train_state.json`
/// (optimiser and position, for `--resume`), `train_log.jsonl` (one JSON object per step).
///
/// # Errors
/// Bad configuration, unreadable data or teacher weights, an unwritable run folder; each message
/// names the file or setting.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainOutcome> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let device = parse_device(&cfg.device).map_err(anyhow::Error::msg)?;
    let paths = RunPaths::new(&cfg.out);
    runs::prepare_run_dir(&paths, opts.resume)?;

    let ds = open_train_dataset(cfg)?;
    let model_cfg = cfg.model_config();
    tch::manual_seed(cfg.seed as i64);
    let mut model = OmniAd::new(&model_cfg, device).map_err(anyhow::Error::msg)?;
    let pp = preprocess_for(&model_cfg);

    let mut resume_opt = None;
    let mut state = TrainState {
        epoch: 0,
        batch_in_epoch: 0,
        steps: 0,
        epoch_loss_sum: 0.0,
    };
    if opts.resume {
        let (m, opt_state, st) = runs::load_resume(&paths, device)?;
        model = m;
        state = st;
        resume_opt = Some(opt_state);
        tracing::info!(
            "resuming {} at epoch {}, step {}",
            paths.dir.display(),
            state.epoch + 1,
            state.steps
        );
    } else {
        load_teacher(&mut model, cfg.teacher_weights.as_deref())?;
        std::fs::write(&paths.config, cfg.to_toml())
            .with_context(|| format!("cannot write {}", paths.config.display()))?;
    }

    let mut opt = AdamW::new(cfg.optim, model.trainable_named());
    if let Some(st) = resume_opt {
        opt.load_state(st)
            .map_err(|e| anyhow::anyhow!("{}: {e}", paths.opt_state.display()))?;
    }

    let provenance = |epochs_done: usize| {
        serde_json::json!({
            "omniad_version": env!("CARGO_PKG_VERSION"),
            "dataset": cfg.dataset.to_string(),
            "data_root": cfg.data_root.display().to_string(),
            "classes": ds.classes,
            "train_images": ds.train.len(),
            "epochs": cfg.epochs,
            "epochs_done": epochs_done,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "optim": cfg.optim,
            "device": device_name(device),
            "feature_cache": cfg.feature_cache,
        })
    };

    let n = ds.train.len();
    let mut cache = FeatureStore::new(cfg.feature_cache, n);
    let batches_per_epoch = n.div_ceil(cfg.batch_size);
    let mut log = runs::JsonlLog::open(&paths.log, opts.resume.then_some(state.steps))?;
    let started = Instant::now();
    let mut images_done = 0usize;
    let mut last_loss = f64::NAN;
    let mut interrupted = false;

    'epochs: while state.epoch < cfg.epochs {
        let epoch = state.epoch;
        let lr = step_lr(cfg.optim.lr, epoch, cfg.epochs);
        let order = omniad_data::shuffled_indices(n, cfg.seed, epoch as u64);
        let bar = make_bar(
            opts.progress,
            batches_per_epoch as u64,
            &format!("epoch {}/{}", epoch + 1, cfg.epochs),
        );
        bar.set_position(state.batch_in_epoch as u64);
        let chunks: Vec<Vec<usize>> = order.chunks(cfg.batch_size).map(|c| c.to_vec()).collect();
        // Decode, in parallel threads, this epoch's remaining batches that the cache cannot
        // serve (all of them without a cache; in the first epoch with one).
        let to_decode: Vec<usize> = chunks[state.batch_in_epoch..]
            .iter()
            .filter(|c| !cache.as_ref().is_some_and(|s| s.has_all(c)))
            .flatten()
            .copied()
            .collect();
        let mut loader = if to_decode.is_empty() {
            None
        } else {
            Some(Loader::with_indices(
                &ds.train,
                &to_decode,
                LoaderOptions::new(cfg.batch_size, pp),
            )?)
        };
        while state.batch_in_epoch < chunks.len() {
            if let Some(flag) = &opts.interrupt {
                if flag.load(Ordering::SeqCst) {
                    interrupted = true;
                    bar.abandon_with_message("interrupted");
                    break 'epochs;
                }
            }
            if opts.max_steps.is_some_and(|m| state.steps >= m) {
                interrupted = true;
                bar.finish_and_clear();
                break 'epochs;
            }
            let idx = &chunks[state.batch_in_epoch];
            let feats: Vec<Tensor> = match cache.as_mut() {
                Some(store) if store.has_all(idx) => store.get(idx, device),
                _ => {
                    let batch = loader
                        .as_mut()
                        .context("no data loader for a batch to decode")?
                        .next()
                        .context("data loader ended early")??;
                    if batch.indices != *idx {
                        bail!(
                            "data loader returned images {:?}, expected {idx:?}",
                            batch.indices
                        );
                    }
                    let x = images_tensor(&batch.images, batch.indices.len(), &pp, device);
                    let t0 = Instant::now();
                    let fresh = model.teacher_features(&x);
                    match cache.as_mut() {
                        Some(store) => {
                            let kept = store.put(idx, fresh);
                            store.teacher_seconds += t0.elapsed().as_secs_f64();
                            kept
                        }
                        None => fresh,
                    }
                }
            };
            tch::manual_seed(step_seed(cfg.seed, state.steps));
            let recon = model.reconstruct(&feats, true);
            let loss = OmniAd::loss(&feats, &recon);
            opt.zero_grad();
            loss.backward();
            let grad_norm = opt.step(lr);
            let loss_v = loss.double_value(&[]);
            if !loss_v.is_finite() {
                bail!(
                    "training diverged: loss is {loss_v} at epoch {}, step {} (try a lower --lr)",
                    epoch + 1,
                    state.steps
                );
            }
            state.steps += 1;
            state.batch_in_epoch += 1;
            state.epoch_loss_sum += loss_v;
            images_done += idx.len();
            last_loss = state.epoch_loss_sum / state.batch_in_epoch as f64;
            let ips = images_done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            log.write(&serde_json::json!({
                "epoch": epoch + 1, "step": state.steps, "loss": loss_v, "lr": lr,
                "grad_norm": grad_norm, "images_per_sec": ips,
            }))?;
            bar.set_message(format!("loss {loss_v:.4} lr {lr:.1e} {ips:.1} img/s"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if !opts.progress {
            tracing::info!("epoch {}/{}: loss {:.5}", epoch + 1, cfg.epochs, last_loss);
        } else {
            eprintln!("epoch {}/{}: loss {:.5}", epoch + 1, cfg.epochs, last_loss);
        }
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        let done = state.epoch;
        if (cfg.save_every > 0 && done.is_multiple_of(cfg.save_every)) || done == cfg.epochs {
            runs::save_all(&paths, &model, &opt, &state, provenance(done))?;
        }
        if cfg.eval_every > 0 && done.is_multiple_of(cfg.eval_every) && done < cfg.epochs {
            match crate::eval::evaluate_model(&model, &ds, &crate::eval::EvalOptions::default()) {
                Ok(report) => {
                    let m = report.mean_json();
                    log.write(&serde_json::json!({"epoch": done, "eval": m}))?;
                    eprintln!("epoch {done}: {}", report.summary_line());
                }
                Err(e) => tracing::warn!("evaluation at epoch {done} failed: {e:#}"),
            }
        }
    }
    if interrupted {
        runs::save_all(&paths, &model, &opt, &state, provenance(state.epoch))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(TrainOutcome {
        run_dir: paths.dir.clone(),
        checkpoint: paths.model_json.clone(),
        last_loss,
        epochs_done: state.epoch,
        steps: state.steps,
        interrupted,
        images_per_sec: images_done as f64 / elapsed.max(1e-9),
        cache_seconds: cache.map_or(0.0, |c| c.teacher_seconds),
    })
}

/// Checks that a run folder holds a loadable checkpoint and returns its description path.
///
/// # Errors
/// The folder or its checkpoint is missing.
pub fn checkpoint_of(run: &Path) -> Result<PathBuf> {
    if !run.is_dir() {
        bail!("{}: run folder not found", run.display());
    }
    let p = RunPaths::new(run).model_json;
    if !p.is_file() {
        bail!(
            "{}: no checkpoint in this run folder (expected {})",
            run.display(),
            p.display()
        );
    }
    checkpoint::read_meta(&p)?;
    Ok(p)
}
