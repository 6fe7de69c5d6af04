//! Omni-AD network (ICME 2025, arXiv 2503.21125) on tch/libtorch.
//!
//! - [`teacher`]: frozen ImageNet backbones (ResNet family, EfficientNet-Lite0) giving three
//!   feature maps at strides 4, 8, 16.
//! - [`weights`]: strict loading of `.safetensors` and PyTorch `.pth`/`.pt` state dicts.
//! - [`neck`]: RD4AD-style fusion of the teacher maps into one `[B, 512, H/32, W/32]` map.
//! - [`decoder`]: Omni-block decoder stages reconstructing the teacher maps.
//! - [`anomaly_map`]: per-scale `1 - cos`, upsampling, Gaussian blur, image score.
//! - [`model`]: the assembled [`OmniAd`] network, its loss and prediction.
//! - [`config`]: architecture and ablation switches.
//! - [`precision`]: float32 or bfloat16/float16 mixed precision of the matrix products.
pub mod anomaly_map;
pub mod checkpoint;
pub mod config;
pub mod decoder;
mod init;
pub mod model;
pub mod neck;
pub mod precision;
pub mod recognition;
pub mod teacher;
pub mod weights;

pub use config::{
    Branches, ConfigError, DecoderConfig, GlobalAttention, NeckConfig, OmniAdConfig,
    OmniBlockConfig, MAX_IMAGE_SIDE, MAX_STAGE_DEPTH,
};
pub use model::{MacCount, OmniAd, Prediction};
pub use precision::Precision;
pub use teacher::{Teacher, TeacherArch};
