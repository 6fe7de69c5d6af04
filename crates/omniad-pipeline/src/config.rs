//! Training configuration: the paper's defaults, readable from TOML, overridable from the CLI;
//! the effective configuration is saved in the run folder as `config.toml`.
use std::path::{Path, PathBuf};

use omniad_data::DatasetKind;
use omniad_model::{OmniAdConfig, TeacherArch};
use serde::{Deserialize, Serialize};

use crate::device::ComputeDevice;
pub use crate::feature_cache::FeatureCache;
use crate::optim::AdamWConfig;

/// The training data: which dataset and how it is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset layout.
    pub dataset: DatasetKind,
    /// Dataset root folder.
    pub data_root: PathBuf,
    /// Classes to train on (`None` = all discovered).
    pub classes: Option<Vec<String>>,
    /// Image-decoding threads (0 = rayon default).
    pub workers: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Mvtec,
            data_root: PathBuf::new(),
            classes: None,
            workers: 0,
        }
    }
}

/// Everything `omniad train` needs, nested as burn's guide does: the network
/// ([`OmniAdConfig`], the same type the checkpoint stores), the data, the optimiser, and the
/// loop's own settings. Defaults are the paper's (section 4.1 and the reference config
/// `configs/omniad/omniad_mvtec.py`) with the one default teacher of [`OmniAdConfig::default`]
/// (the offline EfficientNet-Lite0).
///
/// `config.toml` holds `[model]`, `[data]` and `[optim]` tables; the flat form of runs made
/// before them is still read (see [`TrainConfig::from_toml_file`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Seed of shuffling, initialisation and jitter.
    pub seed: u64,
    /// Run folder.
    pub out: PathBuf,
    /// Device.
    pub device: ComputeDevice,
    /// Teacher-feature cache.
    pub feature_cache: FeatureCache,
    /// Drop the last incomplete batch of every epoch, as the reference's data loader does
    /// (`drop_last=True`), so that every optimiser step sees `batch_size` images. A
    /// `config.toml` without the key (runs made before it existed) reads as `false`, so that
    /// they resume exactly as they started.
    #[serde(default)]
    pub drop_last: bool,
    /// Bytes of memory [`FeatureCache::Auto`] may give the cache (`None` = half of the memory
    /// available when training starts).
    pub memory_budget: Option<u64>,
    /// Evaluate on the test split every this many epochs (0 = only when asked).
    pub eval_every: usize,
    /// Save a checkpoint every this many epochs (0 = only at the end and on Ctrl-C).
    pub save_every: usize,
    /// Teacher weights (`.safetensors`/`.pth`); required for ResNets, optional for
    /// EfficientNet-Lite0 (the shipped weights are used).
    pub teacher_weights: Option<PathBuf>,
    /// The network (teacher, decoder depths, input size, ablations, jitter).
    pub model: OmniAdConfig,
    /// The training data.
    pub data: DataConfig,
    /// Optimiser.
    pub optim: AdamWConfig,
    /// Held-out validation images, class recognition and threshold calibration at the end of
    /// training. A `config.toml` without the table (runs made before it existed) reads as
    /// [`CalibrationConfig::none`], so that they resume on the same training images.
    #[serde(default = "CalibrationConfig::none")]
    pub calibration: CalibrationConfig,
    /// Precision of the training step: `f32`, or `bf16` / `f16` mixed precision (the
    /// decoder's linear layers and convolutions in the low precision; the teacher, whose
    /// features are the targets (it runs in float32 under every precision), the neck, the attention, the loss, the gradients of the master
    /// weights, the optimiser state and the weights themselves in float32; see
    /// [`omniad_model::precision`]). The end-of-training calibration scores in float32. A
    /// `config.toml` without the key (runs made before it) reads as `f32`.
    #[serde(default)]
    pub precision: omniad_model::Precision,
}

/// How `omniad train` holds out normal images and calibrates the run's decisions on them (see
/// the `calibrate` module).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrationConfig {
    /// Share of each class's normal training images held out of training for validation, in
    /// `[0, 0.5]` (0 = none: no thresholds are fitted, unless the layout has its own validation
    /// folder, e.g. MVTec LOCO `validation/good`, which is always used instead).
    pub val_fraction: f64,
    /// Fewest images held out per class when `val_fraction > 0` (never more than half of the
    /// class's training images).
    pub min_val_images: usize,
    /// Quantile of the held-out normal image scores taken as a class's image threshold. The
    /// expected false-alarm rate on new normal images is about `1 - q` with many held-out images;
    /// with `n` of them and `q > n / (n + 1)` the threshold is their maximum, and the expected
    /// false-alarm rate is `1 / (n + 1)`.
    pub image_quantile: f64,
    /// Quantile of the held-out normal images' anomaly-map pixels taken as a class's pixel
    /// threshold (the binary mask is `map >= it`).
    pub pixel_quantile: f64,
    /// Slack of the unknown-class distance over the largest distance the class's own normal
    /// images show (see [`omniad_model::recognition`]).
    pub unknown_margin: f64,
}

impl Default for CalibrationConfig {
    /// 10 % held out (at least 3 per class), quantiles 0.995 (images) and 0.999 (pixels),
    /// unknown-class margin [`omniad_model::recognition::UNKNOWN_MARGIN`].
    fn default() -> Self {
        Self {
            val_fraction: 0.1,
            min_val_images: 3,
            image_quantile: 0.995,
            pixel_quantile: 0.999,
            unknown_margin: omniad_model::recognition::UNKNOWN_MARGIN,
        }
    }
}

impl CalibrationConfig {
    /// What runs made before held-out calibration existed did: nothing held out.
    pub fn none() -> Self {
        Self {
            val_fraction: 0.0,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !(0.0..=0.5).contains(&self.val_fraction) {
            return Err(format!(
                "val_fraction (--val-fraction) {} must be in [0, 0.5]",
                self.val_fraction
            ));
        }
        for (name, q) in [
            ("image_quantile (--image-quantile)", self.image_quantile),
            ("pixel_quantile (--pixel-quantile)", self.pixel_quantile),
        ] {
            if !(q > 0.0 && q <= 1.0) {
                return Err(format!("{name} {q} must be in (0, 1]"));
            }
        }
        if !(self.unknown_margin.is_finite() && self.unknown_margin >= 0.0) {
            return Err(format!(
                "unknown_margin (--unknown-margin) {} must be a finite number >= 0",
                self.unknown_margin
            ));
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 16,
            seed: 42,
            out: PathBuf::from("runs/omniad"),
            device: ComputeDevice::Cpu,
            feature_cache: FeatureCache::Auto,
            drop_last: true,
            memory_budget: None,
            eval_every: 0,
            save_every: 10,
            teacher_weights: None,
            model: OmniAdConfig::default(),
            data: DataConfig::default(),
            optim: AdamWConfig::default(),
            calibration: CalibrationConfig::default(),
            precision: omniad_model::Precision::F32,
        }
    }
}

/// The flat `config.toml` of runs made before the `[model]`/`[data]` tables (read only).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FlatTrainConfig {
    dataset: DatasetKind,
    data_root: PathBuf,
    classes: Option<Vec<String>>,
    teacher: omniad_model::TeacherArch,
    teacher_weights: Option<PathBuf>,
    depths: [usize; 4],
    image_size: u32,
    branches: omniad_model::Branches,
    attention: omniad_model::GlobalAttention,
    num_tokens: i64,
    jitter_scale: f64,
    epochs: usize,
    batch_size: usize,
    optim: AdamWConfig,
    seed: u64,
    out: PathBuf,
    device: ComputeDevice,
    feature_cache: FeatureCache,
    eval_every: usize,
    save_every: usize,
    workers: usize,
}

impl Default for FlatTrainConfig {
    fn default() -> Self {
        let d = TrainConfig::default();
        Self {
            dataset: d.data.dataset,
            data_root: d.data.data_root,
            classes: d.data.classes,
            teacher: d.model.teacher,
            teacher_weights: d.teacher_weights,
            depths: d.model.depths,
            image_size: d.model.image_size.0,
            branches: d.model.branches,
            attention: d.model.attention,
            num_tokens: d.model.num_tokens,
            jitter_scale: d.model.jitter_scale,
            epochs: d.epochs,
            batch_size: d.batch_size,
            optim: d.optim,
            seed: d.seed,
            out: d.out,
            device: d.device,
            feature_cache: d.feature_cache,
            eval_every: d.eval_every,
            save_every: d.save_every,
            workers: d.data.workers,
        }
    }
}

impl From<FlatTrainConfig> for TrainConfig {
    fn from(f: FlatTrainConfig) -> Self {
        Self {
            epochs: f.epochs,
            batch_size: f.batch_size,
            seed: f.seed,
            out: f.out,
            device: f.device,
            feature_cache: f.feature_cache,
            drop_last: false,
            memory_budget: None,
            eval_every: f.eval_every,
            save_every: f.save_every,
            teacher_weights: f.teacher_weights,
            model: OmniAdConfig {
                teacher: f.teacher,
                depths: f.depths,
                image_size: (f.image_size, f.image_size),
                branches: f.branches,
                attention: f.attention,
                num_tokens: f.num_tokens,
                jitter_scale: f.jitter_scale,
                ..OmniAdConfig::default()
            },
            data: DataConfig {
                dataset: f.dataset,
                data_root: f.data_root,
                classes: f.classes,
                workers: f.workers,
            },
            optim: f.optim,
            calibration: CalibrationConfig::none(),
            precision: omniad_model::Precision::F32,
        }
    }
}

/// A configuration file that cannot be read or is not valid; the message names the file and
/// the key or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFileError(pub String);

impl TrainConfig {
    /// Reads a TOML configuration file (unknown keys are an error). The nested form
    /// (`[model]`, `[data]`, `[optim]`) is current; a file with the flat keys of older runs
    /// (`dataset`, `teacher`, `depths`, `image_size`, ... at the top level, as written by every
    /// omniad before the nesting) is read as such.
    ///
    /// # Errors
    /// A message naming the file and the problem.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigFileError(format!("{}: {e}", path.display())))?;
        let bad = |e: toml::de::Error| {
            ConfigFileError(format!("{}: invalid training config: {e}", path.display()))
        };
        let table: toml::Table = toml::from_str(&text).map_err(bad)?;
        const FLAT_ONLY: [&str; 6] = [
            "dataset",
            "data_root",
            "teacher",
            "depths",
            "image_size",
            "workers",
        ];
        if FLAT_ONLY.iter().any(|k| table.contains_key(*k)) {
            let flat: FlatTrainConfig = toml::from_str(&text).map_err(bad)?;
            return Ok(flat.into());
        }
        toml::from_str(&text).map_err(bad)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }

    /// Checks values a user can get wrong, before any work starts.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), ConfigFileError> {
        self.validate_values().map_err(ConfigFileError)
    }

    fn validate_values(&self) -> Result<(), String> {
        if self.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return Err(format!("lr {} must be a positive number", self.optim.lr));
        }
        let o = &self.optim;
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) {
            return Err(format!("weight_decay {} must be >= 0", o.weight_decay));
        }
        if !((0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2)) {
            return Err(format!(
                "optim betas ({}, {}) must be in [0, 1)",
                o.beta1, o.beta2
            ));
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            return Err(format!("optim eps {} must be a positive number", o.eps));
        }
        if let Some(c) = o.clip_grad_norm {
            if !(c > 0.0 && c.is_finite()) {
                return Err(format!(
                    "clip_grad_norm {c} must be a positive number (omit it to disable clipping)"
                ));
            }
        }
        self.calibration.validate()?;
        let teacher = self.model.teacher;
        if teacher != TeacherArch::EfficientNetLite0 && self.teacher_weights.is_none() {
            return Err(format!(
                "teacher {teacher} needs ImageNet weights: pass --teacher-weights FILE ({})",
                weights_hint(teacher)
            ));
        }
        self.model.validate().map_err(|e| e.0)
    }
}

/// Where to get ImageNet weights for a teacher.
pub fn weights_hint(arch: TeacherArch) -> &'static str {
    match arch {
        TeacherArch::Resnet18 => "torchvision resnet18-f37072fd.pth or timm resnet18.a1_in1k model.safetensors",
        TeacherArch::Resnet34 => "torchvision resnet34-b627a593.pth, timm resnet34.a1_in1k model.safetensors, or the reference's resnet34-43635321.pth",
        TeacherArch::Resnet50 => "torchvision resnet50-0676ba61.pth or timm resnet50.a1_in1k model.safetensors",
        TeacherArch::WideResnet50_2 => "torchvision wide_resnet50_2-95faca4d.pth or timm wide_resnet50_2.tv_in1k model.safetensors",
        TeacherArch::EfficientNetLite0 => "shipped with omniad (assets/efficientnet_lite0.safetensors)",
    }
}
