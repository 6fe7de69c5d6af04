//! `omniad train`: one Omni-AD model on all classes of a dataset (reference trainer
//! `trainer/omniad_trainer.py`), with a teacher-feature cache, exact resume and Ctrl-C safety.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use omniad_data::{open_dataset, Dataset, Loader, LoaderOptions, OpenOptions, Preprocess};
use omniad_model::checkpoint;
use omniad_model::recognition::ClassFit;
use omniad_model::{OmniAd, Precision};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::calibrate::{fit_decisions, split_validation};
use crate::config::{DataConfig, FeatureCache, TrainConfig};
use crate::device::{device_name, libtorch};
use crate::feature_cache::{plan_cache, CachePlan, FeatureStore};
use crate::input::{images_tensor, preprocess_for};
use crate::optim::{step_lr, AdamW};
use crate::runs::{self, DataFingerprint, RunPaths, TrainState};
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
    /// Where the teacher-feature cache was kept, and why (see [`crate::feature_cache`]).
    pub feature_cache: String,
    /// Held-out validation images (not trained on).
    pub validation_images: usize,
    /// Thresholds fitted on them at the end of training (`None` when interrupted or without
    /// held-out images).
    pub thresholds: Option<omniad_model::checkpoint::Thresholds>,
    /// Class recognition's per-class measurements (empty when interrupted).
    pub recognition: BTreeMap<String, ClassFit>,
    /// Warnings of the end-of-training calibration.
    pub warnings: Vec<String>,
}

/// Seed of the global libtorch RNG for optimiser step `step` (feature jitter), so that a resumed
/// run draws exactly the noise an uninterrupted one would.
fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// Opens the training dataset.
///
/// # Errors
/// The data crate's error (names the folder and the layouts tried); no training image.
pub fn open_train_dataset(data: &DataConfig) -> Result<Dataset> {
    let ds = open_dataset(
        data.dataset,
        &data.data_root,
        data.classes.as_deref(),
        &OpenOptions::default(),
    )
    .with_context(|| {
        format!(
            "cannot open {} dataset at {}",
            data.dataset,
            data.data_root.display()
        )
    })?;
    if ds.train.is_empty() {
        bail!("{}: no training images found", data.data_root.display());
    }
    Ok(ds)
}

/// The progress bar of a run: `len` optimiser steps, ETA of the whole run; hidden when `progress`
/// is off (and, by indicatif, when stderr is not a terminal).
fn make_bar(progress: bool, len: u64) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "training [{bar:30}] step {pos}/{len} {msg} ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Steps after which a person is told how long an epoch and the rest of the run will take.
const ESTIMATE_AFTER_STEPS: u64 = 3;

/// "time: 1.2 s per step, about 18 s per epoch, 14 min 3 s for the remaining 700 steps", from
/// `seconds` spent on the first `steps` steps of this call (which include filling the feature
/// cache, so later epochs are usually faster).
fn time_estimate(seconds: f64, steps: u64, batches_per_epoch: usize, remaining: u64) -> String {
    let per_step = seconds / steps.max(1) as f64;
    let human = |s: f64| {
        let s = s.round() as u64;
        match s {
            0..=59 => format!("{s} s"),
            60..=3599 => format!("{} min {} s", s / 60, s % 60),
            _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        }
    };
    format!(
        "time: {per_step:.2} s per step over the first {steps}, about {} per epoch, {} for the remaining {remaining} steps (the first epoch also fills the feature cache)",
        human(per_step * batches_per_epoch as f64),
        human(per_step * remaining as f64)
    )
}

/// Prints a line to stderr: above the progress bar when it is drawn, plainly otherwise.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// The start-up summary of a training, for a person: run folder, data (layout, classes with their
/// image counts), model, schedule, device and the feature-cache decision.
fn startup_summary(
    cfg: &TrainConfig,
    ds: &Dataset,
    val: &[omniad_data::Sample],
    model: &OmniAd,
    plan: &CachePlan,
    state: &TrainState,
    batches_per_epoch: usize,
) -> String {
    let count = |v: &[omniad_data::Sample], c: &str| v.iter().filter(|s| s.class == c).count();
    let classes: Vec<String> = ds
        .classes
        .iter()
        .map(|c| {
            format!(
                "{c} ({} train, {} held out, {} test)",
                count(&ds.train, c),
                count(val, c),
                count(&ds.test, c)
            )
        })
        .collect();
    let (trainable, frozen) = model.num_params();
    let m = &cfg.model;
    let start = if state.steps == 0 {
        "new run".to_string()
    } else {
        format!(
            "resuming at epoch {}, step {}",
            state.epoch + 1,
            state.steps
        )
    };
    let saves = match cfg.save_every {
        0 => "checkpoint at the end (and on a stop signal)".to_string(),
        1 => "checkpoint every epoch".to_string(),
        k => format!("checkpoint every {k} epochs"),
    };
    let dropped = ds.train.len() % cfg.batch_size;
    let dropped = if cfg.drop_last && dropped > 0 {
        format!(
            "; the last {dropped} images of each shuffled epoch do not fill a batch and are left out, as in the reference (--keep-last-batch keeps them)"
        )
    } else {
        String::new()
    };
    let test_check = if ds.test.is_empty() {
        "  test split: none (nothing to check)".to_string()
    } else {
        format!(
            "  test split: {} images and {} masks checked from their headers (readable, masks of their image's size)",
            ds.test.len(),
            ds.test.iter().map(|s| s.masks.len()).sum::<usize>()
        )
    };
    let decay = (0..cfg.epochs)
        .find(|&e| step_lr(1.0, e, cfg.epochs) < 1.0)
        .map_or("constant".to_string(), |e| {
            format!("x0.1 from epoch {}", e + 1)
        });
    [
        format!("omniad train: {start} in {}", cfg.out.display()),
        format!(
            "  data: {} layout at {}, {} training images, {} classes: {}",
            cfg.data.dataset,
            cfg.data.data_root.display(),
            ds.train.len(),
            ds.classes.len(),
            classes.join(", ")
        ),
        test_check,
        format!(
            "  model: teacher {} (frozen, {:.2} M), decoder depths {:?}, {}x{} px, {:.2} M trainable parameters",
            m.teacher,
            frozen as f64 / 1e6,
            m.depths,
            m.image_size.0,
            m.image_size.1,
            trainable as f64 / 1e6
        ),
        format!(
            "  schedule: {} epochs x {batches_per_epoch} steps (batch {}), AdamW lr {} ({decay}), {saves}{dropped}",
            cfg.epochs, cfg.batch_size, cfg.optim.lr
        ),
        format!(
            "  device: {} ({} CPU threads), precision {}",
            device_name(model.device()),
            tch::get_num_threads(),
            match cfg.precision {
                Precision::F32 => "f32".to_string(),
                p => format!("{p} (mixed: decoder matrix products in {p}; teacher, neck, weights and optimiser in f32)"),
            }
        ),
        format!("  feature cache: {}", plan.reason),
        if val.is_empty() {
            "  validation: none held out (--val-fraction 0): no thresholds are fitted; run `omniad calibrate` after training".to_string()
        } else {
            let c = &cfg.calibration;
            format!(
                "  validation: {} held-out normal images, never trained on; at the end: class recognition, and per class the quantile {} of their image scores (image threshold) and {} of their pixels (mask threshold)",
                val.len(),
                c.image_quantile,
                c.pixel_quantile
            )
        },
    ]
    .join("\n")
}

/// Teacher features of training batches, from the cache when it holds them, else decoded and
/// run through the teacher (and cached). One per training call; [`Self::start_epoch`] prepares
/// the decoding of an epoch's batches that the cache cannot serve.
struct FeatureSource<'a> {
    ds: &'a Dataset,
    pp: Preprocess,
    batch_size: usize,
    cache: Option<FeatureStore>,
    loader: Option<Loader>,
}

impl<'a> FeatureSource<'a> {
    fn new(
        ds: &'a Dataset,
        pp: Preprocess,
        batch_size: usize,
        cache: FeatureCache,
        run_dir: &std::path::Path,
    ) -> Self {
        Self {
            ds,
            pp,
            batch_size,
            cache: FeatureStore::new(cache, ds.train.len(), run_dir),
            loader: None,
        }
    }

    /// Starts decoding, in parallel threads, the batches `chunks` that the cache cannot serve
    /// (all of them without a cache; those of the first epoch with one).
    fn start_epoch(&mut self, chunks: &[Vec<usize>]) -> Result<()> {
        let to_decode: Vec<usize> = chunks
            .iter()
            .filter(|c| !self.cache.as_ref().is_some_and(|s| s.has_all(c)))
            .flatten()
            .copied()
            .collect();
        self.loader = if to_decode.is_empty() {
            None
        } else {
            Some(Loader::with_indices(
                &self.ds.train,
                &to_decode,
                LoaderOptions::new(self.batch_size, self.pp),
            )?)
        };
        Ok(())
    }

    /// Teacher features `[B, C_i, h_i, w_i]` (3 scales) of training images `idx`, on the
    /// model's device.
    fn features(&mut self, model: &OmniAd, idx: &[usize]) -> Result<Vec<Tensor>> {
        if let Some(store) = self.cache.as_ref().filter(|s| s.has_all(idx)) {
            return store.get(idx, model.device());
        }
        let batch = self
            .loader
            .as_mut()
            .context("no data loader for a batch to decode")?
            .next()
            .context("data loader ended early")??;
        if batch.indices != idx {
            bail!(
                "data loader returned images {:?}, expected {idx:?}",
                batch.indices
            );
        }
        let t0 = Instant::now();
        // The teacher runs in float32 under every precision (its features are the targets;
        // bfloat16 features turned the neck's gradients 65-90% away from float32, see
        // crates/omniad-model/tests/precision.rs).
        let fresh = libtorch("teacher forward pass of a training batch", || {
            let x = images_tensor(&batch.images, idx.len(), &self.pp, model.device());
            model.teacher_features(&x)
        })?;
        Ok(match self.cache.as_mut() {
            Some(store) => {
                let kept = store.put(idx, fresh)?;
                store.teacher_seconds += t0.elapsed().as_secs_f64();
                kept
            }
            None => fresh,
        })
    }

    /// Seconds spent in the teacher while filling the cache.
    fn cache_seconds(&self) -> f64 {
        self.cache.as_ref().map_or(0.0, |c| c.teacher_seconds)
    }
}

/// One optimisation step on teacher features `feats` (reference `OmniADTrainer.optimize_parameters`):
/// decoder forward in training mode (neck BatchNorm batch statistics, feature jitter drawn from
/// the RNG seeded for this step), loss, backward, AdamW step at `lr`. Returns `(loss, grad norm)`.
///
/// # Errors
/// A non-finite loss (divergence), naming the epoch and step.
#[allow(clippy::too_many_arguments)]
fn optimisation_step(
    model: &OmniAd,
    opt: &mut AdamW,
    feats: &[Tensor],
    lr: f64,
    jitter_seed: i64,
    precision: Precision,
    at: (usize, u64),
) -> Result<(f64, f64)> {
    let (loss_v, grad_norm) = libtorch(
        &format!("training step {} (epoch {})", at.1 + 1, at.0 + 1),
        || {
            tch::manual_seed(jitter_seed);
            // Forward in `precision` (the decoder hands out float32 features, so the loss is
            // float32); the backward pass follows the recorded kinds and the casts of the
            // float32 master weights, so their gradients arrive in float32.
            let recon = precision.run(|| model.reconstruct(feats, true));
            let loss = OmniAd::loss(feats, &recon);
            opt.zero_grad();
            loss.backward();
            let grad_norm = opt.step(lr);
            (loss.double_value(&[]), grad_norm)
        },
    )?;
    if !loss_v.is_finite() {
        bail!(
            "training diverged: loss is {loss_v} at epoch {}, step {} (try a lower --lr)",
            at.0 + 1,
            at.1
        );
    }
    Ok((loss_v, grad_norm))
}

/// The model, position and (for a resumed run) optimiser state tensors a training starts from.
type Started = (OmniAd, TrainState, Option<Vec<(String, Tensor)>>);

/// A new model with the teacher's weights and the initial position, or the resumed run's model,
/// optimiser state and position, checked against the configuration and the training images
/// (`data`, `batches_per_epoch`).
fn start_or_resume(
    cfg: &TrainConfig,
    paths: &RunPaths,
    resume: bool,
    device: tch::Device,
    data: &DataFingerprint,
    batches_per_epoch: usize,
) -> Result<Started> {
    if resume {
        let (model, opt_state, state, saved_data) = runs::load_resume(paths, device)?;
        let st = paths.state_json.display();
        if let Some(saved) = saved_data.filter(|d| d != data) {
            bail!(
                "{st}: the training images changed since this run started ({} images then, {} now, or other files/sizes): resuming would train on other data; restore the dataset or start a new run",
                saved.images,
                data.images
            );
        }
        if model.cfg != cfg.model {
            bail!(
                "{}: the checkpoint's architecture differs from {}: the run folder is inconsistent",
                paths.model_json.display(),
                paths.config.display()
            );
        }
        let expected_steps = (state.epoch * batches_per_epoch + state.batch_in_epoch) as u64;
        if state.batch_in_epoch >= batches_per_epoch.max(1) || state.steps != expected_steps {
            bail!(
                "{st}: impossible resume position (epoch {}, batch {} of {batches_per_epoch}, step {}; expected step {expected_steps}): the state is corrupt or from another dataset",
                state.epoch + 1,
                state.batch_in_epoch,
                state.steps
            );
        }
        if state.epoch > cfg.epochs {
            bail!(
                "{st}: the run already did {} epochs, more than --epochs {}",
                state.epoch,
                cfg.epochs
            );
        }
        let finalised = checkpoint::read_meta(&paths.model_json)
            .map(|m| m.recognition.is_some())
            .unwrap_or(false);
        if state.epoch == cfg.epochs && finalised {
            bail!(
                "{}: the run finished all {} epochs; pass a larger --epochs to train it further",
                paths.dir.display(),
                cfg.epochs
            );
        }
        tracing::info!(
            "resuming {} at epoch {}, step {}",
            paths.dir.display(),
            state.epoch + 1,
            state.steps
        );
        return Ok((model, state, Some(opt_state)));
    }
    tch::manual_seed(cfg.seed as i64);
    let mut model = OmniAd::new(&cfg.model, device)?;
    load_teacher(&mut model, cfg.teacher_weights.as_deref())?;
    omniad_io::write_atomic(&paths.config, cfg.to_toml().as_bytes())?;
    Ok((model, TrainState::default(), None))
}

/// Teacher-feature floats of one training image (the three scales together), from one forward
/// pass of the teacher on a blank image.
///
/// # Errors
/// libtorch failures (e.g. out of memory on the device).
fn teacher_floats_per_image(model: &OmniAd) -> Result<u64> {
    let (h, w) = model.cfg.image_size;
    let x = Tensor::f_zeros([1, 3, h as i64, w as i64], (Kind::Float, model.device()))?;
    let feats = libtorch("teacher forward pass sizing the feature cache", || {
        tch::no_grad(|| model.teacher_features(&x))
    })?;
    Ok(feats.iter().map(|f| f.numel() as u64).sum())
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
/// Before training, the test split that `omniad eval` will read is checked from file headers
/// only ([`omniad_data::check_headers`]): an unreadable image header or a mask whose size differs
/// from its image's stops the call in seconds.
///
/// # Errors
/// Bad configuration, unreadable data or teacher weights, an unwritable run folder, a test split
/// that fails the header check; each message names the file or setting.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainOutcome> {
    cfg.validate()?;
    let device = cfg.device.open()?;
    cfg.precision
        .check_device(device)
        .map_err(anyhow::Error::msg)?;
    let paths = RunPaths::new(&cfg.out);
    let _lock = runs::prepare_run_dir(&paths, opts.resume)?;

    let mut ds = open_train_dataset(&cfg.data)?;
    // The test split `omniad eval` will read, from file headers only: a bad file stops the run
    // here, in seconds, instead of after training.
    omniad_data::check_headers(&ds.test).with_context(|| {
        format!(
            "{}: the test split, checked before training, cannot be evaluated",
            cfg.data.data_root.display()
        )
    })?;
    let val = split_validation(&mut ds, &cfg.calibration, cfg.seed);
    // and the training and held-out images (the held-out ones are first read at the end)
    let both: Vec<omniad_data::Sample> = ds.train.iter().chain(&val).cloned().collect();
    omniad_data::check_headers(&both).with_context(|| {
        format!(
            "{}: the training images (held-out ones included), checked before training",
            cfg.data.data_root.display()
        )
    })?;
    drop(both);
    let n = ds.train.len();
    let batches_per_epoch = if cfg.drop_last {
        n / cfg.batch_size
    } else {
        n.div_ceil(cfg.batch_size)
    };
    if batches_per_epoch == 0 {
        bail!(
            "{}: {n} training images are fewer than one batch (batch size {}), and the last incomplete batch of an epoch is dropped as in the reference: lower --batch-size or pass --keep-last-batch",
            cfg.data.data_root.display(),
            cfg.batch_size
        );
    }
    let fingerprint = DataFingerprint::of(&ds.train)?;
    let (model, mut state, resume_opt) = start_or_resume(
        cfg,
        &paths,
        opts.resume,
        device,
        &fingerprint,
        batches_per_epoch,
    )?;
    let mut opt = AdamW::new(cfg.optim, model.trainable_named());
    if let Some(st) = resume_opt {
        opt.load_state(st)
            .with_context(|| paths.opt_state.display().to_string())?;
    }

    let plan: CachePlan = plan_cache(
        cfg.feature_cache,
        n,
        teacher_floats_per_image(&model)?,
        cfg.memory_budget,
        &paths.dir,
    )?;
    tracing::info!("feature cache: {}", plan.reason);
    if opts.progress {
        eprintln!(
            "{}",
            startup_summary(cfg, &ds, &val, &model, &plan, &state, batches_per_epoch)
        );
    }
    let provenance = |epochs_done: usize| {
        serde_json::json!({
            "omniad_version": env!("CARGO_PKG_VERSION"),
            "dataset": cfg.data.dataset.to_string(),
            "data_root": cfg.data.data_root.display().to_string(),
            "classes": ds.classes,
            "train_images": ds.train.len(),
            "validation_images": val.len(),
            "epochs": cfg.epochs,
            "epochs_done": epochs_done,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "optim": cfg.optim,
            "device": device_name(device),
            "precision": cfg.precision,
            "feature_cache": cfg.feature_cache,
            "feature_cache_used": plan.mode,
        })
    };

    let mut source = FeatureSource::new(
        &ds,
        preprocess_for(&model.cfg),
        cfg.batch_size,
        plan.mode,
        &paths.dir,
    );
    let mut log = runs::JsonlLog::open(&paths.log, Some(state.steps))?;
    let started = Instant::now();
    let first_step = state.steps;
    let total_steps = (cfg.epochs * batches_per_epoch) as u64;
    let mut images_done = 0usize;
    let mut last_loss = f64::NAN;
    let mut interrupted = false;
    // One bar for the whole run: its ETA is the run's, not the epoch's.
    let bar = make_bar(opts.progress, (cfg.epochs * batches_per_epoch) as u64);
    bar.set_position(state.steps);
    bar.reset_eta();

    'epochs: while state.epoch < cfg.epochs {
        let epoch = state.epoch;
        let lr = step_lr(cfg.optim.lr, epoch, cfg.epochs);
        let order = omniad_data::shuffled_indices(n, cfg.seed, epoch as u64);
        let chunks: Vec<Vec<usize>> = order
            .chunks(cfg.batch_size)
            .take(batches_per_epoch)
            .map(|c| c.to_vec())
            .collect();
        if state.batch_in_epoch > chunks.len() {
            bail!(
                "{}: batch {} of epoch {} does not exist (the epoch has {} batches): the resume state does not fit this dataset",
                paths.state_json.display(),
                state.batch_in_epoch,
                epoch + 1,
                chunks.len()
            );
        }
        source.start_epoch(&chunks[state.batch_in_epoch..])?;
        while state.batch_in_epoch < chunks.len() {
            if opts
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst))
            {
                interrupted = true;
                break 'epochs;
            }
            if opts.max_steps.is_some_and(|m| state.steps >= m) {
                interrupted = true;
                break 'epochs;
            }
            let idx = &chunks[state.batch_in_epoch];
            let feats = source.features(&model, idx)?;
            let (loss_v, grad_norm) = optimisation_step(
                &model,
                &mut opt,
                &feats,
                lr,
                step_seed(cfg.seed, state.steps),
                cfg.precision,
                (epoch, state.steps),
            )?;
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
            bar.set_message(format!(
                "epoch {}/{} loss {loss_v:.4} lr {lr:.1e} {ips:.1} img/s",
                epoch + 1,
                cfg.epochs
            ));
            bar.inc(1);
            if opts.progress && state.steps - first_step == ESTIMATE_AFTER_STEPS {
                say(
                    &bar,
                    time_estimate(
                        started.elapsed().as_secs_f64(),
                        ESTIMATE_AFTER_STEPS,
                        batches_per_epoch,
                        total_steps - state.steps,
                    ),
                );
            }
        }
        // One line per epoch, with or without the bar (above it when it is drawn).
        say(
            &bar,
            format!("epoch {}/{}: loss {:.5}", epoch + 1, cfg.epochs, last_loss),
        );
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        let done = state.epoch;
        if (cfg.save_every > 0 && done.is_multiple_of(cfg.save_every)) || done == cfg.epochs {
            let snap = runs::Snapshot {
                model: &model,
                opt: &opt,
                state: &state,
                data: &fingerprint,
                provenance: provenance(done),
                finalised: None,
            };
            runs::save_all(&paths, &snap)?;
        }
        if cfg.eval_every > 0 && done.is_multiple_of(cfg.eval_every) && done < cfg.epochs {
            match crate::eval::evaluate_model(
                &model,
                None,
                &ds,
                &crate::eval::EvalOptions::default(),
            ) {
                Ok(report) => {
                    let m = report.mean_json();
                    log.write(&serde_json::json!({"epoch": done, "eval": m}))?;
                    say(&bar, format!("epoch {done}: {}", report.summary_line()));
                }
                Err(e) => tracing::warn!("evaluation at epoch {done} failed: {e:#}"),
            }
        }
    }
    if interrupted {
        bar.abandon_with_message("interrupted");
        let snap = runs::Snapshot {
            model: &model,
            opt: &opt,
            state: &state,
            data: &fingerprint,
            provenance: provenance(state.epoch),
            finalised: None,
        };
        runs::save_all(&paths, &snap)?;
    }
    // training throughput, without the calibration below
    let elapsed = started.elapsed().as_secs_f64();
    let (thresholds, recognition, warnings) = if interrupted {
        (None, BTreeMap::new(), Vec::new())
    } else {
        bar.finish_and_clear();
        if opts.progress {
            eprintln!(
                "fitting class recognition on {} training images and thresholds on {} held-out images",
                ds.train.len(),
                val.len()
            );
        }
        let dec = fit_decisions(
            &model,
            &ds.classes,
            &ds.train,
            &val,
            &cfg.calibration,
            cfg.batch_size.max(8),
        )
        .with_context(|| {
            format!(
                "calibrating at the end of training (the trained weights are saved in {}; once the problem is fixed, `omniad train --resume --out {}` completes the calibration)",
                paths.model_json.display(),
                paths.dir.display()
            )
        })?;
        let snap = runs::Snapshot {
            model: &model,
            opt: &opt,
            state: &state,
            data: &fingerprint,
            provenance: provenance(state.epoch),
            finalised: Some(runs::Finalised {
                bank: (&dec.bank, dec.bank.meta(dec.fit.clone())),
                thresholds: dec.thresholds.clone(),
            }),
        };
        runs::save_all(&paths, &snap)?;
        (dec.thresholds, dec.fit, dec.warnings)
    };
    Ok(TrainOutcome {
        run_dir: paths.dir.clone(),
        checkpoint: paths.model_json.clone(),
        last_loss,
        epochs_done: state.epoch,
        steps: state.steps,
        interrupted,
        images_per_sec: images_done as f64 / elapsed.max(1e-9),
        cache_seconds: source.cache_seconds(),
        feature_cache: plan.reason.clone(),
        validation_images: val.len(),
        thresholds,
        recognition,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_estimate_reads_well() {
        assert_eq!(
            super::time_estimate(3.6, 3, 15, 700),
            "time: 1.20 s per step over the first 3, about 18 s per epoch, 14 min 0 s for the \
             remaining 700 steps (the first epoch also fills the feature cache)"
        );
        assert!(super::time_estimate(7200.0, 1, 1, 3).contains("6 h 0 min for the remaining"));
    }
}
