//! `omniad demo`: the whole method on this machine, offline, in minutes — a synthetic
//! multi-class dataset ([`omniad_synth`]), one Omni-AD model trained on all its classes with the
//! shipped EfficientNet-Lite0 teacher, evaluation with every metric.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use omniad_data::DatasetKind;
use omniad_synth::SynthConfig;

use crate::config::{DataConfig, FeatureCache, TrainConfig};
use crate::device::ComputeDevice;
use crate::eval::{eval_run, EvalOptions, EvalOutput};
use crate::train::{open_train_dataset, train, TrainOptions, TrainOutcome};

/// The demo's reduced configuration (documented in the README and printed by `omniad demo`).
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Folder for the dataset (`<dir>/data`) and the run (`<dir>/run`).
    pub dir: PathBuf,
    /// Synthetic dataset settings.
    pub synth: SynthConfig,
    /// Model input side in pixels (multiple of 32).
    pub image_size: u32,
    /// Decoder depths (reduced from the paper's `[3, 9, 9, 7]` to fit minutes on a CPU).
    pub depths: [usize; 4],
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Device.
    pub device: ComputeDevice,
    /// Seed of data generation and training.
    pub seed: u64,
    /// Show progress bars.
    pub progress: bool,
    /// Precision of training and evaluation ([`omniad_model::Precision`]).
    pub precision: omniad_model::Precision,
}

impl DemoConfig {
    /// The documented demo configuration in `dir`: all synthetic classes at 256x256 (40 train /
    /// 15 good / 25 defective test images each), resized to a 128x128 model input, decoder depths
    /// `[1, 1, 1, 1]`, 48 epochs, batch 16, lr 1e-3 (the paper's AdamW settings otherwise),
    /// EfficientNet-Lite0 teacher. Measured: 3.2 min on 2 CPU cores, mean I-AUROC 0.916,
    /// P-AUROC 0.979.
    pub fn standard(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            synth: SynthConfig::default(),
            image_size: 128,
            depths: [1, 1, 1, 1],
            epochs: 48,
            batch_size: 16,
            lr: 1e-3,
            device: ComputeDevice::Cpu,
            seed: 42,
            progress: true,
            precision: omniad_model::Precision::F32,
        }
    }

    /// The training configuration the demo runs.
    pub fn train_config(&self) -> TrainConfig {
        let mut cfg = TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            seed: self.seed,
            out: self.dir.join("run"),
            device: self.device,
            feature_cache: FeatureCache::Memory,
            save_every: 0,
            data: DataConfig {
                dataset: DatasetKind::Mvtec,
                data_root: self.dir.join("data"),
                ..DataConfig::default()
            },
            ..TrainConfig::default()
        };
        cfg.model.depths = self.depths;
        cfg.model.image_size = (self.image_size, self.image_size);
        cfg.precision = self.precision;
        cfg.optim.lr = self.lr;
        cfg
    }

    /// One line describing the configuration.
    pub fn describe(&self) -> String {
        format!(
            "synthetic data: {} classes, {} train / {} good + {} defective test images per class at {}px; \
             model: EfficientNet-Lite0 teacher, {}px input, decoder depths {:?}; training: {} epochs, batch {}, AdamW lr {:.0e}, device {}",
            self.synth.classes.as_ref().map(|c| c.len()).unwrap_or_else(|| omniad_synth::class_names().len()),
            self.synth.train_per_class,
            self.synth.test_good_per_class,
            self.synth.test_defect_per_class,
            self.synth.size,
            self.image_size,
            self.depths,
            self.epochs,
            self.batch_size,
            self.lr,
            self.device
        )
    }
}

/// What the demo produced.
#[derive(Debug)]
pub struct DemoOutcome {
    /// Synthetic dataset folder.
    pub data_dir: PathBuf,
    /// Run folder (checkpoint, logs, metrics).
    pub run_dir: PathBuf,
    /// Folder of the saved anomaly maps.
    pub maps_dir: PathBuf,
    /// Training summary.
    pub train: TrainOutcome,
    /// Evaluation results.
    pub eval: EvalOutput,
    /// Wall time of each phase in seconds: (data, training, evaluation).
    pub seconds: (f64, f64, f64),
}

/// Runs the demo. The dataset is regenerated if `<dir>/data` is a previous synth output; a
/// previous run in `<dir>/run` is replaced.
///
/// # Errors
/// Unwritable folder, or any failure of the phases (with context).
pub fn run_demo(cfg: &DemoConfig) -> Result<DemoOutcome> {
    let data_dir = cfg.dir.join("data");
    let t0 = Instant::now();
    let synth = SynthConfig {
        seed: cfg.seed,
        ..cfg.synth.clone()
    };
    omniad_synth::generate(&data_dir, &synth).with_context(|| {
        format!(
            "cannot generate the synthetic dataset in {}",
            data_dir.display()
        )
    })?;
    let t_data = t0.elapsed().as_secs_f64();

    let tcfg = cfg.train_config();
    if tcfg.out.exists() {
        remove_previous_run(&tcfg.out)?;
    }
    let t1 = Instant::now();
    let outcome = train(
        &tcfg,
        &TrainOptions {
            progress: cfg.progress,
            ..Default::default()
        },
    )?;
    let t_train = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let ds = open_train_dataset(&tcfg.data)?;
    let maps_dir = tcfg.out.join("maps");
    let eval = eval_run(
        &tcfg.out,
        &ds,
        cfg.device,
        &EvalOptions {
            save_maps: Some(maps_dir.clone()),
            progress: cfg.progress,
            precision: cfg.precision,
            ..Default::default()
        },
    )?;
    let t_eval = t2.elapsed().as_secs_f64();
    Ok(DemoOutcome {
        data_dir,
        run_dir: tcfg.out.clone(),
        maps_dir,
        train: outcome,
        eval,
        seconds: (t_data, t_train, t_eval),
    })
}

/// Removes a previous demo run folder, only if it looks like one (has `config.toml`).
fn remove_previous_run(dir: &Path) -> Result<()> {
    if !dir.join("config.toml").is_file()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        anyhow::bail!(
            "{}: exists and is not an omniad run folder; choose another --dir",
            dir.display()
        );
    }
    std::fs::remove_dir_all(dir)
        .with_context(|| format!("cannot remove previous demo run {}", dir.display()))
}
