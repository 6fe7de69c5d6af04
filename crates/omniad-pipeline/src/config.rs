//! Training configuration: the paper's defaults, readable from TOML, overridable from the CLI;
//! the effective configuration is saved in the run folder as `config.toml`.
use std::path::{Path, PathBuf};

use omniad_data::DatasetKind;
use omniad_model::{Branches, GlobalAttention, OmniAdConfig, TeacherArch};
use serde::{Deserialize, Serialize};

use crate::optim::AdamWConfig;

/// Where teacher features of training images are kept between epochs.
///
/// The teacher is frozen and training uses no augmentation, so its features are a pure
/// function of the image: computed once and reused every epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FeatureCache {
    /// In memory as f32 (bit-identical to recomputing them).
    #[default]
    Memory,
    /// In memory as f16 (half the memory; loss parity within 1e-3).
    MemoryF16,
    /// No cache: images are decoded and the teacher runs at every step (the reference trainer).
    None,
}

/// Everything `omniad train` needs. Field defaults are the paper's (section 4.1 and the
/// reference config `configs/omniad/omniad_mvtec.py`) except the teacher, which defaults to the
/// offline EfficientNet-Lite0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Dataset layout.
    pub dataset: DatasetKind,
    /// Dataset root folder.
    pub data_root: PathBuf,
    /// Classes to train on (`None` = all discovered).
    pub classes: Option<Vec<String>>,
    /// Teacher backbone.
    pub teacher: TeacherArch,
    /// Teacher weights (`.safetensors`/`.pth`); required for ResNets, optional for
    /// EfficientNet-Lite0 (the shipped weights are used).
    pub teacher_weights: Option<PathBuf>,
    /// Omni-blocks per decoder stage.
    pub depths: [usize; 4],
    /// Square input size in pixels (multiple of 32).
    pub image_size: u32,
    /// Active Omni-block branches (ablation).
    pub branches: Branches,
    /// Global-branch attention (ablation).
    pub attention: GlobalAttention,
    /// Learnable tokens (a perfect square).
    pub num_tokens: i64,
    /// Feature-jitter scale (0 = off).
    pub jitter_scale: f64,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Optimiser.
    pub optim: AdamWConfig,
    /// Seed of shuffling, initialisation and jitter.
    pub seed: u64,
    /// Run folder.
    pub out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Teacher-feature cache.
    pub feature_cache: FeatureCache,
    /// Evaluate on the test split every this many epochs (0 = only when asked).
    pub eval_every: usize,
    /// Save a checkpoint every this many epochs (0 = only at the end and on Ctrl-C).
    pub save_every: usize,
    /// Image-decoding threads (0 = rayon default).
    pub workers: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        let paper = OmniAdConfig::paper();
        Self {
            dataset: DatasetKind::Mvtec,
            data_root: PathBuf::new(),
            classes: None,
            teacher: TeacherArch::EfficientNetLite0,
            teacher_weights: None,
            depths: paper.depths,
            image_size: 256,
            branches: paper.branches,
            attention: paper.attention,
            num_tokens: paper.num_tokens,
            jitter_scale: paper.jitter_scale,
            epochs: 100,
            batch_size: 16,
            optim: AdamWConfig::default(),
            seed: 42,
            out: PathBuf::from("runs/omniad"),
            device: "cpu".into(),
            feature_cache: FeatureCache::Memory,
            eval_every: 0,
            save_every: 10,
            workers: 0,
        }
    }
}

impl TrainConfig {
    /// The model architecture this configuration trains.
    pub fn model_config(&self) -> OmniAdConfig {
        OmniAdConfig {
            teacher: self.teacher,
            depths: self.depths,
            image_size: (self.image_size as i64, self.image_size as i64),
            branches: self.branches,
            attention: self.attention,
            num_tokens: self.num_tokens,
            jitter_scale: self.jitter_scale,
            ..OmniAdConfig::paper()
        }
    }

    /// Reads a TOML configuration file (unknown keys are an error).
    ///
    /// # Errors
    /// A message naming the file and the problem.
    pub fn from_toml_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| format!("{}: invalid training config: {e}", path.display()))
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }

    /// Checks values a user can get wrong, before any work starts.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
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
        if self.teacher != TeacherArch::EfficientNetLite0 && self.teacher_weights.is_none() {
            return Err(format!(
                "teacher {} needs ImageNet weights: pass --teacher-weights FILE ({})",
                self.teacher,
                weights_hint(self.teacher)
            ));
        }
        self.model_config().validate()
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
